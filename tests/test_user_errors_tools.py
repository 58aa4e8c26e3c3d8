"""A user's mistake is one ``error: ...`` line naming the file or option and what to do, with a non-zero exit,
before any output is created or removed; a rerun never mixes two runs' outputs. Through the tools' ``main``:
``stok-train``, ``stok-decode``, ``stok-eval``, ``stok-kmeans learn`` and ``stok-prepare``."""

from __future__ import annotations

import json
import os
import shutil

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from stok.bin import decode as decode_bin
from stok.bin import eval as eval_bin
from stok.bin import kmeans as kmeans_bin
from stok.bin import prepare as prepare_bin
from stok.bin import train as train_bin
from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, save_released
from tests.conftest import write_corpus
from tests.train_helpers import tiny_config, tiny_data, tiny_labels
from tests.user_error_helpers import one_line_error, snapshot


def refused(main, argv, root, *expect) -> str:
    """``main(argv)`` exits with one error line holding every ``expect``; nothing under ``root`` changed."""
    before = snapshot(root)
    with pytest.raises(SystemExit) as e:
        main(argv)
    msg = one_line_error(e)
    for text in expect:
        assert text in msg, (text, msg)
    assert snapshot(root) == before
    return msg


# ---------------------------------------------------------------------------------------------- stok-train

@pytest.fixture(scope="module")
def train_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_errors")
    data = tiny_data(str(root))
    conf = root / "train.yaml"
    conf.write_text(yaml.safe_dump(tiny_config(sched=dict(max_steps=2, valid_every=2, save_every=1))))
    base = ["--data_dir", data["train"][0], "--teacher_scp", data["train"][1], "--dev_dir", data["dev"][0],
            "--dev_teacher_scp", data["dev"][1], "--device", "cpu", "--threads", "1", "--quiet"]
    trained = root / "trained"
    train_bin.main(["--config", str(conf), "--exp_dir", str(trained), *base])
    return {"root": root, "data": data, "conf": str(conf), "base": base, "trained": trained}


def _train_argv(env, exp, *extra, conf=None):
    return ["--config", conf or env["conf"], "--exp_dir", str(exp), *env["base"], *extra]


def _write_conf(path, **sections):
    path.write_text(yaml.safe_dump(tiny_config(**sections)))
    return str(path)


def test_train_bad_config_files_and_options(train_env, tmp_path):
    exp = tmp_path / "exp"
    cases = [
        (["--config", str(tmp_path / "nope.yaml")], ["nope.yaml not found"]),
        (["--set", "optim.lr"], ["--set wants section.key=value", "optim.lr"]),
        (["--set", "optim.lr=[1"], ["not valid YAML"]),
        (["--max_steps", "0"], ["--max_steps must be >= 1"]),
    ]
    for extra, expect in cases:
        argv = _train_argv(train_env, exp, *extra)
        if extra[0] == "--config":
            argv = argv[2:]
        refused(train_bin.main, argv, tmp_path, *expect)
    (tmp_path / "broken.yaml").write_text("model:\n  n_q: 2\nloss: [1, 2\n")
    msg = refused(train_bin.main, _train_argv(train_env, exp, conf=str(tmp_path / "broken.yaml")), tmp_path,
                  "broken.yaml:", "not valid YAML")
    assert ":4:" in msg or ":3:" in msg  # the line of the problem
    conf = _write_conf(tmp_path / "typo.yaml", optim=dict(lrr=1e-3))
    refused(train_bin.main, _train_argv(train_env, exp, conf=conf), tmp_path, "typo.yaml", "unknown key(s) ['lrr']")
    assert not exp.exists()


