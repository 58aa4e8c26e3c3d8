"""Stage 2 through its tools: frame sampling, ``stok-kmeans learn`` and ``stok-kmeans dump`` on feature scps."""

from __future__ import annotations

import json
import math
import os
import subprocess

import kaldiio
import numpy as np
import pytest

from stok.bin import kmeans as cli
from stok.models.kmeans import KMeansModel
from stok.core.storage import load_codes
from stok.models.kmeans.usage import usage_stats
from stok.models.kmeans.sample import FeatsError, MatrixReader, read_feats_scp, sample_frames
from tests.conftest import PYTHON, REPO
from tests.kmeans_helpers import brute_force_labels, clustered, clustered_scp, split_utts, write_feats


@pytest.fixture
def feats(tmp_path):
    scp, x, centres = clustered_scp(str(tmp_path / "feats"), n=6000, dim=16, k=10)
    return scp, x, centres


def rows_set(a: np.ndarray) -> set:
    return {r.tobytes() for r in np.ascontiguousarray(a)}


# ---------------------------------------------------------------- sampling

def test_sample_fraction_max_frames_and_determinism(feats):
    scp, x, _ = feats
    full = sample_frames(scp)
    assert full.total_frames == len(x) and len(full.frames) == len(x)
    assert rows_set(full.frames) == rows_set(x)
    s = sample_frames(scp, percent=0.1, seed=3)
    assert len(s.frames) == math.ceil(0.1 * len(x)) and s.dim == 16
    assert rows_set(s.frames) <= rows_set(x) and len(rows_set(s.frames)) == len(s.frames)  # no repeats
    np.testing.assert_array_equal(s.frames, sample_frames(scp, percent=0.1, seed=3).frames)
    assert not np.array_equal(s.frames, sample_frames(scp, percent=0.1, seed=4).frames)
    assert s.sampled_utterances > 0.5 * s.total_utterances  # frames spread over utterances
    assert len(sample_frames(scp, percent=0.5, max_frames=1234).frames) == 1234
    assert len(sample_frames(scp, max_frames=10 ** 9).frames) == len(x)


def test_sample_by_utterance_takes_whole_utterances(feats):
    scp, x, _ = feats
    mats = {k: v for k, v in kaldiio.load_scp_sequential(scp)}
    s = sample_frames(scp, max_frames=1000, by="utterance", seed=1)
    assert len(s.frames) == 1000
    got = rows_set(s.frames)
    partial = 0
    for key, m in mats.items():
        inside = len(rows_set(m) & got)
        assert inside in (0, len(m)) or partial == 0, "at most one utterance is cut"
        partial += inside not in (0, len(m))
    assert s.sampled_utterances < 0.3 * len(mats)


def test_header_shapes_for_float_and_compressed_matrices(tmp_path):
    mats = {"a": np.ones((5, 3), np.float32), "b": np.arange(40, dtype=np.float32).reshape(8, 5),
            "c": np.zeros((0, 3), np.float32)}
    for method in (None, 1, 2, 3):  # float32, then Kaldi's compressed CM, CM2, CM3 (kaldiio cannot compress [0, D])
        use = mats if method is None else {k: v for k, v in mats.items() if v.size}
        scp = write_feats(str(tmp_path / f"m{method}"), use, compression_method=method)
        with MatrixReader() as r:
            for key, spec in read_feats_scp(scp):
                assert r.shape(spec) == use[key].shape
                np.testing.assert_allclose(r.load(spec), use[key], atol=0.5)
    doubles = write_feats(str(tmp_path / "d"), {"a": np.ones((4, 2), np.float64)})
    with MatrixReader() as r:
        assert r.shape(read_feats_scp(doubles)[0][1]) == (4, 2)


def test_sample_failures_are_listed(tmp_path):
    x, _, _ = clustered(2000, 8, 4)
    mats = split_utts(x)
    mats["bad_dim"] = np.ones((30, 5), np.float32)
    mats["nan"] = np.full((40, 8), np.nan, np.float32)
    scp = write_feats(str(tmp_path), mats)
    with open(scp, "a") as f:
        f.write(f"missing {tmp_path}/nope.ark:12\n")
    s = sample_frames(scp)
    assert set(s.failures) == {"bad_dim", "nan", "missing"}
    assert "dimension 5 != 8" in s.failures["bad_dim"] and "non-finite" in s.failures["nan"]
    assert len(s.frames) == 2000 and rows_set(s.frames) == rows_set(x)


