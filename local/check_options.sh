#!/usr/bin/env bash
# Sourced by run.sh after the options are parsed: every option value, and the recipe files the chosen stages
# read, are checked before any stage runs, so a mistake is one line naming the option and nothing is written.
# Stages are 0..5; --stop_stage may be larger (Kaldi habit: run to the end) but not below --stage.

_stok_die() { echo "run.sh: error: $*" >&2; exit 1; }
_stok_int() {  # name value min
  [[ "$2" =~ ^[0-9]+$ ]] || _stok_die "--$1 $2 is not a whole number (see run.sh --help)"
  [ "$2" -ge "$3" ] || _stok_die "--$1 $2 must be at least $3"
}

_stok_int stage "$stage" 0
_stok_int stop_stage "$stop_stage" 0
[ "$stage" -le 5 ] || _stok_die "--stage $stage is out of range: the stages are 0..5"
[ "$stop_stage" -ge "$stage" ] || _stok_die "--stop_stage $stop_stage is below --stage $stage: nothing would run"
_stok_int nj "$nj" 1
_stok_int ngpu "$ngpu" 0
_stok_int num_workers "$num_workers" 0
_stok_int train_nj "$train_nj" 1
_stok_int n_clusters "$n_clusters" 1
_stok_int st_n_q "$st_n_q" 0
_stok_int shar_shard_size "$shar_shard_size" 1
case "$shar" in true|false) ;; *) _stok_die "--shar $shar: use true or false" ;; esac
case "$teacher" in mfcc|hubert) ;; *) _stok_die "--teacher $teacher: use mfcc or hubert" ;; esac
case "$s3_version" in v1_50hz|v1_25hz|v2_25hz|v3_25hz) ;;
  *) _stok_die "--s3_version $s3_version: use v1_50hz, v1_25hz, v2_25hz or v3_25hz" ;; esac
awk -v p="$km_percent" 'BEGIN { exit !(p ~ /^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/ && p + 0 > 0 && p + 0 <= 1) }' ||
  _stok_die "--km_percent $km_percent must be a fraction in (0, 1] (0.1 = 10%)"
if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ] && [ ! -f "$recipe/local/data.sh" ]; then
  _stok_die "$recipe/local/data.sh not found: stage 0 runs the recipe's data preparation (start at --stage 1 to skip it)"
fi
_stok_conf=$train_config
[ "${_stok_conf#/}" != "$_stok_conf" ] || _stok_conf=$recipe/$train_config
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ] && [ ! -f "$_stok_conf" ]; then
  _stok_die "--train_config $train_config: $_stok_conf not found (stage 3 reads it; a recipe keeps it in conf/)"
fi
unset -f _stok_die _stok_int
unset _stok_conf
