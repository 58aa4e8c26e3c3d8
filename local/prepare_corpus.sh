#!/usr/bin/env bash
# Stage 0 of every recipe: its corpus -> data/manifests/*.jsonl.gz (lhotse) + data/<split>/ (Kaldi dirs).
# Sourced by recipes/<name>/local/data.sh from the recipe dir, with $root the repository root. It runs
#   python -m stok.bin.prepare $prepare_corpus ... $prep_opts
# with the options of the recipe's conf/corpus.sh (after run.sh's exports and --name value), which holds all
# that differs between recipes:
# - a corpus with its own splits (demo, librispeech, libritts, aishell) prepares train_set, dev_set and
#   test_sets from corpus_dir; combine=NAME=PART,PART (where the recipe has it) prepares the parts and writes
#   NAME too; download=true (where the recipe has it) fetches the corpus into download_dir first;
# - folder makes its splits: train_set and a dev_set of dev_fraction, from corpus_dir (a directory of audio) or
#   wav_scp (a Kaldi data dir, or a wav.scp file with the segments, utt2spk and text beside it), speakers by
#   speaker_from.
set -euo pipefail
# begin options
output_dir=data                  # where the Kaldi dirs (<output_dir>/<split>) and manifests go; run.sh reads data/
# end options
. "$root/local/recipe_options.sh"  # conf/corpus.sh, then run.sh's exports, then --name value

if [ "$prepare_corpus" = folder ]; then
  if [ -d "$wav_scp" ]; then      # a Kaldi data dir
    args=(--data_dir "$wav_scp")
  elif [ -n "$wav_scp" ]; then    # a wav.scp file, with the files Kaldi keeps next to it
    args=(--wav_scp "$wav_scp")
    d=$(dirname "$wav_scp")
    for f in segments utt2spk text; do [ -f "$d/$f" ] && args+=(--$f "$d/$f"); done
  else
    args=(--audio_dir "$corpus_dir")
  fi
  args+=(--speaker_from "$speaker_from" --train_name "$train_set")
  if [ -n "$dev_set" ]; then args+=(--dev_fraction "$dev_fraction" --dev_name "$dev_set"); else args+=(--dev_fraction 0); fi
else
  splits="$train_set $dev_set $test_sets"
  args=(--corpus_dir "$corpus_dir")
  if [ -n "${combine:-}" ]; then  # prepare the parts, then write the combined split
    name=${combine%%=*}; parts=${combine#*=}
    splits=$(for s in $splits; do if [ "$s" = "$name" ]; then echo "${parts//,/ }"; else echo "$s"; fi; done)
    args+=(--combine "$combine")
  fi
  [ "${download:-false}" = true ] && args+=(--download --download_dir "$download_dir")
  args+=(--splits $splits)
fi
python -m stok.bin.prepare "$prepare_corpus" "${args[@]}" --output_dir "$output_dir" $prep_opts
