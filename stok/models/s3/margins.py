"""How far each S3Tokenizer token decision is from a tie: the rule for comparing tokens across runtimes.

Two runtimes (another kernel, batch shape or summation order) compute the same hidden states up to float32
rounding, so their tokens can only disagree where a decision is within rounding of a tie. ``decision_margins``
measures that distance for each token of one utterance, in float64 from the model's hidden states (windowed as
``quantize`` windows long inputs):

- VQ (v1): the gap between the squared distances of the two nearest codebook rows;
- FSQ (v2, v3): the distance of 0.999 tanh(h) to the nearest rounding boundary (+-0.5), over the 8 dimensions.

A differing token with a margin under ``NEAR_TIE`` is a near-tie (rounding's call); any other is an error.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from stok.models.s3.long_audio import plan_windows

NEAR_TIE = 1e-5


@torch.no_grad()
def decision_margins(model, mel: torch.Tensor) -> np.ndarray:
    """Margins [tokens] (float64) of ``model`` (an ``S3Tokenizer``) on one utterance's log-mel ``[n_mels, T]``."""
    out = []
    mel = mel.to(model.device)
    for w in plan_windows(mel.shape[1], model.cfg):
        hidden, _ = model.encoder(mel[None, :, w.start: w.end], torch.tensor([w.end - w.start]))
        h = hidden[0, w.keep_from: w.keep_to].double()
        q = model.quantizer
        if model.cfg.quantizer == "vq":
            x, e = F.normalize(h, dim=-1), q.codebook.double()
            dist = x.pow(2).sum(-1, keepdim=True) - 2 * x @ e.t() + e.pow(2).sum(-1)
            two = dist.topk(2, dim=-1, largest=False).values
            out.append((two[:, 1] - two[:, 0]).cpu().numpy())
        else:
            z = torch.tanh(F.linear(h, q.project_in.weight.double(), q.project_in.bias.double()))
            z = z * model.cfg.fsq_scale
            out.append((z.abs() - 0.5).abs().min(-1).values.cpu().numpy())
    return np.concatenate(out)


def classify_differences(expected: np.ndarray, got: np.ndarray, margins: np.ndarray) -> Tuple[int, int]:
    """(tokens that differ, how many of them are near-ties); a length mismatch counts every token as differing,
    none as a near-tie."""
    expected, got = np.asarray(expected), np.asarray(got)
    if len(expected) != len(got) or len(margins) != len(expected):
        return max(len(expected), len(got)), 0
    differ = np.nonzero(got != expected)[0]
    return len(differ), int((margins[differ] < NEAR_TIE).sum())
