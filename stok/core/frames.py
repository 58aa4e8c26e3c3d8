"""THE frame-alignment rule between teacher features (stage 1) and codec frames (SpeechTokenizer training).

Defined once here and used by the feature dump (``stok.models.teacher``), the trainer's data loader
(``stok.train.data``) and its online teacher (``stok.train.online_teacher``).

The rule, at hop ``H`` (320 samples: 50 Hz at 16 kHz):

1. **Codec frames.** An utterance (or crop) of ``n`` samples has ``codec_frames(n) = ceil(n / H)`` frames:
   the SEANet encoder pads the input to a multiple of the hop, so frame ``k`` covers samples
   ``[k*H, (k+1)*H)``.
2. **Teacher rows of a whole utterance.** Teacher frame ``k`` is taken to describe the same samples
   ``[k*H, (k+1)*H)``. HuBERT's conv front end (receptive field 400, stride 320, no padding) gives
   ``floor((n - 400) / 320) + 1`` frames, about one fewer than the codec; MFCC at hop 320 gives another count.
   ``align_teacher(feats, codec_frames(n))`` makes the count exact: extra rows at the end are dropped,
   missing rows are filled by **repeating the last row**. Stage 1 applies it before writing, so a dumped
   ``feats.scp`` entry of an ``n``-sample utterance has exactly ``codec_frames(n)`` rows.
3. **Crops.** A training crop of ``m`` samples starting at sample ``s`` uses teacher rows
   ``floor(s / H) .. floor(s / H) + codec_frames(m) - 1`` of the utterance's (aligned) features
   (``crop_teacher``); rows past the end are again filled by repeating the last row.
   Crops that start on a multiple of ``H`` (the trainer draws them so) line up exactly with the codec frames.

The functions work on numpy arrays and torch tensors, along the first axis, for features ``[T, D]`` and
labels ``[T]`` alike. An empty input cannot be padded (there is no last row) and raises ``ValueError``.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

HOP = 320  # samples per codec/teacher frame: 50 Hz at 16 kHz
SAMPLE_RATE = 16000

Array = Union[np.ndarray, torch.Tensor]


def codec_frames(num_samples: int, hop: int = HOP) -> int:
    """Frames of ``num_samples`` samples: ``ceil(num_samples / hop)`` (0 for 0 samples)."""
    num_samples, hop = int(num_samples), int(hop)
    if num_samples < 0 or hop <= 0:
        raise ValueError(f"codec_frames: need num_samples >= 0 and hop > 0, got {num_samples}, {hop}")
    return -(-num_samples // hop)


def hubert_frames(num_samples: int) -> int:
    """Frames HuBERT/wav2vec2's conv front end gives for ``num_samples`` samples (0 if shorter than 400)."""
    num_samples = int(num_samples)
    return 0 if num_samples < 400 else (num_samples - 400) // 320 + 1


def _repeat_last(feats: Array, extra: int) -> Array:
    if torch.is_tensor(feats):
        tail = feats[-1:].expand((extra,) + tuple(feats.shape[1:]))
        return torch.cat([feats, tail], dim=0)
    tail = np.repeat(feats[-1:], extra, axis=0)
    return np.concatenate([feats, tail], axis=0)


def align_teacher(feats: Array, num_frames: int) -> Array:
    """``feats`` cut or padded (repeating the last row) along axis 0 to exactly ``num_frames`` rows."""
    num_frames = int(num_frames)
    if num_frames < 0:
        raise ValueError(f"align_teacher: num_frames must be >= 0, got {num_frames}")
    have = int(feats.shape[0])
    if have >= num_frames:
        return feats[:num_frames]
    if have == 0:
        raise ValueError(f"align_teacher: no teacher frames to pad to {num_frames}")
    return _repeat_last(feats, num_frames - have)


def crop_teacher(feats: Array, start_sample: int, num_frames: int, hop: int = HOP) -> Array:
    """Teacher rows for a crop starting at sample ``start_sample`` spanning ``num_frames`` codec frames.

    Rows ``floor(start_sample / hop)`` .. ``+ num_frames - 1``; rows past the end repeat the last row
    (a crop that starts past the last row uses the last row throughout).
    """
    start_sample = int(start_sample)
    if start_sample < 0:
        raise ValueError(f"crop_teacher: start_sample must be >= 0, got {start_sample}")
    if int(feats.shape[0]) == 0:
        raise ValueError("crop_teacher: no teacher frames")
    first = min(start_sample // int(hop), int(feats.shape[0]) - 1)
    return align_teacher(feats[first:], num_frames)
