#!/usr/bin/env bash
# stok: the staged pipeline, wav.scp in, codes.ark out.
#   bash run.sh [--recipe recipes/demo] [--stage 0] [--stop_stage 5] [--nj N] [--ngpu N] [--name value ...]
# Stages: 0 data prep, 1 teacher features, 2 k-means units, 3 train SpeechTokenizer,
#         4 dump SpeechTokenizer codes (+ decode and evaluate the dev set), 5 dump S3Tokenizer tokens.
# Outputs go under the recipe dir: data/ (Kaldi dirs, manifests), dump/ (features, labels, tokens), exp/ (models, logs).
# Where the work runs: the recipe's conf/cmd.sh (--launcher local|slurm, Slurm resources; logs in exp/log/stage<N>).
set -euo pipefail

# begin options
stage=0                  # first stage to run: 0 data, 1 teacher, 2 k-means, 3 train, 4 codes, 5 S3 tokens
stop_stage=5             # last stage to run
recipe=recipes/demo      # recipe dir with conf/corpus.sh, conf/train.yaml and local/data.sh
nj=2                     # dump processes per node (torchrun --nproc_per_node); CPU processes when ngpu=0
ngpu=0                   # GPUs per node for dumps and training (0: run on CPU)
num_workers=2            # audio-reading DataLoader workers per process
train_nj=1               # training processes per node (DDP; one per GPU)
teacher=mfcc             # stage 1 teacher: mfcc (no weights) or hubert
teacher_opts=""          # extra stage 1 options, e.g. "--checkpoint hubert_base_ls960.pt --layer avg"
n_clusters=100           # stage 2 k-means clusters (100 for MFCC, 500 for HuBERT)
km_percent=1.0           # stage 2: fraction of training frames k-means learns on
train_config=conf/train.yaml  # stage 3 config, relative to the recipe dir
train_opts=""            # extra stage 3 options, e.g. "--max_steps 1000"
st_n_q=0                 # stage 4: codebooks to dump (0: all)
s3_version=v2_25hz       # stage 5 S3Tokenizer version: v1_50hz, v1_25hz, v2_25hz, v3_25hz
s3_model=demo            # stage 5 model: an ONNX/checkpoint path, an official name, or demo (random weights, smoke test only)
s3_opts=""               # extra stage 5 options, e.g. "--dtype bf16"
shar=false               # stages 1, 2, 4, 5: also export each dump's lhotse cut set as Shar shards (<dump dir>/shar)
shar_shard_size=1000     # cuts per Shar shard
# end options

