"""Codes at the released codebook size through the dump path and back, exactly, in every reader.

A SpeechTokenizer with the released 8 x 1024 codebooks (small convolutions, so it runs fast) whose
codebooks make a 2.56 s utterance use every value 0..1023 once; ``stok-dump-codes`` stores them, and
plain ``kaldiio``, ``stok.core.storage.load_codes``, Kaldi's C++ reader (``kaldi_native_io``),
``stok-decode`` and ``--text_output`` must all give them back exactly. Values up to 2^24 - 1 go through
the engine's writer and merge. Dumps of earlier stok versions (Kaldi two-byte compressed matrices, which
plain kaldiio decodes off by 2^-8 at every code = 128 mod 256) still read exactly; features are refused as codes.
"""

from __future__ import annotations

import os

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
from kaldiio.matio import write_array

from stok.bin import decode as decode_bin
from stok.bin import dump_codes
from stok.core.errors import UserError
from stok.data.audio import load_audio
from stok.dump.merge import merge
from stok.core.storage import MAX_EXACT_CODE, ShardWriter, load_codes
from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, load_released, save_released
from tests import kaldi_cpp
from tests.conftest import write_corpus
from tests.st_helpers import centre_latents, fill_from_frames

CODEBOOK, N_Q, BLOCK = 1024, 8, 128  # layer q uses codes 128q .. 128q + 127, one per frame of utt000
DURATIONS = [BLOCK * 320 / 16000, 0.3]  # 2.56 s = 128 frames, and a short second utterance
FLOAT_MATRIX_HEADER = 15  # "\0B" "FM " then rows and columns, each a size byte and an int32
PCM_TOLERANCE = 2 / 32768


def _wavs(scp):
    return {k: load_audio(p, 16000) for k, p in (line.split() for line in open(scp))}


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    """A released-codebook-size model whose layer q maps frame t of utt000 to code 128 q + slot, dumped."""
    root = tmp_path_factory.mktemp("codes")
    scp = write_corpus(str(root / "audio"), DURATIONS)
    wavs = _wavs(scp)
    torch.manual_seed(0)
    cfg = SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=8, lstm_layers=1,
                                codebook_size=CODEBOOK, n_q=N_Q)
    model = SpeechTokenizer(cfg).eval()
    x = wavs["utt000"][None, None]
    z = centre_latents(model, x)
    g = torch.Generator().manual_seed(3)
    slots = [BLOCK * q + torch.randperm(BLOCK, generator=g) for q in range(N_Q)]
    fill_from_frames([layer._codebook for layer in model.quantizer.layers], z[0].t(), seed=1,
                     jitter=[0.05] + [0.3] * (N_Q - 1), slots=slots)
    model_dir = save_released(model, root / "export")
    model = load_released(model_dir)
    ref = {k: model.encode(w[None, None])[:, 0].T.numpy() for k, w in wavs.items()}
    assert np.array_equal(ref["utt000"], torch.stack(slots).T.numpy())  # every code 0..1023, once
    ref_wav = {k: np.clip(model.decode(torch.from_numpy(c.T)[:, None])[0, 0].numpy(), -1, 1) for k, c in ref.items()}
    out = str(root / "st_codes")
    summary = dump_codes.main(["--model_dir", model_dir, "--wav_scp", scp, "--output_dir", out, "--device", "cpu",
                               "--num_workers", "0", "--text_output"])
    assert summary["entries_in_scp"] == len(DURATIONS) and summary["failed"] == 0
    return {"root": root, "model_dir": model_dir, "scp": os.path.join(out, "st_codes.scp"), "out": out,
            "ref": ref, "ref_wav": ref_wav}


def _text(path):
    return {key: np.array(toks, dtype=np.int64) for key, *toks in (line.split() for line in open(path))}


def _check_readers(scp, ref, text=None):
    """Every reader returns exactly ``ref`` (key -> int [T, n_q]); kaldiio needs no rounding."""
    plain = dict(kaldiio.load_scp_sequential(scp))
    stok = dict(load_codes(scp))
    cpp = kaldi_cpp.float_matrices(scp)
    assert sorted(plain) == sorted(stok) == sorted(cpp) == sorted(ref)
    for key, codes in ref.items():
        a = plain[key]
        assert a.dtype == np.float32 and a.shape == codes.shape
        assert np.array_equal(a, np.rint(a)), f"{key}: kaldiio reads non-integers"
        np.testing.assert_array_equal(a.astype(np.int64), codes)  # truncation is right: values are exact
        assert stok[key].dtype == np.int64
        np.testing.assert_array_equal(stok[key], codes)
        np.testing.assert_array_equal(cpp[key], codes)
        if text is not None:
            np.testing.assert_array_equal(text[key], codes.reshape(-1))  # frame by frame


