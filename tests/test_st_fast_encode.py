"""``stok-dump-codes``' CPU fast path (:mod:`stok.models.speechtokenizer.fast_encode`) against ``model.encode``
on each utterance alone, at the released size (8 x 1024 codes, full-width SEANet and LSTMs): bitwise with the
exact ELU on batches below the LSTM's batching threshold and in exact mode on any batch (what ``--cpu_kernels auto``
runs where it is faster, chosen by the CPU's instruction sets), latents within float32 rounding and codes equal
but for near-ties otherwise; and its parts (the padded-batch LSTM, the length groups) on their own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stok.bin import dump_codes
from stok.core.storage import load_codes
from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, save_released
from stok.models.speechtokenizer.batched_lstm import MIN_BATCH, lstm_padded
from stok.models.speechtokenizer.dump_model import STDumpModel
from stok.models.speechtokenizer.fast_encode import FastEncoder, elu_by_exp
from stok.models.speechtokenizer.length_groups import length_groups
from tests.conftest import speechlike, write_data_dir
from tests.st_helpers import centre_latents, fill_from_frames, flip_margins, speechlike_batch

DURATIONS = [0.93, 0.41, 0.6, 0.2, 0.77, 0.013]  # mixed; the last shorter than the first conv's reflect padding
NEAR_TIE = 1e-5  # relative distance gap (of |residual|^2) under which float rounding decides a code


@pytest.fixture(scope="module")
def released():
    torch.manual_seed(0)
    model = SpeechTokenizer(SpeechTokenizerConfig()).eval()
    with torch.no_grad():
        z = centre_latents(model, speechlike_batch(1.0, seeds=range(3)))
        fill_from_frames([layer._codebook for layer in model.quantizer.layers],
                         z.transpose(1, 2).reshape(-1, z.shape[1]), seed=3, jitter=0.5)
    wavs = [torch.from_numpy(speechlike(d, seed=10 + i)) for i, d in enumerate(DURATIONS)]
    with torch.no_grad():
        ref = [model.encode(w[None, None])[:, 0] for w in wavs]  # [n_q, frames], each utterance alone
        latents = [model.encoder(w[None, None])[0][0] for w in wavs]  # [dimension, frames]
    return model, wavs, ref, latents


def padded(wavs):
    lens = torch.tensor([w.numel() for w in wavs])
    out = torch.zeros(len(wavs), 1, int(lens.max()))
    for i, w in enumerate(wavs):
        out[i, 0, : w.numel()] = w
    return out, lens


def test_the_codes_use_the_whole_range(released):
    model, _, ref, _ = released
    used = torch.cat([c.flatten() for c in ref]).unique()
    assert model.cfg.codebook_size == 1024 and len(used) >= 150 and int(used.min()) < 128 and int(used.max()) >= 896


def test_exact_elu_below_the_lstm_batch_threshold_is_bitwise_the_reference(released):
    model, wavs, ref, latents = released
    picks = [0, 3, 5][: MIN_BATCH - 1]
    wav, lens = padded([wavs[i] for i in picks])
    fast = FastEncoder(model, exact_elu=True)
    codes = fast.encode(wav, lens)
    for row, i in enumerate(picks):
        n = ref[i].shape[1]
        assert torch.equal(codes[:, row, :n], ref[i]), DURATIONS[i]
        assert not codes[:, row, n:].any()  # code 0 past the item's frames, as model.encode
    for row, i in enumerate(picks):
        assert torch.equal(fast.latents(wav, lens)[row], latents[i])


def test_exact_mode_on_a_batch_above_the_lstm_threshold_is_bitwise_the_reference(released):
    model, wavs, ref, latents = released
    assert len(wavs) > MIN_BATCH
    wav, lens = padded(wavs)
    fast = FastEncoder(model, exact=True)
    codes = fast.encode(wav, lens)
    for i, r in enumerate(ref):
        assert torch.equal(codes[:, i, : r.shape[1]], r), DURATIONS[i]
        assert not codes[:, i, r.shape[1]:].any()
    assert all(torch.equal(z, latents[i]) for i, z in enumerate(fast.latents(wav, lens)))


@pytest.mark.parametrize("isa, kernels", [("avx2,fma", "reference"),
                                          ("avx2,avx512f,avx512bw,avx512vl,avx512dq", "exact")])
def test_cpu_kernels_auto_takes_the_faster_exact_path_of_the_cpu(released, monkeypatch, isa, kernels):
    model, wavs, ref, _ = released
    monkeypatch.setenv("STOK_CPU_ISA", isa)
    dump = STDumpModel(model, n_q=3)
    dump.set_cpu_kernels("auto")
    assert dump.kernels == kernels and not dump.fast_cpu
    wav, lens = padded(wavs)
    for i, codes in enumerate(dump.encode(wav[:, 0], lens)):  # bitwise either way
        np.testing.assert_array_equal(codes, ref[i][:3].T.numpy())
    assert bool(dump.exact.weights._cache) == (kernels == "exact") and not dump.fast.weights._cache


def test_default_fast_path_on_a_mixed_batch_equals_the_reference_but_near_ties(released):
    model, wavs, ref, latents = released
    wav, lens = padded(wavs)
    fast = FastEncoder(model)
    got = fast.latents(wav, lens)
    codes = fast.encode(wav, lens)
    flips = []
    for i, (z, r) in enumerate(zip(got, ref)):
        assert z.shape == latents[i].shape
        assert (z - latents[i]).abs().max().item() <= 1e-4 * latents[i].abs().max().item(), DURATIONS[i]
        c = codes[:, i, : r.shape[1]]
        flips += flip_margins(model, z, r, c)
    assert all(abs(m) < NEAR_TIE for m in flips), flips


def test_dump_model_runs_the_reference_by_default_and_the_fast_path_when_asked(released):
    model, wavs, ref, _ = released
    dump = STDumpModel(model, n_q=3)
    wav, lens = padded(wavs)
    for i, codes in enumerate(dump.encode(wav[:, 0], lens)):  # default: model.encode, bitwise
        assert codes.dtype == np.int32 and codes.shape == (ref[i].shape[1], 3)
        np.testing.assert_array_equal(codes, ref[i][:3].T.numpy())
    assert not dump.fast.weights._cache
    dump.set_fast_cpu(True)
    fast = FastEncoder(model).encode(wav, lens, n_q=3)
    for i, codes in enumerate(dump.encode(wav[:, 0], lens)):
        np.testing.assert_array_equal(codes, fast[:, i, : ref[i].shape[1]].T.numpy())
    assert dump.fast.weights._cache  # the fast path ran (its folded weight-norm cache filled)


def test_dump_codes_cpu_kernels_option(released, tmp_path):
    """``stok-dump-codes`` (``--cpu_kernels auto``, i.e. reference, or ``reference``) writes exactly the
    one-at-a-time codes; ``--cpu_kernels fast`` the fast path's codes (equal to those but for near-ties, as
    tested above), from the same files."""
    model = released[0]
    data, wavs = write_data_dir(tmp_path, [0.5, 0.31, 0.77, 0.64, 0.45])  # 5 utterances: the batched LSTM
    model_dir = save_released(model, tmp_path / "model")
    with torch.no_grad():
        ref = {k: model.encode(w[None, None])[:, 0].T.numpy() for k, w in wavs.items()}
    got = {}
    for kernels in ("auto", "reference", "fast"):
        out = str(tmp_path / kernels)
        summary = dump_codes.main(["--model_dir", str(model_dir), "--data_dir", data, "--output_dir", out,
                                   "--device", "cpu", "--num_workers", "0", "--cpu_kernels", kernels])
        assert summary["entries_in_scp"] == len(wavs) and summary["failed"] == 0
        got[kernels] = dict(load_codes(f"{out}/st_codes.scp"))
    keys = sorted(wavs)
    wav, lens = padded([wavs[k] for k in keys])
    fast = FastEncoder(model).encode(wav, lens)  # the fast path on the same batch (checked against ref above)
    for row, key in enumerate(keys):
        np.testing.assert_array_equal(got["auto"][key], ref[key])
        np.testing.assert_array_equal(got["reference"][key], ref[key])
        np.testing.assert_array_equal(got["fast"][key], fast[:, row, : ref[key].shape[0]].T.numpy())
    with pytest.raises(SystemExit):
        dump_codes.main(["--model_dir", str(model_dir), "--data_dir", data, "--output_dir", str(tmp_path / "x"),
                         "--cpu_kernels", "onnx"])


def test_elu_by_exp_is_elu_to_float_rounding():
    x = torch.cat([torch.linspace(-30, 5, 100001), torch.tensor([0.0, -0.0, -1e-30, 1e-30])])
    out = torch.empty_like(x)
    elu_by_exp(x, out)
    assert (out - torch.nn.functional.elu(x)).abs().max().item() <= 1.2e-7
    y = x.clone()
    elu_by_exp(y, y)  # in place
    assert torch.equal(y, out)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_lstm_on_a_padded_batch_gives_each_item_its_own_result(bidirectional):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(24, 24, num_layers=2, bidirectional=bidirectional).eval()
    lengths = torch.tensor([37, 37, 20, 9, 1])
    x = torch.randn(37, len(lengths), 24)
    x[20:, 2] = 5.0  # padding that must not leak into item 2
    with torch.no_grad():
        y = lstm_padded(lstm, x, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone = lstm(x[:n, b: b + 1])[0][:, 0]
            assert (y[:n, b] - alone).abs().max().item() <= 1e-6, b
        small = lstm_padded(lstm, x[:, :2], lengths[:2])  # below MIN_BATCH: nn.LSTM item by item, bitwise
        assert torch.equal(small[:, 1], lstm(x[:, 1:2])[0][:, 0])
    with pytest.raises(ValueError, match="time-major"):
        lstm_padded(torch.nn.LSTM(4, 4, batch_first=True), torch.zeros(3, 4, 4), torch.tensor([3] * 4))


def test_length_groups_cover_every_item_once_longest_first():
    lengths = [5, 100, 98, 7, 6, 97, 99, 4, 8, 5]
    groups = length_groups(lengths, min_size=3, group_cost=50)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) >= 3 for g in groups)
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths, reverse=True)
    assert len(groups) == 2  # the long ones and the short ones: padding 90 x 6 frames costs more than a group
    assert length_groups(lengths, min_size=3, group_cost=10 ** 6) == [sorted(range(10), key=lambda i: -lengths[i])]
    assert length_groups([3, 1], min_size=4, group_cost=0) == [[0, 1]] and length_groups([], 4, 0) == []
