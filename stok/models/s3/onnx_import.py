"""Strict import of the official S3Tokenizer ONNX files into :class:`S3Tokenizer`.

Every weight-like tensor of the graph (initializers and ``Constant`` node values) is mapped to a
model parameter by these rules, strongest first:

1. **Name**: an initializer named like a parameter (``encoders.positional_embedding``,
   ``encoders.conv1.weight``, ``blocks.3.attn.fsmn_block.weight``, ``quantizer.project_in.bias``).
2. **Known generated names** of one version's official file (conv weights ``onnx::Conv_1519..1522``
   in v1 50 Hz and ``onnx::Conv_2216..2219`` in v2; v2's projection ``onnx::MatMul_2536``), used only
   when the consuming node has the expected op type.
3. **Consumer scope**: the name of the node that reads the tensor is the exporter's module scope
   (``/blocks.3/attn/key/MatMul``): MatMul -> ``weight`` (stored [in, out], transposed), Add -> ``bias``;
   ``LayerNormalization`` inputs 1, 2 -> ``weight``, ``bias``; a decomposed LayerNorm's ``Mul`` -> ``weight``
   and ``Add_1`` -> ``bias``; Conv inputs 1, 2 -> ``weight``, ``bias``; the v1 codebook is the tensor read by
   ``/quantizer/rq/model/layers.0/_codebook/Pow_1``.

The load is **strict**: every model tensor must be found exactly once with the right shape; a tensor
that maps to a parameter the model does not have, two tensors for one parameter, or a floating-point
tensor of more than one element that no rule explains (other than recognised derived constants:
rotary tables, small integer vectors such as the FSQ powers of 3) fail the load with an error that
names each one. LayerNorm epsilons are read from the graph, and conv1's stride is checked against
the version (a 25 Hz file given as ``v1_50hz`` is an error, not 50 Hz tokens).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from stok.core.checksums import file_sha256
from stok.models.s3.config import S3Config, full_config
from stok.models.s3.encoder import rotary_tables
from stok.models.s3.model import S3Tokenizer

log = logging.getLogger("stok.s3")

# rule 2: generated names of the official files, by version: name -> (parameter, consumer op type)
KNOWN_NAMES = {
    "v1_50hz": {"onnx::Conv_1519": ("encoder.conv1.weight", "Conv"), "onnx::Conv_1520": ("encoder.conv1.bias", "Conv"),
                "onnx::Conv_1521": ("encoder.conv2.weight", "Conv"), "onnx::Conv_1522": ("encoder.conv2.bias", "Conv")},
    "v1_25hz": {},
    "v2_25hz": {"onnx::Conv_2216": ("encoder.conv1.weight", "Conv"), "onnx::Conv_2217": ("encoder.conv1.bias", "Conv"),
                "onnx::Conv_2218": ("encoder.conv2.weight", "Conv"), "onnx::Conv_2219": ("encoder.conv2.bias", "Conv"),
                "onnx::MatMul_2536": ("quantizer.project_in.weight", "MatMul")},
    "v3_25hz": {},
}

_ENC_PARAM = re.compile(
    r"^(conv[12]\.(weight|bias)|positional_embedding|blocks\.\d+\.(attn_ln|mlp_ln)\.(weight|bias)"
    r"|blocks\.\d+\.attn\.(query|key|value|out)\.(weight|bias)|blocks\.\d+\.attn\.fsmn_block\.weight"
    r"|blocks\.\d+\.mlp\.[02]\.(weight|bias))$")
_Q_PARAM = re.compile(r"^quantizer\.(codebook|project_in\.(weight|bias))$")
_LINEAR = re.compile(r"^(encoder\.blocks\.\d+\.(attn\.(query|key|value|out)|mlp\.[02])|quantizer\.project_in)$")
_NORM = re.compile(r"^encoder\.blocks\.\d+\.(attn_ln|mlp_ln)$")
_CONV = re.compile(r"^encoder\.(conv1|conv2|blocks\.\d+\.attn\.fsmn_block)$")
_CODEBOOK_SCOPE = "quantizer.rq.model.layers.0._codebook"


class OnnxImportError(ValueError):
    """The graph does not hold exactly the model's tensors; the message lists every problem."""


@dataclass
class _Tensor:
    name: str
    array: np.ndarray
    origin: str  # "initializer" or "Constant node <name>"
    consumers: List[Tuple[onnx.NodeProto, int]] = field(default_factory=list)