def test_every_code_of_a_1024_book_reads_back_exactly(dumped):
    ref = dumped["ref"]
    stored = np.concatenate([c.reshape(-1) for _, c in load_codes(dumped["scp"])])
    assert sorted(set(stored.tolist())) == list(range(CODEBOOK))
    assert np.count_nonzero(stored % 256 == 128) >= 4  # the values two-byte compression got wrong in kaldiio
    _check_readers(dumped["scp"], ref, _text(os.path.join(dumped["out"], "st_codes.txt")))
    # float32 Kaldi matrices: 4 bytes a code, each record headed "\0BFM "
    ark = os.path.join(dumped["out"], "st_codes.0.ark")
    assert os.path.getsize(ark) == sum(len(k) + 1 + FLOAT_MATRIX_HEADER + 4 * c.size for k, c in ref.items())
    for line in open(dumped["scp"]):
        path, offset = line.split()[1].rsplit(":", 1)
        with open(path, "rb") as f:
            f.seek(int(offset))
            assert f.read(5) == b"\0BFM "


def _decode(model_dir, scp, out):
    decode_bin.main(["--model_dir", model_dir, "--codes_scp", scp, "--output_dir", out, "--device", "cpu"])
    return {k: sf.read(p, dtype="float32")[0] for k, p in (line.split() for line in open(os.path.join(out, "wav.scp")))}


def test_decode_reads_every_code(dumped, tmp_path):
    got = _decode(dumped["model_dir"], dumped["scp"], str(tmp_path / "dec"))
    assert sorted(got) == sorted(dumped["ref"])
    for key, wav in got.items():
        assert len(wav) == len(dumped["ref"][key]) * 320
        np.testing.assert_allclose(wav, dumped["ref_wav"][key], atol=PCM_TOLERANCE)


def _write_old_dump(root, codes_by_key):
    """A dump as stok wrote it before: codes as Kaldi two-byte integer compressed matrices (CM2, method 4)."""
    os.makedirs(root, exist_ok=True)
    ark, scp = os.path.join(root, "st_codes.0.ark"), os.path.join(root, "st_codes.scp")
    with open(ark, "wb") as fa, open(scp, "w") as fs:
        for key in sorted(codes_by_key):
            fa.write((key + " ").encode())
            offset = fa.tell()
            write_array(fa, codes_by_key[key].astype(np.float32), compression_method=4)
            fs.write(f"{key} {ark}:{offset}\n")
    return scp


def test_old_compressed_dumps_still_read_exactly(dumped, tmp_path):
    ref = dumped["ref"]
    scp = _write_old_dump(str(tmp_path / "old"), ref)
    with open(str(tmp_path / "old" / "st_codes.0.ark"), "rb") as f:
        assert f.read(len("utt000 ")) == b"utt000 " and f.read(5) == b"\0BCM2"
    plain = kaldiio.load_scp(scp)["utt000"]
    off = ref["utt000"] % 256 == 128
    assert not np.array_equal(plain[off], ref["utt000"][off])  # the defect: kaldiio alone decodes these inexactly
    np.testing.assert_array_equal(plain[~off], ref["utt000"][~off])
    stok = dict(load_codes(scp))
    for key, codes in ref.items():
        np.testing.assert_array_equal(stok[key], codes)
    cpp = kaldi_cpp.float_matrices(scp)  # Kaldi's C++ decoder is exact on these
    for key, codes in ref.items():
        np.testing.assert_array_equal(cpp[key], codes)
    got = _decode(dumped["model_dir"], scp, str(tmp_path / "dec_old"))
    for key, wav in got.items():
        np.testing.assert_allclose(wav, dumped["ref_wav"][key], atol=PCM_TOLERANCE)


CODE_VALUES = [0, 1, 127, 128, 255, 256, 384, 640, 1023, 1024, 32767, 32768, 65535, 65536,
               2**23 - 1, 2**23, 2**23 + 1, 2**24 - 3, 2**24 - 2, 2**24 - 1]


