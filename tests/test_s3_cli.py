"""Stage 5 end to end: ``make_demo_s3`` writes the demo ONNX, ``dump_s3`` dumps a Kaldi dir of real files."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from stok.bin import dump_s3
from stok.data.audio import load_audio
from stok.core.storage import load_codes
from stok.models.s3.frontend import log_mel
from stok.models.s3.onnx_import import load_onnx
from tests.conftest import PYTHON, REPO, mkl_shim_expected, speechlike


def env():
    return {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "STOK_OFFLINE": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3cli")
    audio = root / "audio"
    audio.mkdir()
    entries = {}
    for i, d in enumerate([1.3, 0.4, 2.75, 35.0, 5.1]):
        path = audio / f"a{i}.flac"
        sf.write(path, speechlike(d, seed=i), 16000)
        entries[f"utt{i}"] = str(path)
    x = speechlike(3.2, 8000, seed=9)
    sf.write(audio / "stereo8k.wav", np.stack([x, 0.5 * x], 1), 8000)  # resampled and averaged
    entries["utt5"] = str(audio / "stereo8k.wav")
    sf.write(audio / "tiny.wav", speechlike(0.01, seed=3), 16000)  # 160 samples: too short
    entries["utt6"] = str(audio / "tiny.wav")
    data = root / "data" / "test"
    data.mkdir(parents=True)
    (data / "wav.scp").write_text("".join(f"{k} {v}\n" for k, v in sorted(entries.items())))
    return root, data, entries


def test_demo_model_and_dump_commands_of_stage_5(corpus):
    root, data, entries = corpus
    model_path = root / "exp" / "s3" / "demo_v2_25hz.onnx"
    r = subprocess.run([PYTHON, "-m", "stok.bin.make_demo_s3", "--version", "v2_25hz", "--output", str(model_path)],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "smoke-testing only" in r.stdout and model_path.is_file()
    out = root / "dump" / "s3_v2_25hz" / "test"
    cmd = [PYTHON, "-m", "stok.bin.dump_s3", "--model", str(model_path), "--version", "v2_25hz",
           "--device", "cpu", "--num_workers", "2", "--data_dir", str(data), "--output_dir", str(out),
           "--cosyvoice_export"]
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "tokens are for smoke-testing only" in r.stderr
    shim = "MKL's AVX-512 kernels on AMD (stok.mkl_on_amd): "
    assert shim + ("on" if mkl_shim_expected() else "off: ") in r.stderr
    got = dict(load_codes(str(out / "s3_tokens.scp")))
    failed = dict(line.rstrip("\n").split("\t") for line in open(out / "failed.list"))
    assert set(failed) == {"utt6"} and "TooShort" in failed["utt6"]
    assert set(got) == set(entries) - {"utt6"}
    # the same tokens as the model loaded directly, one utterance at a time
    model = load_onnx(str(model_path))
    for key, tokens in got.items():
        wave = load_audio(entries[key], 16000)
        mel = log_mel(wave)
        one, n = model.quantize(mel[None], torch.tensor([mel.shape[1]]))
        assert len(tokens) == int(n) == model.cfg.token_count(wave.numel() // 160)
        assert np.array_equal(tokens, one[0].numpy()), key
    assert len(got["utt3"]) == 875  # 35 s: windows, no token lost
    export = torch.load(out / "utt2speech_token.pt", weights_only=True)
    assert export.keys() == got.keys() and all(export[k] == got[k].tolist() for k in got)
    summary = json.load(open(out / "s3_tokens.summary.json"))
    assert summary["model"]["version"] == "v2_25hz" and summary["model"]["demo"] is True
    # resuming writes nothing new
    again = dump_s3.main(cmd[3:-1] + ["--num_workers", "0"])
    assert again["written_now"] == 0 and again["entries_in_scp"] == 6


def test_torchrun_two_cpu_processes(corpus, tmp_path):
    root, data, entries = corpus
    model_path = tmp_path / "demo_v1_50hz.onnx"
    subprocess.run([PYTHON, "-m", "stok.bin.make_demo_s3", "--version", "v1_50hz", "--output", str(model_path)],
                   cwd=REPO, env=env(), check=True, capture_output=True, timeout=300)
    ref = dump_s3.main(["--model", str(model_path), "--data_dir", str(data), "--output_dir", str(tmp_path / "one"),
                        "--num_workers", "0", "--batch_size", "1"])
    assert ref["entries_in_scp"] == 6
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "stok.bin.dump_s3",
           "--model", str(model_path), "--data_dir", str(data), "--output_dir", str(tmp_path / "two"),
           "--num_workers", "1", "--device", "cpu"]
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    one = dict(load_codes(str(tmp_path / "one" / "s3_tokens.scp")))
    two = dict(load_codes(str(tmp_path / "two" / "s3_tokens.scp")))
    assert one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)
    assert len(one["utt3"]) == 1750  # 50 Hz


def test_cli_errors_are_clear(corpus, tmp_path):
    root, data, entries = corpus
    from stok.models.s3.config import tiny_config
    from stok.models.s3.model import build_model
    from stok.models.s3.onnx_export_official import export_official

    plain = str(tmp_path / "speech_tokenizer_v2.onnx")  # an official-looking file: the name is never used
    export_official(build_model(tiny_config("v2_25hz"), seed=0), plain)
    base = ["--data_dir", str(data), "--output_dir", str(tmp_path / "o"), "--num_workers", "0"]
    with pytest.raises(SystemExit, match="give the S3Tokenizer version"):
        dump_s3.main(["--model", plain] + base)
    with pytest.raises(SystemExit, match="expected \\[1280, 128, 3\\]"):  # tiny weights are not the official size
        dump_s3.main(["--model", plain, "--version", "v2_25hz"] + base)
    with pytest.raises(SystemExit, match="--dtype fp16 is for GPUs"):  # bf16 on CPU: tests/test_s3_cpu_infer.py
        dump_s3.main(["--model", plain, "--version", "v2_25hz", "--dtype", "fp16", "--device", "cpu"] + base)
    os.environ["STOK_OFFLINE"] = "1"
    try:
        with pytest.raises(SystemExit, match="downloads are off"):
            dump_s3.main(["--model", "speech_tokenizer_v3_25hz"] + base)
    finally:
        del os.environ["STOK_OFFLINE"]
