"""Exact batched HuBERT feature extraction.

**Why batching needs care.** HuBERT base normalises the output of its first conv layer with a GroupNorm that
has one group per channel, i.e. statistics over the *whole utterance*; zero padding in a batch changes them,
so the usual batched call gives different features for padded items. Large/xlarge use a per-frame LayerNorm,
which padding does not disturb, but they normalise the waveform (zero mean, unit variance over the
utterance), which must not see padding either.

**What we do.** Each utterance (or chunk, below) goes through the waveform normalisation and the conv front end
on its own true samples; the conv features are then padded into one batch and the transformer runs once with
a key-padding mask (padded frames zeroed before the positional convolution, as an unpadded run sees zeros past
the end; padded keys excluded from attention with a boolean mask). Every operation after the front end either
acts frame by frame or is masked, so the valid frames equal a one-at-a-time run up to float rounding
(tests: max abs difference <= 1e-4 in fp32, base and large). ``frontend="batched"`` instead runs the conv
front end on the padded batch with the GroupNorm statistics computed over each item's valid frames only
(also exact; faster on GPUs with many short items); ``auto`` uses it on CUDA and the per-item loop on CPU.

**CPU kernels.** ``fast_cpu=True`` (default) on CPU in float32: the conv front end and the positional convolution
run through :mod:`stok.models.hubert.cpu_kernels` and the transformer's Linear layers with prepacked oneDNN weights
(:mod:`stok.models.packed_linear`; the extractor turns its model's Linear layers into ``PackedLinear`` in place,
same parameters). Same products, other summation orders: features agree with torchaudio's to float32 rounding
(<= 1e-4 at full size, tests/test_cpu_fast_paths.py). ``fast_cpu=False`` runs torchaudio's own modules.
With ``dtype="bfloat16"`` on CPU the fast path multiplies the transformer's Linear layers in bfloat16 (fp32
accumulation, float32 results: residual stream, LayerNorm, attention and the conv front end stay fp32), fast where
the CPU has bfloat16 dot products (``stok.models.cpu_isa``); without ``fast_cpu`` (and on GPUs) it is autocast.

**Frames.** Chunk or utterance of ``n >= 400`` samples -> ``floor((n - 400) / 320) + 1`` frames (frame k covers
samples ``[320k, 320k + 400)``). Items shorter than 400 samples are zero-padded to 400 (one frame). Alignment to
codec frames (``ceil(n / 320)``) is the caller's (:func:`stok.core.frames.align_teacher`).

**Layers.** ``layer=L`` (1-based, as fairseq's ``output_layer``): the output of transformer layer L, without the
final LayerNorm of pre-LN (large/xlarge) models, exactly what fairseq's ``extract_features(output_layer=L)``
returns; layers after L are not run. ``layer="avg"``: the mean of the L+1 hidden states that Hugging Face's
``HubertModel(output_hidden_states=True)`` returns: state 0 is the transformer input (after the positional
convolution, and for post-LN base after the encoder LayerNorm: exactly what enters layer 1), states 1..L the
layer outputs, where for pre-LN models the last one has the final LayerNorm applied (HF's convention). For
HuBERT base that is the mean of all 13 states, the teacher of the released SpeechTokenizer.

**Long files.** ``max_chunk`` samples (default 1,600,000 = 100 s, fairseq's ``max_chunk``): a longer input is cut
into nearly equal chunks of at most ``max_chunk`` samples (a tail too short for a frame, under 400 samples, joins
the last chunk) whose starts are multiples of 320 and which overlap by 80 samples, so that chunk j yields exactly the frames of the whole file at those positions and the concatenation
has the same frame count as an unchunked run (fairseq's plain slicing loses a frame per chunk boundary). Each
chunk is its own item (own GroupNorm statistics, attention within the chunk), as in fairseq; the waveform
normalisation of large models is over the whole file, as in fairseq. ``max_chunk=0`` processes every input
whole. Nothing is truncated: every sample contributes to exactly the frames it would whole. The chunks of a
file longer than ``max_chunk`` go through the model one at a time (:meth:`HubertExtractor.extract_blocks`), apart
from the other inputs of the batch, so memory is bounded by one chunk whatever the file's length (the features
of the whole file are the output); inputs of one chunk are batched together as above.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from stok.models.hubert import LoadedHubert
from stok.models.hubert.configs import ConfigError
from stok.models.hubert.cpu_kernels import FastFrontend, FastPosConv
from stok.models.packed_linear import use_packed_linears

RECEPTIVE_FIELD = 400
HOP = 320
DEFAULT_MAX_CHUNK = 1_600_000
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_layer(layer: Union[int, str], num_layers: int, what: str = "--layer") -> Union[int, str]:
    """``"avg"`` or a 1-based layer number in ``1..num_layers`` (``"9"`` -> 9); errors name the setting ``what``."""
    if isinstance(layer, str):
        if layer.strip().lower() == "avg":
            return "avg"
        try:
            layer = int(layer)
        except ValueError:
            raise ConfigError(f"{what} must be a number (1-based) or avg, got {layer!r}") from None
    if not 1 <= int(layer) <= num_layers:
        raise ConfigError(f"{what} {layer} is out of range: this model has layers 1..{num_layers} (or avg)")
    return int(layer)


def chunk_bounds(n: int, max_chunk: int) -> List[Tuple[int, int]]:
    """Sample ranges ``[start, end)`` covering ``n`` samples (see module docstring, *Long files*)."""
    if max_chunk <= 0 or n <= max_chunk:
        return [(0, n)]
    if max_chunk < 2 * RECEPTIVE_FIELD:
        raise ValueError(f"max_chunk must be at least {2 * RECEPTIVE_FIELD} samples (or 0 for whole files)")
    overlap = RECEPTIVE_FIELD - HOP  # 80 samples: chunk j's last frame needs them
    step = max(HOP, (max_chunk - overlap) // HOP * HOP)  # chunk = step + 80 <= max_chunk
    k = math.ceil((n - overlap) / step)
    step = max(HOP, math.ceil((n - overlap) / k / HOP) * HOP)  # nearly equal chunks, still <= the first step
    bounds = []
    start = 0
    while start < n:
        end = min(n, start + step + overlap)
        if n - (start + step) < RECEPTIVE_FIELD:  # the rest would make no frame: this chunk takes it
            end = n
        bounds.append((start, end))
        if end == n:
            break
        start += step
    return bounds


def conv_frames(n: int) -> int:
    return 0 if n < RECEPTIVE_FIELD else (n - RECEPTIVE_FIELD) // HOP + 1


class HubertExtractor:
    """Features of one layer or the layer average, batched exactly (see module docstring)."""

    def __init__(self, loaded: LoadedHubert, layer: Union[int, str] = "avg", normalize: Optional[bool] = None,
                 max_chunk: int = DEFAULT_MAX_CHUNK, dtype: Union[str, torch.dtype] = "float32",
                 frontend: str = "auto", fast_cpu: bool = True):
        self.loaded = loaded
        self.model = loaded.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.config = loaded.config
        self.num_layers = len(self.model.encoder.transformer.layers)
        self.layer = parse_layer(layer, self.num_layers)
        if normalize is None:
            from stok.models.hubert.configs import default_normalize

            normalize = loaded.normalize if loaded.normalize is not None else default_normalize(self.config)
        self.normalize = bool(normalize)
        self.max_chunk = int(max_chunk)
        if self.max_chunk and self.max_chunk < 2 * RECEPTIVE_FIELD:
            raise ConfigError(f"max_chunk must be 0 (whole files) or at least {2 * RECEPTIVE_FIELD} samples")
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        if frontend not in ("auto", "per_item", "batched"):
            raise ValueError("frontend must be auto, per_item or batched")
        self.frontend = frontend
        self.dim = self.config["encoder_embed_dim"]
        self.set_fast_cpu(fast_cpu)
        fe = self.model.feature_extractor
        self._fast_frontend = FastFrontend(fe) if FastFrontend.supports(fe) else None
        self._fast_pos = FastPosConv(self.model.encoder.transformer.pos_conv_embed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_fast_cpu(self, enabled: bool) -> "HubertExtractor":
        """The CPU kernels (see module docstring) on or off; off, the model is torchaudio's modules again."""
        self.fast_cpu = bool(enabled)
        compute = torch.bfloat16 if self.dtype == torch.bfloat16 else torch.float32
        use_packed_linears(self.model.encoder, self.fast_cpu, compute_dtype=compute)
        return self

    def to(self, device) -> "HubertExtractor":
        self.model.to(device)
        return self

    # ------------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.dtype == torch.float32 or self._fast(self.device):
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _fast(self, device: torch.device) -> bool:
        """The CPU kernels run: fp32, or bfloat16 products in the Linear layers (module docstring)."""
        return self.fast_cpu and device.type == "cpu" and self.dtype in (torch.float32, torch.bfloat16)

    def _frontend_per_item(self, chunks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if self._fast_frontend is not None and self._fast(chunks[0].device):
            return [self._fast_frontend(c) for c in chunks]
        fe = self.model.feature_extractor
        return [fe(c[None], None)[0][0] for c in chunks]

    def _frontend_batched(self, chunks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The conv stack on the padded batch; a GroupNorm uses each item's valid frames only."""
        lengths = torch.tensor([c.numel() for c in chunks], device=chunks[0].device)
        x = torch.nn.utils.rnn.pad_sequence(list(chunks), batch_first=True)[:, None]  # [B, 1, T]
        for block in self.model.feature_extractor.conv_layers:
            x = block.conv(x)
            lengths = torch.div(lengths - block.kernel_size, block.stride, rounding_mode="floor") + 1
            norm = block.layer_norm
            if isinstance(norm, torch.nn.GroupNorm):  # statistics over each item's valid frames only
                for i, n in enumerate(lengths.tolist()):
                    x[i:i + 1, :, :n] = norm(x[i:i + 1, :, :n])
            elif norm is not None:
                x = norm(x)
            x = F.gelu(x)
        x = x.transpose(1, 2)  # [B, T, C]
        return [x[i, : int(n)] for i, n in enumerate(lengths.tolist())]

    def _transformer(self, feats: List[torch.Tensor]) -> torch.Tensor:
        """Padded [B, T, D] output (layer L or avg) of the transformer on per-item conv features."""
        enc = self.model.encoder
        lengths = torch.tensor([f.shape[0] for f in feats], device=feats[0].device)
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        x = enc.feature_projection(x)
        B, T, _ = x.shape
        pad = torch.arange(T, device=x.device)[None] >= lengths[:, None]  # [B, T] True at padding
        mask = None
        if bool(pad.any()):
            x = x.masked_fill(pad[..., None], 0.0)
            mask = (~pad)[:, None, None, :].expand(B, 1, T, T)  # boolean: True = may attend
        tr = enc.transformer
        if self._fast(x.device):  # tr._preprocess with the fast positional convolution (dropout: eval)
            x = x + self._fast_pos(x)
            if tr.layer_norm_first:
                x = tr.layer_norm(x)
        else:
            x = tr._preprocess(x)  # + positional conv; LayerNorm here for post-LN (base)
        layers = tr.layers
        if self.layer == "avg":
            total = x.float()
            for i, layer in enumerate(layers):
                x, _ = layer(x, mask)
                if i == len(layers) - 1 and not tr.layer_norm_first:  # pre-LN model: HF's last state has the final LN
                    total = total + tr.layer_norm(x).float()
                else:
                    total = total + x.float()
            return total / (len(layers) + 1)
        for layer in layers[: self.layer]:
            x, _ = layer(x, mask)
        return x.float()

    def _prepare(self, w: torch.Tensor) -> torch.Tensor:
        """A 1-D waveform on the model's device, float32, zero-padded to one frame, normalised if asked."""
        w = w.to(device=self.device, dtype=torch.float32).reshape(-1)
        if w.numel() < RECEPTIVE_FIELD:
            w = F.pad(w, (0, RECEPTIVE_FIELD - w.numel()))
        return F.layer_norm(w, w.shape) if self.normalize else w

    def _run(self, chunks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Features ``[conv_frames(n), D]`` of prepared inputs, batched as one."""
        with self._autocast():
            batched = self.frontend == "batched" or (self.frontend == "auto" and chunks[0].device.type == "cuda")
            feats = self._frontend_batched(chunks) if batched else self._frontend_per_item(chunks)
            out = self._transformer(feats)
        return [out[j, : f.shape[0]] for j, f in enumerate(feats)]

    @torch.no_grad()
    def extract(self, waves: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Features ``[conv_frames(n), D]`` float32 (on the model's device) for 1-D waveforms at 16 kHz."""
        if not len(waves):
            return []
        prepared = [self._prepare(w) for w in waves]
        whole = [i for i, w in enumerate(prepared) if len(chunk_bounds(w.numel(), self.max_chunk)) == 1]
        out: List[Optional[torch.Tensor]] = [None] * len(waves)
        if whole:
            for i, f in zip(whole, self._run([prepared[i] for i in whole])):
                out[i] = f
        for i, w in enumerate(prepared):
            if out[i] is None:  # longer than max_chunk: chunk by chunk, into the output
                total = sum(conv_frames(e - s) for s, e in chunk_bounds(w.numel(), self.max_chunk))
                at = 0
                for f in self._blocks(w):
                    if out[i] is None:
                        out[i] = f.new_empty(total, f.shape[1])
                    out[i][at: at + f.shape[0]] = f
                    at += f.shape[0]
        return out

    def _blocks(self, w: torch.Tensor) -> Iterator[torch.Tensor]:
        for s, e in chunk_bounds(w.numel(), self.max_chunk):
            yield self._run([w[s:e]])[0]

    @torch.no_grad()
    def extract_blocks(self, wave: torch.Tensor) -> Iterator[torch.Tensor]:
        """The features of one waveform as :meth:`extract` gives them, chunk by chunk (``max_chunk``): consecutive
        ``[frames, D]`` blocks whose concatenation is ``extract([wave])[0]``."""
        w = self._prepare(wave)
        if len(chunk_bounds(w.numel(), self.max_chunk)) == 1:
            yield self._run([w])[0]
        else:
            yield from self._blocks(w)

    def extract_padded(self, padded: torch.Tensor, lengths: torch.Tensor) -> List[torch.Tensor]:
        """:meth:`extract` on a zero-padded batch ``[B, T]`` with valid lengths ``[B]``."""
        if padded.dim() == 3:
            padded = padded[:, 0]
        return self.extract([padded[i, : int(n)] for i, n in enumerate(lengths.tolist())])

    def describe(self) -> dict:
        from stok.models.hubert.configs import describe_config

        cpu_bf16 = {"cpu_precision": "linear=bf16"} if self.dtype == torch.bfloat16 and self._fast(self.device) else {}
        return {"layer": self.layer, "num_layers": self.num_layers, "dim": self.dim, "normalize": self.normalize,
                "max_chunk": self.max_chunk, "dtype": str(self.dtype).replace("torch.", ""), **cpu_bf16,
                "architecture": describe_config(self.config), "source": self.loaded.source,
                "format": self.loaded.fmt}
