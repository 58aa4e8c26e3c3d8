"""Long audio (more than one window of mel frames): overlapping windows, exact token counts.

An utterance of L > W mel frames (W = 3000, 30 s) is cut into windows starting every H frames
(H = 2600, an overlap of 4 s). W, H and (W - H) / 2 are multiples of the model's stride s
(frames per token), so window k's j-th token is the global token k*H/s + j. Each window keeps the
tokens between the middles of its overlaps with its neighbours; the first keeps from token 0 and
the last up to the end. The kept ranges tile [0, N) exactly, N = ceil(ceil(L / s1) / 2), the count a
single pass over the whole utterance would give: no token is lost or repeated at any length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from stok.models.s3.config import S3Config


@dataclass(frozen=True)
class Window:
    start: int  # first mel frame
    end: int  # one past the last mel frame
    keep_from: int  # first kept token, local to the window
    keep_to: int  # one past the last kept token, local to the window
    offset: int  # global index of the window's first kept token


def plan_windows(mel_len: int, cfg: S3Config) -> List[Window]:
    """Windows of one utterance (a single window when it fits)."""
    w, h, s = cfg.window_frames, cfg.hop_frames, cfg.stride
    total = cfg.token_count(mel_len)
    if mel_len <= w:
        return [Window(0, mel_len, 0, total, 0)]
    count = 1 + -(-(mel_len - w) // h)
    half = (w - h) // 2
    out = []
    for k in range(count):
        start = k * h
        end = min(start + w, mel_len)
        first = start // s
        lo = 0 if k == 0 else (start + half) // s
        hi = total if k == count - 1 else (start + h + half) // s
        out.append(Window(start, end, lo - first, hi - first, lo))
    assert out[-1].end == mel_len and sum(x.keep_to - x.keep_from for x in out) == total
    return out
