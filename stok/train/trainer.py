"""The SpeechTokenizer training loop (stage 3): GAN training of the codec with semantic distillation.

:class:`Trainer` builds the run and wires small collaborators, none of which sees the trainer itself:

- :mod:`~stok.train.data` the crops, teacher frames and the resumable sampler;
- :mod:`~stok.train.step` one GAN step (:class:`~stok.train.step.GanStep`: D update, G update against the
  updated D, non-finite steps skipped on every rank with the buffers restored);
- :mod:`~stok.train.optim` optimisers, schedules, autocast, grad scalers; :mod:`~stok.train.ema` weight EMA;
- :mod:`~stok.train.state` counters, full-state checkpoints, resume (step for step, RNG of every rank);
- :mod:`~stok.train.validation` the dev pass; :mod:`~stok.train.reporting` TensorBoard, jsonl logs, progress;
- :mod:`~stok.train.ranks` DDP and the decisions ranks take together; :mod:`~stok.train.signals` a clean stop
  on SIGTERM/SIGUSR1 (checkpoint, then exit status 75 for a requeue);
- :mod:`~stok.train.export` the released ``config.json`` + ``SpeechTokenizer.pt``.

DDP: the generator and the discriminators are each wrapped (buffers synchronised at construction only; the
quantizer all-reduces its own EMA statistics). The discriminator update goes through its wrapper; in the generator
update the discriminators are called unwrapped and frozen. Validation runs on rank 0; the others wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from stok.core.distributed import DistInfo
from stok.core.errors import UserError
from stok.train import losses as L
from stok.train import ranks, signals
from stok.train.config import TrainConfig
from stok.train.data import (CropDataset, DevDataset, ShardedBatchSampler, holdout_split, make_train_loader,
                             read_utterances)
from stok.train.discriminators import Discriminators
from stok.train.ema import WeightEMA
from stok.train.optim import Optimisers
from stok.train.preflight import check_exp_dir, check_teacher, tidy_logs
from stok.train.reporting import Reporter
from stok.train.state import Checkpointer, TrainState
from stok.train.step import GanStep, GeneratorModule
from stok.train.validation import Validator

log = logging.getLogger("stok.train")


@dataclass
class Paths:
    exp_dir: str
    data_dir: str
    dev_dir: Optional[str] = None
    teacher_scp: Optional[str] = None
    dev_teacher_scp: Optional[str] = None


def build_data(cfg: TrainConfig, paths: Paths, info: DistInfo):
    """(train dataset, dev dataset or None, sampler) of a run; every data check happens here."""
    online = cfg.teacher.source == "online"
    teacher_scp = paths.teacher_scp if not online else None
    if not online and not teacher_scp:
        raise UserError("--teacher_scp is required (stage 1 features or stage 2 labels), "
                        "or set teacher.source: online in the config")
    utts = read_utterances(paths.data_dir, teacher_scp, cfg.data.min_seconds, "train")
    dev_utts: Any = []
    dev_scp = None
    if paths.dev_dir:
        dev_scp = paths.dev_teacher_scp if not online else None
        if not online and not dev_scp:
            raise UserError("--dev_dir needs --dev_teacher_scp (or an online teacher)")
        dev_utts = read_utterances(paths.dev_dir, dev_scp, 0.0, "dev")
    elif cfg.data.dev_holdout:
        utts, dev_utts = holdout_split(utts, cfg.data.dev_holdout, cfg.sched.seed)
        dev_scp = teacher_scp
    if cfg.data.dev_max_utts:
        dev_utts = dev_utts[: cfg.data.dev_max_utts]
    sr, hop = cfg.data.sample_rate, cfg.data.hop
    bad = os.path.join(paths.exp_dir, "bad_audio.list")
    train_ds = CropDataset(utts, teacher_scp, int(round(cfg.data.segment_seconds * sr)), sr, hop, cfg.sched.seed, bad)
    dev_ds = DevDataset(dev_utts, dev_scp, int(round(cfg.data.dev_seconds * sr)), sr, hop, bad) if len(dev_utts) \
        else None
    sampler = ShardedBatchSampler(len(utts), cfg.data.batch_size, info.world, info.rank, cfg.sched.seed)
    if info.is_main:
        log.info("train: %d utterances (index %.1f MB), %d batches per epoch (%d x %d processes); dev: %d utterances",
                 len(utts), train_ds.utts.nbytes / 2**20, sampler.batches_per_epoch(), cfg.data.batch_size, info.world,
                 len(dev_utts))
    return train_ds, dev_ds, sampler


class Trainer:
    def __init__(self, cfg: TrainConfig, paths: Paths, dist_info: Optional[DistInfo] = None,
                 max_steps: Optional[int] = None, resume: bool = False, show_progress: bool = True):
        self.cfg, self.paths = cfg, paths
        self.info = info = dist_info or DistInfo()
        self.device = info.device
        # every check (exp dir, resume config, data, model, teacher) passes before anything is written
        check_exp_dir(paths.exp_dir, cfg.to_dict(), resume)
        self.sr, self.hop = cfg.data.sample_rate, cfg.data.hop
        torch.manual_seed(cfg.sched.seed)
        np.random.seed(cfg.sched.seed % 2**32)
        random.seed(cfg.sched.seed)
        self.train_ds, self.dev_ds, self.sampler = build_data(cfg, paths, info)

        # models (built in this order: the seeded initial weights depend on it)
        from stok.models.speechtokenizer import SpeechTokenizer

        self.model_cfg = cfg.model_config()
        n_units = cfg.loss.n_units if cfg.loss.distill_type == "kmeans" else 0
        self.gen = GeneratorModule(SpeechTokenizer(self.model_cfg), self.model_cfg.semantic_dimension,
                                   n_units).to(self.device)
        self.disc = Discriminators(cfg.disc).to(self.device)
        self.mel = L.MelLoss(cfg.loss, self.sr).to(self.device)
        self.online_teacher = None
        if cfg.teacher.source == "online":
            from stok.train.online_teacher import OnlineTeacher

            self.online_teacher = OnlineTeacher(cfg.teacher, self.sr, self.hop, self.device)
        check_teacher(cfg.teacher.source, self.model_cfg.semantic_dimension, n_units, self.online_teacher,
                      (self.train_ds, self.dev_ds))

        # optimisation, EMA, DDP
        self.total_steps = max_steps or cfg.sched.max_steps or cfg.sched.epochs * self.sampler.batches_per_epoch()
        self.optim = Optimisers(cfg.optim, self.gen.parameters(), self.disc.parameters(), self.total_steps,
                                self.device)
        self.ema = WeightEMA(self.gen.model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
        self.gen_ddp, self.disc_ddp = ranks.wrap_ddp(self.gen, info), ranks.wrap_ddp(self.disc, info)

        # collaborators
        self.state = TrainState()
        self.gan = GanStep(cfg, self.gen, self.disc, self.gen_ddp, self.disc_ddp, self.mel, self.optim, self.ema,
                           self.state, info, self.online_teacher)
        self.validator = Validator(self.dev_ds, cfg.loss, self.mel, self.hop, self.model_cfg.codebook_size,
                                   cfg.data.dev_batch_size, cfg.sched.n_dev_samples, info, self.optim.autocast,
                                   self.online_teacher)
        os.makedirs(paths.exp_dir, exist_ok=True)
        self.checkpointer = Checkpointer(paths.exp_dir, cfg.sched.keep_last, cfg.sched.keep_best, info,
                                         cfg.to_dict(), self.gen, self.disc, self.optim, self.ema, self.state)
        self.reporter = Reporter(paths.exp_dir, info, cfg.sched.log_every, cfg.sched.stdout_every, self.sr,
                                 self.model_cfg.codebook_size, self.mel.mels[0], show_progress)
        resumed = self.checkpointer.resume() if resume else False
        if info.is_main:
            tidy_logs(paths.exp_dir, self.state.step if resumed else None)
            signals.clear_marker(paths.exp_dir)
            cfg.to_yaml(os.path.join(paths.exp_dir, "train_config.yaml"))
        self.sampler.start = self.state.position

    # ------------------------------------------------------------------ the run's counters
    @property
    def step(self) -> int:
        return self.state.step

    @step.setter
    def step(self, value: int) -> None:
        self.state.step = value

    @property
    def position(self):
        return self.state.position

    @property
    def nan_skips(self) -> int:
        return self.state.nan_skips

    @property
    def dev_history(self) -> List[Dict[str, float]]:
        return self.state.dev_history

    @property
    def best_dev_mel(self) -> float:
        return self.state.best_dev_mel

    # ------------------------------------------------------------------ steps, validation, checkpoints
    def train_step(self, batch) -> Optional[Dict[str, float]]:
        """One G+D update; returns the logged values, or None when the step was skipped (non-finite)."""
        return self.gan(batch)

    def validate(self) -> Optional[float]:
        """Validate (rank 0), record and report the result; the dev mel on every rank (None without a dev set)."""
        model = self.ema.model if self.ema is not None else self.gen.model
        res = self.validator(model, self.gen.head, self.reporter.dev_sample_sink(self.state.step))
        mel = None
        if res is not None:
            mel = self.state.add_dev(res)
            self.reporter.dev(self.state, res)
        return ranks.broadcast_float(self.info, mel)

    def save(self, dev_mel: Optional[float] = None) -> Optional[str]:
        return self.checkpointer.save(dev_mel)

    def check_ranks_in_sync(self) -> bool:
        """DDP: every rank must hold the same generator and discriminator weights (checksums compared)."""
        return ranks.parameters_in_sync(self.info, (self.gen, self.disc))

    # ------------------------------------------------------------------ the loop
    def train(self, stop_after: Optional[int] = None, stop: Optional[signals.StopSignals] = None) -> Dict[str, Any]:
        """Train until ``total_steps``, or ``stop_after`` more steps, or a SIGTERM/SIGUSR1 seen by any rank (caught
        by ``stop``, already active, e.g. since before the trainer was built; default: caught while training);
        an early stop saves a checkpoint (result ``stopped``: the signal's name)."""
        s, st, rep = self.cfg.sched, self.state, self.reporter
        rep.start(st.step, self.total_steps)
        loader = make_train_loader(self.train_ds, self.sampler, self.cfg.data.num_workers, self.hop,
                                   seed=s.seed + 1000 * st.position[0] + st.position[1],
                                   pin_memory=self.device.type == "cuda")
        start_step, last_save_step, stopped, vals = st.step, -1, None, None
        last_dev_step = -1
        if s.valid_at_start and st.step == 0:
            self.validate()
            last_dev_step = 0
        try:
            with (contextlib.nullcontext(stop) if stop is not None else signals.StopSignals()) as stop:
                it = iter(loader)
                while st.step < self.total_steps:
                    if stop_after is not None and st.step - start_step >= stop_after:
                        break
                    stopped = stop.agreed(self.info)
                    if stopped:
                        break
                    batch = next(it)
                    vals = self.gan(batch)
                    secs = float(batch.lengths.sum()) / self.sr * self.info.world
                    st.advance(batch.epoch, batch.index, batch.last_in_epoch, secs)
                    rep.step(st, vals, secs, self.gan.last_codes, self.gan.last_fmask,
                             self.optim.scaler_g.get_scale() if self.optim.scaler_g.is_enabled() else None)
                    dev_mel = None
                    final = st.step >= self.total_steps
                    if st.step % s.valid_every == 0 or final:
                        dev_mel = self.validate()
                        last_dev_step = st.step
                    if st.step % s.save_every == 0 or final:
                        self.save(dev_mel)
                        last_save_step = st.step
                del it
        finally:
            rep.stop()
        path = None
        if st.step != last_save_step and st.step > start_step:
            path = self.save(None)  # stopped early: the newest state is on disk
        if stopped and self.info.is_main:
            marker = signals.write_marker(self.paths.exp_dir, st.step, stopped,
                                          path or self.checkpointer.manager.latest())
            log.warning("%s: stopped after step %d with its checkpoint saved (%s); resume with --resume",
                        stopped, st.step, marker)
        in_sync = self.check_ranks_in_sync()
        rep.final(st)
        return {"step": st.step, "last": vals, "dev_history": st.dev_history, "nan_skips": st.nan_skips,
                "last_dev_step": last_dev_step, "ranks_in_sync": in_sync, "stopped": stopped}

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str) -> str:
        """config.json + SpeechTokenizer.pt (released layout) from the best (or final) generator."""
        from stok.train.export import export_generator

        final = self.ema.model if self.ema is not None else self.gen.model
        return export_generator(out_dir, self.checkpointer.manager, self.cfg.sched.export_from, self.cfg.model,
                                final, self.state.step, self.ema is not None)

    def close(self) -> None:
        self.reporter.close()
