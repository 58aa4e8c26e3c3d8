"""S3Tokenizer inference on CPU over a ragged batch: every utterance's frames are rows of one matrix, no padding.

What ``S3Tokenizer.quantize`` runs on CPU with the fast kernels (``set_fast_cpu(True)``, the default) and no
gradients. The parameters are the model's own (``stok.models.s3.encoder``); this module only computes differently:

- **No padding.** A batch of B utterances (or long-audio windows) of T_i frames is one [sum T_i, D] matrix.
  Every matrix product (the conv stem as im2col rows, q/k/v fused into one product, the output projection, the
  FFN, the VQ codebook product) runs once over all rows; attention and the FSMN memory run per utterance on
  its own rows, unmasked. Nothing is computed for padding and no utterance sees another's frames, so each
  utterance's tokens are the ones it gets alone (the reference path masks padding to the same effect).
- **Kernels.** Matrix products through oneDNN with weights reordered once into its blocked layout
  (``stok.models.packed_linear``), GELU fused into the FFN's first product and the conv stem's, the FFN's
  residual add fused into its second; the FSMN's depthwise convolution over all utterances at once, one
  multiply-add per tap (``_fsmn``); attention per utterance (two batched products
  and a softmax for short ones, oneDNN products per head for long ones), the head_dim^-0.25 scales of q and k as one
  head_dim^-0.5 (1/8 at the released size); VQ distances
  as one product with the codebook's squared norms as its bias (|x|^2, the same for every code, left out).
- **Precision** (:class:`Precision`): fp32 throughout by default. ``bf16`` (on CPUs with AVX-512 BF16 or AMX)
  runs the chosen matrix products with bfloat16 inputs and weights (fp32 accumulation inside oneDNN, bfloat16
  results), while the residual stream, LayerNorm, softmax statistics, the FSMN and the quantizer stay fp32; blocks
  listed in ``fp32_blocks`` run wholly in fp32. On a CPU without bfloat16 dot products (``stok.models.cpu_isa``)
  the same bfloat16 operands are multiplied in fp32 instead: the same values, slowly (tests on any CPU; the CLI
  refuses ``--dtype bf16`` there).

The fp32 results equal the reference path's up to summation order (float32 rounding): a token can differ only
at a near-tie (tests/test_cpu_fast_paths.py and tests/test_s3_cpu_infer.py count the margins).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from stok.models.cpu_isa import cpu_isa
from stok.models.packed_linear import packing_available, tensor_key

_linear = torch.ops.mkldnn._linear_pointwise


PARTS = ("stem", "qk", "v", "attention", "out", "fc1", "fc2")


@dataclass(frozen=True)
class Precision:
    """Which parts of the encoder run in bfloat16 (see module docstring): ``bf16`` names them among ``PARTS``:
    ``stem`` (the two conv products), per block ``qk`` (the query and key products), ``v`` (the value product),
    ``attention`` (q, k, v and the attention kernel; softmax statistics stay fp32), ``out`` (the output projection),
    ``fc1``/``fc2`` (the FFN);
    blocks in ``fp32_blocks`` (negative: from the end) run wholly in fp32. ``name`` is a label for people;
    :attr:`tag` is what fingerprints record."""

    name: str = "fp32"
    bf16: Tuple[str, ...] = field(default=())
    fp32_blocks: Tuple[int, ...] = field(default=())

    def __post_init__(self):
        unknown = set(self.bf16) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; choose among {', '.join(PARTS)}")

    def dtype(self, part: str, block: int = -1, n_blocks: int = 0) -> torch.dtype:
        """The dtype of ``part`` (in ``block`` of ``n_blocks``; the stem has no block)."""
        if part not in self.bf16 or (block >= 0 and block in {b % n_blocks for b in self.fp32_blocks}):
            return torch.float32
        return torch.bfloat16

    @property
    def tag(self) -> str:
        """The recipe in one string, e.g. ``bf16=v+out+fc1+fc2;fp32_blocks=0`` (``fp32`` when nothing is bf16)."""
        if not self.bf16:
            return "fp32"
        blocks = ":".join(str(b) for b in self.fp32_blocks) or "none"
        return f"bf16={'+'.join(p for p in PARTS if p in self.bf16)};fp32_blocks={blocks}"


FP32 = Precision()
#: --dtype bf16 on CPU, per version: chosen by measurement (bench/s3_dump.py --modes a,c,o,r prints speed and agreement;
#: AMD EPYC, 2 cores with AVX-512 BF16, full-size random weights, ``BF16_AGREEMENT`` below). v2: the query/key and FFN
#: products (the value and output products, the FSMN and the stem fp32): 1.6-1.7x the fp32 onnxruntime extractor on
#: 1-8 s utterances (1.4x on 1-30 s) with 99.47-99.62% of tokens equal to fp32 (all five products: 1.9x, 98.8%; the
#: FFN alone: 1.5x, 99.55%). v1 and v3 reach
#: 99.5% with no recipe at any useful speed (v3: 98.5% with fc2 alone at 1.2x; v1: at most 95%, with fc2 alone at
#: 1.2x), so they keep the fastest recipe, and the CLI says what it costs.
BF16 = {
    "v1_50hz": Precision("bf16", bf16=("qk", "v", "out", "fc1", "fc2")),
    "v1_25hz": Precision("bf16", bf16=("qk", "v", "out", "fc1", "fc2")),
    "v2_25hz": Precision("bf16", bf16=("qk", "fc1", "fc2")),
    "v3_25hz": Precision("bf16", bf16=("qk", "v", "out", "fc1", "fc2")),
}
#: the share of tokens equal to fp32 that ``BF16`` gave, token-weighted over four measurements (bench/s3_dump.py
#: --quick, 106 s, twice; --n 40, 662 s, twice): v1_50hz 87.5-87.6%, v1_25hz 86.9-88.1%, v2_25hz 99.47-99.62%,
#: v3_25hz 95.9-96.4%
BF16_AGREEMENT = {"v1_50hz": 0.875, "v1_25hz": 0.873, "v2_25hz": 0.9955, "v3_25hz": 0.962}
#: what --dtype bf16 should keep at least; below it the CLI warns
TARGET_AGREEMENT = 0.995


def eligible(model) -> bool:
    """Whether ``model`` (an ``S3Tokenizer``) can run here: on CPU, fp32 parameters, no gradients wanted."""
    return (model.device.type == "cpu" and model.dtype == torch.float32 and packing_available()
            and not torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
            and not torch.compiler.is_compiling())


def _im2col_weight(weight: torch.Tensor) -> torch.Tensor:
    """Conv1d kernel [out, in, k] -> [out, k * in] for rows of k consecutive frames flattened tap-major."""
    return weight.permute(0, 2, 1).reshape(weight.shape[0], -1)


def _conv_rows(x: torch.Tensor, lengths: Sequence[int], offsets: Sequence[int], stride: int, out_lengths: Sequence[int]
               ) -> torch.Tensor:
    """im2col rows of a kernel-3, padding-1 conv over each segment of ``x`` [sum L, C] alone: [sum L', 3 C]."""
    c = x.shape[1]
    zero = x.shape[0]  # index of an appended zero frame: the conv's own padding at each segment's edges
    index = []
    for n, off, m in zip(lengths, offsets, out_lengths):
        frames = torch.arange(m)[:, None] * stride + torch.arange(-1, 2)[None, :]  # [m, 3]: taps of each output
        index.append(torch.where((frames >= 0) & (frames < n), frames + off, zero).reshape(-1))
    source = torch.cat([x, x.new_zeros(1, c)])
    return source.index_select(0, torch.cat(index)).view(-1, 3 * c)


class CpuInference:
    """Runs one ``S3Tokenizer``'s encoder and quantizer on CPU over ragged batches (see module docstring).
    Packed weights are cached per precision and rebuilt when a parameter changes (``tensor_key``)."""

    def __init__(self, precision: Precision = FP32):
        self.precision = precision
        self._packs: Dict[tuple, Tuple[tuple, torch.Tensor]] = {}
        self._extra: Dict[str, Tuple[tuple, torch.Tensor]] = {}

    # ------------------------------------------------------------------ weights
    def _packed(self, name: str, dtype: torch.dtype, sources: Sequence[torch.Tensor],
                build: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = tuple(tensor_key(t) for t in sources)
        hit = self._packs.get((name, dtype))
        if hit is None or hit[0] != key:
            with torch.no_grad():
                w = build().to(dtype).contiguous()
                hit = (key, torch.ops.mkldnn._reorder_linear_weight(w))
            self._packs[(name, dtype)] = hit
        return hit[1]

    def _derived(self, name: str, sources: Sequence[torch.Tensor], build: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = tuple(tensor_key(t) for t in sources)
        hit = self._extra.get(name)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = (key, build())
            self._extra[name] = hit
        return hit[1]

    def clear(self) -> None:
        self._packs.clear()
        self._extra.clear()

    def __reduce__(self):  # copies and pickles start empty: packed weights are rebuilt on first use
        return (CpuInference, (self.precision,))

    def _linear(self, x: torch.Tensor, name: str, sources, build, bias: Optional[torch.Tensor], dtype: torch.dtype,
                act: str = "none") -> torch.Tensor:
        if dtype == torch.bfloat16 and not cpu_isa().bf16:  # emulated: the same bf16 operands, fp32 products
            w = self._derived(name + ".bf16", sources, lambda: build().bfloat16().float())
            y = F.linear(x.bfloat16().float(), w, None if bias is None else bias.bfloat16().float())
            return (F.gelu(y) if act == "gelu" else y).bfloat16()
        w = self._packed(name, dtype, sources, build)
        b = None if bias is None else (bias if dtype == torch.float32 else bias.to(dtype))
        return _linear(x.to(dtype).contiguous(), w, b, act, [], "none" if act == "gelu" else "")

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def tokens(self, model, mels: torch.Tensor, lengths: Sequence[int]) -> List[torch.Tensor]:
        """``model`` (an ``S3Tokenizer``), mels [B, n_mels, >= max(lengths)] (anything past each length is
        ignored) -> one int32 token vector per utterance."""
        enc, cfg = model.encoder, model.cfg
        s1 = cfg.conv1_stride
        lengths = [int(n) for n in lengths]
        l1 = [-(-n // s1) for n in lengths]
        l2 = [-(-n // 2) for n in l1]
        x0 = torch.cat([mels[i, :, :n].t() for i, n in enumerate(lengths)]).float()  # [sum L, n_mels]
        stem = self.precision.dtype("stem")
        rows = _conv_rows(x0, lengths, _offsets(lengths), s1, l1)
        h = self._linear(rows, "conv1", [enc.conv1.weight], lambda: _im2col_weight(enc.conv1.weight),
                         enc.conv1.bias, stem, "gelu")
        rows = _conv_rows(h, l1, _offsets(l1), 2, l2)
        x = self._linear(rows, "conv2", [enc.conv2.weight], lambda: _im2col_weight(enc.conv2.weight),
                         enc.conv2.bias, stem, "gelu").float()
        del rows, h
        offsets = _offsets(l2)
        segments = [(o, o + n) for o, n in zip(offsets, l2)]
        positions = torch.cat([torch.arange(n) for n in l2])
        rope = None
        if cfg.positions == "learned":
            if max(l2) > cfg.n_ctx:
                raise ValueError(f"{max(l2)} positions exceed the learned table ({cfg.n_ctx}); use long-audio windows")
            x += enc.positional_embedding.index_select(0, positions)
        else:
            cos, sin = enc._rope(max(l2), x.device, torch.float32)
            half = sin.shape[-1] // 2
            sin_signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)
            rope = (cos.index_select(0, positions)[:, None, :], sin_signed.index_select(0, positions)[:, None, :])
        n_blocks = len(enc.blocks)
        for i, block in enumerate(enc.blocks):
            x = self._block(i, block, x, segments, rope, lambda part, i=i: self.precision.dtype(part, i, n_blocks))
        codes = self._quantize(model, x)
        return [codes[a:b] for a, b in segments]

    def _block(self, i: int, block, x: torch.Tensor, segments, rope, dtype: Callable[[str], torch.dtype]
               ) -> torch.Tensor:
        """One block on the ragged rows ``x`` [N, D] (float32, the residual stream); ``dtype(part)`` per product."""
        attn, d = block.attn, x.shape[1]
        heads = attn.n_heads
        h = F.layer_norm(x, (d,), block.attn_ln.weight, block.attn_ln.bias, block.attn_ln.eps)
        if dtype("qk") == dtype("v"):  # one product for q, k and v
            qkv_bias = self._derived(f"qkv_bias{i}", [attn.query.bias, attn.value.bias], lambda: torch.cat(
                [attn.query.bias, torch.zeros_like(attn.query.bias), attn.value.bias]))  # the key has no bias
            qkv = self._linear(h, f"qkv{i}", [attn.query.weight, attn.key.weight, attn.value.weight],
                               lambda: torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]), qkv_bias,
                               dtype("qk"))
            qk, v = qkv[:, : 2 * d], qkv[:, 2 * d:]
        else:
            qk_bias = self._derived(f"qk_bias{i}", [attn.query.bias], lambda: torch.cat(
                [attn.query.bias, torch.zeros_like(attn.query.bias)]))
            qk = self._linear(h, f"qk{i}", [attn.query.weight, attn.key.weight],
                              lambda: torch.cat([attn.query.weight, attn.key.weight]), qk_bias, dtype("qk"))
            v = self._linear(h, f"v{i}", [attn.value.weight], lambda: attn.value.weight, attn.value.bias, dtype("v"))
        att_dtype = dtype("attention")
        n = x.shape[0]
        qk = qk.view(n, 2 * heads, -1)  # q heads, then k heads
        if rope is not None:  # q cos + rotate_half(q) sin; rotate_half(q) sin = roll(q) times sin, first half negated
            cos, sin_signed = rope
            qk = qk.float()
            qk = torch.addcmul(qk * cos, qk.roll(qk.shape[-1] // 2, -1), sin_signed)
        qk = qk.to(att_dtype)
        q, k = qk[:, :heads], qk[:, heads:]
        vh = v.to(att_dtype).view(n, heads, -1)
        att = torch.empty(n, heads, d // heads, dtype=att_dtype)
        scale = (d // heads) ** -0.5  # the reference scales q and k each by head_dim^-0.25
        for a, b in segments:
            att[a:b] = _attention(q[a:b], k[a:b], vh[a:b], scale)
        out = self._linear(att.view(n, d), f"out{i}", [attn.out.weight], lambda: attn.out.weight, attn.out.bias,
                           dtype("out"))
        if attn.fsmn_block is not None:
            out = out.float() + self._fsmn(i, attn.fsmn_block.weight, v.float().contiguous(), segments)
        x = x + out
        ln = block.mlp_ln
        h = F.layer_norm(x, (d,), ln.weight, ln.bias, ln.eps)
        fc1, fc2 = block.mlp[0], block.mlp[2]
        u = self._linear(h, f"fc1_{i}", [fc1.weight], lambda: fc1.weight, fc1.bias, dtype("fc1"), "gelu")
        if dtype("fc2") == torch.float32:
            w2 = self._packed(f"fc2_{i}", torch.float32, [fc2.weight], lambda: fc2.weight)
            return _linear.binary(u.float(), x, w2, fc2.bias, "add")  # x + (u W2^T + b2), one pass
        return x + self._linear(u, f"fc2_{i}", [fc2.weight], lambda: fc2.weight, fc2.bias, torch.bfloat16)

    def _fsmn(self, i: int, taps: torch.Tensor, v: torch.Tensor, segments) -> torch.Tensor:
        """FSMN memory plus its input, per segment (zero padding at the segment's own edges): [N, D] float32.

        All segments at once: one matrix holds them with ``pad`` zero rows before, between and after them, and the
        depthwise convolution is one multiply-add per tap over the whole matrix (a tap's weights times the matrix
        shifted by the tap). Every segment sees only its own rows and zeros, as alone; one pass per tap over
        ~1000 rows costs a fraction of a convolution call per segment (4.6x less on 2 AVX-512 cores)."""
        weights = self._derived(f"fsmn{i}", [taps], lambda: taps[:, 0, :].t().contiguous())  # [K, D]
        k, pad = weights.shape[0], (weights.shape[0] - 1) // 2
        zeros = v.new_zeros(pad, v.shape[1])
        parts = [zeros]
        for a, b in segments:
            parts += [v[a:b], zeros]
        joined = torch.cat(parts)  # segment j starts at row pad + a_j + j * pad
        m = joined.shape[0] - 2 * pad
        acc = joined[pad:pad + m].clone()  # the FSMN's input, to which the memory is added
        for t in range(k):
            acc.addcmul_(joined[t:t + m], weights[t])
        rows = torch.cat([torch.arange(a, b) + j * pad for j, (a, b) in enumerate(segments)])
        return acc.index_select(0, rows)

    def _quantize(self, model, x: torch.Tensor) -> torch.Tensor:
        q = model.quantizer
        if model.cfg.quantizer == "vq":
            xn = F.normalize(x, p=2.0, dim=-1)
            e = q.codebook
            norms = self._derived("codebook_norms", [e], lambda: e.float().pow(2).sum(-1))
            dist = self._linear(xn, "codebook", [e], lambda: -2.0 * e.float(), norms, torch.float32)
            return dist.argmin(dim=-1).to(torch.int32)
        return q(x)


#: up to this many frames attention runs as two batched products over the heads and a softmax; longer, one
#: oneDNN product per head (``_attention_per_head``). Measured on 2 AVX-512 cores (AMD EPYC, fp32, 20 heads of 64):
#: torch's batched products run in MKL; with MKL's AVX2 kernels (what MKL gives AMD CPUs unless stok.mkl_on_amd is
#: on) they reach 130-170 GFLOP/s from 100 to 300 frames, with its AVX-512 kernels 250-290 up to 500 frames; one
#: oneDNN product per head pays a call per head but reaches 200 GFLOP/s at 400 frames and 260 at 800, and keeps
#: each head's [T, T] scores in cache. In the whole model (v1_25hz, 40 utterances of 1-30 s, MKL AVX-512) 350
#: stays the best threshold: 66.0 audio-s/s, against 65.2 at 500, 64.3 at 650 and 61.5 at 800.
SHORT_ATTENTION = 350


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax attention of one utterance, q/k/v [T, heads, head_dim] (rows of the ragged batch) -> [T, heads,
    head_dim]. bfloat16 operands go to torch's fused kernel (oneDNN's bf16 products inside)."""
    if q.dtype != torch.float32:
        return F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                              v.transpose(0, 1)[None], scale=scale)[0].transpose(0, 1)
    if q.shape[0] > SHORT_ATTENTION:
        return _attention_per_head(q, k, v, scale)
    q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
    return torch.bmm(torch.softmax(scores, dim=-1), v).transpose(0, 1)


def _attention_per_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """As :func:`_attention`, one head at a time through oneDNN's products: the scores q_h (k_h scale)^T as a
    linear layer whose weight is k_h, the output as one whose weight is v_h^T."""
    heads = q.shape[1]
    qh = q.transpose(0, 1).contiguous()  # [heads, T, head_dim]
    kh = (k * scale).transpose(0, 1).contiguous()
    vt = v.permute(1, 2, 0).contiguous()  # [heads, head_dim, T]
    out = q.new_empty(q.shape)
    for h in range(heads):
        probs = torch.softmax(_linear(qh[h], kh[h], None, "none", [], ""), dim=-1)
        out[:, h] = _linear(probs, vt[h], None, "none", [], "")
    return out


def _offsets(lengths: Sequence[int]) -> List[int]:
    out, o = [], 0
    for n in lengths:
        out.append(o)
        o += n
    return out