def test_sample_bad_inputs(tmp_path, feats):
    with pytest.raises(FeatsError, match="feature scp not found: .*nothere.scp"):
        sample_frames(str(tmp_path / "nothere.scp"))
    for p in (0.0, 1.5, -1):
        with pytest.raises(FeatsError, match="fraction"):
            sample_frames(feats[0], percent=p)
    bad = tmp_path / "bad.scp"
    bad.write_text("u1 a.ark:1\nonlykey\n")
    with pytest.raises(FeatsError, match=r"bad.scp:2"):
        sample_frames(str(bad))
    (tmp_path / "empty.scp").write_text("")
    with pytest.raises(FeatsError, match="empty"):
        sample_frames(str(tmp_path / "empty.scp"))


def test_memory_check_reads_mem_available_and_names_its_margin(feats, tmp_path, monkeypatch):
    """Right after stage 1 the page cache holds the features: little is free (MemFree) but most is available."""
    import stok.models.kmeans.memory as memory

    meminfo = tmp_path / "meminfo"
    monkeypatch.setattr(memory, "MEMINFO", str(meminfo))
    meminfo.write_text("MemTotal:       24683784 kB\nMemFree:            1000 kB\nMemAvailable:   23847684 kB\n")
    assert memory.mem_available() == 23847684 * 1024
    assert len(sample_frames(feats[0]).frames) == 6000  # 384 kB: fits, although only 1 MB is free
    meminfo.write_text("MemTotal:       24683784 kB\nMemFree:        9000000 kB\nMemAvailable:       400 kB\n")
    with pytest.raises(FeatsError, match=r"6000 frames x 16 dims needs 0.4 MiB in memory, more than 80% of the "
                                         r"0.4 MiB available now \(MemAvailable\).*--sample_in disk.*--max_frames"):
        sample_frames(feats[0])
    assert abs(memory.mem_available() - 400 * 1024) == 0
    monkeypatch.setattr(memory, "MEMINFO", str(tmp_path / "none"))
    assert memory.mem_available() is None and len(sample_frames(feats[0]).frames) == 6000  # unknown: no check


# ---------------------------------------------------------------- learn + dump

def learn(scp, out, *extra):
    return cli.main(["learn", "--feats_scp", scp, "--output", out, *extra])


def dump(km, scp, out, *extra):
    return cli.main(["dump", "--km_model", km, "--feats_scp", scp, "--output_dir", out, *extra])


def test_learn_and_dump_labels_text_and_usage(tmp_path, feats):
    scp, x, centres = feats
    km_path = str(tmp_path / "exp" / "km10.npz")
    s = learn(scp, km_path, "--n_clusters", "10", "--percent", "0.5", "--seed", "1")
    assert s["n_clusters"] == 10 and s["frames"] == 3000 and s["converged"]
    km = KMeansModel.load(km_path)
    assert km.meta["sample"]["percent"] == 0.5 and km.meta["feats_scp"] == os.path.abspath(scp)
    assert km.meta["fit"]["inertia"] == pytest.approx(16.0, rel=0.1)

    out = str(tmp_path / "dump")
    summary = dump(km_path, scp, out, "--batch_frames", "700")
    mats = {k: v for k, v in kaldiio.load_scp_sequential(scp)}
    labels = dict(kaldiio.load_scp_sequential(os.path.join(out, "km_labels.scp")))
    assert list(labels) == sorted(mats)
    all_labels = []
    for key, m in mats.items():
        assert labels[key].dtype == np.int32 and labels[key].shape == (len(m),)
        np.testing.assert_array_equal(labels[key], brute_force_labels(m, km.centroids)[0])
        all_labels.append(labels[key])
    # the text file: 'utt l l l', same labels, same order
    lines = open(os.path.join(out, "km_labels.txt")).read().splitlines()
    assert [l.split()[0] for l in lines] == sorted(mats)
    for line in lines:
        key, *toks = line.split(" ")
        assert list(map(int, toks)) == labels[key].tolist()
    # usage statistics
    counts = np.bincount(np.concatenate(all_labels), minlength=10)
    p = counts / counts.sum()
    u = summary["usage"]
    assert u["clusters_used"] == 10 and u["frames"] == len(x)
    assert u["entropy_bits"] == pytest.approx(-(p * np.log2(p)).sum())
    assert u["perplexity"] == pytest.approx(2 ** u["entropy_bits"])
    with open(os.path.join(out, "km_labels.summary.json")) as f:
        assert json.load(f)["usage"]["counts"] == counts.tolist()
    assert open(os.path.join(out, "failed.list")).read() == ""
    first = sorted(mats)[0]
    assert dict(load_codes(os.path.join(out, "km_labels.scp")))[first].tolist() == labels[first].tolist()