@dataclass
class ImportReport:
    version: str
    source: str
    mapped: Dict[str, str]  # parameter -> graph tensor (and how)
    eps: Dict[str, float]
    ignored: List[str]  # derived constants that were recognised and skipped
    metadata: Dict[str, str]


def named_parameter(name: str) -> Optional[str]:
    """Rule 1: the parameter an initializer's own name denotes (None if it names none)."""
    for prefix in ("encoders.", "encoder.", ""):
        if name.startswith(prefix) and _ENC_PARAM.match(name[len(prefix):]):
            return "encoder." + name[len(prefix):]
    return name if _Q_PARAM.match(name) else None


def module_path(node_name: str) -> Tuple[str, str]:
    """``/blocks.3/mlp/mlp.0/MatMul`` -> (``encoder.blocks.3.mlp.0``, ``MatMul``); the exporter repeats a
    parent's name in a child's scope (``mlp/mlp.0``), which is folded; ``/encoders/`` prefixes are accepted."""
    parts = [p for p in node_name.split("/") if p]
    if not parts:
        return "", ""
    leaf, scopes = parts[-1], parts[:-1]
    path: List[str] = []
    for p in scopes:
        if path and p.startswith(path[-1] + "."):
            p = p[len(path[-1]) + 1:]
        path.append(p)
    dotted = ".".join(path)
    for prefix in ("encoders.", "encoder."):
        if dotted.startswith(prefix):
            dotted = dotted[len(prefix):]
    if not dotted.startswith("quantizer") and dotted:
        dotted = "encoder." + dotted
    return dotted, leaf


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper_get(a)
    return default


def helper_get(a):
    return onnx.helper.get_attribute_value(a)


def scope_rule(node: onnx.NodeProto, index: int) -> Optional[Tuple[str, str]]:
    """Rule 3: (parameter, transform) for input ``index`` of ``node``; transform is "T" (transpose) or ""."""
    module, leaf = module_path(node.name)
    op = node.op_type
    if not leaf.startswith(op):
        return None
    if _LINEAR.match(module):
        if leaf == "MatMul" and op == "MatMul":
            return (f"{module}.weight", "T" if index == 1 else "")
        if leaf == "Gemm" and op == "Gemm":
            if index == 1:
                return (f"{module}.weight", "" if _attr(node, "transB", 0) else "T")
            if index == 2:
                return (f"{module}.bias", "")
        if leaf == "Add" and op == "Add":
            return (f"{module}.bias", "")
        return None
    if _NORM.match(module):
        if op == "LayerNormalization" and index in (1, 2):
            return (f"{module}.{'weight' if index == 1 else 'bias'}", "")
        if leaf == "Mul":
            return (f"{module}.weight", "")
        if leaf == "Add_1":
            return (f"{module}.bias", "")
        return None
    if _CONV.match(module) and op == "Conv" and index in (1, 2):
        return (f"{module}.{'weight' if index == 1 else 'bias'}", "")
    if module == _CODEBOOK_SCOPE and leaf == "Pow_1" and index == 0:
        return ("quantizer.codebook", "orient")
    return None


def _graph_tensors(graph: onnx.GraphProto) -> Dict[str, _Tensor]:
    tensors: Dict[str, _Tensor] = {}
    for init in graph.initializer:
        tensors[init.name] = _Tensor(init.name, numpy_helper.to_array(init), "initializer")
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    tensors[node.output[0]] = _Tensor(node.output[0], numpy_helper.to_array(a.t),
                                                      f"Constant node {node.name}")
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in tensors:
                tensors[name].consumers.append((node, i))
    return tensors