def test_train_bad_data_and_teacher(train_env, tmp_path):
    data, exp = train_env["data"], tmp_path / "exp"
    env = train_env
    argv = lambda **kw: _train_argv(env, exp, **kw)  # noqa: E731
    base = argv()

    def with_opt(name, value, args=None):
        args = list(args or base)
        args[args.index(name) + 1] = value
        return args

    refused(train_bin.main, with_opt("--teacher_scp", str(tmp_path / "feats_gone.scp")), tmp_path,
            "feats_gone.scp not found", "stage 1 writes")
    refused(train_bin.main, with_opt("--teacher_scp", data["train"][1][:-4] + ".ark"), tmp_path, "not a text scp")
    refused(train_bin.main, with_opt("--data_dir", str(tmp_path / "no_data")), tmp_path, "no_data")
    no_scp = [a for a in base if a not in ("--teacher_scp", data["train"][1])]
    refused(train_bin.main, no_scp, tmp_path, "--teacher_scp is required")
    conf = _write_conf(tmp_path / "dim16.yaml", model=dict(semantic_dimension=16))
    refused(train_bin.main, _train_argv(env, exp, conf=conf), tmp_path, "has 8-dim features",
            "model.semantic_dimension is 16")
    labels = tiny_labels(data)
    lab = with_opt("--dev_teacher_scp", labels["dev"][1], with_opt("--teacher_scp", labels["train"][1]))
    refused(train_bin.main, lab, tmp_path, "not teacher features [T, D]", "teacher.source: labels")
    conf = _write_conf(tmp_path / "units.yaml", loss=dict(distill_type="kmeans", n_units=3),
                       teacher=dict(source="labels"))
    lab[1] = conf
    refused(train_bin.main, lab, tmp_path, "loss.n_units is 3")
    (tmp_path / "a_file").write_text("x")
    refused(train_bin.main, _train_argv(env, tmp_path / "a_file" / "exp"), tmp_path, "--exp_dir",
            "cannot be created", "is a file")
    assert not exp.exists()


def _copy_run(env, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(env["trained"], exp)
    return exp


def test_train_refuses_to_mix_two_runs(train_env, tmp_path):
    exp = _copy_run(train_env, tmp_path)
    # a fresh run into a finished one
    refused(train_bin.main, _train_argv(train_env, exp), tmp_path, "already holds a training run", "--resume")
    # --resume with changed settings: each change is named, nothing is touched
    msg = refused(train_bin.main, _train_argv(train_env, exp, "--resume", "--set", "optim.lr=0.002", "--set",
                                              "model.n_q=3"), tmp_path, "--resume: the config differs",
                  "optim.lr 0.001 -> 0.002", "model.n_q 2 -> 3", "train_config.yaml")
    assert "ckpt_00000002.pt" in msg
    conf = _write_conf(tmp_path / "other.yaml", data=dict(batch_size=3), sched=dict(max_steps=2))
    refused(train_bin.main, _train_argv(train_env, exp, "--resume", conf=conf), tmp_path, "data.batch_size 2 -> 3")
    # a damaged newest checkpoint is named, with the way out
    ck = exp / "checkpoints" / "ckpt_00000002.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    refused(train_bin.main, _train_argv(train_env, exp, "--resume"), tmp_path, str(ck), "cannot be read",
            "remove it to resume from the checkpoint before it")
    # an exported model without checkpoints is finished output too
    shutil.rmtree(exp / "checkpoints")
    refused(train_bin.main, _train_argv(train_env, exp, "--resume"), tmp_path, "holds an exported model",
            "new --exp_dir")


def test_train_resumes_a_run_of_an_earlier_stok_whose_config_lacks_newer_keys(train_env, tmp_path):
    exp = _copy_run(train_env, tmp_path)
    ck = exp / "checkpoints" / "ckpt_00000002.pt"
    state = torch.load(ck, map_location="cpu", weights_only=True)
    assert state["config"]["disc"].pop("start_step") == 0  # a key added later, at its default
    torch.save(state, ck)
    res = train_bin.main(_train_argv(train_env, exp, "--resume", "--max_steps", "3", "--no_export"))
    assert res["step"] == 3
    state["config"]["disc"]["start_step"] = 5  # a stored value other than today's is still a change
    torch.save(state, ck)
    os.remove(exp / "checkpoints" / "ckpt_00000003.pt")
    refused(train_bin.main, _train_argv(train_env, exp, "--resume", "--max_steps", "3"), tmp_path,
            "disc.start_step 5 -> 0")


def test_train_resume_may_extend_the_run_and_drops_a_killed_runs_tail(train_env, tmp_path):
    exp = _copy_run(train_env, tmp_path)
    with open(exp / "train_log.jsonl", "a") as f:  # what a run killed after its last checkpoint leaves
        f.write(json.dumps({"step": 3, "loss/generator": 123.0}) + "\n")
    res = train_bin.main(_train_argv(train_env, exp, "--resume", "--max_steps", "3", "--no_export", "--set",
                                     "sched.valid_every=3", "--set", "sched.keep_last=3"))
    assert res["step"] == 3
    steps = [json.loads(line)["step"] for line in open(exp / "train_log.jsonl")]
    assert steps == [1, 2, 3]
    assert all(json.loads(line).get("loss/generator") != 123.0 for line in open(exp / "train_log.jsonl"))


