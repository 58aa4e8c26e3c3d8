"""The public ``s3tokenizer`` package (0.3.0, "the peer") as a test oracle for stok's S3Tokenizer.

For each version (v1 50 Hz, v1 25 Hz, v2 25 Hz, v3 25 Hz) stok writes its model as an ONNX graph in
the official layout (``export_official``), and:

- the peer's own converter (``onnx2torch``, ``onnx2torch_v3``, written against the real files) turns
  the graph into a state dict that loads into the peer's model with ``strict=True``, every tensor
  equal to stok's;
- the peer (its own front end, from the waveform), stok (one utterance at a time; at the small width
  the model its importer reads back from the file), onnxruntime running the graph on the peer's log-mel
  (what CosyVoice's extractor does) and ``stok-dump-s3`` (the file and ``--version``) give the same
  tokens on demo-corpus FLACs. "The same" allows a differing token only where stok's decision is a
  float32 near-tie (``decision_margins`` under 1e-5: two codebook rows at equal distance, or an FSQ value
  on a rounding boundary), where summation order decides; other runtimes do sum in other orders;
- long inputs (35, 52.4, 60, 95 s) get the stride-implied count in stok (25 or 50 tokens a second)
  and the peer's tokens where the peer gets the count right (35, 60, 95 s; at 52.4 s it returns 1,260
  tokens at 25 Hz and 2,520 at 50 Hz instead of 1,310 and 2,620: its first tokens equal stok's);
- all of this at a small width (d_model 128, 2 heads of 64: the peer's rotary table is built for
  head dim 64) and, on short utterances, at the released sizes (d_model 1280, 6 or 12 blocks,
  4096 or 6561 codes), including a ``stok-dump-s3`` run end to end per version.

Random v1 codebooks give few distinct tokens (the encoder's outputs share one direction), so the v1
codebooks are spread over the encoder's outputs on training-split utterances, as a learned codebook
is; the compared utterances come from the dev split.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from stok.bin import dump_s3
from stok.data.audio import load_audio
from stok.core.storage import load_codes
from stok.models.s3.config import VERSIONS, S3Config, full_config, tiny_config
from stok.models.s3.frontend import log_mel
from stok.models.s3.long_audio import plan_windows
from stok.models.s3.margins import NEAR_TIE, decision_margins
from stok.models.s3.model import S3Tokenizer, build_model
from stok.models.s3.onnx_export_official import export_official
from stok.models.s3.onnx_import import load_onnx
from tests.conftest import REPO, require_peer
from tests.s3_layout_helpers import legacy_projection_bias_constant, legacy_rotary_initializers
from tests.s3_helpers import spread_codebook

CORPUS = os.path.join(REPO, "recipes", "demo", "corpus")
PEER_NAMES = {"v1_50hz": "speech_tokenizer_v1", "v1_25hz": "speech_tokenizer_v1_25hz",
              "v2_25hz": "speech_tokenizer_v2_25hz", "v3_25hz": "speech_tokenizer_v3_25hz"}
LONG_SECONDS = (35.0, 52.4, 60.0, 95.0)
PEER_SHORT_AT = 52.4  # the peer's window loop loses tokens at this length


def small_config(version: str) -> S3Config:
    return tiny_config(version, d_model=128, n_heads=2, n_layers=3 if version == "v3_25hz" else 2,
                       codebook_size=4096)


@dataclass
class Demo:
    dev: Dict[str, str]  # utterance id -> FLAC path
    train: List[str]


@pytest.fixture(scope="module")
def demo() -> Demo:
    dev = sorted(glob.glob(os.path.join(CORPUS, "dev-clean-demo", "*", "*", "*.flac")))
    train = sorted(glob.glob(os.path.join(CORPUS, "train-clean-demo", "*", "*", "*.flac")))
    assert len(dev) == 10 and len(train) == 54
    return Demo({os.path.basename(p)[:-5]: p for p in dev}, train)


def peer_name(stok_key: str) -> str:
    if stok_key == "quantizer.codebook":
        return "quantizer._codebook.embed"
    return stok_key.replace("quantizer.project_in.", "quantizer._codebook.project_down.")


def peer_model(version: str, cfg: S3Config, path: str):
    """(the peer's model built with ``cfg``'s dimensions, the state dict its converter made of ``path``),
    loaded with strict=True."""
    s3 = require_peer("s3tokenizer")
    from s3tokenizer.model import ModelConfig
    from s3tokenizer.model_v2 import ModelConfig as ModelConfigV2
    from s3tokenizer.model_v2 import S3TokenizerV2
    from s3tokenizer.model_v3 import ModelConfigV3, S3TokenizerV3

    dims = dict(n_audio_state=cfg.d_model, n_audio_head=cfg.n_heads, n_audio_layer=cfg.n_layers)
    name = PEER_NAMES[version]
    if version == "v3_25hz":
        model, converted = S3TokenizerV3(name, ModelConfigV3(**dims)), s3.onnx2torch_v3(path)
    elif version == "v2_25hz":
        model, converted = S3TokenizerV2(name, ModelConfigV2(**dims)), s3.onnx2torch(path)
    else:
        model = s3.S3Tokenizer(name, ModelConfig(n_codebook_size=cfg.codebook_size, **dims))
        converted = s3.onnx2torch(path)
    model.load_state_dict(converted, strict=True)
    return model.eval(), converted


@dataclass
class Graph:
    version: str
    cfg: S3Config
    path: str
    original: S3Tokenizer  # the model the graph was written from
    stok: S3Tokenizer  # the model stok runs (small: what its importer reads back from the file)
    peer: object  # the peer's model, loaded strictly from its converter's output
    converted_keys: List[str]


def write_graph(version: str, cfg: S3Config, root, demo: Demo, metadata: bool, reimport: bool) -> Graph:
    model = build_model(cfg, seed=17)
    if cfg.quantizer == "vq":
        spread_codebook(model, [log_mel(load_audio(p, 16000)) for p in demo.train[:3]])
    path = str(root / f"{PEER_NAMES[version]}.onnx")
    meta = {"stok_version": version, "stok_config": json.dumps(cfg.to_dict())} if metadata else None
    export_official(model, path, metadata=meta)
    peer, converted = peer_model(version, cfg, path)
    stok = load_onnx(path, version) if reimport else model
    return Graph(version, cfg, path, model, stok, peer, sorted(converted))


@pytest.fixture(scope="module", params=VERSIONS)
def small(request, tmp_path_factory, demo) -> Graph:
    cfg = small_config(request.param)
    return write_graph(request.param, cfg, tmp_path_factory.mktemp("s3small"), demo, metadata=True, reimport=True)


@pytest.fixture(scope="module", params=VERSIONS)
def released(request, tmp_path_factory, demo):
    """The released size, as the official file would be: no stok metadata, ``--version`` needed. One copy
    of the weights less in memory: stok's importer reads this file in the ``stok-dump-s3`` run."""
    cfg = full_config(request.param)
    graph = write_graph(request.param, cfg, tmp_path_factory.mktemp("s3full"), demo, metadata=False, reimport=False)
    yield graph
    os.remove(graph.path)


