"""A new user's mistakes on every dump tool: one ``error:`` line, exit status 1, and the output dir untouched.

Through the public entry points (``main(argv)`` of ``stok-dump-s3``, ``stok-dump-features``, ``stok-dump-codes``,
``stok-kmeans dump``; the console scripts in a subprocess where stderr and the exit status matter), on small
models saved in their real formats. "Untouched" means: a dir that did not exist still does not, and a finished
dump keeps every file byte for byte (even with ``--overwrite``). Also: a resume with another model or settings
is refused (the dump's fingerprint), ``--strict`` writes every output before it fails, and an empty audio file
is listed as empty.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import torch

from stok.bin import dump_codes, dump_features, dump_s3, kmeans
from stok.core.checksums import file_sha256
from stok.core.storage import load_codes
from stok.models.kmeans import KMeansModel
from tests.conftest import PYTHON, REPO, write_corpus

DURATIONS = [0.9, 0.5, 1.2, 0.7]
BIN = os.path.dirname(PYTHON)


@pytest.fixture(scope="module", autouse=True)
def checksum_cache(tmp_path_factory):
    """Weights checksums are cached under $STOK_CACHE: keep the tests' cache out of the home dir."""
    old = os.environ.get("STOK_CACHE")
    os.environ["STOK_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield os.environ["STOK_CACHE"]
    if old is None:
        del os.environ["STOK_CACHE"]
    else:
        os.environ["STOK_CACHE"] = old


@pytest.fixture(scope="module")
def m(tmp_path_factory):
    """Inputs and small models in their released formats."""
    from stok.models.s3.checkpoint import save_checkpoint
    from stok.models.s3.config import tiny_config
    from stok.models.s3.model import build_model
    from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, save_released

    root = tmp_path_factory.mktemp("usererr")
    scp = write_corpus(str(root / "audio"), DURATIONS)
    data = root / "data"
    data.mkdir()
    shutil.copy(scp, data / "wav.scp")
    paths = {"root": root, "scp": scp, "data": str(data)}
    for name, version, seed in (("s3a", "v2_25hz", 0), ("s3b", "v2_25hz", 1), ("s3v1", "v1_50hz", 0)):
        paths[name] = str(root / f"{name}.pt")
        save_checkpoint(build_model(tiny_config(version), seed=seed), paths[name])
    torch.manual_seed(0)
    cfg = SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=8, codebook_size=16, n_q=3,
                                lstm_layers=1)
    paths["st"] = save_released(SpeechTokenizer(cfg), str(root / "st"))
    rng = np.random.default_rng(0)
    for name, k in (("km_a", 8), ("km_b", 6)):
        paths[name] = KMeansModel(rng.standard_normal((k, 39)).astype(np.float32),
                                  {"teacher": {"model": "mfcc"}}).save(str(root / f"{name}.npz"))
    return paths


COMMON = ["--num_workers", "0", "--device", "cpu"]


def tool_argv(m, tool, other=False):
    """(main, argv without input and output) of each dump tool; ``other``: another model or setting."""
    if tool == "s3":
        return dump_s3.main, ["--model", m["s3b" if other else "s3a"]] + COMMON
    if tool == "features":
        return dump_features.main, ["--teacher", "mfcc"] + (["--feature_storage", "compressed16"] if other else []) \
            + COMMON
    if tool == "codes":
        return dump_codes.main, ["--model_dir", m["st"]] + (["--n_q", "2"] if other else []) + COMMON
    if tool == "kmeans":
        return kmeans.main, ["dump", "--from_audio", "--km_model", m["km_b" if other else "km_a"],
                             "--teacher", "mfcc"] + COMMON
    raise ValueError(tool)


TOOLS = ("s3", "features", "codes", "kmeans")
NAMES = {"s3": "s3_tokens", "features": "feats", "codes": "st_codes", "kmeans": "km_labels"}


@pytest.fixture(scope="module")
def finished(m, tmp_path_factory):
    """A finished dump of every tool, from the Kaldi dir."""
    out = {}
    for tool in TOOLS:
        main, argv = tool_argv(m, tool)
        out[tool] = str(tmp_path_factory.mktemp(f"done_{tool}") / "out")
        summary = main(argv + ["--data_dir", m["data"], "--output_dir", out[tool]])
        assert summary["entries_in_scp"] == len(DURATIONS)
    return out


def snapshot(path):
    """Every file under ``path`` with its bytes (None: ``path`` does not exist)."""
    if not os.path.exists(path):
        return None
    files = {}
    for d, _, names in os.walk(path):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                files[os.path.relpath(p, path)] = f.read()
    return files


