"""Long utterances: SpeechTokenizer windows and streamed decoding, block-wise front ends and audio reading give what
the whole-utterance computation gives (bitwise where the model allows), through the tools on real files.

Memory budgets on child processes are in ``tests/test_long_input_memory.py``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

import stok.data.audio as audio
import stok.models.mfcc as mfcc
import stok.models.s3.frontend as s3_frontend
from stok.bin import decode as decode_bin
from stok.bin import dump_codes
from stok.core.storage import load_codes
from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, load_released, save_released
from stok.models.speechtokenizer.long_audio import decode_stream, encode_windows, plan_windows
from tests.conftest import speechlike
from tests.rss_helpers import write_long
from tests.st_helpers import centre_latents, fill_from_frames, speechlike_batch

HOP = 320
LONG_S, SHORT_S = 9.3, 1.7


@pytest.mark.parametrize("span,margin", [(20, 5), (3000, 250), (7, 0), (9, 4)])
def test_windows_tile_the_frames_and_keep_their_margin(span, margin):
    for frames in list(range(1, 80)) + [2999, 3000, 3001, 5500, 7777]:
        windows = plan_windows(frames, span, margin)
        assert windows[0].start == 0 and windows[0].keep_from == 0 and windows[-1].end == windows[-1].keep_to == frames
        kept = [f for w in windows for f in range(w.keep_from, w.keep_to)]
        assert kept == list(range(frames))  # every frame kept once, in order
        for i, w in enumerate(windows):
            assert 0 <= w.start <= w.keep_from < w.keep_to <= w.end <= frames and w.end - w.start <= span
            if i > 0:
                assert w.keep_from - w.start >= margin
            if i < len(windows) - 1:
                assert w.end - w.keep_to >= margin
        assert (len(windows) == 1) == (frames <= span)
    with pytest.raises(ValueError):
        plan_windows(100, 10, 5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small SpeechTokenizer (bidirectional 2-layer LSTM, as released) in the released layout, codebooks filled
    from its own latents, and a data dir with one long and one short utterance."""
    root = tmp_path_factory.mktemp("long_st")
    torch.manual_seed(0)
    cfg = SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=8, codebook_size=64, n_q=3)
    model = SpeechTokenizer(cfg).eval()
    z = centre_latents(model, speechlike_batch(2.0, seeds=range(4)))
    fill_from_frames([layer._codebook for layer in model.quantizer.layers], z.transpose(1, 2).reshape(-1, 32))
    model_dir = save_released(model, root / "export")
    data = root / "data"
    data.mkdir()
    paths = {"long": write_long(str(root / "long.wav"), LONG_S), "short": write_long(str(root / "short.wav"), SHORT_S)}
    (data / "wav.scp").write_text("".join(f"{k} {p}\n" for k, p in sorted(paths.items())))
    waves = {k: audio.load_audio(p, 16000) for k, p in paths.items()}
    return {"root": root, "model_dir": model_dir, "data": str(data), "model": load_released(model_dir), "waves": waves}


def _dump(tiny, out, *extra):
    return dump_codes.main(["--model_dir", tiny["model_dir"], "--data_dir", tiny["data"], "--output_dir", out,
                            "--device", "cpu", "--num_workers", "0", *extra])


