"""Online teacher: compute the distillation targets inside the training step instead of reading a dump.

At scale a feature dump is impractical (LibriSpeech 960 h of HuBERT base features at 50 Hz is ~530 GB in
float32), so ``teacher.source: online`` runs the stage 1 teacher (``stok.models.teacher.build_teacher``:
HuBERT with ``teacher.online_checkpoint`` and ``online_layer``, or the weight-free MFCC teacher; more stage 1
options such as ``dtype`` or ``frontend`` go in ``teacher.online_opts``) on the padded batch, frozen, under
``torch.no_grad``, on the training device.

Each item's features are computed on its true samples only (the teacher's own batching rule keeps batched and
one-at-a-time features equal), then aligned to the codec frames with the shared rule of
:mod:`stok.core.frames` (``align_teacher``: pad by repeating the last row or truncate to
``codec_frames(length)``), and zero-padded to the batch's frame count (the loss masks padded frames).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from stok.core.frames import align_teacher, codec_frames

log = logging.getLogger("stok.train")


def teacher_settings(cfg):
    """The stage 1 teacher settings of a ``teacher:`` section (``online_kind``, ``online_checkpoint``,
    ``online_layer``, and any other teacher setting under ``online_opts``), named as written there in errors."""
    from stok.models.teacher import TeacherSettings

    opts = dict(cfg.online_opts or {})
    aliases = {"teacher": "online_kind", "checkpoint": "online_checkpoint", "layer": "online_layer"}
    values = {"online_kind": cfg.online_kind}
    if cfg.online_checkpoint:
        values["online_checkpoint"] = cfg.online_checkpoint
    if cfg.online_kind == "hubert":
        values["online_layer"] = cfg.online_layer
    for key, value in opts.items():
        if key in aliases:  # online_opts: {layer: ...} wins over online_layer
            values[aliases[key]] = value
        else:
            values[f"online_opts.{key}"] = value
    for name in TeacherSettings._fields():
        aliases.setdefault(name, f"online_opts.{name}")
    return TeacherSettings.from_dict(values, prefix="teacher", aliases=aliases)


def _build(cfg, device: torch.device):
    from stok.models.teacher import build_teacher

    return build_teacher(teacher_settings(cfg), device)


class OnlineTeacher(nn.Module):
    def __init__(self, cfg, sample_rate: int, hop: int, device: torch.device, teacher=None):
        super().__init__()
        self.sample_rate, self.hop = sample_rate, hop
        self.teacher = teacher if teacher is not None else _build(cfg, device)
        if hasattr(self.teacher, "eval"):
            self.teacher.eval()
        for p in (self.teacher.parameters() if hasattr(self.teacher, "parameters") else ()):
            p.requires_grad_(False)
        self.device = device

    def train(self, mode: bool = True):  # the teacher stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``wav [B, 1, T]`` -> ``[B, codec_frames(T), D]`` float targets (zeros past each item's frames)."""
        if wav.dim() == 3:
            wav = wav[:, 0]
        B, T = wav.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=wav.device)
        feats, feat_lens = self._extract(wav, lengths)
        frames = codec_frames(T, self.hop)
        out = torch.zeros(B, frames, feats[0].shape[-1], device=wav.device)
        for b in range(B):
            n = codec_frames(int(lengths[b]), self.hop)
            f = feats[b][: int(feat_lens[b])] if feat_lens is not None else feats[b]
            out[b, :n] = align_teacher(f.float(), n).to(out.device)
        return out

    def _extract(self, wav: torch.Tensor, lengths: torch.Tensor):
        t = self.teacher
        fn = getattr(t, "extract", None) or t
        res = fn(wav, lengths)
        if isinstance(res, (tuple, list)) and len(res) == 2 and torch.is_tensor(res[0]) and res[0].dim() == 3:
            return res[0], res[1]
        if torch.is_tensor(res) and res.dim() == 3:
            return res, None
        if isinstance(res, (tuple, list)) and all(torch.is_tensor(r) and r.dim() == 2 for r in res):
            return list(res), None
        raise TypeError(f"online teacher returned {type(res).__name__}; expected [B, T, D] features "
                        f"(optionally with lengths) or a list of [T, D]")