def one_line_error(main, argv, match) -> str:
    """``main(argv)`` ends with exactly one ``error: ...`` line matching ``match`` (exit status 1: a string
    SystemExit code is printed to stderr by Python, which then exits 1)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error: ") and "\n" not in msg, msg
    assert re.search(match, msg), msg
    return msg


def bad_scp(tmp_path, m, kind):
    lines = open(m["scp"]).read().splitlines()
    if kind == "duplicate":
        lines.insert(2, lines[1])
    else:
        lines.insert(2, "lonely_key")
    p = tmp_path / kind / "wav.scp"
    p.parent.mkdir(exist_ok=True)
    p.write_text("\n".join(lines) + "\n")
    return str(p)


# ------------------------------------------------------------------ malformed lists, options, output locations

@pytest.mark.parametrize("tool", TOOLS)
def test_mistakes_fail_in_one_line_before_any_output(tool, m, finished, tmp_path):
    main, argv = tool_argv(m, tool)
    done = finished[tool]
    before = snapshot(done)
    fresh = str(tmp_path / "fresh" / "out")
    afile = tmp_path / "a_file"
    afile.write_text("x")
    cases = [
        (["--wav_scp", bad_scp(tmp_path, m, "duplicate")], r"duplicate/wav\.scp:3: duplicate key 'utt001'"),
        (["--wav_scp", bad_scp(tmp_path, m, "lonely")], r"lonely/wav\.scp:3: expected at least 2 fields"),
        (["--data_dir", m["data"], "--batch_seconds", "-5"], r"--batch_seconds -5\.0: give a number >= 0"),
        (["--data_dir", str(tmp_path / "nowhere")], r"nowhere/wav\.scp not found"),
    ]
    for extra, match in cases:
        for out in (fresh, done):
            one_line_error(main, argv + extra + ["--output_dir", out, "--overwrite"], match)
        assert snapshot(fresh) is None and not os.path.exists(tmp_path / "fresh")
        assert snapshot(done) == before
    # an output dir below a regular file
    one_line_error(main, argv + ["--data_dir", m["data"], "--output_dir", str(afile / "out")],
                   r"a_file/out cannot be created: .*a_file is a file")
    assert afile.read_text() == "x"


@pytest.mark.parametrize("tool", TOOLS)
def test_resume_with_another_model_or_setting_is_refused(tool, m, finished, tmp_path):
    main, argv = tool_argv(m, tool, other=True)
    done = finished[tool]
    before = snapshot(done)
    expect = {"s3": r"model\.weights_sha256: \w+\.\.\. -> \w+\.\.\.",
              "features": r"feature_storage: float32 -> compressed16",
              "codes": r"model\.n_q: 3 -> 2", "kmeans": r"model\.n_clusters: 8 -> 6; model\.km_fingerprint: \w+ -> \w+"}
    msg = one_line_error(main, argv + ["--data_dir", m["data"], "--output_dir", done],
                         rf"holds a {NAMES[tool]} dump made by another model or settings \(.*{expect[tool]}")
    assert "--overwrite" in msg and "another --output_dir" in msg
    assert snapshot(done) == before
    # the same model and settings resume (nothing new), into a copy
    copy = str(tmp_path / "copy")
    shutil.copytree(done, copy)
    same_main, same = tool_argv(m, tool)
    again = same_main(same + ["--data_dir", m["data"], "--output_dir", copy])
    assert again["written_now"] == 0 and again["entries_in_scp"] == len(DURATIONS)
    # --overwrite starts over with the other model, and records it
    s = main(argv + ["--data_dir", m["data"], "--output_dir", copy, "--overwrite"])
    assert s["already_done"] == 0 and s["written_now"] == len(DURATIONS)
    fp = json.load(open(os.path.join(copy, f"{NAMES[tool]}.fingerprint.json")))
    assert fp == s["fingerprint"] and fp != json.load(open(os.path.join(done, f"{NAMES[tool]}.fingerprint.json")))


def test_a_dump_without_fingerprint_is_not_resumed(m, finished, tmp_path):
    copy = str(tmp_path / "old")
    shutil.copytree(finished["s3"], copy)
    os.remove(os.path.join(copy, "s3_tokens.fingerprint.json"))  # as written by stok before fingerprints
    before = snapshot(copy)
    main, argv = tool_argv(m, "s3")
    one_line_error(main, argv + ["--data_dir", m["data"], "--output_dir", copy],
                   r"holds a s3_tokens dump with no record of what made it.*--overwrite")
    assert snapshot(copy) == before


def test_a_run_that_wrote_nothing_is_no_obstacle(m, tmp_path):
    """A dir whose dump stopped before its first record (here: every utterance failed) takes another model."""
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"e {empty}\n")
    out = str(tmp_path / "out")
    main, argv = tool_argv(m, "s3")
    assert main(argv + ["--wav_scp", str(scp), "--output_dir", out])["entries_in_scp"] == 0
    main, argv = tool_argv(m, "s3", other=True)
    assert main(argv + ["--wav_scp", str(scp), "--output_dir", out])["failed"] == 1


# ------------------------------------------------------------------ models

def test_s3_unusable_models_fail_before_any_output(m, finished, tmp_path, monkeypatch):
    monkeypatch.setenv("STOK_CPU_ISA", "avx2,fma")  # a CPU without bfloat16 dot products (stok.models.cpu_isa)
    done = finished["s3"]
    before = snapshot(done)
    fresh = str(tmp_path / "fresh")
    base = ["--data_dir", m["data"]] + COMMON
    cases = [
        (["--model", str(tmp_path / "missing.onnx")], r"--model .*missing\.onnx: no such file"),
        (["--model", m["s3a"], "--version", "v1_50hz"], r"s3a\.pt holds an S3Tokenizer v2_25hz, but version v1_50hz"),
        (["--model", m["s3a"], "--dtype", "fp16"], r"--dtype fp16 is for GPUs"),
        (["--model", m["s3a"], "--dtype", "bf16"], r"--dtype bf16 on CPU needs bfloat16 dot products .*\(AVX2\)"),
        (["--model", m["s3a"], "--window_batch", "-1"], r"--window_batch -1"),
        (["--model", m["s3a"], "--feature_storage", "compressed16"],
         r"--feature_storage compressed16 is for float features; s3_tokens holds integer tokens"),
    ]
    for extra, match in cases:
        for out in (fresh, done):
            one_line_error(dump_s3.main, base + extra + ["--output_dir", out, "--overwrite"], match)
        assert snapshot(fresh) is None and snapshot(done) == before


def test_codes_and_kmeans_unusable_models_fail_before_any_output(m, finished, tmp_path):
    base = ["--data_dir", m["data"]] + COMMON
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    for main, argv, tool, match in [
        (dump_codes.main, ["--model_dir", str(tmp_path)], "codes", r"config\.json not found; --model_dir must hold"),
        (dump_codes.main, ["--model_dir", m["st"], "--n_q", "4"], "codes", r"--n_q 4 but the model has 3 codebooks"),
        (kmeans.main, ["dump", "--from_audio", "--km_model", str(garbage), "--teacher", "mfcc"], "kmeans",
         r"garbage\.npz: cannot read as a stok k-means model"),
        (kmeans.main, ["dump", "--from_audio", "--km_model", m["km_a"], "--teacher", "hubert"], "kmeans",
         r"--teacher hubert needs --checkpoint"),
    ]:
        done = finished[tool]
        before = snapshot(done)
        fresh = str(tmp_path / "fresh")
        for out in (fresh, done):
            one_line_error(main, argv + base + ["--output_dir", out, "--overwrite"], match)
        assert snapshot(fresh) is None and snapshot(done) == before


def test_features_text_output_and_hubert_settings(m, finished, tmp_path):
    from tests.hubert_helpers import save_fairseq, tiny_model

    done = finished["features"]
    before = snapshot(done)
    one_line_error(dump_features.main, ["--teacher", "mfcc", "--text_output", "--data_dir", m["data"],
                                        "--output_dir", done, "--overwrite"] + COMMON,
                   r"--text_output writes integer tokens as text; teacher features are float matrices")
    assert snapshot(done) == before
    model, cfg = tiny_model("base")
    ck = save_fairseq(model, cfg, str(tmp_path / "hubert.pt"))
    out = str(tmp_path / "hub")
    hub = ["--teacher", "hubert", "--checkpoint", ck, "--data_dir", m["data"], "--output_dir", out] + COMMON
    one_line_error(dump_features.main, hub + ["--layer", "7"], r"--layer 7 is out of range")
    assert not os.path.exists(out)
    dump_features.main(hub + ["--layer", "1"])
    before = snapshot(out)
    one_line_error(dump_features.main, hub + ["--layer", "2"], r"model\.layer: 1 -> 2")
    one_line_error(dump_features.main, hub + ["--layer", "1", "--dtype", "bfloat16"],
                   r"model\.dtype: float32 -> bfloat16")
    one_line_error(dump_features.main, ["--teacher", "mfcc"] + hub[2:], r"model\.model: hubert -> mfcc")
    other, _ = tiny_model("base", seed=1)
    ck2 = save_fairseq(other, cfg, str(tmp_path / "hubert2.pt"))
    one_line_error(dump_features.main, hub[:3] + [ck2] + hub[4:] + ["--layer", "1"], r"model\.weights_sha256")
    assert snapshot(out) == before
    shutil.move(ck, str(tmp_path / "moved.pt"))  # the same weights elsewhere: the same dump
    again = dump_features.main(hub[:3] + [str(tmp_path / "moved.pt")] + hub[4:] + ["--layer", "1"])
    assert again["written_now"] == 0 and again["entries_in_scp"] == len(DURATIONS)


# ------------------------------------------------------------------ stok-kmeans dump on feature scps

def test_kmeans_dump_from_features(m, finished, tmp_path):
    feats = os.path.join(finished["features"], "feats.scp")
    out = str(tmp_path / "labels")
    argv = ["dump", "--feats_scp", feats, "--output_dir", out]
    kmeans.main(argv + ["--km_model", m["km_a"]])
    before = snapshot(out)
    lines = open(feats).read().splitlines()
    dup = tmp_path / "dup.scp"
    dup.write_text("\n".join(lines + lines[:1]) + "\n")
    one_line_error(kmeans.main, ["dump", "--feats_scp", str(dup), "--km_model", m["km_a"], "--output_dir", out,
                                 "--overwrite"], r"dup\.scp:5: duplicate key|dup\.scp:5.*utt000")
    one_line_error(kmeans.main, argv + ["--km_model", m["km_b"]],
                   r"holds a km_labels dump made by another model or settings \(.*model\.km_fingerprint")
    one_line_error(kmeans.main, argv + ["--km_model", m["km_a"], "--batch_frames", "0", "--overwrite"],
                   r"--batch_frames 0")
    assert snapshot(out) == before
    s = kmeans.main(argv + ["--km_model", m["km_b"], "--overwrite"])
    assert s["already_done"] == 0 and s["usage"]["n_clusters"] == 6


# ------------------------------------------------------------------ --strict, empty audio

def test_strict_writes_every_output_then_fails_and_empty_audio_is_named(m, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    scp = tmp_path / "wav.scp"
    scp.write_text(open(m["scp"]).read() + f"zz_empty {empty}\n")  # a bare wav.scp: no utt2dur
    out = str(tmp_path / "s3")
    one_line_error(dump_s3.main, ["--model", m["s3a"], "--wav_scp", str(scp), "--output_dir", out, "--strict",
                                  "--text_output", "--cosyvoice_export"] + COMMON,
                   r"1 utterances failed \(--strict\); see .*failed\.list")
    failed = dict(line.rstrip("\n").split("\t") for line in open(os.path.join(out, "failed.list")))
    assert list(failed) == ["zz_empty"] and "audio file is empty" in failed["zz_empty"], failed
    tokens = dict(load_codes(os.path.join(out, "s3_tokens.scp")))
    assert len(tokens) == len(DURATIONS)
    export = torch.load(os.path.join(out, "utt2speech_token.pt"), weights_only=True)
    assert export == {k: v.tolist() for k, v in tokens.items()}
    text = dict(line.split(" ", 1) for line in open(os.path.join(out, "s3_tokens.txt")).read().splitlines())
    assert text.keys() == tokens.keys()
    km_out = str(tmp_path / "km")
    one_line_error(kmeans.main, ["dump", "--from_audio", "--km_model", m["km_a"], "--teacher", "mfcc",
                                 "--wav_scp", str(scp), "--output_dir", km_out, "--strict"] + COMMON,
                   r"1 utterances failed \(--strict\)")
    labels = open(os.path.join(km_out, "km_labels.txt")).read().splitlines()
    assert len(labels) == len(DURATIONS)
    assert "usage" in json.load(open(os.path.join(km_out, "km_labels.summary.json")))
    # another model over it (--overwrite): the export left in the dir follows the new tokens
    dump_s3.main(["--model", m["s3b"], "--wav_scp", str(scp), "--output_dir", out, "--overwrite"] + COMMON)
    tokens = dict(load_codes(os.path.join(out, "s3_tokens.scp")))
    export = torch.load(os.path.join(out, "utt2speech_token.pt"), weights_only=True)
    assert export == {k: v.tolist() for k, v in tokens.items()}


# ------------------------------------------------------------------ the console scripts: stderr and exit status

def _env(**extra):
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **extra}
    env.pop("STOK_DEBUG", None)
    env.update(extra)
    return env


def test_console_script_prints_one_line_and_traceback_only_with_debug(m, tmp_path, monkeypatch):
    from stok.data.kaldi_dir import KaldiDirError

    out = tmp_path / "out"
    argv = ["--model", m["s3a"], "--wav_scp", bad_scp(tmp_path, m, "duplicate"), "--output_dir", str(out),
            "--device", "cpu"]
    cmd = [os.path.join(BIN, "stok-dump-s3")] + argv
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"error: {tmp_path}/duplicate/wav.scp:3: duplicate key 'utt001'; keys must be unique"]
    r = subprocess.run(cmd, env=_env(STOK_DEBUG="1"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" in r.stderr and "KaldiDirError" in r.stderr
    monkeypatch.setenv("STOK_DEBUG", "0")
    with pytest.raises(KaldiDirError, match="duplicate key"):
        dump_s3.main(argv + ["--debug"])
    with pytest.raises(SystemExit, match="^error: .*duplicate key"):  # --debug is for its own run only
        dump_s3.main(argv)
    assert not out.exists()


def _as_unprivileged():
    """The command prefix that runs a tool as a user the file modes apply to (root ignores them)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot test read-only directories")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_read_only_output_locations(m):
    prefix = _as_unprivileged()
    root = tempfile.mkdtemp(prefix="stok-ro-")  # /tmp: reachable by the unprivileged user
    try:
        os.chmod(root, 0o755)
        scp = write_corpus(os.path.join(root, "audio"), [0.5, 0.6])
        locked = os.path.join(root, "locked")
        os.makedirs(os.path.join(locked, "existing"))
        os.chmod(os.path.join(locked, "existing"), 0o555)
        os.chmod(locked, 0o555)
        cache = os.path.join(root, "cache")
        os.makedirs(cache)
        os.chmod(cache, 0o777)
        secret = os.path.join(root, "secret.scp")
        shutil.copy(scp, secret)
        os.chmod(secret, 0o000)
        writable = os.path.join(root, "writable")
        os.makedirs(writable)
        os.chmod(writable, 0o777)
        for wav_scp, out, match in (
                (scp, os.path.join(locked, "new", "out"), r"--output_dir .* cannot be created: .*locked is not writable"),
                (scp, os.path.join(locked, "existing"), r"--output_dir .*existing is not writable"),
                (secret, os.path.join(writable, "out"), r"secret\.scp: cannot read \(Permission denied\)")):
            r = subprocess.run(prefix + [os.path.join(BIN, "stok-dump-features"), "--teacher", "mfcc", "--wav_scp",
                                         wav_scp, "--output_dir", out, "--num_workers", "0", "--device", "cpu"],
                               env=_env(STOK_CACHE=cache, HOME=root), capture_output=True, text=True, timeout=300)
            assert r.returncode == 1, r.stderr
            lines = r.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(match, lines[0]), r.stderr
        assert os.listdir(locked) == ["existing"] and os.listdir(os.path.join(locked, "existing")) == []
        assert os.listdir(writable) == []
    finally:
        for d, _, _ in os.walk(root):
            os.chmod(d, 0o755)
        shutil.rmtree(root)