# The recipe's own settings (corpus paths, split names, and overrides of the defaults above) come next,
# then the command line overrides everything.
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --recipe)
      j=$((i + 1))
      if [ $j -gt $# ]; then echo "run.sh: error: option --recipe needs a value (a recipe dir such as recipes/demo)" >&2; exit 1; fi
      recipe=${!j} ;;
    --recipe=*) recipe=${!i#--recipe=} ;;
  esac
done
if [ ! -f "$recipe/conf/corpus.sh" ]; then
  echo "run.sh: error: $recipe/conf/corpus.sh not found; --recipe must be a recipe dir such as recipes/demo" >&2
  exit 1
fi
. "$recipe/conf/corpus.sh"
launcher=local  # the recipe's conf/cmd.sh sets it, with the Slurm resources; a recipe without one runs here
[ ! -f "$recipe/conf/cmd.sh" ] || . "$recipe/conf/cmd.sh"
help_message=$(sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//')
option_files="$recipe/conf/corpus.sh $recipe/conf/cmd.sh"
. "$(dirname "$0")/local/parse_options.sh"
if [ $# -gt 0 ]; then echo "run.sh: error: unexpected argument $1 (options are --name value; see run.sh --help)" >&2; exit 1; fi
. "$(dirname "$0")/path.sh"
# every option value and the recipe's files (stok.bin.run_options), before any stage runs
checked=()
for v in stage stop_stage nj ngpu num_workers train_nj teacher n_clusters km_percent train_config st_n_q s3_version \
  shar shar_shard_size launcher $(compgen -v slurm_); do checked+=("$v=${!v}"); done
python -m stok.bin.run_options --recipe "$recipe" "${checked[@]}"
# the recipe's options (after command-line overrides) reach local/data.sh through the environment
export nj $(sed -n '/^# begin options/,/^# end options/p' "$recipe/conf/corpus.sh" | grep -oE '^[A-Za-z_][A-Za-z0-9_]*(=)' | tr -d =)

log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }

cd "$recipe"
splits="$train_set $dev_set $test_sets"
if [ "$ngpu" -gt 0 ]; then device=cuda; else device=cpu; fi
dump_opts="--device $device --num_workers $num_workers"
# Every step goes through the launcher (stok.bin.launch; conf/cmd.sh): local runs it here, as python -m or as
# torchrun --standalone for several processes (--nj CPU processes or --ngpu GPUs; --train_nj for training);
# slurm submits it and waits: a dump as --nj shard jobs (a job array, each resumable alone) and a merge job,
# training as one job on slurm_nodes nodes (requeued and resumed at its time limit), anything else as one job.
launcher_opts=(--launcher "$launcher" --nj "$nj" --ngpu "$ngpu" --train_nj "$train_nj")
if [ "$launcher" = slurm ]; then
  for v in partition time mem cpus gpus nodes opts retries signal_seconds; do
    v=slurm_$v; launcher_opts+=(--$v "${!v}")
  done
fi
launch() {  # launch job|dump|train STAGE NAME [--gpu | --local_nj N] -- COMMAND (job) or MODULE ARGS (dump, train)
  local kind=$1 s=$2 name=$3 overrides=slurm_stage$2
  shift 3
  python -m stok.bin.launch "$kind" --stage "$s" --name "$name" "${launcher_opts[@]}" \
    --stage_overrides "${!overrides:-}" "$@"
}
# every dump also writes its lhotse cut set, cuts.jsonl.gz, beside its scp; --shar true adds Shar shards
export_shar() {  # export_shar STAGE DUMP_DIR
  if [ "$shar" = true ]; then
    launch job $1 shar.$(echo ${2#dump/} | tr / .) -- python -m stok.bin.export_shar --cuts $2/cuts.jsonl.gz \
      --output_dir $2/shar --shard_size $shar_shard_size --overwrite
  fi
}

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: prepare $recipe: lhotse manifests in data/manifests, Kaldi dirs in data/{${splits// /,}}"
  launch job 0 data -- bash local/data.sh
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: $teacher teacher features -> dump/$teacher/<split>/feats.scp"
  for s in $splits; do
    launch dump 1 feats.$s -- stok.bin.dump_features --teacher $teacher $teacher_opts $dump_opts \
      --data_dir data/$s --output_dir dump/$teacher/$s
    export_shar 1 dump/$teacher/$s
  done
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: k-means ($n_clusters clusters) on $train_set, labels -> dump/km$n_clusters/<split>"
  launch job 2 kmeans_learn --gpu -- python -m stok.bin.kmeans learn \
    --feats_scp dump/$teacher/$train_set/feats.scp --n_clusters $n_clusters --percent $km_percent --output exp/kmeans/km$n_clusters.npz
  for s in $splits; do
    launch dump 2 km_labels.$s --local_nj 1 -- stok.bin.kmeans dump --km_model exp/kmeans/km$n_clusters.npz \
      --feats_scp dump/$teacher/$s/feats.scp --output_dir dump/km$n_clusters/$s
    export_shar 2 dump/km$n_clusters/$s
  done
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: train SpeechTokenizer ($train_config) -> exp/st, export exp/st/export"
  # --resume: a rerun continues the run in exp/st (a finished one is exported again); a changed config is refused
  launch train 3 train -- stok.bin.train --config $train_config --exp_dir exp/st --resume \
    --data_dir data/$train_set --teacher_scp dump/$teacher/$train_set/feats.scp \
    --dev_dir data/$dev_set --dev_teacher_scp dump/$teacher/$dev_set/feats.scp --device $device $train_opts
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: SpeechTokenizer codes -> dump/st_codes/<split>; decode and evaluate $dev_set -> exp/st/{decode,eval}/$dev_set"
  for s in $splits; do
    launch dump 4 st_codes.$s -- stok.bin.dump_codes --model_dir exp/st/export --n_q $st_n_q $dump_opts \
      --data_dir data/$s --output_dir dump/st_codes/$s
    export_shar 4 dump/st_codes/$s
  done
  launch job 4 decode --gpu -- python -m stok.bin.decode --model_dir exp/st/export \
    --codes_scp dump/st_codes/$dev_set/st_codes.scp --output_dir exp/st/decode/$dev_set
  launch job 4 eval --gpu -- python -m stok.bin.eval --model_dir exp/st/export --data_dir data/$dev_set \
    --output_dir exp/st/eval/$dev_set --device $device --num_workers $num_workers --sweep
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: S3Tokenizer $s3_version tokens -> dump/s3_$s3_version/<split>/s3_tokens.scp"
  if [ "$s3_model" = demo ]; then
    s3_model=exp/s3/demo_$s3_version.onnx
    launch job 5 make_demo_s3 -- python -m stok.bin.make_demo_s3 --version $s3_version --output $s3_model
  fi
  for s in $splits; do
    launch dump 5 s3_tokens.$s -- stok.bin.dump_s3 --model $s3_model --version $s3_version $s3_opts $dump_opts \
      --data_dir data/$s --output_dir dump/s3_$s3_version/$s
    export_shar 5 dump/s3_$s3_version/$s
  done
fi

log "Done: stages $stage to $stop_stage of $recipe"
