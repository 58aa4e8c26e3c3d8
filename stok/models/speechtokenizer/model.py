"""SpeechTokenizer: SEANet encoder, 8-layer RVQ (layer 1 distilled from a semantic teacher), SEANet decoder.

Shapes, for a hop of ``H = prod(strides)`` samples (320: 50 Hz at 16 kHz)::

    wav [B, 1, T] --encoder--> z [B, dimension, F = ceil(T / H)] --RVQ--> codes [n_q, B, F]
    sum of code vectors --decoder--> recon [B, 1, F * H]
    transform(RVQ layer-1 output) -> semantic [B, F, semantic_dimension]

**Batches.** With ``lengths`` (samples per item) the batch is length-aware: the convolutions pad each item
from its own samples and the LSTMs run on packed sequences, so no item reads another item's padding; frames
past an item's ``ceil(length / H)`` get code 0 from ``encode`` and the waveform past its ``frames * H`` samples
is zero. That batched path is what ``forward`` (training, validation) always runs, and what ``encode`` and
``decode`` run on GPU. It gives each item its single-item result up to float rounding only: MKL, oneDNN, cuBLAS
and cuDNN sum in a different order for different batch shapes, and a ~1e-7 difference flips a code where two
codes are that close (53 of 29,520 codes in one CPU run of ``bench/st_encode.py``). So on CPU, ``encode`` and
``decode`` run the items of a batch one at a time by default (:attr:`SpeechTokenizer.exact_batches`): the
codes are then exactly the single-item codes, and it costs nothing there (on 2 CPU cores the padded batch was
slower than items one by one; the batch-1 LSTM kernel is several times faster per item).

**Compared with the public ``speechtokenizer`` package** (same state dict; bitwise the same codes for a single
item, see :mod:`~stok.models.speechtokenizer.conv` for the weight norm):

- ``forward`` changes the codebooks only when training with gradients (k-means init, EMA, dead codes; see
  :mod:`~stok.models.speechtokenizer.rvq`); eval-mode ``forward``, ``encode`` and ``decode`` never do.
- ``decode(codes, first_layer=i)`` reads ``codes[j]`` as RVQ layer ``i + j`` and sums the code vectors, so
  ``decode(encode(x)[i:], first_layer=i)`` decodes the part of the latent that layers ``i..`` carry. (The
  package's ``encode(st=i)`` quantizes the raw encoder output with layers ``i..`` instead of the residual,
  which is not what those layers were trained on; here ``encode`` always starts at layer 0.)

**Memory** grows with the input (~17 MB per second of audio to encode, ~20 MB to decode, at the released size on
CPU): for long utterances use :mod:`~stok.models.speechtokenizer.long_audio` (what ``stok-dump-codes`` and
``stok-decode`` do above 60 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import nn

from stok.models.speechtokenizer.config import SpeechTokenizerConfig
from stok.models.speechtokenizer.conv import length_mask
from stok.models.speechtokenizer.rvq import ResidualVectorQuantizer
from stok.models.speechtokenizer.seanet import SEANetDecoder, SEANetEncoder


@dataclass
class STOutput:
    recon: torch.Tensor  # [B, 1, F * hop]
    commit_loss: torch.Tensor  # scalar
    semantic: torch.Tensor  # [B, F, semantic_dimension]: transform(RVQ layer-1 output)
    codes: torch.Tensor  # [n_q, B, F] int64


class SpeechTokenizer(nn.Module):
    def __init__(self, cfg: SpeechTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SEANetEncoder(cfg)
        self.quantizer = ResidualVectorQuantizer(cfg)
        self.transform = (nn.Linear(cfg.dimension, cfg.semantic_dimension)
                          if cfg.dimension != cfg.semantic_dimension else nn.Identity())
        self.decoder = SEANetDecoder(cfg)
        #: on CPU, ``encode``/``decode`` run batch items one at a time (exactly the single-item result);
        #: False runs the padded batch there too (on GPU it always does)
        self.exact_batches = True

    @property
    def hop(self) -> int:
        return self.cfg.hop

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    def frames(self, lengths: Union[torch.Tensor, int]) -> Union[torch.Tensor, int]:
        """Frames of ``lengths`` samples: ``ceil(lengths / hop)``."""
        return -(-lengths // self.hop)

    def forward(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> STOutput:
        """``wav [B, 1, T]`` (or ``[B, T]``), ``lengths [B]`` samples (None: all ``T``). Always the batched path."""
        wav, lengths = self._inputs(wav, lengths)
        z, frames = self.encoder(wav, lengths)
        mask = None if frames is None else length_mask(frames, z.shape[-1])
        q = self.quantizer(z, mask)
        semantic = self.transform(q.first.transpose(1, 2))
        recon = self._decode_latent(q.quantized, frames)
        return STOutput(recon, q.commit_loss, semantic, q.codes)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None, n_q: Optional[int] = None
               ) -> torch.Tensor:
        """Codes ``[n_q, B, ceil(T / hop)]`` int64 of RVQ layers ``0 .. n_q - 1`` (default all); code 0 past
        an item's ``frames(lengths)``. Never changes the codebooks."""
        wav, lengths = self._inputs(wav, lengths)
        if not self._one_by_one(wav, lengths):
            z, frames = self.encoder(wav, lengths)
            mask = None if frames is None else length_mask(frames, z.shape[-1])
            return self.quantizer.encode(z, mask, n_q)
        out = None
        for b, n in enumerate(lengths.tolist()):
            z, _ = self.encoder(wav[b:b + 1, :, :n])
            codes = self.quantizer.encode(z, None, n_q)
            if out is None:
                out = codes.new_zeros(codes.shape[0], wav.shape[0], self.frames(wav.shape[-1]))
            out[:, b:b + 1, : codes.shape[-1]] = codes
        return out

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, first_layer: int = 0, lengths: Optional[torch.Tensor] = None
               ) -> torch.Tensor:
        """``codes [n_q, B, F]`` of RVQ layers ``first_layer .. first_layer + n_q - 1`` -> ``wav [B, 1, F * hop]``.

        ``lengths``: frames per item (None: all ``F``); output past an item's ``lengths * hop`` is zero."""
        if codes.dim() != 3:
            raise ValueError(f"decode: codes must be [n_q, B, frames], got shape {tuple(codes.shape)}")
        codes = codes.long()
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.cfg.codebook_size:
            raise ValueError(f"decode: codes must lie in [0, {self.cfg.codebook_size}), got [{lo}, {hi}]")
        if lengths is not None:
            lengths = self._check_lengths(lengths, codes.shape[1], codes.shape[-1], codes.device, "frames")
        if not self._one_by_one(codes, lengths):
            return self._decode_latent(self.quantizer.decode(codes, first_layer), lengths)
        out = None
        for b, f in enumerate(lengths.tolist()):
            wav = self._decode_latent(self.quantizer.decode(codes[:, b:b + 1, :f], first_layer), None)
            if out is None:
                out = wav.new_zeros(codes.shape[1], 1, codes.shape[-1] * self.hop)
            out[b:b + 1, :, : wav.shape[-1]] = wav
        return out

    def _one_by_one(self, x: torch.Tensor, lengths: Optional[torch.Tensor]) -> bool:
        return self.exact_batches and lengths is not None and x.device.type == "cpu" and lengths.numel() > 1

    def _decode_latent(self, latent: torch.Tensor, frames: Optional[torch.Tensor]) -> torch.Tensor:
        recon, samples = self.decoder(latent, frames)
        if samples is not None:
            recon = recon.masked_fill(~length_mask(samples, recon.shape[-1])[:, None, :], 0.0)
        return recon

    def _inputs(self, wav: torch.Tensor, lengths: Optional[torch.Tensor]
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if wav.dim() == 2:
            wav = wav[:, None, :]
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"SpeechTokenizer expects mono audio [B, 1, T] or [B, T], got shape {tuple(wav.shape)}")
        if lengths is not None:
            lengths = self._check_lengths(lengths, wav.shape[0], wav.shape[-1], wav.device, "samples")
        return wav, lengths

    @staticmethod
    def _check_lengths(lengths: torch.Tensor, batch: int, width: int, device: torch.device, unit: str
                       ) -> torch.Tensor:
        lengths = torch.as_tensor(lengths, device=device).long()
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must be [B] = [{batch}], got shape {tuple(lengths.shape)}")
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > width:
            raise ValueError(f"lengths ({unit}) must lie in [1, {width}], got [{lo}, {hi}]")
        return lengths
