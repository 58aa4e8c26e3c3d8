"""SpeechTokenizer at the released size (n_filters 64, strides [8,5,4,2], dimension 1024, BiLSTM encoder,
8 x 1024 codebooks; 166 tensors, ~482 MB): the public package as the oracle both ways, and stage 4
(``stok-dump-codes`` -> ``stok-decode`` -> ``stok-eval``) end to end on a 1 s utterance.

Random weights; the codebooks are filled from residual frames of speech-like audio and relabelled so that
every RVQ layer uses a code = 128 (mod 256) on the test utterance (the values two-byte compressed storage
decoded wrongly through kaldiio), and about 50 distinct codes spread over 0..1023 per layer.
"""

from __future__ import annotations

import json
import os

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from stok.bin import decode as decode_bin
from stok.bin import dump_codes, eval as eval_bin
from stok.core.storage import load_codes
from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, load_released, save_released
from tests import kaldi_cpp
from tests.conftest import write_data_dir
from tests.st_helpers import centre_latents, fill_from_frames, move_codes, speechlike_batch
from tests.st_peer import public_speechtokenizer
from tests.test_st_checkpoint import RELEASED_CONFIG

DURATIONS = [1.0, 0.37]  # one short utterance, and a shorter one to batch with it
TARGETS = [128, 384, 640, 896] * 2  # a code = 128 mod 256 that each RVQ layer uses on utt000
PCM_TOLERANCE = 2 / 32768
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),  # the package's deprecated weight_norm, jit
              pytest.mark.filterwarnings("ignore:Not enough STFT frames")]  # pystoi on the 0.37 s utterance


def _codebooks(model):
    layers = model.quantizer.layers if isinstance(model, SpeechTokenizer) else model.quantizer.vq.layers
    return [layer._codebook for layer in layers]


@torch.no_grad()
def _look_trained(model, seed: int) -> None:
    """Centred latents and codebooks of residual frames of speech-like audio (not the test audio): 200 frames
    from four 1 s clips in one batch (the full-size LSTMs dominate on CPU: a batch of short clips runs fewer
    sequential steps than one long clip)."""
    z = centre_latents(model, speechlike_batch(1.0, seeds=range(seed, seed + 4)))
    fill_from_frames(_codebooks(model), z.transpose(1, 2).reshape(-1, z.shape[1]), seed=seed, jitter=0.5)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("st_released")
    data, wavs = write_data_dir(root, DURATIONS)
    torch.manual_seed(0)
    model = SpeechTokenizer(SpeechTokenizerConfig()).eval()
    assert len(model.state_dict()) == 166 and model.cfg.codebook_size == 1024 and model.cfg.n_q == 8
    _look_trained(model, seed=10)
    move_codes(_codebooks(model), model.encode(wavs["utt000"][None, None])[:, 0], TARGETS)
    model_dir = save_released(model, root / "export")  # what the tools and the public package load
    codes = {k: model.encode(w[None, None]) for k, w in wavs.items()}  # one at a time: [n_q, 1, frames]
    recon = {k: model.decode(c) for k, c in codes.items()}
    return {"root": root, "data": data, "model_dir": model_dir, "model": model, "wavs": wavs,
            "codes": codes, "recon": recon}


def test_the_test_utterance_uses_codes_over_the_whole_range(released):
    c = released["codes"]["utt000"][:, 0]
    assert c.shape == (8, 50)
    for q in range(8):
        used = set(c[q].tolist())
        assert TARGETS[q] in used and len(used) >= 40 and min(used) < 128 and max(used) >= 896, (q, sorted(used))


@pytest.fixture(scope="module")
def public_cls():
    with public_speechtokenizer() as cls:
        yield cls


def _check_same(ours, theirs, wavs, codes=None):
    """Identical codes and decoded audio for each utterance, one at a time."""
    for key, wav in wavs.items():
        with torch.no_grad():
            ref = theirs.encode(wav[None, None])
            ref_recon = theirs.decode(ref)
        got = ours.encode(wav[None, None]) if codes is None else codes[key]
        assert torch.equal(got, ref), key
        torch.testing.assert_close(ours.decode(ref), ref_recon, rtol=0, atol=1e-6)


def test_public_package_loads_what_stok_saves(released, public_cls):
    d = released["model_dir"]
    theirs = public_cls.load_from_checkpoint(os.path.join(d, "config.json"), os.path.join(d, "SpeechTokenizer.pt"))
    theirs.eval()  # load_from_checkpoint: load_state_dict(strict=True)
    assert set(theirs.state_dict()) == set(released["model"].state_dict())
    _check_same(released["model"], theirs, released["wavs"], released["codes"])


def test_stok_loads_what_the_public_package_saves(released, public_cls, tmp_path):
    config = {**RELEASED_CONFIG}
    torch.manual_seed(7)
    theirs = public_cls(config).eval()  # the package's own initialisation
    _look_trained(theirs, seed=20)
    torch.save(theirs.state_dict(), tmp_path / "SpeechTokenizer.pt")
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = load_released(tmp_path)  # strict: every one of the 166 tensors
    assert ours.cfg == SpeechTokenizerConfig() and ours.cfg.leftovers["segment_size"] == 48000
    _check_same(ours, theirs, released["wavs"])


