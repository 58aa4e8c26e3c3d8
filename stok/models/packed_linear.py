"""Linear layers through oneDNN with prepacked weights: the fastest exact fp32 matrix product on CPU here.

``torch.nn.Linear`` on CPU calls MKL's sgemm, which on the AVX-512 cores measured reaches ~85 GFLOP/s per core;
oneDNN's inner product with its weight reordered once into its blocked layout reaches ~105 (about the core's
fp32 peak, what onnxruntime's kernels reach too). Both are plain fp32 products; they only sum in another order,
so results agree to float32 rounding (about 1e-6 relative), not bit for bit.

- :class:`PackedLinear` is an ``nn.Linear`` (same parameters, same ``state_dict``) whose forward uses the packed
  weight when it may: on CPU, float32, with no gradient wanted, outside tracing/export/compilation, and
  ``packed`` set. Anywhere else it is ``F.linear``. The packed copy is rebuilt when the weight changes
  (another tensor, an in-place update, a move) and never saved.
- :func:`use_packed_linears` turns every plain ``nn.Linear`` of a module (e.g. a torchaudio model) into a
  :class:`PackedLinear` in place, or back.
- :class:`WeightPack` is the cache itself, for a weight that is not a Linear's (a codebook product).

Reduced precision (opt-in): ``compute_dtype=torch.bfloat16`` (``PackedLinear.compute_dtype``, the ``dtype`` of
:meth:`WeightPack.linear`) multiplies bfloat16 copies of the input and weight (fp32 accumulation inside oneDNN) and
returns the result as float32, so everything around the product stays fp32. Fast only where the CPU has bfloat16
dot products (``stok.models.cpu_isa``: AVX-512 BF16 or AMX); elsewhere the same bfloat16 operands are multiplied
in fp32 (:func:`bf16_emulated`: the same values, slowly; for tests on any CPU).

The packed copy doubles the memory of the weights it covers (CPU RAM).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and weight.device.type == "cpu" and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export()
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
            and x.dim() >= 1 and x.numel() > 0 and packing_available())


def tensor_key(t: torch.Tensor) -> tuple:
    """Identifies a tensor's current values: storage, shape, in-place version (inference tensors keep no version
    counter, and cannot be changed outside inference mode: their storage alone)."""
    return (t.data_ptr(), None if t.is_inference() else t._version, tuple(t.shape), t.dtype)


def native_bf16() -> bool:
    from stok.models.cpu_isa import cpu_isa

    return cpu_isa().bf16


def bf16_emulated(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The product of the bfloat16-rounded operands, computed in fp32 (what a bfloat16 kernel with fp32 accumulation
    computes, up to summation order)."""
    return F.linear(x.bfloat16().float(), weight.bfloat16().float(), None if bias is None else bias.bfloat16().float())


class WeightPack:
    """The oneDNN-packed copy of one ``[out, in]`` weight, rebuilt when the weight's storage or version changes
    (or another compute dtype is asked for). ``layout`` (optional) turns the source into the ``[out, in]`` matrix
    first, e.g. a conv kernel into its im2col form; the key stays the source's."""

    __slots__ = ("key", "packed")

    def __init__(self):
        self.key = None
        self.packed: Optional[torch.Tensor] = None

    def get(self, weight: torch.Tensor, layout: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = (tensor_key(weight), dtype)
        if key != self.key:
            with torch.no_grad():
                w = weight.detach() if layout is None else layout(weight.detach())
                self.packed = torch.ops.mkldnn._reorder_linear_weight(w.to(dtype).contiguous())
            self.key = key
        return self.packed

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               activation: str = "none", layout: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``F.linear(x, layout(weight), bias)`` (then ``activation``: "none" or "gelu", erf form) with the
        packed weight where eligible, else the plain way. ``dtype=torch.bfloat16``: bfloat16 operands, float32
        result (see module docstring)."""
        if not _eligible(x, weight):
            y = F.linear(x, weight if layout is None else layout(weight), bias)
            return F.gelu(y) if activation == "gelu" else y
        algorithm = "none" if activation == "gelu" else ""
        if dtype == torch.bfloat16:
            if not native_bf16():
                y = bf16_emulated(x, weight if layout is None else layout(weight), bias)
                return (F.gelu(y) if activation == "gelu" else y).bfloat16().float()
            return torch.ops.mkldnn._linear_pointwise(x.contiguous().bfloat16(), self.get(weight, layout, dtype),
                                                      None if bias is None else bias.bfloat16(), activation, [],
                                                      algorithm).float()
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.get(weight, layout), bias, activation, [],
                                                  algorithm)

    def clear(self) -> None:
        self.key, self.packed = None, None

    def __reduce__(self):  # copies and pickles start empty: the packed copy is rebuilt on first use
        return (WeightPack, ())


class PackedLinear(nn.Linear):
    """``nn.Linear`` computed with a oneDNN-packed weight where eligible (see module docstring)."""

    packed: bool = True
    #: torch.bfloat16: bfloat16 operands, float32 result, where packing applies (see module docstring)
    compute_dtype: torch.dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            return F.linear(x, self.weight, self.bias)
        pack = self.__dict__.get("_weight_pack")
        if pack is None:
            pack = self.__dict__["_weight_pack"] = WeightPack()
        return pack.linear(x, self.weight, self.bias, dtype=self.compute_dtype)


def use_packed_linears(module: nn.Module, enabled: bool = True, compute_dtype: torch.dtype = torch.float32) -> int:
    """Every plain ``nn.Linear`` under ``module`` becomes a :class:`PackedLinear` (``enabled``; products in
    ``compute_dtype``) or every :class:`PackedLinear` a plain ``nn.Linear`` again; in place, parameters untouched.
    Returns how many changed."""
    changed = 0
    for m in module.modules():
        if enabled and type(m) is nn.Linear:
            m.__class__ = PackedLinear
            changed += 1
        elif not enabled and type(m) is PackedLinear:
            m.__dict__.pop("_weight_pack", None)
            m.__dict__.pop("compute_dtype", None)
            m.__class__ = nn.Linear
            changed += 1
        if enabled and type(m) is PackedLinear:
            if compute_dtype == torch.float32:
                m.__dict__.pop("compute_dtype", None)
            else:
                m.compute_dtype = compute_dtype
    return changed