def _derived(arr: np.ndarray, cfg: S3Config) -> Optional[str]:
    """Recognised non-parameter constants (skipped)."""
    a = arr.astype(np.float64)
    if a.size <= 64 and np.all(a == np.round(a)):
        return "small integer-valued constant"
    if cfg.positions == "rotary" and a.ndim >= 2:
        for width in (cfg.head_dim, cfg.head_dim // 2):
            if a.shape[-1] != width:
                continue
            rows = a.reshape(-1, width)
            cos, sin = rotary_tables(rows.shape[0], cfg.head_dim, cfg.rope_theta, "cpu", torch.float64)
            for ref, what in ((cos, "cos"), (sin, "sin")):
                if np.allclose(rows, ref.numpy()[:, :width], atol=1e-4):
                    return f"rotary {what} table"
    return None


def _fmt(t: _Tensor) -> str:
    users = ", ".join(f"{n.name or n.op_type}[{i}]" for n, i in t.consumers) or "no consumer"
    return f"{t.name} {list(t.array.shape)} ({t.origin}; read by {users})"


def import_state_dict(proto: onnx.ModelProto, cfg: S3Config, source: str = "<graph>"
                      ) -> Tuple[Dict[str, torch.Tensor], ImportReport, Dict[str, int]]:
    """Map the graph's tensors onto an ``S3Tokenizer(cfg)`` state dict, strictly (see module docstring)."""
    with torch.device("meta"):  # shapes only: no memory, no random init (seconds at the released sizes)
        model = S3Tokenizer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tensors = _graph_tensors(proto.graph)
    known = KNOWN_NAMES.get(cfg.version, {})
    claims: Dict[str, List[Tuple[_Tensor, str, str]]] = {}
    problems: Dict[str, List[str]] = {"conflicting": [], "leftover": [], "duplicate": [], "shape": [], "missing": []}
    eps: Dict[str, float] = {}
    strides: Dict[str, int] = {}
    ignored: List[str] = []

    for t in tensors.values():
        if not np.issubdtype(t.array.dtype, np.floating):
            continue
        target = None
        by_name = named_parameter(t.name) if t.origin == "initializer" else None
        if by_name:
            target = (by_name, "", "its name")
        elif t.name in known and any(n.op_type == known[t.name][1] for n, _ in t.consumers):
            param = known[t.name][0]
            target = (param, "T" if known[t.name][1] == "MatMul" else "", "known generated name")
        scoped = {}
        for node, i in t.consumers if t.array.size > 1 else ():  # scalars (scales, exponents, eps) are no weights
            r = scope_rule(node, i)
            if r:
                scoped[r[0]] = (r[0], r[1], f"consumer {node.name}")
        if target and scoped and target[0] not in scoped:
            problems["conflicting"].append(f"{_fmt(t)}: {target[2]} says {target[0]}, its consumer says "
                                           f"{', '.join(scoped)}")
            continue
        if not target and len(scoped) > 1:
            problems["conflicting"].append(f"{_fmt(t)}: consumers give {', '.join(sorted(scoped))}")
            continue
        if not target and scoped:
            target = next(iter(scoped.values()))
        if target:
            claims.setdefault(target[0], []).append((t, target[1], target[2]))
            continue
        # not a parameter: record LayerNorm epsilons; anything weight-like unexplained is leftover
        for node, i in t.consumers:
            module, leaf = module_path(node.name)
            if _NORM.match(module) and leaf == "Add" and t.array.size == 1:
                eps[module] = float(t.array.reshape(()))
        if t.array.size <= 1:
            continue
        why = _derived(t.array, cfg)
        if why:
            ignored.append(f"{t.name} ({why})")
            continue
        problems["leftover"].append(f"{_fmt(t)}: no rule maps it to a parameter")

    for node in proto.graph.node:
        module, leaf = module_path(node.name)
        if node.op_type == "LayerNormalization" and _NORM.match(module):
            eps[module] = float(_attr(node, "epsilon", 1e-5))
        if node.op_type == "Conv" and len(node.input) > 1:
            for param, claimed in claims.items():
                if any(t.name == node.input[1] for t, _, _ in claimed):
                    strides[param.rsplit(".", 1)[0]] = int((_attr(node, "strides", [1]) or [1])[0])

    state: Dict[str, torch.Tensor] = {}
    mapped: Dict[str, str] = {}
    for param, claimed in sorted(claims.items()):
        if param not in expected:
            for t, _, how in claimed:
                problems["leftover"].append(f"{_fmt(t)}: maps by {how} to {param}, which this {cfg.version} model "
                                            f"({cfg.n_layers} blocks, d_model {cfg.d_model}) does not have")
            continue
        if len(claimed) > 1:
            problems["duplicate"].append(f"{param} found {len(claimed)} times: " + "; ".join(_fmt(t) for t, _, _ in claimed))
            continue
        t, transform, how = claimed[0]
        arr = t.array
        transpose = arr.ndim == 2 and (transform == "T" or (
            transform == "orient" and arr.shape != expected[param] and arr.T.shape == expected[param]))
        shape = arr.T.shape if transpose else arr.shape
        if tuple(shape) != expected[param]:
            problems["shape"].append(f"{param}: expected {list(expected[param])}, graph tensor {_fmt(t)} gives "
                                     f"{list(shape)}")
            continue
        tensor = torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable copy; torch transposes fast
        state[param] = tensor.t().contiguous() if transpose else tensor
        mapped[param] = f"{t.name} (by {how})"
    for param in expected:
        if param not in claims:
            problems["missing"].append(param)

    if any(problems.values()):
        lines = [f"{source}: cannot load as S3Tokenizer {cfg.version} (strict import):"]
        for kind, items in problems.items():
            if items:
                lines.append(f"  {kind} ({len(items)}):")
                lines.extend(f"    - {x}" for x in items[:40])
                if len(items) > 40:
                    lines.append(f"    ... and {len(items) - 40} more")
        hint = _structure_hint(claims, cfg)
        if hint:
            lines.append(f"  hint: {hint}")
        raise OnnxImportError("\n".join(lines))
    meta = {p.key: p.value for p in proto.metadata_props}
    report = ImportReport(cfg.version, source, mapped, eps, ignored, meta)
    return state, report, strides


def _structure_hint(claims: Dict[str, list], cfg: S3Config) -> str:
    blocks = {int(m.group(1)) for p in claims for m in [re.match(r"encoder\.blocks\.(\d+)\.", p)] if m}
    hints = []
    if blocks and max(blocks) + 1 != cfg.n_layers:
        hints.append(f"the graph has {max(blocks) + 1} blocks, {cfg.version} has {cfg.n_layers} "
                     "(v3_25hz has 12, the others 6)")
    if "quantizer.codebook" in claims and cfg.quantizer == "fsq":
        hints.append("the graph has a VQ codebook: it is a v1 model")
    if "quantizer.project_in.weight" in claims and cfg.quantizer == "vq":
        hints.append("the graph has an FSQ projection: it is a v2/v3 model")
    return "; ".join(hints)


def metadata_of(proto: onnx.ModelProto) -> Dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def load_onnx(path_or_proto, version: Optional[str] = None, cfg: Optional[S3Config] = None,
              window_batch: int = 8) -> S3Tokenizer:
    """An ``S3Tokenizer`` with the weights of an official-layout ONNX graph, loaded strictly.

    ``version`` is required unless the file carries stok metadata (the demo model); ``cfg`` (dimensions)
    defaults to the metadata's, else the official full size of ``version``.
    """
    if isinstance(path_or_proto, onnx.ModelProto):
        proto, source, sha = path_or_proto, "<in-memory graph>", None
    else:
        source = str(path_or_proto)
        proto = onnx.load(source)
        sha = file_sha256(source)
    meta = metadata_of(proto)
    meta_version = meta.get("stok_version")
    if version and meta_version and version != meta_version:
        raise OnnxImportError(f"{source}: --version {version} given, but the file's metadata says {meta_version}")
    version = version or meta_version or (cfg.version if cfg else None)
    if not version:
        raise OnnxImportError(f"{source}: give the S3Tokenizer version (v1_50hz, v1_25hz, v2_25hz, v3_25hz); "
                              "an official ONNX file does not record it and stok never guesses it from a file name")
    if cfg is None:
        cfg = S3Config.from_dict(json.loads(meta["stok_config"])) if "stok_config" in meta else full_config(version)
    if cfg.version != version:
        raise OnnxImportError(f"config is for {cfg.version}, version {version} asked")
    state, report, strides = import_state_dict(proto, cfg, source)
    if "encoder.conv1" in strides and strides["encoder.conv1"] != cfg.conv1_stride:
        s = strides["encoder.conv1"]
        raise OnnxImportError(f"{source}: conv1 has stride {s} in the graph, a {'50' if s == 1 else '25'} Hz model, "
                              f"but version {version} has conv1 stride {cfg.conv1_stride}; pick the right --version")
    with torch.device("meta"):  # the graph's tensors become the parameters: no random init to overwrite
        model = S3Tokenizer(cfg, window_batch=window_batch)
    model.load_state_dict(state, strict=True, assign=True)
    for module, value in report.eps.items():
        model.get_submodule(module).eps = value
    model.info.update(source=source, source_sha256=sha, demo=meta.get("stok_demo") == "1",
                      ln_eps=sorted(set(report.eps.values())))
    if model.info["demo"]:
        log.warning("%s is a random-weights demo model: tokens are for smoke-testing only", source)
    return model.freeze()
