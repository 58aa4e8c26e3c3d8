#!/usr/bin/env bash
# Stage 0 of recipes/aishell: AISHELL-1 -> data/manifests/*.jsonl.gz (lhotse) + data/<split>/ (Kaldi dirs),
# through lhotse.recipes.prepare_aishell. Downloads only with download=true.
# run.sh runs it from the recipe dir. On its own: bash recipes/aishell/local/data.sh [--name value ...],
# where every variable of conf/corpus.sh is an option (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
# begin options
output_dir=data                  # where the Kaldi dirs (<output_dir>/<split>) and manifests go; run.sh reads data/
# end options
root=${STOK_ROOT:-$(cd ../.. && pwd)}
. "$root/local/recipe_options.sh"  # conf/corpus.sh, then run.sh's exports, then --name value

opts=""
[ "$download" = true ] && opts="--download --download_dir $download_dir"
python -m stok.bin.prepare aishell --corpus_dir "$corpus_dir" --output_dir "$output_dir" \
  --splits $train_set $dev_set $test_sets $opts $prep_opts
