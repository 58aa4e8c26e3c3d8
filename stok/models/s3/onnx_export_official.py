"""Write an S3Tokenizer as an ONNX graph in the layout of the official CosyVoice files.

The official ``speech_tokenizer_v*.onnx`` files were exported by ``torch.onnx.export`` from the
original code: most weights are initializers with generated names (``onnx::MatMul_2228``) whose
meaning is the module scope of the node that consumes them (``/blocks.0/attn/query/MatMul``).
A re-implementation exported with ``torch.onnx.export`` does not have that naming, so this module
builds the graph node by node with ``onnx.helper``. The graph computes the model (onnxruntime runs
it: inputs ``mel`` [B, 128, T] float32 and ``mel_len`` [B] int32, output ``tokens`` [B, T'] int32),
so tests can check the importer against a graph whose tokens are known, and the demo recipe ships
its random-weights model in the same layout the real files have.

Where the layout comes from. No official file can be read offline; the best evidence is the public
``s3tokenizer`` package (0.3.0), whose converters ``s3tokenizer.utils.onnx2torch`` (v1, v2) and
``onnx2torch_v3`` (v3) were written against the real files (tests/test_s3_peer.py runs them on every
version this module writes, at full size, and loads the result into the peer's model strictly):

- fixed names: conv weights/biases ``onnx::Conv_1519..1522`` (v1 50 Hz), ``encoders.conv{1,2}.{weight,bias}``
  (v1 25 Hz), ``onnx::Conv_2216..2219`` (v2); ``encoders.positional_embedding`` (v1); the v1 codebook is
  the tensor read by ``/quantizer/rq/model/layers.0/_codebook/Pow_1``, stored [D, K]; v2's projection
  ``onnx::MatMul_2536``; the FSQ projection bias is the initializer ``quantizer.project_in.bias`` in v2
  **and v3** (``onnx2torch_v3`` reads it under that name only, though it reads block biases from
  ``Constant`` nodes too); FSMN taps ``blocks.N.attn.fsmn_block.weight`` (v3 by this name, v2 by the
  consuming node ``/blocks.N/attn/fsmn_block/Conv``);
- every other initializer (v1, v2) is named by its consuming node, and ``onnx2torch`` asserts that this
  node lies in a ``blocks`` scope: the real files hold no initializer read by a top-level node, so the
  rotary cos/sin tables (v2, v3) are ``Constant`` nodes here, not initializers;
- LayerNorm: ``LayerNormalization`` nodes in v2 (the converter's v2 branch), decomposed in v1 and v3
  (weight read by ``.../attn_ln/Mul``, bias by ``.../attn_ln/Add_1``); 2-D MatMul weights stored [in, out];
- v3 is read by node names (``/conv1/Conv``, ``/blocks.N/attn/query/MatMul`` ..., the MatMul of a node
  named ``quantizer``); its block biases may be initializers or ``Constant`` nodes: they are ``Constant``
  nodes here (``bias_constants``);
- CosyVoice's extractor (``cosyvoice/cli/frontend.py``, public) feeds the two inputs by position:
  features [1, 128, T] float32 and the frame count as int32 [1].

stok's choices where nothing public says more: the operator sequence (frame masks, Erf GELU, attention),
the names of nodes that read no weight, the generated ids past the known ones, v3's conv initializer
names, the rotary tables' 3000 rows (the peer computes 2048), and the ``stok_*`` metadata keys.
Graphs written by earlier stok versions (rotary tables as ``onnx::Slice_*`` initializers, the v3
projection bias as a ``Constant``) still load in ``stok.models.s3.onnx_import``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stok.core.fileio import atomic_open
from stok.models.s3.config import S3Config
from stok.models.s3.encoder import rotary_tables
from stok.models.s3.model import S3Tokenizer

OPSET = 17

# Per-version layout of the official files (what is known of them; see the module docstring).
LAYOUTS = {
    "v1_50hz": dict(first_id=1519, conv_names=None, layer_norm="decomposed", bias_constants=False),
    "v1_25hz": dict(first_id=1519, conv_names=["encoders.conv1.weight", "encoders.conv1.bias",
                                               "encoders.conv2.weight", "encoders.conv2.bias"],
                    layer_norm="decomposed", bias_constants=False),
    "v2_25hz": dict(first_id=2216, conv_names=None, layer_norm="op", bias_constants=False,
                    project_weight="onnx::MatMul_2536"),
    "v3_25hz": dict(first_id=2216, conv_names=None, layer_norm="decomposed", bias_constants=True),
}

DEMO_WARNING = "random-weights demo model: its tokens are for smoke-testing only"


class _Graph:
    def __init__(self, first_id: int):
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self.names = set()
        self.next_id = first_id
        self.counts: Dict[tuple, int] = defaultdict(int)

    def gen(self, op: str) -> str:
        while f"onnx::{op}_{self.next_id}" in self.names:
            self.next_id += 1
        name = f"onnx::{op}_{self.next_id}"
        self.next_id += 1
        return name

    def init(self, array: np.ndarray, name: str) -> str:
        if name in self.names:
            raise ValueError(f"initializer name {name} used twice")
        self.names.add(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: List[str], scope: str = "", n_out: int = 1, **attrs):
        k = self.counts[(scope, op)]
        self.counts[(scope, op)] += 1
        name = f"{scope}/{op}" + (f"_{k}" if k else "")
        outs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, scope: str = "", dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        return self.node("Constant", [], scope, value=numpy_helper.from_array(arr))


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class _Writer:
    def __init__(self, model: S3Tokenizer, layer_norm: str, conv_nodes: str, bias_constants: bool,
                 conv_names: Optional[List[str]], first_id: int, project_weight: Optional[str]):
        self.m = model
        self.cfg: S3Config = model.cfg
        self.g = _Graph(first_id)
        self.layer_norm = layer_norm
        self.conv_nodes = conv_nodes
        self.bias_constants = bias_constants
        self.conv_names = conv_names
        self.project_weight = project_weight

    # --- building blocks in the exporter's scope conventions
    def linear(self, x: str, lin, scope: str, weight_name: Optional[str] = None, bias_name: Optional[str] = None) -> str:
        g = self.g
        w = g.init(_np(lin.weight).T, weight_name or g.gen("MatMul"))
        y = g.node("MatMul", [x, w], scope)
        if lin.bias is None:
            return y
        if bias_name:
            b = g.init(_np(lin.bias), bias_name)
        elif self.bias_constants:
            b = g.const(_np(lin.bias), scope)
        else:
            b = g.init(_np(lin.bias), g.gen("Add"))
        return g.node("Add", [b, y], scope)

    def layer_norm_(self, x: str, ln, scope: str) -> str:
        g = self.g
        if self.layer_norm == "op":
            w = g.init(_np(ln.weight), g.gen("LayerNormalization"))
            b = g.init(_np(ln.bias), g.gen("LayerNormalization"))
            return g.node("LayerNormalization", [x, w, b], scope, axis=-1, epsilon=float(ln.eps))
        mean = g.node("ReduceMean", [x], scope, axes=[-1], keepdims=1)
        d = g.node("Sub", [x, mean], scope)
        p = g.node("Pow", [d, g.const(2.0, scope)], scope)
        var = g.node("ReduceMean", [p], scope, axes=[-1], keepdims=1)
        ve = g.node("Add", [var, g.const(ln.eps, scope)], scope)
        n = g.node("Div", [d, g.node("Sqrt", [ve], scope)], scope)
        w = g.init(_np(ln.weight), g.gen("Mul"))
        y = g.node("Mul", [n, w], scope)
        b = g.const(_np(ln.bias), scope) if self.bias_constants else g.init(_np(ln.bias), g.gen("Add"))
        return g.node("Add", [y, b], scope)

    def gelu(self, x: str, scope: str) -> str:
        g = self.g
        e = g.node("Erf", [g.node("Div", [x, g.const(math.sqrt(2.0), scope)], scope)], scope)
        y = g.node("Mul", [x, g.node("Add", [e, g.const(1.0, scope)], scope)], scope)
        return g.node("Mul", [y, g.const(0.5, scope)], scope)

    def conv(self, x: str, conv, index: int, stride: int, pad: int, scope: str, groups: int = 1,
             weight_name: Optional[str] = None) -> str:
        g = self.g
        names = self.conv_names
        if weight_name is None:
            weight_name = names[2 * index] if names else g.gen("Conv")
        inputs = [x, g.init(_np(conv.weight), weight_name)]
        if conv.bias is not None:
            inputs.append(g.init(_np(conv.bias), names[2 * index + 1] if names else g.gen("Conv")))
        node_scope = scope if self.conv_nodes == "scoped" else ""
        return g.node("Conv", inputs, node_scope, kernel_shape=[conv.weight.shape[-1]], pads=[pad, pad],
                      strides=[stride], group=groups, dilations=[1])

    def frame_mask(self, lengths: str, x: str, time_axis: int) -> str:
        """float mask [B, T] of valid frames, T = x.shape[time_axis]."""
        g = self.g
        t = g.node("Shape", [x], start=time_axis, end=time_axis + 1)
        t = g.node("Squeeze", [t, g.const([0], dtype=np.int64)])
        r = g.node("Range", [g.const(0, dtype=np.int64), t, g.const(1, dtype=np.int64)])
        valid = g.node("Less", [g.node("Unsqueeze", [r, g.const([0], dtype=np.int64)]),
                                g.node("Unsqueeze", [lengths, g.const([1], dtype=np.int64)])])
        return g.node("Cast", [valid], to=TensorProto.FLOAT)

    def ceil_div(self, lengths: str, s: int) -> str:
        g = self.g
        if s == 1:
            return lengths
        return g.node("Div", [g.node("Add", [lengths, g.const(s - 1, dtype=np.int64)]), g.const(s, dtype=np.int64)])

    # --- the model
    def build(self) -> onnx.GraphProto:
        cfg, g, enc = self.cfg, self.g, self.m.encoder
        d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        unsq = lambda x, axes: g.node("Unsqueeze", [x, g.const(axes, dtype=np.int64)])
        lens = g.node("Cast", ["mel_len"], to=TensorProto.INT64)
        # the conv weights come first in the official numbering (e.g. onnx::Conv_1519..1522)
        m0 = unsq(self.frame_mask(lens, "mel", 2), [1])
        x = g.node("Mul", ["mel", m0])
        x = self.conv(x, enc.conv1, 0, cfg.conv1_stride, 1, "/conv1")
        x = self.gelu(x, "")
        lens = self.ceil_div(lens, cfg.conv1_stride)
        x = g.node("Mul", [x, unsq(self.frame_mask(lens, x, 2), [1])])
        x = self.conv(x, enc.conv2, 1, 2, 1, "/conv2")
        x = self.gelu(x, "")
        lens = self.ceil_div(lens, 2)
        mask = self.frame_mask(lens, x, 2)  # [B, T']
        x = g.node("Transpose", [x], perm=[0, 2, 1])
        t_len = g.node("Shape", [x], start=1, end=2)
        zero = g.const([0], dtype=np.int64)
        if cfg.positions == "learned":
            pos = g.init(_np(enc.positional_embedding), "encoders.positional_embedding")
            x = g.node("Add", [x, g.node("Slice", [pos, zero, t_len, zero])])
            rope = None
        else:
            # Constant nodes, not initializers: the peer's converter rejects an initializer read by a
            # top-level node such as /Slice, and it was written against the real files
            cos, sin = rotary_tables(cfg.n_ctx * 2, hd, cfg.rope_theta, "cpu")
            cos_t = g.node("Slice", [g.const(cos.numpy()), zero, t_len, zero])
            sin_t = g.node("Slice", [g.const(sin.numpy()), zero, t_len, zero])
            rope = (unsq(cos_t, [1]), unsq(sin_t, [1]))  # [T', 1, hd]
        bias = g.node("Mul", [g.node("Sub", [g.const(1.0), mask]), g.const(-1e10)])
        bias = unsq(bias, [1, 2])  # [B, 1, 1, T']
        fmask = unsq(mask, [2])  # [B, T', 1]
        heads = g.const([0, 0, h, hd], dtype=np.int64)
        flat = g.const([0, 0, d], dtype=np.int64)
        scale = float(hd ** -0.25)
        for i, blk in enumerate(enc.blocks):
            s = f"/blocks.{i}"
            a = f"{s}/attn"
            y = self.layer_norm_(x, blk.attn_ln, f"{s}/attn_ln")
            q = self.linear(y, blk.attn.query, f"{a}/query")
            k = self.linear(y, blk.attn.key, f"{a}/key")
            v = self.linear(y, blk.attn.value, f"{a}/value")
            q4, k4, v4 = (g.node("Reshape", [t, heads], a) for t in (q, k, v))
            if rope is not None:
                q4, k4 = (self.rotary(t, rope, a) for t in (q4, k4))
            qh = g.node("Mul", [g.node("Transpose", [q4], a, perm=[0, 2, 1, 3]), g.const(scale, a)], a)
            kh = g.node("Mul", [g.node("Transpose", [k4], a, perm=[0, 2, 3, 1]), g.const(scale, a)], a)
            w = g.node("Softmax", [g.node("Add", [g.node("MatMul", [qh, kh], a), bias], a)], a, axis=-1)
            o = g.node("MatMul", [w, g.node("Transpose", [v4], a, perm=[0, 2, 1, 3])], a)
            o = g.node("Reshape", [g.node("Transpose", [o], a, perm=[0, 2, 1, 3]), flat], a)
            o = self.linear(o, blk.attn.out, f"{a}/out")
            if blk.attn.fsmn_block is not None:
                vm = g.node("Mul", [v, fmask], a)
                kz = cfg.fsmn_kernel
                c = self.conv(g.node("Transpose", [vm], a, perm=[0, 2, 1]), blk.attn.fsmn_block, 0, 1,
                              (kz - 1) // 2, f"{a}/fsmn_block", groups=d,
                              weight_name=f"blocks.{i}.attn.fsmn_block.weight")
                c = g.node("Add", [g.node("Transpose", [c], a, perm=[0, 2, 1]), vm], a)
                o = g.node("Add", [o, g.node("Mul", [c, fmask], a)], a)
            x = g.node("Add", [x, o], s)
            y = self.layer_norm_(x, blk.mlp_ln, f"{s}/mlp_ln")
            y = self.linear(y, blk.mlp[0], f"{s}/mlp/mlp.0")
            y = self.gelu(y, f"{s}/mlp/mlp.1")
            y = self.linear(y, blk.mlp[2], f"{s}/mlp/mlp.2")
            x = g.node("Add", [x, y], s)
        tokens = self.quantizer(x)
        tokens = g.node("Mul", [tokens, g.node("Cast", [mask], to=TensorProto.INT32)])
        g.nodes.append(helper.make_node("Identity", [tokens], ["tokens"], name="/Identity"))
        inputs = [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["B", cfg.n_mels, "T"]),
                  helper.make_tensor_value_info("mel_len", TensorProto.INT32, ["B"])]
        outputs = [helper.make_tensor_value_info("tokens", TensorProto.INT32, ["B", "T_tokens"])]
        return helper.make_graph(g.nodes, "s3tokenizer", inputs, outputs, initializer=g.inits)

    def rotary(self, x4: str, rope, scope: str) -> str:
        g = self.g
        hd = self.cfg.head_dim
        half = hd // 2
        ax = g.const([3], dtype=np.int64)
        lo = g.node("Slice", [x4, g.const([0], dtype=np.int64), g.const([half], dtype=np.int64), ax], scope)
        hi = g.node("Slice", [x4, g.const([half], dtype=np.int64), g.const([hd], dtype=np.int64), ax], scope)
        rot = g.node("Concat", [g.node("Neg", [hi], scope), lo], scope, axis=3)
        return g.node("Add", [g.node("Mul", [x4, rope[0]], scope), g.node("Mul", [rot, rope[1]], scope)], scope)

    def quantizer(self, x: str) -> str:
        g, q, cfg = self.g, self.m.quantizer, self.cfg
        if cfg.quantizer == "vq":
            s = "/quantizer/rq/model/layers.0"
            norm = g.node("Clip", [g.node("ReduceL2", [x], s, axes=[-1], keepdims=1), g.const(1e-12, s)], s)
            n = g.node("Div", [x, norm], s)
            cb = f"{s}/_codebook"
            e = g.init(_np(q.codebook).T, g.gen("MatMul"))  # stored [D, K], as the folded embed.t()
            x2 = g.node("ReduceSum", [g.node("Pow", [n, g.const(2.0, cb)], cb), g.const([-1], cb, np.int64)], cb,
                        keepdims=1)
            m2 = g.node("Mul", [g.node("MatMul", [n, e], cb), g.const(2.0, cb)], cb)
            e2 = g.node("ReduceSum", [g.node("Pow", [e, g.const(2.0, cb)], cb), g.const([0], cb, np.int64)], cb,
                        keepdims=1)
            dist = g.node("Add", [g.node("Sub", [x2, m2], cb), e2], cb)
            idx = g.node("ArgMax", [g.node("Neg", [dist], cb)], cb, axis=-1, keepdims=0)
            return g.node("Cast", [idx], cb, to=TensorProto.INT32)
        # the bias is an initializer under its module name in every FSQ version (v3 too: the peer's
        # onnx2torch_v3 reads it only that way, whereas block biases may be Constant nodes)
        h = self.linear(x, q.project_in, "/quantizer/project_in", weight_name=self.project_weight,
                        bias_name="quantizer.project_in.bias")
        s = "/quantizer"
        h = g.node("Mul", [g.node("Tanh", [h], s), g.const(np.float32(cfg.fsq_scale), s)], s)
        h = g.node("Add", [g.node("Round", [h], s), g.const(float((cfg.fsq_levels - 1) // 2), s)], s)
        powers = g.const(float(cfg.fsq_levels) ** np.arange(cfg.fsq_dims), s)
        idx = g.node("ReduceSum", [g.node("Mul", [h, powers], s), g.const([-1], s, np.int64)], s, keepdims=0)
        return g.node("Cast", [idx], s, to=TensorProto.INT32)


def export_official(model: S3Tokenizer, path: Optional[str] = None, *, layer_norm: Optional[str] = None,
                    conv_nodes: str = "scoped", bias_constants: Optional[bool] = None,
                    metadata: Optional[Dict[str, str]] = None) -> onnx.ModelProto:
    """Build (and write to ``path``) the official-layout ONNX graph of ``model``.

    ``layer_norm`` ("op": LayerNormalization nodes, "decomposed": ReduceMean/Sub/Pow/.../Mul/Add_1),
    ``conv_nodes`` ("scoped": ``/conv1/Conv``; "plain": unscoped ``/Conv``, ``/Conv_1``, so only the
    initializer names tell the convs apart) and ``bias_constants`` (biases as ``Constant`` nodes)
    default to the version's known layout (``LAYOUTS``).
    """
    cfg = model.cfg
    lay = dict(LAYOUTS[cfg.version])
    if layer_norm is not None:
        lay["layer_norm"] = layer_norm
    if bias_constants is not None:
        lay["bias_constants"] = bias_constants
    if conv_nodes not in ("scoped", "plain") or lay["layer_norm"] not in ("op", "decomposed"):
        raise ValueError(f"bad layout options: conv_nodes={conv_nodes}, layer_norm={lay['layer_norm']}")
    writer = _Writer(model, lay["layer_norm"], conv_nodes, lay["bias_constants"], lay["conv_names"],
                     lay["first_id"], lay.get("project_weight"))
    graph = writer.build()
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pytorch",
                              producer_version="stok")
    proto.ir_version = 8
    for k, v in (metadata or {}).items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))
    if path:
        with atomic_open(path) as f:
            onnx.save(proto, f)
    return proto


def demo_metadata(model: S3Tokenizer, seed: int) -> Dict[str, str]:
    """ONNX metadata marking a random-weights demo model (the importer warns when it loads one)."""
    return {"stok_demo": "1", "stok_warning": DEMO_WARNING, "stok_version": model.cfg.version,
            "stok_config": json.dumps(model.cfg.to_dict(), sort_keys=True), "stok_seed": str(seed)}