def test_codes_up_to_2_pow_24_are_exact(tmp_path, dumped):
    rng = np.random.default_rng(0)
    ref = {"fixed": np.array(CODE_VALUES, dtype=np.int64).reshape(-1, 4),
           "random": rng.integers(0, MAX_EXACT_CODE, size=(50, 8)),
           "one_frame": np.array([[MAX_EXACT_CODE - 1] * 8])}
    out = str(tmp_path / "big")
    os.makedirs(out)
    writer = ShardWriter(os.path.join(out, "st_codes.0"))
    for key in sorted(ref):
        writer.write(key, ref[key].astype(np.int32))  # int32 [T, n_q], as STDumpModel returns them
    with pytest.raises(ValueError, match="2\\^24"):
        writer.write("too_big", np.array([[MAX_EXACT_CODE]], dtype=np.int32))
    writer.close()
    merge(out, "st_codes", 1, True, {})
    scp = os.path.join(out, "st_codes.scp")
    _check_readers(scp, ref, _text(os.path.join(out, "st_codes.txt")))
    # codes beyond the model's codebooks are a user's mistake (another model's codes), named as such
    with pytest.raises((SystemExit, UserError), match="fixed.*codebooks have 1024 entries"):
        decode_bin.main(["--model_dir", dumped["model_dir"], "--codes_scp", scp, "--output_dir", str(tmp_path / "d"),
                         "--device", "cpu", "--n_q", "4"])


@pytest.mark.parametrize("storage", ["float32", "compressed16"])
def test_features_are_refused_as_codes(tmp_path, dumped, storage):
    rng = np.random.default_rng(1)
    out = str(tmp_path / "feats")
    os.makedirs(out)
    writer = ShardWriter(os.path.join(out, "feats.0"), storage)
    writer.write("utt000", rng.standard_normal((20, 8)).astype(np.float32))
    writer.close()
    merge(out, "feats", 1, False, {})
    scp = os.path.join(out, "feats.scp")
    with pytest.raises(ValueError, match="utt000: stored values are not exact integers; is this a features scp"):
        list(load_codes(scp))
    with pytest.raises((SystemExit, UserError), match="--codes_scp .*utt000.*features scp"):
        decode_bin.main(["--model_dir", dumped["model_dir"], "--codes_scp", scp, "--output_dir", str(tmp_path / "d"),
                         "--device", "cpu"])


def test_tokens_and_features_read_with_kaldi_cpp(tmp_path):
    rng = np.random.default_rng(2)
    tokens = {"a": np.array([0, 1, 128, 255, 256, 1023, 65535, 2**24 + 1, 2**31 - 1, -(2**31)], dtype=np.int64),
              "b": rng.integers(0, 1024, 77), "empty": np.zeros(0, dtype=np.int64)}
    out = str(tmp_path / "tok")
    os.makedirs(out)
    writer = ShardWriter(os.path.join(out, "tok.0"))
    for key in sorted(tokens):
        writer.write(key, tokens[key])
    writer.close()
    merge(out, "tok", 1, True, {})
    scp = os.path.join(out, "tok.scp")
    cpp, plain, stok, text = (kaldi_cpp.int32_vectors(scp), dict(kaldiio.load_scp_sequential(scp)),
                              dict(load_codes(scp)), _text(os.path.join(out, "tok.txt")))
    for key, ref in tokens.items():
        assert plain[key].dtype == np.int32
        for got in (cpp[key], plain[key], stok[key], text[key]):
            np.testing.assert_array_equal(got, ref)

    feats = {"f": (3 * rng.standard_normal((40, 16))).astype(np.float32), "g": rng.random((7, 16), dtype=np.float32)}
    for storage in ("float32", "compressed16"):
        out = str(tmp_path / storage)
        os.makedirs(out)
        writer = ShardWriter(os.path.join(out, "feats.0"), storage)
        for key in sorted(feats):
            writer.write(key, feats[key])
        writer.close()
        merge(out, "feats", 1, False, {})
        scp = os.path.join(out, "feats.scp")
        cpp, plain = kaldi_cpp.float_matrices(scp), dict(kaldiio.load_scp_sequential(scp))
        for key, ref in feats.items():
            if storage == "float32":
                np.testing.assert_array_equal(cpp[key], ref)
                np.testing.assert_array_equal(plain[key], ref)
            else:
                step = (ref.max() - ref.min()) / 65535
                assert np.abs(cpp[key] - ref).max() <= step * 1.01 + 1e-7
                assert np.abs(plain[key] - ref).max() <= step * 1.01 + 1e-7
