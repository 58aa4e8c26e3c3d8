#!/usr/bin/env bash
# Stage 0 of recipes/folder: a directory of audio, a wav.scp or a Kaldi data dir
# -> data/manifests/folder_*.jsonl.gz (lhotse) + data/<train_set>/ and data/<dev_set>/ (Kaldi dirs).
# run.sh runs it from the recipe dir. On its own: bash recipes/folder/local/data.sh [--name value ...],
# where every variable of conf/corpus.sh is an option (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
# begin options
output_dir=data                  # where the Kaldi dirs (<output_dir>/<split>) and manifests go; run.sh reads data/
# end options
root=${STOK_ROOT:-$(cd ../.. && pwd)}
. "$root/local/recipe_options.sh"  # conf/corpus.sh, then run.sh's exports, then --name value

if [ -d "$wav_scp" ]; then      # a Kaldi data dir
  input=(--data_dir "$wav_scp")
elif [ -n "$wav_scp" ]; then    # a wav.scp file, with the files Kaldi keeps next to it
  input=(--wav_scp "$wav_scp")
  d=$(dirname "$wav_scp")
  for f in segments utt2spk text; do [ -f "$d/$f" ] && input+=(--$f "$d/$f"); done
else
  input=(--audio_dir "$corpus_dir")
fi
dev=(--dev_fraction 0)
[ -n "$dev_set" ] && dev=(--dev_fraction "$dev_fraction" --dev_name "$dev_set")
python -m stok.bin.prepare folder "${input[@]}" --speaker_from "$speaker_from" --output_dir "$output_dir" \
  --train_name "$train_set" "${dev[@]}" $prep_opts