def test_dump_decode_eval_at_released_size(released, tmp_path):
    model_dir, ref = released["model_dir"], {k: c[:, 0].T.numpy() for k, c in released["codes"].items()}
    out = str(tmp_path / "codes")
    summary = dump_codes.main(["--model_dir", model_dir, "--data_dir", released["data"], "--output_dir", out,
                               "--device", "cpu", "--num_workers", "0", "--text_output"])
    assert summary["entries_in_scp"] == len(DURATIONS) and summary["failed"] == 0
    assert summary["model"]["codebook_size"] == 1024 and summary["model"]["n_q"] == 8
    assert summary["model"]["windows"] == {"above_frames": 3000, "span_frames": 3000, "margin_frames": 250}
    scp = os.path.join(out, "st_codes.scp")
    plain, stok, cpp = dict(kaldiio.load_scp_sequential(scp)), dict(load_codes(scp)), kaldi_cpp.float_matrices(scp)
    lines = open(os.path.join(out, "st_codes.txt")).read().splitlines()
    text = {k: np.array(t, dtype=np.int64) for k, *t in (line.split() for line in lines)}
    assert sorted(plain) == sorted(stok) == sorted(cpp) == sorted(text) == sorted(ref)
    for key, codes in ref.items():
        assert codes.shape == (-(-released["wavs"][key].numel() // 320), 8)
        assert plain[key].dtype == np.float32 and np.array_equal(plain[key], np.rint(plain[key]))
        for got in (plain[key].astype(np.int64), stok[key], cpp[key], text[key].reshape(codes.shape)):
            np.testing.assert_array_equal(got, codes)

    dec = str(tmp_path / "dec")
    s = decode_bin.main(["--model_dir", model_dir, "--codes_scp", scp, "--output_dir", dec, "--device", "cpu"])
    assert s["decoded_now"] == len(DURATIONS)
    for key, path in (line.split() for line in open(os.path.join(dec, "wav.scp"))):
        wav, sr = sf.read(path, dtype="float32")
        ref_wav = np.clip(released["recon"][key][0, 0].numpy(), -1, 1)
        assert sr == 16000 and len(wav) == len(ref_wav) == len(ref[key]) * 320
        np.testing.assert_allclose(wav, ref_wav, rtol=0, atol=PCM_TOLERANCE)

    report = eval_bin.main(["--model_dir", model_dir, "--data_dir", released["data"], "--output_dir",
                            str(tmp_path / "eval"), "--device", "cpu", "--num_workers", "0"])
    assert report["utterances"] == len(DURATIONS) and not report["failed"] and report["codebook_size"] == 1024
    all_codes = np.concatenate(list(ref.values()))
    for q, usage in enumerate(report["codebook_usage"]):
        assert usage["layer"] == q + 1 and usage["frames"] == len(all_codes)
        assert usage["codes_used"] == len(set(all_codes[:, q].tolist()))
    for row in report["per_utterance"]:
        wav = released["wavs"][row["utt"]]
        rec = released["recon"][row["utt"]][0, 0, : wav.numel()].numpy()
        assert row["si_snr"] == pytest.approx(eval_bin.si_snr(wav.numpy(), rec), rel=1e-5)


def test_long_utterance_windows_and_stream_at_released_size(released, tmp_path):
    """The windowed encode and the streamed decode at the released size, on the 1 s utterance with windows of
    0.4 s (20 frames, 5 of context) and chunks of 0.3 s: the codes are exactly what ``encode_windows`` gives with the
    model's encode (how far windows this short agree with whole-utterance codes is not the point here: 0.1 s of
    context is far too little; the defaults' agreement is ``bench/st_long_encode.py``'s); the 0.37 s utterance
    (19 frames) is encoded whole, exactly; the streamed audio equals whole decoding within a PCM step."""
    from stok.models.speechtokenizer.long_audio import encode_windows

    model, wave = released["model"], released["wavs"]["utt000"]
    out = str(tmp_path / "codes")
    summary = dump_codes.main(["--model_dir", released["model_dir"], "--data_dir", released["data"], "--output_dir",
                               out, "--device", "cpu", "--num_workers", "0", "--window_seconds", "0.4",
                               "--window_margin_seconds", "0.1"])
    assert summary["model"]["windows"] == {"above_frames": 20, "span_frames": 20, "margin_frames": 5}
    got = dict(load_codes(os.path.join(out, "st_codes.scp")))
    with torch.inference_mode():
        windowed = encode_windows(model.encode, wave, 320, 20, 5)
    np.testing.assert_array_equal(got["utt000"], windowed.T.numpy())
    np.testing.assert_array_equal(got["utt001"], released["codes"]["utt001"][:, 0].T.numpy())

    scp = os.path.join(out, "st_codes.scp")
    dec = str(tmp_path / "dec")
    decode_bin.main(["--model_dir", released["model_dir"], "--codes_scp", scp, "--output_dir", dec, "--device",
                     "cpu", "--chunk_seconds", "0.3"])
    with torch.inference_mode():
        ref = np.clip(model.decode(torch.from_numpy(got["utt000"].T.copy())[:, None])[0, 0].numpy(), -1, 1)
    wav, _ = sf.read(os.path.join(dec, "wav", "utt000.wav"), dtype="float32")
    np.testing.assert_allclose(wav, ref, rtol=0, atol=PCM_TOLERANCE)
