"""Exact batched HuBERT extraction: batched == one at a time, layers, the average, long files in chunks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stok.core.frames import hubert_frames
from stok.models.hubert.extract import HubertExtractor, chunk_bounds, conv_frames, parse_layer
from tests.hubert_helpers import loaded, tiny_model

LENGTHS = (16000, 5000, 401, 399, 12345, 7777, 30000)


def waves(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.3 * torch.randn(n, generator=g) for n in lengths]


def max_diff(a, b):
    assert [x.shape for x in a] == [y.shape for y in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["base", "large"])
@pytest.mark.parametrize("frontend", ["per_item", "batched"])
@pytest.mark.parametrize("layer", [2, "avg"])
def test_batched_equals_one_at_a_time(kind, frontend, layer):
    model, cfg = tiny_model(kind)
    ex = HubertExtractor(loaded(model, cfg, normalize=kind == "large"), layer=layer, frontend=frontend)
    ws = waves()
    one = [ex.extract([w])[0] for w in ws]
    both = ex.extract(ws)
    assert [f.shape[0] for f in one] == [max(1, hubert_frames(n)) for n in LENGTHS]
    assert max_diff(one, both) <= 1e-4
    # padded input form (what the dump engine hands over)
    padded = torch.nn.utils.rnn.pad_sequence(ws, batch_first=True)
    assert max_diff(one, ex.extract_padded(padded, torch.tensor(LENGTHS))) <= 1e-4


def test_naive_padded_batching_is_wrong_for_base():
    """Why the care: torchaudio's batched call with zero padding changes base's GroupNorm statistics."""
    model, cfg = tiny_model("base")
    ws = waves((16000, 4000))
    padded = torch.nn.utils.rnn.pad_sequence(ws, batch_first=True)
    naive, _ = model.extract_features(padded, torch.tensor([16000, 4000]), num_layers=2)
    ours = HubertExtractor(loaded(model, cfg), layer=2).extract([ws[1]])[0]
    assert (naive[1][1, : ours.shape[0]] - ours).abs().max().item() > 1e-2


@pytest.mark.parametrize("kind", ["base", "large"])
def test_layer_is_fairseq_output_layer(kind):
    """--layer L = output of transformer layer L (torchaudio/fairseq extract_features, no final LayerNorm)."""
    model, cfg = tiny_model(kind)
    w = waves((9000,))[0]
    ref, _ = model.extract_features(w[None])
    for layer in (1, 2, 3):
        ours = HubertExtractor(loaded(model, cfg), layer=layer, normalize=False).extract([w])[0]
        assert (ref[layer - 1][0] - ours).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["base", "large"])
def test_avg_is_mean_of_hf_hidden_states(kind):
    """avg = mean of the L+1 states HF returns: transformer input (after pos conv; + LN for post-LN), the layer
    outputs, the last one with the final LayerNorm for pre-LN models."""
    model, cfg = tiny_model(kind)
    w = waves((9000,))[0]
    with torch.no_grad():
        conv, _ = model.feature_extractor(w[None], None)
        x = model.encoder.feature_projection(conv)
        x = x + model.encoder.transformer.pos_conv_embed(x)
        if not cfg["encoder_layer_norm_first"]:  # post-LN (base): LN before the layers
            x = model.encoder.transformer.layer_norm(x)
        states = [x]
        for layer in model.encoder.transformer.layers:
            x, _ = layer(x)
            states.append(x)
        if cfg["encoder_layer_norm_first"]:
            states[-1] = model.encoder.transformer.layer_norm(states[-1])
        ref = torch.stack(states).mean(0)[0]
    ours = HubertExtractor(loaded(model, cfg), layer="avg", normalize=False).extract([w])[0]
    assert len(states) == cfg["encoder_num_layers"] + 1
    assert (ref - ours).abs().max().item() <= 1e-5


def test_waveform_normalisation_is_per_utterance():
    model, cfg = tiny_model("large")
    ex = HubertExtractor(loaded(model, cfg), layer=2, normalize=True)
    w = waves((8000,))[0]
    a = ex.extract([w])[0]
    b = ex.extract([5.0 * w + 0.1])[0]  # scale and offset are normalised away
    assert (a - b).abs().max().item() <= 1e-3
    ref = HubertExtractor(loaded(model, cfg), layer=2, normalize=False).extract([F.layer_norm(w, w.shape)])[0]
    assert (a - ref).abs().max().item() <= 1e-5


def test_parse_layer():
    assert parse_layer("avg", 12) == "avg" and parse_layer("9", 12) == 9 and parse_layer(12, 12) == 12
    for bad in ("0", "13", "last", -1):
        with pytest.raises(ValueError):
            parse_layer(bad, 12)


@pytest.mark.parametrize("n", [400, 1000, 3200, 3201, 9999, 10080, 50000, 160000, 160123])
@pytest.mark.parametrize("max_chunk", [800, 3200, 10000, 48000])
def test_chunk_bounds_give_exactly_the_whole_file_frames(n, max_chunk):
    bounds = chunk_bounds(n, max_chunk)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    frame = 0
    for s, e in bounds:
        assert s % 320 == 0 and s // 320 == frame  # each chunk starts at its first frame's samples
        frame += conv_frames(e - s)
        assert e - s <= max_chunk + 400 and (e - s <= max_chunk or e == n)
    assert frame == conv_frames(n)  # nothing lost, nothing duplicated


def test_long_file_in_chunks():
    model, cfg = tiny_model("base")
    w = waves((40000,))[0]
    whole = HubertExtractor(loaded(model, cfg), layer=2, max_chunk=0).extract([w])[0]
    ex = HubertExtractor(loaded(model, cfg), layer=2, max_chunk=16000)
    chunked = ex.extract([w])[0]
    assert chunked.shape == whole.shape == (hubert_frames(40000), cfg["encoder_embed_dim"])
    # each chunk equals that chunk run alone, placed at its frames
    for s, e in chunk_bounds(40000, 16000):
        alone = HubertExtractor(loaded(model, cfg), layer=2, max_chunk=0).extract([w[s:e]])[0]
        assert (chunked[s // 320: s // 320 + alone.shape[0]] - alone).abs().max().item() <= 1e-5
    # batched with other utterances, chunks included, still equal to one at a time
    others = waves((5000, 20000), seed=3)
    both = ex.extract([others[0], w, others[1]])
    assert (both[1] - chunked).abs().max().item() <= 1e-4
    assert (both[0] - ex.extract([others[0]])[0]).abs().max().item() <= 1e-4


def test_reduced_precision_runs_and_stays_close():
    model, cfg = tiny_model("base")
    ws = waves((8000, 3000))
    ref = HubertExtractor(loaded(model, cfg), layer="avg").extract(ws)
    low = HubertExtractor(loaded(model, cfg), layer="avg", dtype="bfloat16").extract(ws)
    for a, b in zip(ref, low):
        assert b.dtype == torch.float32 and b.shape == a.shape
        assert (a - b).abs().max().item() <= 0.1 * a.abs().max().item()
