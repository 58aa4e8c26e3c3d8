"""The CPU fast paths give the reference results: S3Tokenizer's ``fast_cpu`` kernels against its plain path
(all four versions at the released size: tokens equal except near-ties, margin < 1e-5), HuBERT base's
``fast_cpu`` extractor against torchaudio's own model (released size, max abs difference <= 1e-4) and in bfloat16
against fp32 (k-means labels), and ``PackedLinear``'s bookkeeping (same parameters, plain path wherever packing does
not apply, repacking when the weight changes)."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio

from stok.models.hubert.configs import get_config
from stok.models.hubert.cpu_kernels import FastFrontend
from stok.models.hubert.extract import HubertExtractor
from stok.models.packed_linear import PackedLinear, use_packed_linears
from stok.models.s3 import cpu_infer
from stok.models.s3.config import VERSIONS, full_config
from stok.models.s3.frontend import log_mel
from stok.models.s3.margins import NEAR_TIE, decision_margins
from stok.models.s3.model import build_model
from tests.conftest import speechlike
from tests.hubert_helpers import loaded, tiny_model
from tests.s3_helpers import spread_codebook


def packed_in_use(module) -> bool:
    """Whether some PackedLinear of ``module`` holds a packed weight (the fast path really ran)."""
    return any(isinstance(m, PackedLinear) and m.__dict__.get("_weight_pack") is not None
               and m.__dict__["_weight_pack"].packed is not None for m in module.modules())


# ------------------------------------------------------------------------------------------ PackedLinear
def test_packed_linear_matches_linear_and_keeps_the_parameters():
    torch.manual_seed(0)
    plain = torch.nn.Linear(96, 40)
    packed = copy.deepcopy(plain)
    assert use_packed_linears(packed) == 1 and type(packed) is PackedLinear
    assert packed.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(3, 7, 96)
    with torch.no_grad():
        assert torch.allclose(packed(x), plain(x), atol=1e-5)
    assert packed_in_use(packed)
    y = packed(x)  # gradients wanted: the plain path, with autograd
    y.sum().backward()
    assert packed.weight.grad is not None and packed.weight.grad.shape == (40, 96)
    assert use_packed_linears(packed, False) == 1 and type(packed) is torch.nn.Linear


def test_packed_weight_follows_in_place_changes_and_copies():
    torch.manual_seed(0)
    lin = PackedLinear(64, 32)
    x = torch.randn(5, 64)
    with torch.no_grad():
        before = lin(x)
        lin.weight.mul_(2.0)  # in place: the packed copy must be rebuilt
        after = lin(x)
        assert torch.allclose(after - lin.bias, 2.0 * (before - lin.bias), atol=1e-5)
        clone = copy.deepcopy(lin)
        restored = pickle.loads(pickle.dumps(lin))
        assert torch.allclose(clone(x), after, atol=1e-6) and torch.allclose(restored(x), after, atol=1e-6)
        buf = io.BytesIO()
        torch.save(lin.state_dict(), buf)
        assert set(torch.load(io.BytesIO(buf.getvalue()))) == {"weight", "bias"}
        lin.packed = False
        assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))


# ------------------------------------------------------------------------------------------ S3Tokenizer
@pytest.mark.parametrize("version", VERSIONS)
def test_s3_fast_cpu_equals_the_reference_path_at_released_size(version, monkeypatch):
    model = build_model(full_config(version), seed=0)
    mels = [log_mel(torch.from_numpy(speechlike(s, 16000, seed=i))) for i, s in enumerate((2.7, 1.3))]
    # both attention paths at this size: the shorter utterance's batched products, the longer's per-head products
    monkeypatch.setattr(cpu_infer, "SHORT_ATTENTION", model.cfg.token_count(mels[1].shape[1]))
    if model.cfg.quantizer == "vq":
        spread_codebook(model, mels[:1])
    lens = torch.tensor([m.shape[1] for m in mels])
    batch = torch.zeros(2, mels[0].shape[0], int(lens.max()))
    for i, m in enumerate(mels):
        batch[i, :, : m.shape[1]] = m
    model.set_fast_cpu(False)
    reference = [model.quantize(m[None], lens[i: i + 1])[0][0].numpy() for i, m in enumerate(mels)]
    ref_hidden, _ = model.encoder(mels[0][None], lens[:1])
    margins = [decision_margins(model, m) for m in mels]
    assert not packed_in_use(model)
    model.set_fast_cpu(True)
    with torch.inference_mode():
        alone = [model.quantize(m[None], lens[i: i + 1])[0][0].numpy() for i, m in enumerate(mels)]
        codes, code_lens = model.quantize(batch, lens)
        hidden, _ = model.encoder(mels[0][None], lens[:1])
    assert packed_in_use(model) and model.cpu_inference._packs  # encoder calls and quantize's ragged path ran
    assert (hidden - ref_hidden).abs().max().item() <= 1e-4 * ref_hidden.abs().max().item()
    batched = [codes[i, : int(n)].numpy() for i, n in enumerate(code_lens)]
    assert len(set(reference[0].tolist())) >= len(reference[0]) // 10  # tokens vary: the comparison means something
    for got in (alone, batched):
        for ref, tok, margin in zip(reference, got, margins):
            assert len(tok) == len(ref)
            differ = np.nonzero(tok != ref)[0]
            assert (margin[differ] < NEAR_TIE).all(), f"{version}: tokens {differ.tolist()} differ off a near-tie"


# ------------------------------------------------------------------------------------------ HuBERT
@pytest.fixture(scope="module")
def hubert_base():
    """(torchaudio's hubert_base with random weights, norms moved off identity; a second copy for stok)."""
    torch.manual_seed(0)
    model = torchaudio.models.hubert_base().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model, copy.deepcopy(model)


@pytest.mark.parametrize("layer", [9, 12])
def test_hubert_base_fast_cpu_matches_torchaudio_at_released_size(hubert_base, layer):
    reference_model, model = hubert_base
    ex = HubertExtractor(loaded(model, get_config("base")), layer=layer)
    assert ex._fast_frontend is not None
    g = torch.Generator().manual_seed(layer)
    waves = [0.1 * torch.randn(24000, generator=g), 0.05 + 0.2 * torch.randn(9000, generator=g)]  # one off-centre
    with torch.inference_mode():
        expected = [reference_model.extract_features(w[None], num_layers=layer)[0][-1][0] for w in waves]
    alone = [ex.extract([w])[0] for w in waves]
    both = ex.extract(waves)  # the dump engine's form: per-utterance front end, one masked transformer pass
    assert packed_in_use(model.encoder) and not packed_in_use(reference_model)
    for got in (alone, both):
        for e, f in zip(expected, got):
            assert f.shape == e.shape
            assert (f - e).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind", ["base", "large"])
def test_fast_frontend_matches_torchaudio_feature_extractor(kind):
    """GroupNorm (base: folded into the first product) and LayerNorm (large: per block) front ends."""
    model, _ = tiny_model(kind, extractor_conv_layer_config=[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2)
    fe = model.feature_extractor
    assert FastFrontend.supports(fe)
    fast = FastFrontend(fe)
    g = torch.Generator().manual_seed(1)
    for wave in (0.3 * torch.randn(1234 * 5, generator=g), 1.0 + 0.01 * torch.randn(400 * 7, generator=g), torch.zeros(
            400)):
        with torch.no_grad():
            expected = fe(wave[None], None)[0][0]
            got = fast(wave)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-4 * max(1.0, expected.abs().max().item())


def test_hubert_fast_cpu_off_runs_torchaudio_modules():
    model, cfg = tiny_model("base")
    HubertExtractor(loaded(model, cfg), layer=2)
    assert any(type(m) is PackedLinear for m in model.modules())
    ex = HubertExtractor(loaded(model, cfg), layer=2, fast_cpu=False)
    assert not any(type(m) is PackedLinear for m in model.modules())
    ref, _ = model.extract_features(torch.ones(1, 4000) * 0.1, num_layers=2)
    assert torch.equal(ex.extract([torch.ones(4000) * 0.1])[0], ref[-1][0])


@pytest.mark.parametrize("isa", ["native", "emulated"])
def test_hubert_base_bf16_on_cpu_agrees_with_fp32_at_released_size(hubert_base, monkeypatch, isa):
    """``dtype="bfloat16"`` on CPU: the Linear layers multiply bfloat16 operands (natively, or emulated where the CPU
    lacks bfloat16 dot products), everything else stays fp32; layer-9 features within bfloat16 rounding of fp32
    and k-means labels (learned on the fp32 features) nearly all equal."""
    from stok.models.cpu_isa import cpu_isa
    from stok.models.kmeans.assign import Assigner
    from stok.models.kmeans.fit import fit_kmeans

    if isa == "emulated":
        monkeypatch.setenv("STOK_CPU_ISA", "avx2,fma")
    elif not cpu_isa().bf16:
        pytest.skip(f"this CPU ({cpu_isa().label}) has no bfloat16 dot products; the emulated case covers it")
    reference_model, _ = hubert_base
    g = torch.Generator().manual_seed(3)
    waves = [0.1 * torch.randn(48000, generator=g), 0.1 * torch.randn(30000, generator=g)]
    fp32 = HubertExtractor(loaded(copy.deepcopy(reference_model), get_config("base")), layer=9)
    bf16 = HubertExtractor(loaded(copy.deepcopy(reference_model), get_config("base")), layer=9, dtype="bfloat16")
    assert bf16.describe()["cpu_precision"] == "linear=bf16" and "cpu_precision" not in fp32.describe()
    ref, got = fp32.extract(waves), bf16.extract(waves)
    linears = [m for m in bf16.model.encoder.modules() if isinstance(m, PackedLinear)]
    assert linears and all(m.compute_dtype == torch.bfloat16 for m in linears)
    if isa == "native":
        assert any(m.__dict__["_weight_pack"].packed.dtype == torch.bfloat16 for m in linears
                   if m.__dict__.get("_weight_pack") is not None and m.__dict__["_weight_pack"].packed is not None)
    for r, f in zip(ref, got):
        assert f.dtype == torch.float32 and f.shape == r.shape
        assert 0 < (f - r).norm().item() <= 2e-2 * r.norm().item()
    frames = torch.cat(ref)
    assigner = Assigner(fit_kmeans(frames, 32, seed=0).centroids)
    same = (assigner.assign_tensor(frames) == assigner.assign_tensor(torch.cat(got))).double().mean().item()
    assert same >= 0.95, same
