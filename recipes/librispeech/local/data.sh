#!/usr/bin/env bash
# Stage 0 of this recipe: its corpus -> data/manifests/*.jsonl.gz (lhotse) + data/<split>/ (Kaldi dirs).
# run.sh runs it from the recipe dir. On its own: bash recipes/<name>/local/data.sh [--name value ...],
# where every variable of conf/corpus.sh is an option (--help lists them). The steps are the repository's
# local/prepare_corpus.sh, the same for every recipe; what is this recipe's own is in conf/corpus.sh.
cd "$(dirname "$0")/.."
root=${STOK_ROOT:-$(cd ../.. && pwd)}
. "$root/local/prepare_corpus.sh"