def test_usage_stats_values():
    u = usage_stats(np.array([5, 5, 0, 0]))
    assert u["clusters_used"] == 2 and u["entropy_bits"] == pytest.approx(1.0) and u["perplexity"] == pytest.approx(2.0)
    assert u["max_entropy_bits"] == 2.0 and u["normalized_entropy"] == pytest.approx(0.5)
    assert u["largest_cluster_share"] == 0.5
    assert usage_stats(np.zeros(3, int))["frames"] == 0


def test_dump_lists_failures_and_strict(tmp_path, feats):
    scp, x, _ = feats
    km_path = str(tmp_path / "km.npz")
    learn(scp, km_path, "--n_clusters", "10")
    mats = split_utts(clustered(500, 16, 3, seed=9)[0], prefix="ok")
    mats["wrong_dim"] = np.ones((12, 39), np.float32)
    mats["has_nan"] = np.full((3, 16), np.nan, np.float32)
    mats["empty"] = np.zeros((0, 16), np.float32)
    mixed = write_feats(str(tmp_path / "mixed"), mats)
    out = str(tmp_path / "out")
    s = dump(km_path, mixed, out)
    failed = dict(l.split("\t") for l in open(os.path.join(out, "failed.list")).read().splitlines())
    assert set(failed) == {"wrong_dim", "has_nan"}
    assert "dimension 39 != 16" in failed["wrong_dim"] and "non-finite" in failed["has_nan"]
    labels = dict(kaldiio.load_scp_sequential(os.path.join(out, "km_labels.scp")))
    assert set(labels) == set(mats) - set(failed) and labels["empty"].shape == (0,)
    assert s["failed"] == 2
    with pytest.raises(SystemExit, match="2 entries failed"):
        dump(km_path, mixed, str(tmp_path / "out2"), "--strict")


def test_dump_resumes_and_refuses_another_model(tmp_path, feats):
    scp, x, _ = feats
    km_path = str(tmp_path / "km.npz")
    learn(scp, km_path, "--n_clusters", "10")
    out = str(tmp_path / "out")
    ref = dump(km_path, scp, out)
    ref_labels = dict(kaldiio.load_scp_sequential(os.path.join(out, "km_labels.scp")))
    # a crash: the shard index lost its last entries and the ark has a torn tail
    shard = os.path.join(out, "km_labels.0.scp")
    lines = open(shard).read().splitlines()
    open(shard, "w").write("\n".join(lines[:20]) + "\n" + lines[20][:7])
    with open(os.path.join(out, "km_labels.0.ark"), "ab") as f:
        f.write(b"garbage")
    again = dump(km_path, scp, out)
    assert again["already_done"] == 20 and again["written_now"] == len(ref_labels) - 20
    labels = dict(kaldiio.load_scp_sequential(os.path.join(out, "km_labels.scp")))
    assert labels.keys() == ref_labels.keys()
    assert all(np.array_equal(labels[k], ref_labels[k]) for k in labels)
    assert again["usage"]["counts"] == ref["usage"]["counts"]
    # another model into the same dir: refused, unless --overwrite
    other = str(tmp_path / "other.npz")
    learn(scp, other, "--n_clusters", "5")
    with pytest.raises(SystemExit, match="another model or settings"):
        dump(other, scp, out)
    s = dump(other, scp, out, "--overwrite")
    assert s["already_done"] == 0 and s["usage"]["n_clusters"] == 5


