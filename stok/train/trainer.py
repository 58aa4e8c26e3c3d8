"""The SpeechTokenizer training loop (stage 3): GAN training of the codec with semantic distillation.

One step (as the released trainer): generator forward; discriminator update on (real, detached fake);
generator update on mel + time L1 + commitment + distillation + adversarial + feature matching, with the
discriminators frozen. Then both LR schedulers step and the optional weight EMA is updated.

What the released trainer lacks and this one has: full-state resume that continues step for step
(discriminators, epoch, data position, RNG of every rank), gradient clipping, bf16/fp16 autocast on GPU,
weight EMA, NaN/inf steps skipped (all ranks agree; the generator's buffers, e.g. codebooks, are restored)
with a counter, masked losses for padded items, unreadable audio skipped, codebook usage and perplexity
per RVQ layer in TensorBoard, keep-last-N and best-by-dev-mel checkpoints, DDP via ``torchrun``.

DDP details: the generator and the discriminators are each wrapped in DDP; buffers are synchronised at
construction only (the quantizer all-reduces its own EMA statistics). The discriminator update goes through its DDP wrapper; in the
generator update the discriminators are called unwrapped with their parameters frozen, so no gradient is computed
or reduced for them there. Validation runs on rank 0; the other ranks wait at a barrier.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from stok.core.distributed import DistInfo
from stok.core.errors import UserError
from stok.train import losses as L
from stok.train.checkpoint import CheckpointManager, get_rng_state, load_checkpoint, set_rng_state
from stok.train.config import TrainConfig
from stok.train.data import (Batch, CropDataset, DevDataset, ShardedBatchSampler, collate, holdout_split,
                             make_train_loader, read_utterances)
from stok.train.discriminators import Discriminators
from stok.train.preflight import check_exp_dir, check_teacher, tidy_logs

log = logging.getLogger("stok.train")


@dataclass
class Paths:
    exp_dir: str
    data_dir: str
    dev_dir: Optional[str] = None
    teacher_scp: Optional[str] = None
    dev_teacher_scp: Optional[str] = None


class GeneratorModule(nn.Module):
    """The SpeechTokenizer plus the trainer's optional k-means head (a Linear on the semantic output)."""

    def __init__(self, model: nn.Module, semantic_dim: int, n_units: int = 0):
        super().__init__()
        self.model = model
        self.head = nn.Linear(semantic_dim, n_units) if n_units else None

    def forward(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        out = self.model(wav, lengths=lengths)
        return {"recon": out.recon, "commit": out.commit_loss, "semantic": out.semantic, "codes": out.codes,
                "logits": self.head(out.semantic) if self.head is not None else None}


def lr_lambda(step: int, total: int, warmup: int, kind: str, floor: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _LRLambda:
    """Picklable schedule function (LambdaLR keeps only its state, but keep it clean)."""

    def __init__(self, total, warmup, kind, floor):
        self.args = (total, warmup, kind, floor)

    def __call__(self, step):
        return lr_lambda(step, *self.args)


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


class Trainer:
    def __init__(self, cfg: TrainConfig, paths: Paths, dist_info: Optional[DistInfo] = None,
                 max_steps: Optional[int] = None, resume: bool = False, show_progress: bool = True):
        self.cfg, self.paths = cfg, paths
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.show_progress = show_progress and self.dist.is_main
        # every check (exp dir, resume config, data, model, teacher) passes before anything is written
        check_exp_dir(paths.exp_dir, cfg.to_dict(), resume)
        self.sr, self.hop = cfg.data.sample_rate, cfg.data.hop

        torch.manual_seed(cfg.sched.seed)
        np.random.seed(cfg.sched.seed % 2**32)
        import random

        random.seed(cfg.sched.seed)

        # data
        self._build_data()

        # models
        from stok.models.speechtokenizer import SpeechTokenizer

        self.model_cfg = cfg.model_config()
        n_units = cfg.loss.n_units if cfg.loss.distill_type == "kmeans" else 0
        gen = GeneratorModule(SpeechTokenizer(self.model_cfg), self.model_cfg.semantic_dimension, n_units)
        self.gen = gen.to(self.device)
        self.disc = Discriminators(cfg.disc).to(self.device)
        self.mel = L.MelLoss(cfg.loss, self.sr).to(self.device)
        self.online_teacher = None
        if cfg.teacher.source == "online":
            from stok.train.online_teacher import OnlineTeacher

            self.online_teacher = OnlineTeacher(cfg.teacher, self.sr, self.hop, self.device)
        check_teacher(self, n_units)

        # optimisation
        o = cfg.optim
        opt_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        self.opt_g = opt_cls(self.gen.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.opt_d = opt_cls(self.disc.parameters(), lr=o.disc_lr or o.lr, betas=tuple(o.betas),
                             weight_decay=o.weight_decay)
        self.total_steps = max_steps or cfg.sched.max_steps or cfg.sched.epochs * self.sampler.batches_per_epoch()
        sched_fn = _LRLambda(self.total_steps, o.warmup_steps, o.scheduler, o.min_lr_ratio)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, sched_fn)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, sched_fn)
        self.amp_dtype = None
        if o.amp != "none":
            if self.device.type != "cuda":
                log.warning("optim.amp=%s is for GPUs; training in fp32 on %s", o.amp, self.device)
            else:
                self.amp_dtype = torch.bfloat16 if o.amp == "bf16" else torch.float16
        use_scaler = self.amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.ema = None
        if o.ema_decay:
            self.ema = copy.deepcopy(_unwrap(self.gen).model).eval()
            for p in self.ema.parameters():
                p.requires_grad_(False)

        # DDP
        self.gen_ddp, self.disc_ddp = self.gen, self.disc
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # buffers are synchronised once at construction, not at every forward: the quantizer all-reduces
            # its own EMA statistics, and spectral-norm vectors evolve identically on every rank
            import inspect

            sync = ({"forward_sync_buffers": False}
                    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                    else {"broadcast_buffers": False})
            self.gen_ddp = nn.parallel.DistributedDataParallel(self.gen, device_ids=ids, **sync)
            self.disc_ddp = nn.parallel.DistributedDataParallel(self.disc, device_ids=ids, **sync)

        # state
        self.step = 0
        self.position = (0, 0)  # (epoch, next batch index in the epoch)
        self.best_dev_mel = float("inf")
        self.dev_history: List[Dict[str, float]] = []
        self.nan_skips = 0
        self.amp_overflows = 0
        self.audio_seconds = 0.0
        os.makedirs(paths.exp_dir, exist_ok=True)
        self.ckpt = CheckpointManager(os.path.join(paths.exp_dir, "checkpoints"), cfg.sched.keep_last,
                                      cfg.sched.keep_best)
        self.writer = None
        self._logged_gt = False
        resumed = self.resume() if resume else False
        if self.dist.is_main:
            tidy_logs(paths.exp_dir, self.step if resumed else None)
        self.sampler.start = self.position
        if self.dist.is_main:
            cfg.to_yaml(os.path.join(paths.exp_dir, "train_config.yaml"))

    # ------------------------------------------------------------------ data
    def _build_data(self) -> None:
        cfg, p = self.cfg, self.paths
        teacher_scp = p.teacher_scp if cfg.teacher.source != "online" else None
        if cfg.teacher.source != "online" and not teacher_scp:
            raise UserError("--teacher_scp is required (stage 1 features or stage 2 labels), "
                            "or set teacher.source: online in the config")
        utts = read_utterances(p.data_dir, teacher_scp, cfg.data.min_seconds, "train")
        dev_utts: List = []
        dev_scp = None
        if p.dev_dir:
            dev_scp = p.dev_teacher_scp if cfg.teacher.source != "online" else None
            if cfg.teacher.source != "online" and not dev_scp:
                raise UserError("--dev_dir needs --dev_teacher_scp (or an online teacher)")
            dev_utts = read_utterances(p.dev_dir, dev_scp, 0.0, "dev")
        elif cfg.data.dev_holdout:
            utts, dev_utts = holdout_split(utts, cfg.data.dev_holdout, cfg.sched.seed)
            dev_scp = teacher_scp
        if cfg.data.dev_max_utts:
            dev_utts = dev_utts[: cfg.data.dev_max_utts]
        bad = os.path.join(p.exp_dir, "bad_audio.list")
        seg = int(round(cfg.data.segment_seconds * self.sr))
        self.train_ds = CropDataset(utts, teacher_scp, seg, self.sr, self.hop, cfg.sched.seed, bad)
        self.dev_ds = DevDataset(dev_utts, dev_scp, int(round(cfg.data.dev_seconds * self.sr)), self.sr,
                                 self.hop, bad) if dev_utts else None
        self.sampler = ShardedBatchSampler(len(utts), cfg.data.batch_size, self.dist.world, self.dist.rank,
                                           cfg.sched.seed)
        if self.dist.is_main:
            log.info("train: %d utterances, %d batches per epoch (%d x %d processes); dev: %d utterances",
                     len(utts), self.sampler.batches_per_epoch(), cfg.data.batch_size, self.dist.world,
                     len(dev_utts))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        rng = get_rng_state()
        if self.dist.world > 1:
            gathered: List[Any] = [None] * self.dist.world
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        return {
            "format": "stok-speechtokenizer-train-1",
            "step": self.step, "epoch": self.position[0], "batch_in_epoch": self.position[1],
            "generator": _unwrap(self.gen).state_dict(),
            "discriminators": _unwrap(self.disc).state_dict(),
            "optim_g": self.opt_g.state_dict(), "optim_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": gathered, "world": self.dist.world,
            "best_dev_mel": self.best_dev_mel, "dev_history": self.dev_history,
            "nan_skips": self.nan_skips, "audio_seconds": self.audio_seconds,
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, st: Dict[str, Any]) -> None:
        _unwrap(self.gen).load_state_dict(st["generator"])
        _unwrap(self.disc).load_state_dict(st["discriminators"])
        self.opt_g.load_state_dict(st["optim_g"])
        self.opt_d.load_state_dict(st["optim_d"])
        self.sched_g.load_state_dict(st["sched_g"])
        self.sched_d.load_state_dict(st["sched_d"])
        self.scaler_g.load_state_dict(st["scaler_g"])
        self.scaler_d.load_state_dict(st["scaler_d"])
        if self.ema is not None:
            if st.get("ema") is not None:
                self.ema.load_state_dict(st["ema"])
            else:
                self.ema.load_state_dict(_unwrap(self.gen).model.state_dict())
        self.step = int(st["step"])
        self.position = (int(st["epoch"]), int(st["batch_in_epoch"]))
        self.best_dev_mel = float(st["best_dev_mel"])
        self.dev_history = list(st.get("dev_history", []))
        self.nan_skips = int(st["nan_skips"])
        self.audio_seconds = float(st.get("audio_seconds", 0.0))
        rngs = st["rng"]
        if len(rngs) == self.dist.world:
            set_rng_state(rngs[self.dist.rank])
        else:
            log.warning("checkpoint was written by %d processes, this run has %d: RNG states not restored",
                        len(rngs), self.dist.world)

    def resume(self) -> bool:
        path = self.ckpt.latest()
        if path is None:
            if self.dist.is_main:
                log.info("--resume: no checkpoint in %s, starting from scratch", self.ckpt.dir)
            return False
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
        if self.dist.is_main:
            log.info("resumed from %s: step %d, epoch %d, batch %d", path, self.step, *self.position)
        return True

    def save(self, dev_mel: Optional[float] = None) -> Optional[str]:
        state = self.state_dict()  # every rank takes part (RNG gather)
        path = None
        if self.dist.is_main:
            path = self.ckpt.save(state, self.step, dev_mel)
        self._barrier()
        return path

    # ------------------------------------------------------------------ helpers
    def _barrier(self) -> None:
        if self.dist.world > 1:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def _all_finite(self, *tensors: torch.Tensor) -> bool:
        ok = torch.tensor(float(all(bool(torch.isfinite(t).all()) for t in tensors)), device=self.device)
        if self.dist.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _teacher(self, batch: Batch) -> torch.Tensor:
        if self.online_teacher is not None:
            return self.online_teacher(batch.wav, batch.lengths)
        return batch.teacher

    def _distill(self, semantic, logits, teacher, fmask) -> torch.Tensor:
        lc = self.cfg.loss
        if lc.distill_type == "kmeans":
            return L.kmeans_ce(logits, teacher, fmask)
        if lc.distill_type == "t_axis":
            return L.t_axis_distill(semantic, teacher, fmask, lc.lambda_sim)
        return L.d_axis_distill(semantic, teacher, fmask)

    def _clip(self, params, scaler, opt) -> torch.Tensor:
        scaler.unscale_(opt)
        max_norm = self.cfg.optim.grad_clip or float("inf")
        return torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        d = self.cfg.optim.ema_decay
        live = _unwrap(self.gen).model
        ema_p = [p for p in self.ema.parameters()]
        live_p = [p.detach() for p in live.parameters()]
        torch._foreach_lerp_(ema_p, live_p, 1.0 - d)
        for eb, lb in zip(self.ema.buffers(), live.buffers()):
            eb.copy_(lb)

    def _disc_for_generator(self, wav: torch.Tensor, recon: torch.Tensor):
        """The generator update's discriminator pass: (fake logits, real feature maps, fake feature maps).

        The discriminators are frozen and called unwrapped (no gradient computed or reduced for them). The fake
        half runs first, in training mode (a spectral-norm power iteration, as one call on the whole batch
        would do); the real half needs no gradient at all, so it runs after it under ``no_grad`` in eval mode
        (the weights just computed, no second power iteration). The backward pass then goes through the fake
        half only: half the discriminator work of one call on ``cat([real, fake])``, same values.
        """
        for p in self.disc.parameters():
            p.requires_grad_(False)
        try:
            with self._autocast():
                fake, fm_fake = self.disc(recon)
            self.disc.eval()
            try:
                with torch.no_grad(), self._autocast():
                    _, fm_real = self.disc(wav)
            finally:
                self.disc.train()
        finally:
            for p in self.disc.parameters():
                p.requires_grad_(True)
        return fake, fm_real, fm_fake

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch) -> Optional[Dict[str, float]]:
        """One G+D update; returns the logged values, or None when the step was skipped (non-finite)."""
        lc = self.cfg.loss
        self.gen_ddp.train()
        self.disc_ddp.train()
        batch = batch.to(self.device)
        wav, lengths = batch.wav, batch.lengths
        T = wav.shape[-1]
        smask = L.sample_mask(lengths, T)[:, None, :]
        teacher = self._teacher(batch)
        saved = None
        if self.cfg.sched.guard_buffers:
            saved = [b.detach().clone() for b in self._guarded_buffers()]

        # a batch of whole crops (the usual case) takes the plain path: per-item reflect padding, packed LSTMs and
        # masks compute the same values there, only slower
        gen_lengths = None if bool((lengths == T).all()) else lengths
        with self._autocast():
            out = self.gen_ddp(wav, gen_lengths)
        recon = out["recon"][..., :T]
        if recon.shape[-1] < T:
            recon = nn.functional.pad(recon, (0, T - recon.shape[-1]))
        recon = recon.float() * smask

        adversarial = self.step >= self.cfg.disc.start_step
        zero = torch.zeros((), device=self.device)
        d_loss, d_parts, gnorm_d = zero, [zero] * len(self.disc.names()), zero
        if adversarial:
            # discriminator update
            with self._autocast():
                logits, _ = self.disc_ddp(torch.cat([wav, recon.detach()], 0))
            B = wav.shape[0]
            d_loss, d_parts = L.discriminator_loss([x[:B] for x in logits], [x[B:] for x in logits], lc.adv_type)
            if not self._all_finite(d_loss, recon):
                return self._skip(saved, "discriminator loss / generator output")
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler_d.scale(d_loss).backward()
            gnorm_d = self._clip(self.disc.parameters(), self.scaler_d, self.opt_d)
            if not self._all_finite(gnorm_d):
                self.opt_d.zero_grad(set_to_none=True)
                return self._skip(saved, "discriminator gradients", scaler=self.scaler_d)
            self._step_d()  # as released: the generator update below sees the updated discriminators
        elif not self._all_finite(recon):
            return self._skip(saved, "generator output")

        fmask = L.frame_mask(lengths, out["semantic"].shape[1], self.hop)
        mel_total, mel_parts = self.mel(wav.squeeze(1), recon.squeeze(1), lengths)
        rec = L.recon_l1(wav.squeeze(1), recon.squeeze(1), smask.squeeze(1))
        commit = out["commit"].float().mean()
        distill = self._distill(out["semantic"], out["logits"], teacher, fmask)
        adv, feat = zero, zero
        if adversarial:
            fake, fm_real, fm_fake = self._disc_for_generator(wav, recon)
            adv = L.generator_adv_loss(fake, lc.adv_type)
            feat = L.feature_matching(fm_real, fm_fake, lc.feat_norm)
        g_loss = (mel_total + lc.recon_lambda * rec + lc.commit_lambda * commit + lc.distill_lambda * distill
                  + lc.adv_lambda * adv + lc.feat_lambda * feat)
        if not self._all_finite(g_loss):
            # the discriminator has stepped already; that update used finite values only
            self.opt_g.zero_grad(set_to_none=True)
            return self._skip(saved, "generator loss", d_stepped=True)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(g_loss).backward()
        gnorm_g = self._clip(self.gen.parameters(), self.scaler_g, self.opt_g)
        if not self._all_finite(gnorm_g):
            self.opt_g.zero_grad(set_to_none=True)
            return self._skip(saved, "generator gradients", d_stepped=True, scaler=self.scaler_g)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self._update_ema()
        lr_g, lr_d = self.sched_g.get_last_lr()[0], self.sched_d.get_last_lr()[0]
        self.sched_g.step()
        with warnings.catch_warnings():  # before disc.start_step the discriminators' optimiser has not stepped
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before")
            self.sched_d.step()

        vals = {"loss/generator": g_loss, "loss/discriminator": d_loss, "loss/mel": mel_total,
                "loss/mel_error": mel_parts[0], "loss/recon_l1": rec, "loss/commit": commit,
                "loss/distill": distill, "loss/adversarial": adv, "loss/feature_matching": feat,
                "grad_norm/generator": gnorm_g, "grad_norm/discriminator": gnorm_d,
                "lr/generator": lr_g, "lr/discriminator": lr_d}
        for i, m in enumerate(mel_parts):
            vals[f"loss/mel_res{i}"] = m
        for name, part in zip(self.disc.names(), d_parts):
            vals[f"loss_d/{name}"] = part
        vals = L.as_float_dict(vals)
        self._last_codes = out["codes"].detach()
        self._last_fmask = fmask
        return vals

    def _step_d(self) -> None:
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()

    def _guarded_buffers(self) -> List[torch.Tensor]:
        """Buffers a forward pass changes: codebooks (generator), spectral-norm vectors (discriminators)."""
        return list(_unwrap(self.gen).buffers()) + list(self.disc.buffers())

    def _skip(self, saved, what: str, d_stepped: bool = False, scaler=None) -> None:
        self.sched_g.step()  # the schedule follows the step counter, skipped steps included
        self.sched_d.step()
        if saved is not None:
            bufs = self._guarded_buffers()
            if d_stepped:  # keep the discriminators' buffers consistent with their (finite) update
                bufs = bufs[: len(list(_unwrap(self.gen).buffers()))]
            with torch.no_grad():
                for b, s in zip(bufs, saved):
                    b.copy_(s)
        if scaler is not None and scaler.is_enabled():
            # fp16: an overflow of the scaled gradients is routine; lower the scale, do not count it as bad data
            scaler.update()
            self.amp_overflows += 1
            log.debug("step %d: fp16 gradient overflow in %s, loss scale now %g", self.step + 1, what,
                      scaler.get_scale())
            return None
        self.nan_skips += 1
        if self.dist.is_main:
            log.warning("step %d: non-finite %s: update skipped%s (%d skipped so far)", self.step + 1, what,
                        " for the generator" if d_stepped else "", self.nan_skips)
        return None

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> Optional[Dict[str, float]]:
        """Rank 0: dev mel error (mean per utterance, resolution 0 L1), distillation, codebook usage."""
        if self.dev_ds is None or len(self.dev_ds) == 0:
            return None
        if not self.dist.is_main:
            self._barrier()
            return None
        model = self.ema if self.ema is not None else _unwrap(self.gen).model
        gen = _unwrap(self.gen)
        was_training = model.training
        model.eval()
        cb = self.model_cfg.codebook_size
        hist = None
        mel_sum, dist_sum, n_utt, n_batches = 0.0, 0.0, 0, 0
        bs = self.cfg.data.dev_batch_size
        shown = 0
        for i in range(0, len(self.dev_ds), bs):
            items = [self.dev_ds[j] for j in range(i, min(i + bs, len(self.dev_ds)))]
            batch = collate(items, self.hop)
            if batch is None:
                continue
            batch = batch.to(self.device)
            wav, lengths = batch.wav, batch.lengths
            T = wav.shape[-1]
            with self._autocast():
                out = model(wav, lengths=lengths)
            recon = out.recon[..., :T].float()
            if recon.shape[-1] < T:
                recon = nn.functional.pad(recon, (0, T - recon.shape[-1]))
            recon = recon * L.sample_mask(lengths, T)[:, None, :]
            fmask = L.frame_mask(lengths, out.semantic.shape[1], self.hop)
            for b in range(wav.shape[0]):
                n = int(lengths[b])
                l1, _ = self.mel.distance(0, wav[b:b + 1, 0, :n], recon[b:b + 1, 0, :n])
                mel_sum += float(l1)
                n_utt += 1
            teacher = self._teacher(batch)
            if self.cfg.loss.distill_type == "kmeans":
                logits = gen.head(out.semantic) if gen.head is not None else None
                dist_sum += float(L.kmeans_ce(logits, teacher, fmask))
            else:
                dist_sum += float(self._distill(out.semantic, None, teacher, fmask))
            n_batches += 1
            stats_codes = out.codes
            for layer in range(stats_codes.shape[0]):
                vals = stats_codes[layer][fmask[:, : stats_codes.shape[-1]]].long().cpu()
                h = torch.bincount(vals.reshape(-1), minlength=cb)
                if hist is None:
                    hist = torch.zeros(stats_codes.shape[0], cb, dtype=torch.long)
                hist[layer] += h[:cb]
            if self.writer is not None:
                for b in range(wav.shape[0]):
                    if shown >= self.cfg.sched.n_dev_samples:
                        break
                    self._log_sample(shown, wav[b, 0, : int(lengths[b])], recon[b, 0, : int(lengths[b])])
                    shown += 1
        self._logged_gt = self._logged_gt or shown > 0
        if was_training:
            model.train()
        res = {"dev/mel_error": mel_sum / max(1, n_utt), "dev/distill": dist_sum / max(1, n_batches)}
        if hist is not None:
            for layer, h in enumerate(hist):
                p = h.double() / max(1, int(h.sum()))
                ent = -(p[p > 0] * p[p > 0].log()).sum().item()
                res[f"codes/dev_used_layer{layer + 1}"] = float((h > 0).sum())
                res[f"codes/dev_perplexity_layer{layer + 1}"] = math.exp(ent)
        self._barrier()
        return res

    def _log_sample(self, i: int, wav: torch.Tensor, recon: torch.Tensor) -> None:
        w = self.writer
        if not self._logged_gt:
            w.add_audio(f"dev_audio/{i}_ground_truth", wav.float().cpu().clamp(-1, 1), 0, sample_rate=self.sr)
            self._add_mel_image(f"dev_mel/{i}_ground_truth", wav, 0)
        w.add_audio(f"dev_audio/{i}_reconstruction", recon.float().cpu().clamp(-1, 1), self.step, sample_rate=self.sr)
        self._add_mel_image(f"dev_mel/{i}_reconstruction", recon, self.step)

    def _add_mel_image(self, tag: str, wav: torch.Tensor, step: int) -> None:
        try:
            import PIL  # noqa: F401  (TensorBoard encodes images with Pillow)
        except ImportError:
            return
        mel = self.mel.mels[0](wav.float()[None])[0]  # [n_mels, frames]
        lo, hi = mel.min(), mel.max()
        img = ((mel - lo) / (hi - lo).clamp_min(1e-5)).flip(0)  # low frequencies at the bottom
        self.writer.add_image(tag, img[None].cpu(), step, dataformats="CHW")

    # ------------------------------------------------------------------ the loop
    def _open_writer(self) -> None:
        if self.dist.is_main and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(self.paths.exp_dir, "tensorboard"), purge_step=self.step + 1
                                        if self.step else None)

    def _record_dev(self, res: Optional[Dict[str, float]]) -> Optional[float]:
        if not self.dist.is_main or res is None:
            return None
        mel = res["dev/mel_error"]
        self.dev_history.append({"step": self.step, **res})
        if mel < self.best_dev_mel:
            self.best_dev_mel = mel
        for k, v in res.items():
            self.writer.add_scalar(k, v, self.step)
        used = " ".join(f"{int(res[k])}" for k in sorted(res) if k.startswith("codes/dev_used_layer"))
        msg = (f"step {self.step}: dev mel error {mel:.4f}, dev distill {res['dev/distill']:.4f}, "
               f"codes used per layer [{used}]")
        self._print(msg)
        with open(os.path.join(self.paths.exp_dir, "dev_log.jsonl"), "a") as f:
            f.write(json.dumps({"step": self.step, **res}) + "\n")
        return mel

    def _broadcast_float(self, value: Optional[float]) -> Optional[float]:
        if self.dist.world == 1:
            return value
        t = torch.tensor([float("nan") if value is None else value], device=self.device, dtype=torch.float64)
        dist.broadcast(t, 0)
        return None if math.isnan(t.item()) else t.item()

    def _print(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if self.show_progress:
            from tqdm import tqdm

            tqdm.write(msg)
        else:
            print(msg, flush=True)

    def train(self, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Train until ``total_steps`` (or ``stop_after`` more steps: saves a checkpoint and returns)."""
        from tqdm import tqdm

        s = self.cfg.sched
        self._open_writer()
        loader = make_train_loader(self.train_ds, self.sampler, self.cfg.data.num_workers, self.hop,
                                   seed=s.seed + 1000 * self.position[0] + self.position[1],
                                   pin_memory=self.device.type == "cuda")
        if s.valid_at_start and self.step == 0:
            self._broadcast_float(self._record_dev(self.validate()))
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.show_progress, desc="train",
                   dynamic_ncols=True)
        start_step = self.step
        window_t, window_audio, window_steps = time.time(), 0.0, 0
        last_dev_step = self.step if (s.valid_at_start and self.step == 0) else -1
        last_save_step = -1
        train_log = open(os.path.join(self.paths.exp_dir, "train_log.jsonl"), "a") if self.dist.is_main else None
        vals: Optional[Dict[str, float]] = None
        try:
            it = iter(loader)
            while self.step < self.total_steps:
                if stop_after is not None and self.step - start_step >= stop_after:
                    break
                batch = next(it)
                vals = self.train_step(batch)
                self.step += 1
                self.position = (batch.epoch + 1, 0) if batch.last_in_epoch else (batch.epoch, batch.index + 1)
                secs = float(batch.lengths.sum()) / self.sr * self.dist.world
                self.audio_seconds += secs
                window_audio += secs
                window_steps += 1
                bar.update(1)
                if self.dist.is_main and vals is not None:
                    train_log.write(json.dumps({"step": self.step, "epoch": self.position[0], **vals}) + "\n")
                    train_log.flush()
                if self.dist.is_main and (self.step % s.log_every == 0 or self.step == 1):
                    self._log_scalars(vals, window_t, window_audio, window_steps)
                    window_t, window_audio, window_steps = time.time(), 0.0, 0
                if self.dist.is_main and vals is not None and self.step % s.stdout_every == 0:
                    bar.set_postfix(g=f"{vals['loss/generator']:.3f}", mel=f"{vals['loss/mel_error']:.3f}",
                                    d=f"{vals['loss/discriminator']:.3f}", dis=f"{vals['loss/distill']:.3f}")
                dev_mel = None
                final = self.step >= self.total_steps
                if self.step % s.valid_every == 0 or final:
                    dev_mel = self._broadcast_float(self._record_dev(self.validate()))
                    last_dev_step = self.step
                if self.step % s.save_every == 0 or final:
                    self.save(dev_mel)
                    last_save_step = self.step
        finally:
            bar.close()
            if train_log is not None:
                train_log.close()
        if self.step != last_save_step and self.step > start_step:
            self.save(None)  # stopped early: the newest state is on disk
        in_sync = self.check_ranks_in_sync()
        if self.writer is not None:
            self.writer.add_scalar("train/nan_skips", self.nan_skips, self.step)
            self.writer.flush()
        return {"step": self.step, "last": vals, "dev_history": self.dev_history, "nan_skips": self.nan_skips,
                "last_dev_step": last_dev_step, "ranks_in_sync": in_sync}

    @torch.no_grad()
    def check_ranks_in_sync(self) -> bool:
        """DDP: every rank must hold the same generator and discriminator weights (checksums compared)."""
        if self.dist.world == 1:
            return True
        params = [p.detach().double().flatten() for p in list(self.gen.parameters()) + list(self.disc.parameters())]
        flat = torch.cat(params)
        w = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64).remainder_(97)
        sums = torch.stack([flat.sum(), (flat * w).sum()])
        hi, lo = sums.clone(), sums.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        ok = bool(torch.equal(hi, lo))
        if self.dist.is_main:
            if ok:
                log.info("parameters identical on all %d ranks", self.dist.world)
            else:
                log.error("parameters differ between ranks (checksums %s vs %s)", lo.tolist(), hi.tolist())
        return ok

    def _log_scalars(self, vals, window_t, window_audio, window_steps) -> None:
        w = self.writer
        if w is None:
            return
        elapsed = max(1e-9, time.time() - window_t)
        if vals is not None:
            for k, v in vals.items():
                w.add_scalar(k, v, self.step)
            if getattr(self, "_last_codes", None) is not None:
                stats = L.codebook_stats(self._last_codes, self.model_cfg.codebook_size, self._last_fmask)
                for i, (used, ppl) in enumerate(stats):
                    w.add_scalar(f"codes/train_used_layer{i + 1}", used, self.step)
                    w.add_scalar(f"codes/train_perplexity_layer{i + 1}", ppl, self.step)
        w.add_scalar("speed/audio_hours_per_hour", window_audio / elapsed, self.step)
        w.add_scalar("speed/seconds_per_step", elapsed / max(1, window_steps), self.step)
        w.add_scalar("train/nan_skips", self.nan_skips, self.step)
        w.add_scalar("train/epoch", self.position[0], self.step)
        if self.scaler_g.is_enabled():
            w.add_scalar("train/amp_overflows", self.amp_overflows, self.step)
            w.add_scalar("train/loss_scale_generator", self.scaler_g.get_scale(), self.step)

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str) -> str:
        """config.json + SpeechTokenizer.pt (released layout) from the best (or final) generator."""
        from stok.train.export import export_generator

        return export_generator(self, out_dir)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