# ------------------------------------------------------------------ the checksum cache

def test_weights_checksum_is_cached_and_follows_changes(tmp_path, checksum_cache):
    import hashlib
    import time

    from stok.core import checksums as fingerprint

    p = tmp_path / "w.bin"
    p.write_bytes(b"a" * 1000)
    cache_file = os.path.join(checksum_cache, "checksums.json")
    assert file_sha256(str(p)) == hashlib.sha256(b"a" * 1000).hexdigest()
    cached = json.load(open(cache_file)) if os.path.exists(cache_file) else {}  # nothing cached yet is fine
    assert str(p) not in cached, "a file changed just now is not cached"
    time.sleep(fingerprint.RACY_SECONDS + 0.1)
    assert file_sha256(str(p)) == hashlib.sha256(b"a" * 1000).hexdigest()
    cache = json.load(open(cache_file))
    assert cache[str(p)]["sha256"] == hashlib.sha256(b"a" * 1000).hexdigest()
    # the cache is what answers (a new process: no in-memory copy): the file is not read again
    cache[str(p)]["sha256"] = "from-the-cache"
    json.dump(cache, open(cache_file, "w"))
    fingerprint._memo.clear()
    assert file_sha256(str(p)) == "from-the-cache"
    p.write_bytes(b"b" * 1000)  # rewritten in place: same size and inode, new content
    assert file_sha256(str(p)) == hashlib.sha256(b"b" * 1000).hexdigest()
