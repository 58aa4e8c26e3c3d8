"""Official-layout ONNX graphs: the exporter's graphs run in onnxruntime, the strict importer recovers
every tensor, and graphs with missing, extra, duplicated or misshapen tensors fail loudly."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from stok.models.s3.config import VERSIONS, full_config, tiny_config
from stok.models.s3.frontend import log_mel
from stok.models.s3.model import build_model
from stok.models.s3.onnx_export_official import demo_metadata, export_official
from stok.models.s3.onnx_import import OnnxImportError, import_state_dict, load_onnx
from tests.conftest import speechlike


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def ort_tokens(proto, mel):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"mel": mel.numpy(), "mel_len": np.array([mel.shape[-1]], np.int32)})[0][0]


@pytest.fixture(scope="module")
def mels():
    out = [log_mel(torch.from_numpy(speechlike(d, seed=i)))[None] for i, d in enumerate([1.13, 3.71, 9.9])]
    return out + [torch.randn(1, 128, 257, generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("layer_norm", ["decomposed", "op"])
def test_official_layout_roundtrip_and_onnxruntime_tokens(version, layer_norm, mels):
    model = build_model(tiny_config(version), seed=7)
    proto = export_official(model, layer_norm=layer_norm)
    names = {i.name for i in proto.graph.initializer}
    nodes = {n.name for n in proto.graph.node}
    # the official naming: generated initializer names read by module-scoped nodes
    assert any(n.startswith("onnx::MatMul_") for n in names) and "/blocks.1/attn/key/MatMul" in nodes
    assert "/blocks.0/mlp/mlp.0/Add" in nodes or version == "v3_25hz"
    if layer_norm == "decomposed":
        assert {"/blocks.0/attn_ln/Mul", "/blocks.0/attn_ln/Add_1"} <= nodes
    else:
        assert "/blocks.0/attn_ln/LayerNormalization" in nodes
    if version.startswith("v1"):
        assert "/quantizer/rq/model/layers.0/_codebook/Pow_1" in nodes and "encoders.positional_embedding" in names
    else:
        assert "blocks.1.attn.fsmn_block.weight" in names and "/quantizer/project_in/MatMul" in nodes
    if version == "v3_25hz":  # biases live in Constant nodes
        assert "/blocks.0/attn/query/Constant" in nodes
    loaded = load_onnx(proto, version, cfg=model.cfg)
    assert_same_weights(model, loaded)
    for mel in mels:
        expect, n = model.quantize(mel, torch.tensor([mel.shape[-1]]))
        got = ort_tokens(proto, mel)
        assert got.shape == (int(n),)
        assert np.array_equal(got, expect[0].numpy()), f"{int((got != expect[0].numpy()).sum())} tokens differ"
        again, _ = loaded.quantize(mel, torch.tensor([mel.shape[-1]]))
        assert torch.equal(again, expect)


@pytest.mark.parametrize("version", ["v1_50hz", "v2_25hz"])
def test_full_size_graph_names_and_every_tensor_recovered(version):
    cfg = full_config(version)
    model = build_model(cfg, seed=0)
    proto = export_official(model)
    names = {i.name for i in proto.graph.initializer}
    if version == "v1_50hz":
        assert {"onnx::Conv_1519", "onnx::Conv_1520", "onnx::Conv_1521", "onnx::Conv_1522"} <= names
    else:
        assert {"onnx::Conv_2216", "onnx::Conv_2219", "onnx::MatMul_2536", "quantizer.project_in.bias"} <= names
    state, report, strides = import_state_dict(proto, cfg)
    expected = model.state_dict()
    assert state.keys() == expected.keys() and len(report.mapped) == len(expected)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k
    assert strides["encoder.conv1"] == cfg.conv1_stride
    # the published sizes count the v1 codebook and position table as buffers, not parameters
    n_params = sum(v.numel() for k, v in state.items() if not k.endswith(("codebook", "positional_embedding")))
    assert n_params == pytest.approx({"v1_50hz": 123.5e6, "v2_25hz": 123.7e6}[version], rel=0.002)


@pytest.mark.parametrize("version", ["v1_50hz", "v1_25hz", "v2_25hz"])
def test_unscoped_conv_nodes_resolve_by_the_official_initializer_names(version):
    model = build_model(tiny_config(version), seed=1)
    proto = export_official(model, conv_nodes="plain")
    assert "/conv1/Conv" not in {n.name for n in proto.graph.node}
    assert_same_weights(model, load_onnx(proto, version, cfg=model.cfg))


def test_unscoped_convs_without_known_names_fail_loudly():
    model = build_model(tiny_config("v3_25hz"), seed=1)
    proto = export_official(model, conv_nodes="plain")
    with pytest.raises(OnnxImportError) as e:
        load_onnx(proto, "v3_25hz", cfg=model.cfg)
    msg = str(e.value)
    assert "missing" in msg and "encoder.conv1.weight" in msg and "encoder.conv2.bias" in msg
    assert "leftover" in msg and "onnx::Conv_" in msg


def _remove_initializer_read_by(proto, node_name):
    node = next(n for n in proto.graph.node if n.name == node_name)
    inits = {i.name: i for i in proto.graph.initializer}
    victim = next(x for x in node.input if x in inits)
    proto.graph.initializer.remove(inits[victim])
    return victim


def test_missing_tensor_fails_naming_it():
    model = build_model(tiny_config("v2_25hz"), seed=2)
    proto = export_official(model)
    _remove_initializer_read_by(proto, "/blocks.1/attn/value/MatMul")
    with pytest.raises(OnnxImportError, match=r"missing \(1\):\n    - encoder\.blocks\.1\.attn\.value\.weight"):
        load_onnx(proto, "v2_25hz", cfg=model.cfg)


def test_extra_tensors_fail_naming_them():
    model = build_model(tiny_config("v1_25hz"), seed=2)
    d = model.cfg.d_model
    proto = export_official(model)
    # a key bias (the key projection has none) read by a node in the key's scope
    proto.graph.initializer.append(numpy_helper.from_array(np.ones(d, np.float32), "onnx::Add_9999"))
    key_out = next(n for n in proto.graph.node if n.name == "/blocks.0/attn/key/MatMul").output[0]
    proto.graph.node.append(helper.make_node("Add", ["onnx::Add_9999", key_out], ["dangling"], name="/blocks.0/attn/key/Add"))
    # and a weight-like tensor nothing explains
    proto.graph.initializer.append(numpy_helper.from_array(np.random.rand(d, d).astype(np.float32), "onnx::MatMul_777"))
    with pytest.raises(OnnxImportError) as e:
        load_onnx(proto, "v1_25hz", cfg=model.cfg)
    msg = str(e.value)
    assert "leftover (2)" in msg
    assert "onnx::Add_9999" in msg and "encoder.blocks.0.attn.key.bias" in msg
    assert "onnx::MatMul_777" in msg and "no rule maps it" in msg


def test_duplicate_and_extra_block_and_shape_errors():
    model = build_model(tiny_config("v2_25hz"), seed=4)
    proto = export_official(model)
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros(model.cfg.d_model, np.float32),
                                                           "blocks.0.attn.query.bias"))
    with pytest.raises(OnnxImportError, match=r"duplicate \(1\):\n    - encoder\.blocks\.0\.attn\.query\.bias found 2 times"):
        load_onnx(proto, "v2_25hz", cfg=model.cfg)
    three = build_model(tiny_config("v2_25hz", n_layers=3), seed=4)
    with pytest.raises(OnnxImportError, match="the graph has 3 blocks, v2_25hz has 2") as e:
        load_onnx(export_official(three), "v2_25hz", cfg=model.cfg)
    assert "encoder.blocks.2.attn.query.weight, which this v2_25hz model" in str(e.value)
    with pytest.raises(OnnxImportError, match=r"shape \(\d+\)") as e:  # a tiny graph read as the official size
        load_onnx(export_official(model), "v2_25hz")
    assert "encoder.conv1.weight: expected [1280, 128, 3]" in str(e.value)


def test_wrong_version_is_an_error_not_wrong_tokens():
    model = build_model(tiny_config("v1_25hz"), seed=5)
    proto = export_official(model)
    with pytest.raises(OnnxImportError, match="conv1 has stride 2 in the graph, a 25 Hz model"):
        load_onnx(proto, "v1_50hz", cfg=tiny_config("v1_50hz"))
    with pytest.raises(OnnxImportError, match="VQ codebook: it is a v1 model"):
        load_onnx(proto, "v2_25hz", cfg=tiny_config("v2_25hz"))
    with pytest.raises(OnnxImportError, match="give the S3Tokenizer version"):
        load_onnx(proto)


def test_layer_norm_epsilon_is_read_from_the_graph():
    cfg = tiny_config("v2_25hz")
    model = build_model(cfg, seed=0)
    model.encoder.blocks[1].attn_ln.eps = 1e-6
    for layer_norm in ("op", "decomposed"):
        loaded = load_onnx(export_official(model, layer_norm=layer_norm), "v2_25hz", cfg=cfg)
        assert loaded.encoder.blocks[1].attn_ln.eps == pytest.approx(1e-6, rel=1e-6)
        assert loaded.encoder.blocks[0].attn_ln.eps == pytest.approx(1e-5, rel=1e-6)


def test_demo_metadata_gives_version_and_config_and_warns(tmp_path, caplog):
    model = build_model(tiny_config("v3_25hz", d_model=32), seed=9)
    path = str(tmp_path / "demo.onnx")
    export_official(model, path, metadata=demo_metadata(model, 9))
    with caplog.at_level(logging.WARNING, logger="stok.s3"):
        loaded = load_onnx(path)
    assert "tokens are for smoke-testing only" in caplog.text
    assert loaded.cfg == model.cfg and loaded.info["demo"] and len(loaded.info["source_sha256"]) == 64
    assert_same_weights(model, loaded)
    with pytest.raises(OnnxImportError, match="metadata says v3_25hz"):
        load_onnx(path, "v2_25hz")
    assert onnx.load(path).graph.input[0].name == "mel"


@pytest.mark.parametrize("version", ["v2_25hz", "v3_25hz"])
def test_rotary_tables_and_projection_bias_load_in_the_written_and_the_earlier_layout(version, mels):
    from tests.s3_layout_helpers import legacy_projection_bias_constant, legacy_rotary_initializers, rotary_constants

    model = build_model(tiny_config(version), seed=11)
    proto = export_official(model)
    # the layout the public converter shows: no initializer read by a top-level node, the FSQ bias an initializer
    top_level_readers = [n.name for n in proto.graph.node if n.name.count("/") == 1
                         for i in n.input if i in {x.name for x in proto.graph.initializer}]
    assert top_level_readers == [] and len(rotary_constants(proto)) == 2
    assert "quantizer.project_in.bias" in {x.name for x in proto.graph.initializer}
    old = onnx.ModelProto()
    old.CopyFrom(proto)
    assert len(legacy_rotary_initializers(old)) == 2 and not rotary_constants(old)
    if version == "v3_25hz":
        legacy_projection_bias_constant(old)
        assert "quantizer.project_in.bias" not in {x.name for x in old.graph.initializer}
    onnx.checker.check_model(old)
    for graph in (proto, old):
        loaded = load_onnx(graph, version, cfg=model.cfg)
        assert_same_weights(model, loaded)
        mel = mels[1]
        expect, _ = model.quantize(mel, torch.tensor([mel.shape[-1]]))
        assert np.array_equal(ort_tokens(graph, mel), expect[0].numpy())