# ---------------------------------------------------------------------------------------- tokens of each path
def peer_tokens(graph: Graph, wave: torch.Tensor) -> np.ndarray:
    s3 = require_peer("s3tokenizer")
    mel = s3.log_mel_spectrogram(wave)
    codes, n = graph.peer.quantize(mel[None], torch.tensor([mel.shape[1]]))
    return codes[0, : int(n[0])].numpy()


def stok_tokens(graph: Graph, wave: torch.Tensor) -> np.ndarray:
    mel = log_mel(wave)
    codes, n = graph.stok.quantize(mel[None], torch.tensor([mel.shape[1]]))
    return codes[0, : int(n[0])].numpy()


def ort_session(graph: Graph):
    ort = require_peer("onnxruntime")
    return ort.InferenceSession(graph.path, providers=["CPUExecutionProvider"])


def ort_tokens(session, mel: torch.Tensor) -> np.ndarray:
    """onnxruntime on the graph, one pass (at most one 30 s window)."""
    feed = {"mel": mel[None].numpy(), "mel_len": np.array([mel.shape[1]], np.int32)}
    return session.run(None, feed)[0][0]


def peer_log_mel(wave: torch.Tensor) -> torch.Tensor:
    return require_peer("s3tokenizer").log_mel_spectrogram(wave)


