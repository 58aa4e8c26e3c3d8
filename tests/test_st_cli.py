"""Stage 4 end to end on real files: ``stok-dump-codes``, ``stok-decode`` and ``stok-eval`` on a tiny
SpeechTokenizer saved in the released layout (config.json + SpeechTokenizer.pt)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from stok.bin import decode as decode_bin
from stok.bin import dump_codes, eval as eval_bin
from stok.data.audio import load_audio
from stok.core.storage import load_codes
from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, load_released, save_released
from tests.conftest import speechlike, write_corpus

DURATIONS = [1.3, 0.45, 2.71, 0.9, 1.64, 2.2]


def _trained_codebooks(model: SpeechTokenizer) -> SpeechTokenizer:
    """A random model made to look trained: its latents centred (a random encoder's frames sit in a tight
    cluster far from 0, where codes barely differ), then one training-mode forward, whose k-means init
    fills every codebook from real encoder frames."""
    torch.manual_seed(0)
    wav = torch.from_numpy(np.stack([speechlike(2.0, seed=s) for s in range(4)]))[:, None]
    with torch.no_grad():
        z, _ = model.encoder(wav)
        model.encoder.model[-1].conv.conv.bias -= z.mean((0, 2))
    model.train()
    model(wav)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stcli")
    torch.manual_seed(0)
    cfg = SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=8, codebook_size=16, n_q=3,
                                lstm_layers=1)
    model = _trained_codebooks(SpeechTokenizer(cfg))
    model_dir = str(root / "export")
    save_released(model, model_dir)
    scp = write_corpus(str(root / "audio"), DURATIONS)
    data = root / "data"
    data.mkdir()
    (data / "wav.scp").write_text(open(scp).read())
    return {"root": root, "model_dir": model_dir, "data": str(data), "model": load_released(model_dir)}


def _waves(data_dir):
    return {key: load_audio(path, 16000) for key, path in (line.split() for line in open(os.path.join(data_dir, "wav.scp")))}


def _single_codes(model, data_dir):
    return {key: model.encode(wav[None, None]).squeeze(1).T.numpy() for key, wav in _waves(data_dir).items()}


def test_dump_codes_equal_one_at_a_time_and_resume(setup):
    out = str(setup["root"] / "codes")
    args = ["--model_dir", setup["model_dir"], "--data_dir", setup["data"], "--output_dir", out,
            "--device", "cpu", "--num_workers", "0", "--batch_seconds", "5", "--text_output"]
    summary = dump_codes.main(args)
    assert summary["entries_in_scp"] == len(DURATIONS) and summary["failed"] == 0
    assert summary["model"]["model"] == "speechtokenizer" and summary["model"]["n_q"] == 3
    got = dict(load_codes(os.path.join(out, "st_codes.scp")))
    ref = _single_codes(setup["model"], setup["data"])
    assert sorted(got) == sorted(ref)
    for key, wav in _waves(setup["data"]).items():
        assert got[key].shape == (-(-wav.numel() // 320), 3)
        np.testing.assert_array_equal(got[key], ref[key])  # batched (bucketed, padded) == one at a time
    assert len({int(c) for v in got.values() for c in v[:, 0]}) > 1  # codes are spread, not degenerate
    first = open(os.path.join(out, "st_codes.txt")).readline().split()
    assert first[0] in got and len(first) == 1 + got[first[0]].size
    # a rerun resumes: nothing is redone, the scp still has one entry per utterance
    again = dump_codes.main(args)
    assert again["entries_in_scp"] == len(DURATIONS) and again["written_now"] == 0


def test_dump_codes_first_codebooks_only_and_bad_options(setup, tmp_path):
    out = str(tmp_path / "codes1")
    dump_codes.main(["--model_dir", setup["model_dir"], "--data_dir", setup["data"], "--output_dir", out,
                     "--device", "cpu", "--num_workers", "0", "--n_q", "1"])
    got = dict(load_codes(os.path.join(out, "st_codes.scp")))
    for key, codes in _single_codes(setup["model"], setup["data"]).items():
        np.testing.assert_array_equal(got[key], codes[:, :1])
    with pytest.raises(SystemExit, match="--n_q 4 but the model has 3"):
        dump_codes.main(["--model_dir", setup["model_dir"], "--data_dir", setup["data"], "--output_dir",
                         str(tmp_path / "x"), "--device", "cpu", "--num_workers", "0", "--n_q", "4"])
    with pytest.raises(SystemExit, match="nowhere/SpeechTokenizer.pt not found|nowhere/config.json not found"):
        dump_codes.main(["--model_dir", str(tmp_path / "nowhere"), "--data_dir", setup["data"],
                         "--output_dir", str(tmp_path / "y")])


def test_decode_writes_wavs_and_layers_from_a_given_layer(setup, tmp_path):
    codes_dir = str(tmp_path / "codes")
    dump_codes.main(["--model_dir", setup["model_dir"], "--data_dir", setup["data"], "--output_dir", codes_dir,
                     "--device", "cpu", "--num_workers", "0"])
    scp = os.path.join(codes_dir, "st_codes.scp")
    codes = dict(load_codes(scp))
    model = setup["model"]
    out = str(tmp_path / "dec")
    summary = decode_bin.main(["--model_dir", setup["model_dir"], "--codes_scp", scp, "--output_dir", out,
                               "--device", "cpu", "--batch_seconds", "3"])
    assert summary["decoded_now"] == len(codes)
    listed = dict(line.split() for line in open(os.path.join(out, "wav.scp")))
    assert sorted(listed) == sorted(codes)
    for key, c in codes.items():
        wav, sr = sf.read(listed[key], dtype="float32")
        assert sr == 16000 and len(wav) == len(c) * 320
        ref = model.decode(torch.from_numpy(c.T)[:, None, :])[0, 0].numpy()
        np.testing.assert_allclose(wav, np.clip(ref, -1, 1), atol=2 / 32768)  # 16-bit PCM
    # from layer 2 on (0-based 1): only codes[:, 1:], read as layers 1..2
    out1 = str(tmp_path / "dec1")
    decode_bin.main(["--model_dir", setup["model_dir"], "--codes_scp", scp, "--output_dir", out1,
                     "--device", "cpu", "--first_layer", "1"])
    key = sorted(codes)[0]
    wav = sf.read(os.path.join(out1, "wav", key + ".wav"), dtype="float32")[0]
    ref = model.decode(torch.from_numpy(codes[key][:, 1:].T)[:, None, :], first_layer=1)[0, 0].numpy()
    np.testing.assert_allclose(wav, np.clip(ref, -1, 1), atol=2 / 32768)
    # a rerun skips what is written
    assert decode_bin.main(["--model_dir", setup["model_dir"], "--codes_scp", scp, "--output_dir", out,
                            "--device", "cpu"])["decoded_now"] == 0
    with pytest.raises(SystemExit, match="layers 2..3 asked for, the model has 3"):
        decode_bin.main(["--model_dir", setup["model_dir"], "--codes_scp", scp, "--output_dir", out,
                         "--first_layer", "2", "--n_q", "2"])


def test_eval_report_metrics_usage_and_plots(setup, tmp_path, caplog):
    caplog.set_level("INFO", logger="stok.eval")
    data = tmp_path / "data"
    data.mkdir()
    lines = open(os.path.join(setup["data"], "wav.scp")).read()
    (tmp_path / "broken.flac").write_bytes(b"not audio at all")
    (data / "wav.scp").write_text(lines + f"zz_broken {tmp_path / 'broken.flac'}\n")
    out = str(tmp_path / "eval")
    report = eval_bin.main(["--model_dir", setup["model_dir"], "--data_dir", str(data), "--output_dir", out,
                            "--device", "cpu", "--num_workers", "0", "--sweep"])
    assert report["utterances"] == len(DURATIONS) and list(report["failed"]) == ["zz_broken"]
    saved = json.load(open(os.path.join(out, "report.json")))
    assert saved["mean"] == report["mean"]
    m = report["mean"]
    assert m["mel_distance"] > 0 and np.isfinite(m["si_snr"])
    if m["stoi"] is not None:
        assert -1.0 <= m["stoi"] <= 1.0
    assert sorted(report["mel_distance_by_layers"]) == ["1", "2", "3"]
    by = report["mel_distance_by_layers"]  # the curve is printed too, with the drop from layer 1 to all layers
    drop = 100.0 * (by["1"] - by["3"]) / by["1"]
    assert (f"mel distance decoding RVQ layers 1..k: 1: {by['1']:.3f}, 2: {by['2']:.3f}, 3: {by['3']:.3f} "
            f"(all 3 layers {drop:.1f}% below layer 1 alone)") in caplog.text
    usage = report["codebook_usage"]
    assert [u["layer"] for u in usage] == [1, 2, 3]
    total_frames = sum(r for r in [len(c) for c in _single_codes(setup["model"], setup["data"]).values()])
    assert all(u["frames"] == total_frames for u in usage)
    assert all(1 <= u["codes_used"] <= 16 and 1.0 <= u["perplexity"] <= u["codes_used"] + 1e-6 for u in usage)
    # the metrics of one utterance, recomputed by hand
    row = report["per_utterance"][0]
    wav = load_audio(os.path.join(setup["root"], "audio", row["utt"] + ".flac"), 16000)
    rec = setup["model"].decode(setup["model"].encode(wav[None, None]))[0, 0, : wav.numel()]
    assert row["si_snr"] == pytest.approx(eval_bin.si_snr(wav.numpy(), rec.numpy()), rel=1e-5)
    for name in ("code_usage.png", "mel_distance.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
