#!/usr/bin/env bash
# Stage 0 of recipes/libritts: LibriTTS -> data/manifests/*.jsonl.gz (lhotse) + data/<split>/ (Kaldi dirs),
# through lhotse.recipes.prepare_libritts. Downloads only with download=true.
# run.sh runs it from the recipe dir. On its own: bash recipes/libritts/local/data.sh [--name value ...],
# where every variable of conf/corpus.sh is an option (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
# begin options
output_dir=data                  # where the Kaldi dirs (<output_dir>/<split>) and manifests go; run.sh reads data/
# end options
root=${STOK_ROOT:-$(cd ../.. && pwd)}
. "$root/local/recipe_options.sh"  # conf/corpus.sh, then run.sh's exports, then --name value

splits="$train_set $dev_set $test_sets"
opts=""
if [ -n "$combine" ]; then  # prepare the parts, then write the combined split
  name=${combine%%=*}; parts=${combine#*=}
  splits=$(for s in $splits; do if [ "$s" = "$name" ]; then echo "${parts//,/ }"; else echo "$s"; fi; done)
  opts="--combine $combine"
fi
[ "$download" = true ] && opts="$opts --download --download_dir $download_dir"
python -m stok.bin.prepare libritts --corpus_dir "$corpus_dir" --output_dir "$output_dir" --splits $splits $opts $prep_opts
