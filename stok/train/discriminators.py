"""Discriminators of the SpeechTokenizer trainer: multi-period (MPD), multi-scale (MSD), multi-scale STFT (MS-STFT).

Architectures as in the released trainer (HiFi-GAN's MPD and MSD, EnCodec's MS-STFT):

- MPD: one 2-D conv stack per period (2, 3, 5, 7, 11) over the waveform folded to ``[T / p, p]``
  (reflect-padded to a multiple of p); channels 32, 128, 512, 1024, 1024, kernel (5, 1), stride (3, 1) then 1,
  a (3, 1) output conv; weight norm; LeakyReLU 0.1.
- MSD: three 1-D grouped conv stacks on the waveform average-pooled by 1, 2, 4; the first uses spectral norm,
  the others weight norm.
- MS-STFT: one 2-D conv stack per STFT resolution (n_fft 1024, 2048, 512, 256, 128; hop n_fft/4; Hann window
  normalised by its L2 norm), on the real and imaginary parts; 32 filters, kernels (3, 9), time dilations 1, 2, 4,
  frequency stride 2; LeakyReLU 0.2; the input conv has no weight norm, the others do. Feature maps: the
  activations of the 5 convs (MPD/MSD, as HiFi-GAN, also list their output layer).

``DiscConfig.width`` scales the MPD/MSD channel counts for small CPU runs (1.0 is the released size).
:class:`Discriminators` runs every enabled group on one batch and returns one flat list of logits and
one flat list of feature-map lists, one entry per sub-discriminator.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

Logits = List[torch.Tensor]
FeatureMaps = List[List[torch.Tensor]]


def _scaled(c: int, width: float, multiple: int) -> int:
    return max(multiple, int(round(c * width / multiple)) * multiple)


def _run_stack(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Leaky-ReLU conv stack then the output conv: (flattened logits, every layer's output)."""
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        fmap.append(x)
    x = post(x)
    fmap.append(x)
    return x.flatten(1), fmap


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, width: float = 1.0, kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        chans = [1] + [_scaled(c, width, 4) for c in (32, 128, 512, 1024, 1024)]
        layers = []
        for i in range(5):
            s = stride if i < 4 else 1
            layers.append(weight_norm(nn.Conv2d(chans[i], chans[i + 1], (kernel_size, 1), (s, 1),
                                                padding=(kernel_size // 2, 0))))
        self.convs = nn.ModuleList(layers)
        self.post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), mode="reflect")
        x = x.view(b, c, -1, self.period)
        return _run_stack(self.convs, self.post, x)


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), width: float = 1.0):
        super().__init__()
        self.discriminators = nn.ModuleList([PeriodDiscriminator(p, width) for p in periods])

    def forward(self, x: torch.Tensor) -> Tuple[Logits, FeatureMaps]:
        outs = [d(x) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class ScaleDiscriminator(nn.Module):
    # (out channels, kernel, stride, groups) of the released stack
    SPEC = [(128, 15, 1, 1), (128, 41, 2, 4), (256, 41, 2, 16), (512, 41, 4, 16),
            (1024, 41, 4, 16), (1024, 41, 1, 16), (1024, 5, 1, 1)]

    def __init__(self, width: float = 1.0, use_spectral_norm: bool = False):
        super().__init__()
        norm = spectral_norm if use_spectral_norm else weight_norm
        layers, cin = [], 1
        for cout, k, s, g in self.SPEC:
            cout = _scaled(cout, width, 16)
            layers.append(norm(nn.Conv1d(cin, cout, k, s, padding=k // 2, groups=g)))
            cin = cout
        self.convs = nn.ModuleList(layers)
        self.post = norm(nn.Conv1d(cin, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        return _run_stack(self.convs, self.post, x)


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, scales: int = 3, width: float = 1.0):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [ScaleDiscriminator(width, use_spectral_norm=(i == 0)) for i in range(scales)])
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, x: torch.Tensor) -> Tuple[Logits, FeatureMaps]:
        logits, fmaps = [], []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.pool(x)
            lg, fm = d(x)
            logits.append(lg)
            fmaps.append(fm)
        return logits, fmaps


class STFTDiscriminator(nn.Module):
    #: run the convs on channels-last activations: on CPU, oneDNN runs these few-channel 2-D convs ~1.4x faster
    #: (forward and backward; bench/st_train_vs_released.py) than in NCHW; the same convolutions, values equal to
    #: float rounding (tests/test_train_speedups.py)
    channels_last = True

    def __init__(self, filters: int = 32, n_fft: int = 1024, hop: int = 256, max_filters: int = 1024,
                 kernel: Tuple[int, int] = (3, 9), dilations: Sequence[int] = (1, 2, 4), stride: Tuple[int, int] = (1, 2)):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        window = torch.hann_window(n_fft)
        self.register_buffer("window", window / window.pow(2).sum().sqrt(), persistent=False)
        pad = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
        f = min(filters, max_filters)
        convs = [nn.Conv2d(2, f, kernel, padding=pad)]
        for d in dilations:
            convs.append(weight_norm(nn.Conv2d(f, f, kernel, stride=stride, dilation=(d, 1),
                                               padding=((kernel[0] - 1) * d // 2, (kernel[1] - 1) // 2))))
        sq = (kernel[0], kernel[0])
        convs.append(weight_norm(nn.Conv2d(f, f, sq, padding=(sq[0] // 2, sq[1] // 2))))
        self.convs = nn.ModuleList(convs)
        self.post = weight_norm(nn.Conv2d(f, 1, sq, padding=(sq[0] // 2, sq[1] // 2)))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        spec = torch.stft(x.squeeze(1).float(), self.n_fft, self.hop, self.n_fft, window=self.window,
                          center=False, return_complex=True)  # [B, F, frames]
        z = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3).to(x.dtype)  # [B, 2, frames, F]
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        fmap = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), 0.2)
            fmap.append(z)
        return self.post(z), fmap  # as EnCodec: the logits are not a feature map here


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, filters: int = 32, n_ffts: Sequence[int] = (1024, 2048, 512, 256, 128), hops=None):
        super().__init__()
        hops = list(hops) if hops else [n // 4 for n in n_ffts]
        self.discriminators = nn.ModuleList([STFTDiscriminator(filters, n, h) for n, h in zip(n_ffts, hops)])

    def forward(self, x: torch.Tensor) -> Tuple[Logits, FeatureMaps]:
        outs = [d(x) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class Discriminators(nn.Module):
    """All enabled discriminator groups; ``forward(x [B,1,T]) -> (logits, fmaps)`` flattened over groups."""

    def __init__(self, cfg):
        super().__init__()
        groups = {}
        if cfg.mpd:
            groups["mpd"] = MultiPeriodDiscriminator(cfg.mpd_periods, cfg.width)
        if cfg.msd:
            groups["msd"] = MultiScaleDiscriminator(cfg.msd_scales, cfg.width)
        if cfg.mstft:
            groups["mstft"] = MultiScaleSTFTDiscriminator(cfg.mstft_filters, cfg.mstft_n_ffts, cfg.mstft_hops)
        self.groups = nn.ModuleDict(groups)

    def names(self) -> List[str]:
        """One name per sub-discriminator, in output order (e.g. ``mpd_p2``, ``msd_s0``, ``mstft_1024``)."""
        out = []
        for g, mod in self.groups.items():
            for i, d in enumerate(mod.discriminators):
                tag = {"mpd": lambda: f"p{d.period}", "msd": lambda: f"s{i}", "mstft": lambda: f"{d.n_fft}"}[g]()
                out.append(f"{g}_{tag}")
        return out

    def forward(self, x: torch.Tensor) -> Tuple[Logits, FeatureMaps]:
        logits, fmaps = [], []
        for mod in self.groups.values():
            lg, fm = mod(x)
            logits += lg
            fmaps += fm
        return logits, fmaps