# ------------------------------------------------------------------------------------ stok-decode, stok-eval

N_Q, CODEBOOK = 3, 16


def _model(seed):
    torch.manual_seed(seed)
    return SpeechTokenizer(SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=8,
                                                 codebook_size=CODEBOOK, n_q=N_Q, lstm_layers=1)).eval()


def _write_scp(base, records):
    with kaldiio.WriteHelper(f"ark,scp:{base}.ark,{base}.scp") as w:
        for key, arr in records.items():
            w(key, arr)
    return f"{base}.scp"


@pytest.fixture(scope="module")
def st_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("st_errors")
    a, b = str(root / "model_a"), str(root / "model_b")
    save_released(_model(0), a)
    save_released(_model(1), b)
    rng = np.random.default_rng(0)
    codes = {f"utt{i}": rng.integers(0, CODEBOOK, size=(n, N_Q)).astype(np.float32) for i, n in enumerate((7, 12, 5))}
    scp = _write_scp(str(root / "st_codes"), codes)
    two = _write_scp(str(root / "two_codes"), dict(list(codes.items())[:2]))
    data = root / "data"
    data.mkdir()
    (data / "wav.scp").write_text(open(write_corpus(str(root / "audio"), [0.5, 0.7])).read())
    return {"root": root, "a": a, "b": b, "scp": scp, "two": two, "codes": codes, "data": str(data)}


def _decode_argv(env, out, scp=None, model=None, *extra):
    return ["--model_dir", model or env["a"], "--codes_scp", scp or env["scp"], "--output_dir", str(out),
            "--device", "cpu", *extra]


def test_decode_bad_codes_lists(st_env, tmp_path):
    out, root = tmp_path / "dec", tmp_path
    argv = lambda scp: _decode_argv(st_env, out, str(scp))  # noqa: E731
    refused(decode_bin.main, argv(tmp_path / "gone.scp"), root, "--codes_scp", "gone.scp not found")
    (tmp_path / "bad.scp").write_text("utt0\n")
    refused(decode_bin.main, argv(tmp_path / "bad.scp"), root, "bad.scp:1: expected 'utt location'")
    (tmp_path / "dup.scp").write_text(open(st_env["scp"]).read().splitlines()[0] + "\n" +
                                      open(st_env["scp"]).read().splitlines()[0] + "\n")
    refused(decode_bin.main, argv(tmp_path / "dup.scp"), root, "dup.scp:2: duplicate key 'utt0'")
    (tmp_path / "lost.scp").write_text(f"utt0 {tmp_path}/lost.ark:6\n")
    refused(decode_bin.main, argv(tmp_path / "lost.scp"), root, "lost.scp:1", "lost.ark not found")
    refused(decode_bin.main, argv(st_env["scp"][:-4] + ".ark"), root, "not a text scp")
    feats = _write_scp(str(tmp_path / "feats"), {"utt0": np.random.default_rng(1).standard_normal((7, 8))
                                                 .astype(np.float32)})
    refused(decode_bin.main, argv(feats), root, "a features scp, not SpeechTokenizer codes")
    tokens = _write_scp(str(tmp_path / "tokens"), {"utt0": np.arange(7, dtype=np.int32)})
    refused(decode_bin.main, argv(tokens), root, "holds 1-D tokens")
    big = _write_scp(str(tmp_path / "big"), {"utt0": np.full((7, N_Q), 40, np.float32)})
    refused(decode_bin.main, argv(big), root, "codes 40..40", f"{CODEBOOK} entries", "another model")
    assert not out.exists()


def test_decode_bad_model_layers_and_output(st_env, tmp_path):
    out, root = tmp_path / "dec", tmp_path
    refused(decode_bin.main, _decode_argv(st_env, out, None, None, "--n_q", "4"), root,
            "layers 0..3 asked for, the model has 3")
    refused(decode_bin.main, _decode_argv(st_env, out, None, None, "--first_layer", "3"), root, "--first_layer 3 is out of range", "(0..2)")
    refused(decode_bin.main, _decode_argv(st_env, out, None, None, "--first_layer", "-1"), root, ">= 0")
    for name in ("config.json", "SpeechTokenizer.pt"):
        d = tmp_path / f"no_{name}"
        shutil.copytree(st_env["a"], d)
        os.remove(d / name)
        refused(decode_bin.main, _decode_argv(st_env, out, None, str(d)), root, name, "not found")
    d = tmp_path / "cut"
    shutil.copytree(st_env["a"], d)
    (d / "SpeechTokenizer.pt").write_bytes((d / "SpeechTokenizer.pt").read_bytes()[:5000])
    refused(decode_bin.main, _decode_argv(st_env, out, None, str(d)), root, str(d / "SpeechTokenizer.pt"),
            "cannot be read as a SpeechTokenizer checkpoint")
    (d / "config.json").write_text('{"n_q": 3, "codebook_')
    refused(decode_bin.main, _decode_argv(st_env, out, None, str(d)), root, "config.json", "not valid JSON")
    (tmp_path / "a_file").write_text("x")
    refused(decode_bin.main, _decode_argv(st_env, tmp_path / "a_file"), root, "exists and is not a directory")
    assert not out.exists()


