"""One training step: the GAN update of generator and discriminators, with non-finite steps skipped.

As the released trainer: generator forward; discriminator update on (real, detached fake); generator update on
mel + time L1 + commitment + distillation + adversarial + feature matching against the *updated* discriminators;
then both LR schedules step and the optional weight EMA follows. Before ``disc.start_step`` the generator learns
from mel + L1 + commitment + distillation alone.

In the generator update the discriminators are frozen and called unwrapped (no weight gradients, nothing reduced
for them): the fake half runs with gradients in training mode, the real half after it under ``no_grad`` in eval
mode, so the backward pass goes through the fake half only (same values as one call on ``cat([real, fake])``).

Non-finite values (loss, generator output, gradients) skip the update on every rank together (the decision is
all-reduced); the buffers a forward pass changes (codebooks, spectral-norm vectors) are restored to their values
before the step (``sched.guard_buffers``), the schedules still step, and the skip is counted. An fp16 gradient
overflow lowers the loss scale instead (counted apart, as routine).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from stok.core.distributed import DistInfo
from stok.train import losses as L
from stok.train import ranks
from stok.train.config import TrainConfig
from stok.train.data import Batch
from stok.train.ema import WeightEMA
from stok.train.optim import Optimisers
from stok.train.state import TrainState

log = logging.getLogger("stok.train")


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


def teacher_targets(batch: Batch, online_teacher: Optional[nn.Module]) -> torch.Tensor:
    """The distillation targets of a batch: computed by the online teacher, or read with the batch."""
    if online_teacher is not None:
        return online_teacher(batch.wav, batch.lengths)
    return batch.teacher


def fit_length(recon: torch.Tensor, T: int) -> torch.Tensor:
    """The reconstruction cut or zero-padded to ``T`` samples."""
    recon = recon[..., :T]
    if recon.shape[-1] < T:
        recon = nn.functional.pad(recon, (0, T - recon.shape[-1]))
    return recon


class GanStep:
    """Runs one step on a batch; returns the logged values, or None when the step was skipped."""

    def __init__(self, cfg: TrainConfig, gen: nn.Module, disc: nn.Module, gen_ddp: nn.Module, disc_ddp: nn.Module,
                 mel: nn.Module, optim: Optimisers, ema: Optional[WeightEMA], state: TrainState, info: DistInfo,
                 online_teacher: Optional[nn.Module] = None):
        self.loss_cfg, self.start_step, self.guard = cfg.loss, cfg.disc.start_step, cfg.sched.guard_buffers
        self.hop = cfg.data.hop
        self.gen, self.disc, self.gen_ddp, self.disc_ddp = gen, disc, gen_ddp, disc_ddp
        self.mel, self.optim, self.ema, self.state, self.info = mel, optim, ema, state, info
        self.online_teacher = online_teacher
        self.last_codes: Optional[torch.Tensor] = None  # codes and frame mask of the last step (codebook stats)
        self.last_fmask: Optional[torch.Tensor] = None

    def guarded_buffers(self) -> List[torch.Tensor]:
        """Buffers a forward pass changes: codebooks (generator), spectral-norm vectors (discriminators)."""
        return list(self.gen.buffers()) + list(self.disc.buffers())

    def disc_for_generator(self, wav: torch.Tensor, recon: torch.Tensor):
        """The generator update's discriminator pass: (fake logits, real feature maps, fake feature maps)."""
        for p in self.disc.parameters():
            p.requires_grad_(False)
        try:
            with self.optim.autocast():
                fake, fm_fake = self.disc(recon)
            self.disc.eval()
            try:
                with torch.no_grad(), self.optim.autocast():
                    _, fm_real = self.disc(wav)
            finally:
                self.disc.train()
        finally:
            for p in self.disc.parameters():
                p.requires_grad_(True)
        return fake, fm_real, fm_fake

    def __call__(self, batch: Batch) -> Optional[Dict[str, float]]:
        lc, o, info = self.loss_cfg, self.optim, self.info
        self.gen_ddp.train()
        self.disc_ddp.train()
        batch = batch.to(info.device)
        wav, lengths = batch.wav, batch.lengths
        T = wav.shape[-1]
        smask = L.sample_mask(lengths, T)[:, None, :]
        teacher = teacher_targets(batch, self.online_teacher)
        saved = [b.detach().clone() for b in self.guarded_buffers()] if self.guard else None

        # a batch of whole crops (the usual case) takes the plain path: per-item reflect padding, packed LSTMs and
        # masks compute the same values there, only slower
        gen_lengths = None if bool((lengths == T).all()) else lengths
        with o.autocast():
            out = self.gen_ddp(wav, gen_lengths)
        recon = fit_length(out["recon"], T).float() * smask

        adversarial = self.state.step >= self.start_step
        zero = torch.zeros((), device=info.device)
        d_loss, d_parts, gnorm_d = zero, [zero] * len(self.disc.names()), zero
        if adversarial:
            # discriminator update
            with o.autocast():
                logits, _ = self.disc_ddp(torch.cat([wav, recon.detach()], 0))
            B = wav.shape[0]
            d_loss, d_parts = L.discriminator_loss([x[:B] for x in logits], [x[B:] for x in logits], lc.adv_type)
            if not ranks.all_finite(info, d_loss, recon):
                return self._skip(saved, "discriminator loss / generator output")
            o.opt_d.zero_grad(set_to_none=True)
            o.scaler_d.scale(d_loss).backward()
            gnorm_d = o.clip(self.disc.parameters(), o.scaler_d, o.opt_d)
            if not ranks.all_finite(info, gnorm_d):
                o.opt_d.zero_grad(set_to_none=True)
                return self._skip(saved, "discriminator gradients", scaler=o.scaler_d)
            o.scaler_d.step(o.opt_d)  # as released: the generator update below sees the updated discriminators
            o.scaler_d.update()
        elif not ranks.all_finite(info, recon):
            return self._skip(saved, "generator output")

        fmask = L.frame_mask(lengths, out["semantic"].shape[1], self.hop)
        mel_total, mel_parts = self.mel(wav.squeeze(1), recon.squeeze(1), lengths)
        rec = L.recon_l1(wav.squeeze(1), recon.squeeze(1), smask.squeeze(1))
        commit = out["commit"].float().mean()
        distill = L.distill_loss(lc, out["semantic"], out["logits"], teacher, fmask)
        adv, feat = zero, zero
        if adversarial:
            fake, fm_real, fm_fake = self.disc_for_generator(wav, recon)
            adv = L.generator_adv_loss(fake, lc.adv_type)
            feat = L.feature_matching(fm_real, fm_fake, lc.feat_norm)
        g_loss = (mel_total + lc.recon_lambda * rec + lc.commit_lambda * commit + lc.distill_lambda * distill
                  + lc.adv_lambda * adv + lc.feat_lambda * feat)
        if not ranks.all_finite(info, g_loss):
            # the discriminator has stepped already; that update used finite values only
            o.opt_g.zero_grad(set_to_none=True)
            return self._skip(saved, "generator loss", d_stepped=True)
        o.opt_g.zero_grad(set_to_none=True)
        o.scaler_g.scale(g_loss).backward()
        gnorm_g = o.clip(self.gen.parameters(), o.scaler_g, o.opt_g)
        if not ranks.all_finite(info, gnorm_g):
            o.opt_g.zero_grad(set_to_none=True)
            return self._skip(saved, "generator gradients", d_stepped=True, scaler=o.scaler_g)
        o.scaler_g.step(o.opt_g)
        o.scaler_g.update()
        if self.ema is not None:
            self.ema.update(self.gen.model)
        lr_g, lr_d = o.last_lrs()
        o.step_schedules()

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
        self.last_codes = out["codes"].detach()
        self.last_fmask = fmask
        return vals

    def _skip(self, saved, what: str, d_stepped: bool = False, scaler=None) -> None:
        self.optim.step_schedules()  # the schedule follows the step counter, skipped steps included
        if saved is not None:
            bufs = self.guarded_buffers()
            if d_stepped:  # keep the discriminators' buffers consistent with their (finite) update
                bufs = bufs[: len(list(self.gen.buffers()))]
            with torch.no_grad():
                for b, s in zip(bufs, saved):
                    b.copy_(s)
        step = self.state.step + 1
        if scaler is not None and scaler.is_enabled():
            # fp16: an overflow of the scaled gradients is routine; lower the scale, do not count it as bad data
            scaler.update()
            self.state.amp_overflows += 1
            log.debug("step %d: fp16 gradient overflow in %s, loss scale now %g", step, what, scaler.get_scale())
            return None
        self.state.nan_skips += 1
        if self.info.is_main:
            log.warning("step %d: non-finite %s: update skipped%s (%d skipped so far)", step, what,
                        " for the generator" if d_stepped else "", self.state.nan_skips)
        return None
