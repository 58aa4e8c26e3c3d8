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
