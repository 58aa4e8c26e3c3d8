"""Validation on the dev set (rank 0; the other ranks wait at a barrier).

The dev utterances (their first ``data.dev_seconds``, in key order, ``dev_batch_size`` at a time) go through the
generator (the EMA weights when on) in eval mode. Results: ``dev/mel_error`` (resolution-0 log-mel L1, mean per
utterance over its true samples), ``dev/distill`` (mean per batch), and per RVQ layer the number of codes used and
the perplexity over the true frames. The first ``sched.n_dev_samples`` utterances go to a sample sink (TensorBoard
audio and mel images).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
from torch import nn

from stok.core.distributed import DistInfo
from stok.train import losses as L
from stok.train import ranks
from stok.train.data import collate
from stok.train.step import fit_length, teacher_targets

#: ``sink(i, wav, recon)``: dev sample i, its audio and reconstruction over the true samples
SampleSink = Callable[[int, torch.Tensor, torch.Tensor], None]


class Validator:
    def __init__(self, dev_ds, loss_cfg, mel: nn.Module, hop: int, codebook_size: int, batch_size: int,
                 n_samples: int, info: DistInfo, autocast: Callable, online_teacher: Optional[nn.Module] = None):
        self.dev_ds, self.loss_cfg, self.mel, self.hop = dev_ds, loss_cfg, mel, hop
        self.codebook_size, self.batch_size, self.n_samples = codebook_size, batch_size, n_samples
        self.info, self.autocast, self.online_teacher = info, autocast, online_teacher

    @torch.no_grad()
    def __call__(self, model: nn.Module, head: Optional[nn.Module],
                 sink: Optional[SampleSink] = None) -> Optional[Dict[str, float]]:
        """The dev results on rank 0 (None on the other ranks, and without a dev set)."""
        if self.dev_ds is None or len(self.dev_ds) == 0:
            return None
        if not self.info.is_main:
            ranks.barrier(self.info)
            return None
        was_training = model.training
        model.eval()
        try:
            res = self._run(model, head, sink)
        finally:
            if was_training:
                model.train()
        ranks.barrier(self.info)
        return res

    def _run(self, model, head, sink) -> Dict[str, float]:
        cb, device = self.codebook_size, self.info.device
        hist = None
        mel_sum, dist_sum, n_utt, n_batches, shown = 0.0, 0.0, 0, 0, 0
        for i in range(0, len(self.dev_ds), self.batch_size):
            batch = collate([self.dev_ds[j] for j in range(i, min(i + self.batch_size, len(self.dev_ds)))], self.hop)
            if batch is None:
                continue
            batch = batch.to(device)
            wav, lengths = batch.wav, batch.lengths
            T = wav.shape[-1]
            with self.autocast():
                out = model(wav, lengths=lengths)
            recon = fit_length(out.recon, T).float() * L.sample_mask(lengths, T)[:, None, :]
            fmask = L.frame_mask(lengths, out.semantic.shape[1], self.hop)
            for b in range(wav.shape[0]):
                n = int(lengths[b])
                l1, _ = self.mel.distance(0, wav[b:b + 1, 0, :n], recon[b:b + 1, 0, :n])
                mel_sum += float(l1)
                n_utt += 1
            teacher = teacher_targets(batch, self.online_teacher)
            logits = head(out.semantic) if head is not None and self.loss_cfg.distill_type == "kmeans" else None
            dist_sum += float(L.distill_loss(self.loss_cfg, out.semantic, logits, teacher, fmask))
            n_batches += 1
            codes = out.codes
            for layer in range(codes.shape[0]):
                vals = codes[layer][fmask[:, : codes.shape[-1]]].long().cpu()
                h = torch.bincount(vals.reshape(-1), minlength=cb)
                if hist is None:
                    hist = torch.zeros(codes.shape[0], cb, dtype=torch.long)
                hist[layer] += h[:cb]
            if sink is not None:
                for b in range(wav.shape[0]):
                    if shown >= self.n_samples:
                        break
                    n = int(lengths[b])
                    sink(shown, wav[b, 0, :n], recon[b, 0, :n])
                    shown += 1
        res = {"dev/mel_error": mel_sum / max(1, n_utt), "dev/distill": dist_sum / max(1, n_batches)}
        if hist is not None:
            for layer, h in enumerate(hist):
                p = h.double() / max(1, int(h.sum()))
                ent = -(p[p > 0] * p[p > 0].log()).sum().item()
                res[f"codes/dev_used_layer{layer + 1}"] = float((h > 0).sum())
                res[f"codes/dev_perplexity_layer{layer + 1}"] = math.exp(ent)
        return res