@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_dump_codes_encodes_a_long_utterance_in_windows(tiny, tmp_path, kernels):
    """--window_seconds 2 --window_margin_seconds 0.5: the 9.3 s utterance in windows of 100 frames (exactly what
    encode_windows gives with the model's own encode), the 1.7 s one whole (exactly model.encode); the windowed
    codes agree with whole-utterance encoding except at float near-ties (a misplaced window would not)."""
    model, waves = tiny["model"], tiny["waves"]
    out = str(tmp_path / "codes")
    summary = _dump(tiny, out, "--window_seconds", "2", "--window_margin_seconds", "0.5", "--cpu_kernels", kernels)
    assert summary["model"]["windows"] == {"above_frames": 100, "span_frames": 100, "margin_frames": 25}
    got = dict(load_codes(os.path.join(out, "st_codes.scp")))
    with torch.inference_mode():
        whole = {k: model.encode(w[None, None])[:, 0] for k, w in waves.items()}
        if kernels == "reference":
            windowed = encode_windows(model.encode, waves["long"], HOP, 100, 25)
            np.testing.assert_array_equal(got["long"], windowed.T.numpy())
    assert got["long"].shape == (-(-waves["long"].numel() // HOP), 3)
    if kernels == "reference":
        np.testing.assert_array_equal(got["short"], whole["short"].T.numpy())
    agree = (got["long"] == whole["long"].T.numpy()).all(1).mean()
    assert agree > 0.97, agree

    # the windows are part of the dump's fingerprint: a resume with others is refused
    with pytest.raises(SystemExit, match="windows"):
        _dump(tiny, out, "--window_seconds", "3", "--window_margin_seconds", "0.5", "--cpu_kernels", kernels)


def test_dump_codes_window_zero_encodes_whole_and_bad_windows_are_refused(tiny, tmp_path):
    out = str(tmp_path / "codes")
    _dump(tiny, out, "--window_seconds", "0")
    got = dict(load_codes(os.path.join(out, "st_codes.scp")))
    with torch.inference_mode():
        for k, w in tiny["waves"].items():
            np.testing.assert_array_equal(got[k], tiny["model"].encode(w[None, None])[:, 0].T.numpy())
    for bad, msg in ((["--window_seconds", "-1"], "must be >= 0"),
                     (["--window_seconds", "2", "--window_margin_seconds", "1"], "under half the window")):
        with pytest.raises(SystemExit, match=msg):
            _dump(tiny, str(tmp_path / "bad"), *bad)
        assert not os.path.exists(tmp_path / "bad")


@pytest.mark.parametrize("lstm_layers", [2, 0])
def test_decode_stream_equals_whole_decoding(lstm_layers):
    torch.manual_seed(1)
    model = SpeechTokenizer(SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=8, codebook_size=64,
                                                  n_q=3, lstm_layers=lstm_layers)).eval()
    frames = 161  # more than the decoder's reach (~13 frames) on either side of several chunks
    codes = torch.randint(0, 64, (3, 1, frames))
    with torch.inference_mode():
        for first in (0, 1):
            whole = model.decode(codes[first:], first_layer=first)[0, 0]
            for chunk in (1, 2, 13, 100, frames - 1, frames, 1000):
                blocks = list(decode_stream(model, codes[first:, 0], first, chunk))
                assert len(blocks) == -(-frames // chunk) or chunk < 20  # short chunks may wait for context
                got = torch.cat(blocks)
                assert got.shape == whole.shape
                assert (got - whole).abs().max() <= 1e-6 * whole.abs().max()


def test_decode_tool_streams_a_long_utterance(tiny, tmp_path):
    """--chunk_seconds 1: the 9.3 s utterance decoded as a stream of 50-frame chunks, the 1.7 s one... also
    streamed; both equal whole decoding within one PCM step."""
    out = str(tmp_path / "codes")
    _dump(tiny, out)
    scp = os.path.join(out, "st_codes.scp")
    codes = dict(load_codes(scp))
    dec = str(tmp_path / "dec")
    summary = decode_bin.main(["--model_dir", tiny["model_dir"], "--codes_scp", scp, "--output_dir", dec,
                               "--device", "cpu", "--chunk_seconds", "1"])
    assert summary["decoded_now"] == 2
    with torch.inference_mode():
        for key, c in codes.items():
            ref = np.clip(tiny["model"].decode(torch.from_numpy(c.T.copy())[:, None])[0, 0].numpy(), -1, 1)
            wav, rate = sf.read(os.path.join(dec, "wav", key + ".wav"), dtype="float32")
            assert rate == 16000 and len(wav) == len(c) * HOP
            np.testing.assert_allclose(wav, ref, rtol=0, atol=1.5 / 32768)
    with pytest.raises(SystemExit, match="chunk_seconds"):
        decode_bin.main(["--model_dir", tiny["model_dir"], "--codes_scp", scp, "--output_dir", dec, "--device",
                         "cpu", "--chunk_seconds", "-2"])


def test_decode_holds_one_batch_of_codes_not_the_scps(tiny, tmp_path, monkeypatch):
    """stok-decode keeps keys, lengths and locations of the scp; each record's codes are read when its batch is
    decoded and dropped after it (memory does not grow with the number of utterances), and the audio is the same
    as from a whole-scp read."""
    import weakref

    out = str(tmp_path / "codes")
    _dump(tiny, out)
    lines = open(os.path.join(out, "st_codes.scp")).read().split("\n")
    scp = str(tmp_path / "six.scp")  # six utterances: each record three times under other keys
    with open(scp, "w") as f:
        for i in range(3):
            for line in filter(None, lines):
                key, loc = line.split(" ", 1)
                f.write(f"{key}{i} {loc}\n")
    codes = dict(load_codes(scp))
    alive, reads, most = [], [], [0]
    real_read = decode_bin.CodeRecords.read

    def read(self, key, location):
        c = real_read(self, key, location)
        reads.append(key)
        alive.append(weakref.ref(c))
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return c

    monkeypatch.setattr(decode_bin.CodeRecords, "read", read)
    items = decode_bin.read_codes(scp, 0, tiny["model"].cfg.n_q, 0, tiny["model"].cfg.codebook_size)
    assert all(isinstance(n, int) and isinstance(loc, str) for _, n, loc in items)  # no arrays kept
    dec = str(tmp_path / "dec")
    decode_bin.main(["--model_dir", tiny["model_dir"], "--codes_scp", scp, "--output_dir", dec, "--device", "cpu",
                     "--batch_seconds", "0.5", "--chunk_seconds", "0"])
    # one utterance a batch here, each read once; alive at once: the batch decoded and the one before it
    assert sorted(reads) == sorted(codes) and len(codes) == 6 and most[0] <= 2
    with torch.inference_mode():
        for key, c in codes.items():
            ref = np.clip(tiny["model"].decode(torch.from_numpy(c.T.copy())[:, None])[0, 0].numpy(), -1, 1)
            wav, _ = sf.read(os.path.join(dec, "wav", key + ".wav"), dtype="float32")
            np.testing.assert_allclose(wav, ref, rtol=0, atol=1.5 / 32768)


def test_s3_log_mel_and_mfcc_in_blocks_are_bitwise_whole(monkeypatch):
    for seconds in (3.0, 7.77, 12.5):
        wave = torch.from_numpy(speechlike(seconds, seed=4))
        whole_mel, whole_mfcc = s3_frontend.log_mel(wave), mfcc.mfcc_features(wave)
        with monkeypatch.context() as m:
            m.setattr(s3_frontend, "BLOCK_FRAMES", 128)  # 20 or more blocks
            m.setattr(mfcc, "BLOCK_FRAMES", 40)
            blocked_mel, blocked_mfcc = s3_frontend.log_mel(wave), mfcc.mfcc_features(wave)
        assert blocked_mel.shape == whole_mel.shape == (128, wave.numel() // 160)
        assert torch.equal(blocked_mel, whole_mel)
        assert blocked_mfcc.shape == whole_mfcc.shape and torch.equal(blocked_mfcc, whole_mfcc)


@pytest.mark.parametrize("rate,channels", [(44100, 2), (22050, 1), (16000, 3), (8000, 1)])
def test_load_audio_in_blocks_is_whole_to_rounding(tmp_path, monkeypatch, rate, channels):
    """Averaged and resampled block by block: the same length and the whole-file samples to float32 rounding
    (torchaudio's resampling convolution sums in another order on inputs of another length: ~3e-8 here); a block
    in the wrong place or a filter cut short would be off by far more."""
    path = write_long(str(tmp_path / f"x{rate}.flac"), 7.3, rate, channels)
    for start, end in ((None, None), (1.27, 5.9), (0.5, -1)):
        whole = audio.load_audio(path, 16000, start, end)
        with monkeypatch.context() as m:
            m.setattr(audio, "BLOCK_SECONDS", 0.5)
            assert audio._blockwise(path, start, end, 16000) is not None
            blocked = audio.load_audio(path, 16000, start, end)
        assert blocked.shape == whole.shape
        assert float((blocked - whole).abs().max()) <= 1e-7