def test_decode_refuses_to_mix_models_and_overwrite_replaces(st_env, tmp_path):
    out = tmp_path / "dec"
    first = decode_bin.main(_decode_argv(st_env, out))
    assert first["decoded_now"] == 3 and len(os.listdir(out / "wav")) == 3
    assert decode_bin.main(_decode_argv(st_env, out))["decoded_now"] == 0  # the same: a resume
    refused(decode_bin.main, _decode_argv(st_env, out, None, st_env["b"]), tmp_path, "holds decoded audio made "
            "by another model or settings", "model.", "--overwrite")
    refused(decode_bin.main, _decode_argv(st_env, out, None, None, "--first_layer", "1"), tmp_path, "layers: [0, 2]"
            " -> [1, 2]")
    refused(decode_bin.main, _decode_argv(st_env, out, st_env["two"]), tmp_path, "codes_scp:")
    old = open(out / "wav" / "utt0.wav", "rb").read()
    res = decode_bin.main(_decode_argv(st_env, out, st_env["two"], st_env["b"], "--overwrite"))
    assert res["decoded_now"] == 2
    assert sorted(os.listdir(out / "wav")) == ["utt0.wav", "utt1.wav"]  # model A's utt2 is gone, not mixed in
    assert open(out / "wav" / "utt0.wav", "rb").read() != old
    assert sorted(line.split()[0] for line in open(out / "wav.scp")) == ["utt0", "utt1"]
    info = json.load(open(out / "decode_info.json"))
    assert info["codes_scp"] == os.path.abspath(st_env["two"])
    # audio without a record of what made it (an earlier stok) is not added to
    os.remove(out / "decode_info.json")
    refused(decode_bin.main, _decode_argv(st_env, out, st_env["two"], st_env["b"]), tmp_path,
            "no record of what made it")


def test_eval_bad_inputs(st_env, tmp_path):
    out, root = tmp_path / "ev", tmp_path
    base = ["--model_dir", st_env["a"], "--data_dir", st_env["data"], "--output_dir", str(out), "--device", "cpu",
            "--num_workers", "0"]
    refused(eval_bin.main, base + ["--n_q", "5"], root, "--n_q 5 is out of range", "3 codebooks")
    refused(eval_bin.main, ["--model_dir", st_env["a"], "--data_dir", str(tmp_path / "nodata"), "--output_dir",
                            str(out)], root, "--data_dir", "wav.scp not found")
    (tmp_path / "a_file").write_text("x")
    refused(eval_bin.main, base[:5] + [str(tmp_path / "a_file")], root, "exists and is not a directory")
    refused(eval_bin.main, ["--model_dir", str(tmp_path / "no_model"), *base[2:]], root, "config.json not found")
    assert not out.exists()


# -------------------------------------------------------------------------------------------- stok-kmeans learn

@pytest.fixture
def km_feats(tmp_path):
    rng = np.random.default_rng(0)
    mats = {f"u{i}": (rng.standard_normal((300, 4)) + rng.integers(0, 4)).astype(np.float32) for i in range(3)}
    return _write_scp(str(tmp_path / "feats"), mats)


def _learn(scp, out, *extra):
    return kmeans_bin.main(["learn", "--feats_scp", str(scp), "--output", str(out), "--device", "cpu", *extra])