def run_dump(graph: Graph, scp: str, out) -> Dict[str, np.ndarray]:
    summary = dump_s3.main(["--model", graph.path, "--version", graph.version, "--wav_scp", scp,
                            "--output_dir", str(out), "--device", "cpu", "--num_workers", "0"])
    assert summary["failed"] == 0
    return {k: np.asarray(v) for k, v in load_codes(os.path.join(str(out), "s3_tokens.scp"))}


def write_scp(path, entries: Dict[str, str]) -> str:
    with open(path, "w") as f:
        f.write("".join(f"{k} {v}\n" for k, v in sorted(entries.items())))
    return str(path)


def assert_weights_converted(graph: Graph) -> None:
    """The converter's keys are the peer model's (strict load) and every tensor equals stok's."""
    expected = {peer_name(k): v for k, v in graph.original.state_dict().items()}
    loaded = graph.peer.state_dict()
    assert graph.converted_keys == sorted(expected) == sorted(loaded)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def assert_same_tokens(expected: np.ndarray, got: np.ndarray, margins: np.ndarray, what: str) -> int:
    """Equal tokens, except at near-ties (margin < NEAR_TIE); returns how many such tokens differ."""
    assert len(got) == len(expected) == len(margins), what
    differ = np.nonzero(np.asarray(got) != np.asarray(expected))[0]
    assert (margins[differ] < NEAR_TIE).all(), (
        f"{what}: tokens {differ[:10].tolist()} differ, decision margins {margins[differ][:10].tolist()}")
    return len(differ)


