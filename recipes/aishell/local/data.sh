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
# conf/corpus.sh holds the defaults; values run.sh exports (its command line's) win over them, and --name value here wins over all
names=$(sed -n '/^# begin options/,/^# end options/s/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' conf/corpus.sh)
declare -A given=()
for v in $names; do [ -z "${!v+set}" ] || given[$v]=${!v}; done
. conf/corpus.sh
for v in "${!given[@]}"; do printf -v "$v" '%s' "${given[$v]}"; done
root=${STOK_ROOT:-$(cd ../.. && pwd)}
help_message="Usage: bash local/data.sh [--name value ...]"
option_files=conf/corpus.sh
. "$root/local/parse_options.sh"
[ -n "${STOK_ROOT:-}" ] || . "$root/path.sh"

opts=""
[ "$download" = true ] && opts="--download --download_dir $download_dir"
python -m stok.bin.prepare aishell --corpus_dir "$corpus_dir" --output_dir "$output_dir" \
  --splits $train_set $dev_set $test_sets $opts $prep_opts