def test_default_n_clusters(tmp_path):
    x = clustered(3000, 39, 20, seed=1)[0]
    scp39 = write_feats(str(tmp_path / "mfcc"), split_utts(x))
    assert learn(scp39, str(tmp_path / "a.npz"), "--max_iter", "1")["n_clusters"] == 100
    y = clustered(3000, 24, 20, seed=1)[0]
    scp24 = write_feats(str(tmp_path / "hub"), split_utts(y))
    assert learn(scp24, str(tmp_path / "b.npz"), "--max_iter", "1")["n_clusters"] == 500
    # the stage-1 summary names the teacher: it wins over the dimension
    with open(os.path.join(tmp_path, "hub", "feats.summary.json"), "w") as f:
        json.dump({"model": {"model": "mfcc", "dim": 24}}, f)
    s = cli.main(["learn", "--feats_dir", str(tmp_path / "hub"), "--output", str(tmp_path / "c.npz"),
                  "--max_iter", "1"])
    assert s["n_clusters"] == 100
    assert KMeansModel.load(str(tmp_path / "c.npz")).meta["teacher"]["model"] == "mfcc"


def test_learn_lists_failed_entries(tmp_path):
    x = clustered(2000, 8, 4)[0]
    mats = split_utts(x)
    mats["odd"] = np.ones((10, 3), np.float32)
    scp = write_feats(str(tmp_path), mats)
    km = str(tmp_path / "exp" / "km4.npz")
    s = learn(scp, km, "--n_clusters", "4")
    assert s["failed"] == 1 and s["frames"] == 2000
    assert open(str(tmp_path / "exp" / "km4.failed.list")).read().startswith("odd\tdimension 3 != 8")
    with pytest.raises(SystemExit, match="1 feature entries failed"):
        learn(scp, km, "--n_clusters", "4", "--strict")


def test_cli_errors_name_the_file(tmp_path, feats):
    with pytest.raises(SystemExit, match="feature scp not found: .*missing.scp"):
        learn(str(tmp_path / "missing.scp"), str(tmp_path / "km.npz"))
    with pytest.raises(SystemExit, match="feats_dir.*feats.scp|feats.scp not found"):
        cli.main(["learn", "--feats_dir", str(tmp_path), "--output", str(tmp_path / "km.npz")])
    with pytest.raises(SystemExit, match="k-means model not found: .*nomodel.npz"):
        dump(str(tmp_path / "nomodel.npz"), feats[0], str(tmp_path / "o"))
    km = str(tmp_path / "km.npz")
    learn(feats[0], km, "--n_clusters", "3")
    with pytest.raises(SystemExit, match="feature scp not found: .*gone.scp"):
        dump(km, str(tmp_path / "gone.scp"), str(tmp_path / "o"))
    with pytest.raises(SystemExit, match="only 6000 frames for 7000 clusters"):
        learn(feats[0], str(tmp_path / "km7000.npz"), "--n_clusters", "7000")
    with pytest.raises(SystemExit, match="fraction"):
        learn(feats[0], km, "--percent", "10")
    with pytest.raises(SystemExit, match="unknown command"):
        cli.main(["fit"])


def test_recipe_command_lines(tmp_path, capsys):
    """The exact stage-2 commands of run.sh, as subprocesses, from a recipe dir."""
    x = clustered(4000, 39, 30, seed=2)[0]
    root = tmp_path / "recipe"
    for split, part in (("train", x[:3000]), ("dev", x[3000:])):
        write_feats(str(root / "dump" / "mfcc" / split), split_utts(part, prefix=split))
    env = {**os.environ, "PYTHONPATH": REPO}
    run = lambda *a: subprocess.run([PYTHON, "-m", "stok.bin.kmeans", *a], cwd=root, env=env,  # noqa: E731
                                    capture_output=True, text=True)
    r = run("learn", "--feats_scp", "dump/mfcc/train/feats.scp", "--n_clusters", "100", "--percent", "1.0",
            "--output", "exp/kmeans/km100.npz")
    assert r.returncode == 0, r.stderr
    assert "k-means: 100 clusters on 3000 frames" in r.stdout
    r = run("dump", "--km_model", "exp/kmeans/km100.npz", "--feats_scp", "dump/mfcc/dev/feats.scp",
            "--output_dir", "dump/km100/dev")
    assert r.returncode == 0, r.stderr
    assert "clusters used" in r.stdout and "km_labels_usage" in r.stdout
    assert os.path.exists(root / "dump" / "km100" / "dev" / "km_labels.txt")
    r = run("learn", "--feats_scp", "dump/mfcc/nope/feats.scp", "--output", "x.npz")
    assert r.returncode != 0 and "dump/mfcc/nope/feats.scp" in r.stderr
    assert cli.main(["--help"]) is None and "learn" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["dump", "--help"])
    assert "--from_audio" in capsys.readouterr().out