def test_kmeans_learn_bad_options_and_lists(km_feats, tmp_path):
    out = tmp_path / "exp" / "km.npz"
    learn = lambda argv: _learn(*argv)  # noqa: E731
    refused(learn, (tmp_path / "none.scp", out), tmp_path, "feature scp not found", "none.scp")
    (tmp_path / "bad.scp").write_text("u0\n")
    refused(learn, (tmp_path / "bad.scp", out), tmp_path, "bad.scp:1: expected 'utt location'")
    refused(learn, (km_feats, out, "--percent", "0"), tmp_path, "--percent", "(0, 1]")
    refused(learn, (km_feats, out, "--max_iter", "0"), tmp_path, "--max_iter must be >= 1")
    refused(learn, (km_feats, out, "--n_clusters", "-2"), tmp_path, "--n_clusters must be >= 0")
    refused(learn, (km_feats, tmp_path), tmp_path, "is a directory", "model file")
    (tmp_path / "a_file").write_text("x")
    refused(learn, (km_feats, tmp_path / "a_file" / "km.npz"), tmp_path, "its directory", "is not a directory")
    refused(learn, (km_feats, out, "--n_clusters", "5000"), tmp_path, "only 900 frames for 5000 clusters")
    assert not out.exists()


def test_kmeans_learn_never_replaces_a_model_learned_otherwise(km_feats, tmp_path):
    out = tmp_path / "km.npz"
    s1 = _learn(km_feats, out, "--n_clusters", "3")
    learn = lambda argv: _learn(*argv)  # noqa: E731
    refused(learn, (km_feats, out, "--n_clusters", "4"), tmp_path, "holds a k-means model learned with other "
            "settings", "n_clusters 3 -> 4", "--overwrite")
    refused(learn, (km_feats, out, "--n_clusters", "3", "--seed", "7"), tmp_path, "seed 0 -> 7")
    other = _write_scp(str(tmp_path / "other"), {"u0": np.ones((300, 4), np.float32)})
    refused(learn, (other, out, "--n_clusters", "3"), tmp_path, "feats_scp")
    # the same settings: learned again, the same model
    assert _learn(km_feats, out, "--n_clusters", "3")["fingerprint"] == s1["fingerprint"]
    s4 = _learn(km_feats, out, "--n_clusters", "4", "--overwrite")
    assert s4["n_clusters"] == 4 and s4["fingerprint"] != s1["fingerprint"]
    (tmp_path / "notes.npz").write_text("my notes")
    refused(learn, (km_feats, tmp_path / "notes.npz", "--n_clusters", "3"), tmp_path, "exists and is not a k-means "
            "model")


# ------------------------------------------------------------------------------------------------- stok-prepare

def test_prepare_bad_corpus_splits_and_options(tmp_path):
    from stok.data.prepare.demo import default_corpus_dir

    out = tmp_path / "data"
    demo = str(default_corpus_dir())
    refused(prepare_bin.main, ["demo", "--corpus_dir", str(tmp_path / "nowhere"), "--output_dir", str(out)],
            tmp_path, "corpus dir", "nowhere does not exist")
    refused(prepare_bin.main, ["demo", "--corpus_dir", demo, "--output_dir", str(out), "--splits", "dev-clean-nope"],
            tmp_path, "split dirs ['dev-clean-nope'] not found", "train-clean-demo")
    refused(prepare_bin.main, ["librispeech", "--corpus_dir", demo, "--output_dir", str(out), "--num_jobs", "0"],
            tmp_path, "--num_jobs must be >= 1")
    refused(prepare_bin.main, ["librispeech", "--corpus_dir", demo, "--output_dir", str(out), "--combine", "all"],
            tmp_path, "--combine 'all': expected NAME=PART1,PART2")
    refused(prepare_bin.main, ["librispeech", "--corpus_dir", demo, "--output_dir", str(out), "--splits",
                               "dev-clean-demo", "--combine", "both=dev-clean-demo,train-clean-demo"],
            tmp_path, "parts ['train-clean-demo'] are neither among the splits", "--splits")
    (tmp_path / "a_file").write_text("x")
    refused(prepare_bin.main, ["demo", "--output_dir", str(tmp_path / "a_file")], tmp_path,
            "--output_dir", "exists and is not a directory")
    audio = tmp_path / "audio"
    write_corpus(str(audio), [0.5, 0.6])
    refused(prepare_bin.main, ["folder", "--audio_dir", str(audio), "--output_dir", str(out), "--dev_fraction", "1.5"],
            tmp_path, "--dev_fraction must be in [0, 1)")
    refused(prepare_bin.main, ["folder", "--wav_scp", str(tmp_path / "none.scp"), "--output_dir", str(out)],
            tmp_path, "--wav_scp", "none.scp not found")
    assert not out.exists()