def assert_spread(tokens: np.ndarray) -> None:
    """The comparison means something only when the tokens vary (random weights can collapse them)."""
    assert len(set(tokens.tolist())) >= max(2, len(tokens) // 10), f"{len(set(tokens.tolist()))} distinct tokens"


# ---------------------------------------------------------------------------------------- small width
def test_peer_converter_loads_the_graph_strictly(small):
    assert_weights_converted(small)
    for key, value in small.original.state_dict().items():
        assert torch.equal(small.stok.state_dict()[key], value), key


def test_demo_utterances_same_tokens_in_peer_stok_onnxruntime_and_dump(small, demo, tmp_path):
    session = ort_session(small)
    utterances = {key: demo.dev[key] for key in sorted(demo.dev)[::2]}  # 5 of the 10 dev utterances, 1.2 to 11.5 s
    one_at_a_time, margins = {}, {}
    for key, path in utterances.items():
        wave = load_audio(path, 16000)
        tokens = one_at_a_time[key] = stok_tokens(small, wave)
        margins[key] = decision_margins(small.stok, log_mel(wave))
        assert len(tokens) == small.cfg.token_count(wave.numel() // 160)
        assert_same_tokens(tokens, peer_tokens(small, wave), margins[key], f"peer, {key}")
        assert_same_tokens(tokens, ort_tokens(session, peer_log_mel(wave)), margins[key], f"onnxruntime, {key}")
    assert_spread(np.concatenate(list(one_at_a_time.values())))
    dumped = run_dump(small, write_scp(tmp_path / "wav.scp", utterances), tmp_path / "dump")
    assert dumped.keys() == one_at_a_time.keys()
    for key, tokens in one_at_a_time.items():
        assert_same_tokens(tokens, dumped[key], margins[key], f"stok-dump-s3, {key}")


@pytest.fixture(scope="module")
def long_scp(tmp_path_factory, demo) -> str:
    """35, 52.4, 60 and 95 s of demo speech (the corpus's utterances end to end), as 16-bit FLACs."""
    root = tmp_path_factory.mktemp("s3long")
    speech = np.concatenate([sf.read(p, dtype="int16")[0] for p in demo.train])
    entries = {}
    for sec in LONG_SECONDS:
        key = f"long_{sec:05.1f}s"
        entries[key] = str(root / f"{key}.flac")
        sf.write(entries[key], speech[: int(round(sec * 16000))], 16000, subtype="PCM_16")
    return write_scp(root / "wav.scp", entries)


def test_long_inputs_get_the_stride_implied_count(small, long_scp, tmp_path):
    dumped = run_dump(small, long_scp, tmp_path / "dump")
    session = ort_session(small)
    rate = 50 if small.version == "v1_50hz" else 25
    for key, spec in (line.split() for line in open(long_scp)):
        sec = float(key[5:-1])
        wave = load_audio(spec, 16000)
        frames = wave.numel() // 160
        expected = math.ceil(math.ceil(frames / small.cfg.conv1_stride) / 2)
        assert expected == round(sec * rate)
        tokens = dumped[key]
        assert len(tokens) == expected, key
        mel = log_mel(wave)
        margins = decision_margins(small.stok, mel)
        # each 30 s window's kept tokens are onnxruntime's tokens of that window
        parts = [ort_tokens(session, mel[:, w.start: w.end])[w.keep_from: w.keep_to]
                 for w in plan_windows(frames, small.cfg)]
        assert_same_tokens(tokens, np.concatenate(parts), margins, f"onnxruntime windows, {key}")
        peer = peer_tokens(small, wave)
        if sec == PEER_SHORT_AT:  # the peer's count is short here (see the module docstring): compare what it gives
            n = len(peer)
            assert_same_tokens(tokens[:n], peer, margins[:n], f"peer, {key} (its first {n} tokens)")
        else:
            assert_same_tokens(tokens, peer, margins, f"peer, {key}")


@pytest.mark.parametrize("version", ["v2_25hz", "v3_25hz"])
def test_the_earlier_layout_is_what_the_peer_converter_rejects(version, tmp_path):
    """Why the writer changed: rotary tables as initializers trip the peer's v1/v2 converter, and a v3
    projection bias in a Constant node is missed by the v3 converter (the peer loads v3 non-strictly)."""
    s3 = require_peer("s3tokenizer")
    cfg = small_config(version)
    model = build_model(cfg, seed=3)
    proto = export_official(model)
    legacy_rotary_initializers(proto)
    path = str(tmp_path / "old.onnx")
    if version == "v2_25hz":
        onnx.save(proto, path)
        with pytest.raises(AssertionError):
            s3.onnx2torch(path)
    else:
        legacy_projection_bias_constant(proto)
        onnx.save(proto, path)
        with pytest.raises(RuntimeError, match="quantizer._codebook.project_down.bias"):
            peer_model(version, cfg, path)
    loaded = load_onnx(path, version, cfg=cfg).state_dict()  # stok still reads the earlier layout
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key


# ---------------------------------------------------------------------------------------- released size
def test_released_size_converts_strictly_and_gives_the_same_tokens(released, demo, tmp_path):
    cfg = released.cfg
    assert cfg.d_model == 1280 and cfg.vocab_size == (4096 if cfg.quantizer == "vq" else 6561)
    n_keys = {"v1_50hz": 96, "v1_25hz": 96, "v2_25hz": 102, "v3_25hz": 198}[released.version]
    assert len(released.converted_keys) == n_keys
    assert_weights_converted(released)
    keys = ["1307-5070-0000", "1308-5080-0001"]  # 4.0 s and 1.2 s
    session = ort_session(released)
    one_at_a_time, margins = {}, {}
    for key in keys:
        wave = load_audio(demo.dev[key], 16000)
        tokens = one_at_a_time[key] = stok_tokens(released, wave)
        margins[key] = decision_margins(released.stok, log_mel(wave))
        assert len(tokens) == cfg.token_count(wave.numel() // 160)
        assert_same_tokens(tokens, peer_tokens(released, wave), margins[key], f"peer, {key}")
        assert_same_tokens(tokens, ort_tokens(session, peer_log_mel(wave)), margins[key], f"onnxruntime, {key}")
    del session  # its copy of the weights, before the dump loads another
    assert_spread(np.concatenate(list(one_at_a_time.values())))
    dumped = run_dump(released, write_scp(tmp_path / "wav.scp", {k: demo.dev[k] for k in keys}), tmp_path / "dump")
    assert dumped.keys() == one_at_a_time.keys()
    for key, tokens in one_at_a_time.items():
        assert_same_tokens(tokens, dumped[key], margins[key], f"stok-dump-s3, {key}")
