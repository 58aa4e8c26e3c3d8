"""Where a recipe's work runs: on this machine, or as Slurm jobs (ESPnet's ``cmd.sh`` idea, in Python).

A recipe's ``conf/cmd.sh`` picks the launcher and holds the Slurm resources (:mod:`~stok.launch.settings`); run.sh
hands every step of a stage to ``python -m stok.bin.launch`` (:mod:`stok.bin.launch`), which

- ``local``: runs it here exactly as run.sh always did (``python -m`` or ``torchrun --standalone``);
- ``slurm``: writes an sbatch script (:mod:`~stok.launch.scripts`), submits it and waits
  (:mod:`~stok.launch.slurm`, :mod:`~stok.launch.runner`): a dump becomes ``--nj`` shard jobs (a job array with no
  process group between them, each resumable alone; one cancelled, preempted or out of time is resubmitted alone)
  and one ``--merge_only`` job; training becomes one job of ``torchrun`` on every node of the allocation
  (:mod:`~stok.launch.node`), warned by SIGUSR1 before its time limit, requeued, and resumed.

This package imports nothing heavier than the standard library and :mod:`stok.core` (no torch): it starts in a
fraction of a second on a login node.
"""
