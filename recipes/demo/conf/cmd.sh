# recipes/demo: where run.sh's work runs (ESPnet's cmd.sh). run.sh sources this file after conf/corpus.sh,
# and the command line overrides both:  bash run.sh --recipe recipes/demo --launcher slurm --nj 2
#   local: every step runs on this machine (python -m; torchrun --standalone for --nj CPU or --ngpu GPU processes).
#   slurm: every step is a Slurm job (sbatch) and run.sh waits for it. A dump (stages 1, 2 labels, 4, 5) is --nj
#          shard jobs (one job array, no process group: each shard resumes alone) and one merge job; stage 3 is
#          one job of torchrun on slurm_nodes nodes, warned slurm_signal_seconds before its time limit, when it
#          checkpoints and is requeued to resume. A job cancelled alone, preempted, out of time or lost with its
#          node is resubmitted alone; a failed one stops run.sh with the end of its log. Logs and sbatch scripts:
#          exp/log/stage<N>/. Stop a Slurm run by stopping run.sh (Ctrl-C): it cancels its jobs.
# The demo's jobs are small: 2 CPUs and 4 GB each, 30 minutes.
# begin options
launcher=local                   # local (this machine) or slurm (sbatch jobs; run.sh waits for them)
slurm_partition=""               # partition of every job ("": the cluster's default)
slurm_time=30:00                 # time limit per job: MM, HH:MM:SS or D-HH:MM:SS ("": the partition's default)
slurm_mem=4G                     # memory per job (per node in stage 3), e.g. 16G ("": the cluster's default)
slurm_cpus=2                     # CPUs per job (per node in stage 3)
slurm_gpus=auto                  # GPUs per job (per node in stage 3): N, TYPE:N, or auto: with --ngpu > 0 one per dump shard or GPU step and --train_nj per training node, else none
slurm_nodes=1                    # stage 3: nodes of the training job (torchrun --nnodes, c10d rendezvous at the first node)
slurm_opts=""                    # more sbatch options for every job, e.g. "--account=myproj --qos=normal"
slurm_retries=3                  # times a job cancelled alone, preempted, out of time or lost with its node is resubmitted (it resumes)
slurm_signal_seconds=300         # stage 3: SIGUSR1 this long before the time limit: checkpoint, requeue, resume (0: none)
slurm_stage0=""                  # stage 0 (data preparation): KEY=VALUE overrides of the above (partition time mem cpus gpus opts)
slurm_stage1=""                  # stage 1 (teacher features) overrides, e.g. "gpus=1 mem=32G"
slurm_stage2=""                  # stage 2 (k-means learning, labels) overrides
slurm_stage3=""                  # stage 3 (training) overrides, e.g. "nodes=2 gpus=8 time=2-00:00:00"
slurm_stage4=""                  # stage 4 (codes, decoding, evaluation) overrides
slurm_stage5=""                  # stage 5 (S3Tokenizer tokens) overrides
# end options
