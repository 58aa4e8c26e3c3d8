"""k-means from an on-disk sample: the sampler's rows on disk, fits equal to in-memory ones, reuse of a finished
sample, the memory budget (a child's peak RSS with a sample several times larger than its budget)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

from stok.bin import kmeans as cli
from stok.models.kmeans import KMeansModel, fit_kmeans
from stok.models.kmeans.assign import inertia
from stok.models.kmeans.sample import fill_sample, plan_sample, read_feats_scp, sample_frames
from stok.models.kmeans.sample_file import FileSink, made_by
from tests.conftest import PYTHON, REPO
from tests.kmeans_helpers import (brute_force_labels, clustered, clustered_scp, run_with_peak_rss, split_utts,
                                 write_feats, write_large_feats)


def disk_sample(scp, directory, dtype="float32", **kw):
    plan = plan_sample(scp, **kw)
    record = made_by(scp, read_feats_scp(scp), kw.get("percent", 1.0), kw.get("max_frames", 0),
                     kw.get("by", "frame"), kw.get("seed", 0), dtype)
    return fill_sample(plan, FileSink(str(directory), plan.n, plan.dim, dtype, record))


@pytest.mark.parametrize("by", ["frame", "utterance"])
def test_on_disk_sample_holds_the_samplers_rows(tmp_path, by):
    scp, x, _ = clustered_scp(str(tmp_path / "feats"), n=6000, dim=16, k=10)
    ref = sample_frames(scp, percent=0.3, seed=3, by=by)
    s32 = disk_sample(scp, tmp_path / "s32", percent=0.3, seed=3, by=by)
    s16 = disk_sample(scp, tmp_path / "s16", "float16", percent=0.3, seed=3, by=by)
    assert s32.n == s16.n == len(ref.frames) == 1800 and s32.info() == ref.info()
    got32 = np.load(str(tmp_path / "s32" / "frames.npy"))  # plain numpy reads it
    np.testing.assert_array_equal(got32, ref.frames)
    got16 = np.load(str(tmp_path / "s16" / "frames.npy"), mmap_mode="r")
    assert got16.dtype == np.float16 and got16.shape == (1800, 16)
    np.testing.assert_array_equal(got16, ref.frames.astype(np.float16))
    record = json.load(open(tmp_path / "s16" / "sample.json"))
    assert record["made_by"]["seed"] == 3 and record["made_by"]["dtype"] == "float16"
    assert record["sample"]["sampled_frames"] == 1800 and record["made_by"]["feats_scp"] == os.path.abspath(scp)
    # rows by index (any order, repeats) and blocks, as the Lloyd passes read them
    idx = np.array([1799, 0, 5, 6, 7, 5, 1000])
    np.testing.assert_array_equal(s32.frames.rows(idx).numpy(), ref.frames[idx])
    blocks = list((s, b.clone()) for s, b in s32.frames.blocks(700))
    assert [s for s, _ in blocks] == [0, 700, 1400]
    np.testing.assert_array_equal(torch.cat([b for _, b in blocks]).numpy(), ref.frames)
    assert [s for s, _ in s32.frames.blocks(700, [2, 0])] == [1400, 0]


@pytest.fixture
def always_prune(monkeypatch):
    import stok.models.kmeans.lloyd as lloyd

    monkeypatch.setattr(lloyd, "PRUNE_MIN_WORK", 0)


def test_fit_from_disk_equals_fit_in_memory(tmp_path, always_prune):
    x, _, _ = clustered(20000, 24, 60, seed=3, spread=1.0, noise=1.0)
    scp = write_feats(str(tmp_path / "feats"), split_utts(x, lo=200, hi=600))
    mem = sample_frames(scp)
    disk = disk_sample(scp, tmp_path / "s32")
    a = fit_kmeans(mem.frames, 40, seed=5, block_rows=1500, warmup_frames=4000)
    b = fit_kmeans(disk.frames, 40, seed=5, block_rows=1500, warmup_frames=4000)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia and a.history == [{**h, "seconds": a.history[i]["seconds"]}
                                                     for i, h in enumerate(b.history)]
    assert any(h["recomputed"] < 0.5 for h in b.history if h["phase"] == "full")  # the bounds skipped work
    assert b.settings["storage"] == "disk float32" and a.settings["storage"] == "memory"
    # empty clusters are re-seeded from rows read back from disk, as in memory
    init = np.full((6, 24), 1e3, dtype=np.float32)
    init[0] = 0
    a = fit_kmeans(mem.frames, 6, init_centroids=init, warmup_iters=0, max_iter=5, block_rows=1500)
    b = fit_kmeans(disk.frames, 6, init_centroids=init, warmup_iters=0, max_iter=5, block_rows=1500)
    assert a.history[0]["empty"] == 5 and (b.counts > 0).all()
    np.testing.assert_array_equal(a.centroids, b.centroids)
    # float16 storage: the same fit to float16 rounding (inertia measured on the float32 frames)
    half = disk_sample(scp, tmp_path / "s16", "float16")
    c = fit_kmeans(half.frames, 40, seed=5, block_rows=1500, warmup_frames=4000)
    ref = fit_kmeans(mem.frames, 40, seed=5, block_rows=1500, warmup_frames=4000)
    assert inertia(x, c.centroids)[0] == pytest.approx(inertia(x, ref.centroids)[0], rel=1e-3)


def learn(scp, out, *extra):
    return cli.main(["learn", "--feats_scp", scp, "--output", out, *extra])


def test_learn_reuses_a_finished_sample_and_never_mixes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stok.kmeans")
    scp, x, _ = clustered_scp(str(tmp_path / "feats"), n=6000, dim=16, k=10)
    km = str(tmp_path / "exp" / "km10.npz")
    sdir = tmp_path / "exp" / "km10.sample"
    first = learn(scp, km, "--n_clusters", "10", "--percent", "0.5", "--keep_sample")
    assert first["sample_storage"] == "disk float16" and not first["sample_reused"]
    frames = sdir / "frames.npy"
    stamp = os.stat(frames).st_mtime_ns
    again = learn(scp, km, "--n_clusters", "10", "--percent", "0.5", "--keep_sample")
    assert again["sample_reused"] and os.stat(frames).st_mtime_ns == stamp
    assert KMeansModel.load(km).meta["sample"]["reused"] and again["inertia"] == first["inertia"]
    third = learn(scp, km, "--n_clusters", "10", "--percent", "0.5")  # auto: a finished sample on disk is reused
    assert third["sample_reused"] and third["inertia"] == first["inertia"]
    assert not sdir.exists()  # the model is written and no --keep_sample: the sample is removed
    # another k reuses the same sample (the sample does not depend on k); other sampling settings never do
    learn(scp, km, "--n_clusters", "10", "--percent", "0.5", "--keep_sample")
    other = learn(scp, str(tmp_path / "exp" / "km7.npz"), "--n_clusters", "7", "--percent", "0.5",
                  "--sample_dir", str(sdir), "--keep_sample")
    assert other["sample_reused"] and other["frames"] == 3000
    caplog.clear()
    s = learn(scp, km, "--n_clusters", "10", "--percent", "0.5", "--seed", "1", "--keep_sample", "--overwrite")
    assert not s["sample_reused"] and "made with other settings or features (seed differ)" in caplog.text
    assert json.load(open(sdir / "sample.json"))["made_by"]["seed"] == 1
    # the features change (stage 1 rerun): sampled again
    write_feats(str(tmp_path / "feats"), split_utts(x[::-1].copy()))
    caplog.clear()
    s = learn(scp, km, "--n_clusters", "10", "--percent", "0.5", "--seed", "1", "--keep_sample")
    assert not s["sample_reused"] and "made with other settings or features (arks differ)" in caplog.text
    # a killed run's unfinished sample (no sample.json) is removed, not reused
    os.remove(sdir / "sample.json")
    (sdir / "frames.npy.tmp999").write_bytes(b"torn")
    s = learn(scp, km, "--n_clusters", "10", "--percent", "0.5", "--seed", "1", "--keep_sample")
    assert not s["sample_reused"] and sorted(os.listdir(sdir)) == ["frames.npy", "sample.json"]
    # in memory: no sample directory at all
    s = learn(scp, str(tmp_path / "m.npz"), "--n_clusters", "10", "--sample_in", "memory")
    assert s["sample_storage"] == "memory" and not os.path.exists(tmp_path / "m.sample")


def test_learn_memory_and_disk_errors(tmp_path, monkeypatch):
    scp, _, _ = clustered_scp(str(tmp_path / "feats"), n=3000, dim=16, k=5)
    km = str(tmp_path / "km.npz")
    with pytest.raises(SystemExit, match="--keep_sample keeps the on-disk sample, but --sample_in memory"):
        learn(scp, km, "--sample_in", "memory", "--keep_sample")
    with pytest.raises(SystemExit, match="more than the --memory_gb budget of .*: raise --memory_gb"):
        learn(scp, km, "--n_clusters", "5", "--memory_gb", "0.01")
    import stok.models.kmeans.sample_source as source

    monkeypatch.setattr(source, "_free_disk", lambda path: 1000)
    with pytest.raises(SystemExit, match=r"needs 0.1 MiB in --sample_dir .*km.sample, only 0.0 MiB is free"):
        learn(scp, km, "--n_clusters", "5", "--sample_in", "disk")
    monkeypatch.undo()
    big = write_feats(str(tmp_path / "big"), {"a": np.full((40, 4), 1e5, np.float32), "b": np.ones((40, 4), np.float32)})
    with pytest.raises(SystemExit, match="a: values up to 1e.05 exceed float16's range .*--sample_dtype float32"):
        learn(big, km, "--n_clusters", "2", "--sample_in", "disk")
    assert not os.path.exists(km) and not os.path.exists(tmp_path / "km.sample")
    assert learn(big, km, "--n_clusters", "2", "--sample_in", "disk", "--sample_dtype", "float32")["converged"]


def test_learn_stays_within_its_memory_budget_on_a_larger_sample(tmp_path):
    """HuBERT-base width: a 2.3 GiB float32 sample learned by a child given 0.8 GiB in all (its peak RSS from the
    kernel's accounting of that process, mapped file pages and libraries included)."""
    n, dim, budget_gib = 800_000, 768, 0.8
    scp, centres = write_large_feats(str(tmp_path / "feats"), n, dim, 8, utt_frames=4000)
    assert n * dim * 4 > 2.8 * budget_gib * 2 ** 30
    out = str(tmp_path / "km8.npz")
    r, peak = run_with_peak_rss([PYTHON, "-m", "stok.bin.kmeans", "learn", "--feats_scp", scp, "--n_clusters", "8",
                                 "--output", out, "--memory_gb", str(budget_gib)], str(tmp_path / "peak"), cwd=REPO,
                                env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sample disk float16" in r.stdout
    assert 0 < peak <= budget_gib * 2 ** 30, f"peak RSS {peak / 2 ** 30:.2f} GiB over the {budget_gib} GiB budget"
    km = KMeansModel.load(out)
    assert km.meta["sample"]["storage"] == "disk float16" and km.meta["sample"]["sampled_frames"] == n
    assert brute_force_labels(km.centroids, centres)[1][:, 0].max() < 0.05 * dim  # each centre found


def reference_sample(scp, percent, max_frames, seed, by):
    """The sampler as it was before on-disk samples (one preallocated array, same draws): every matrix loaded with
    kaldiio in scp order, per-utterance counts from one multivariate hypergeometric draw (or whole utterances in
    a random order), then sorted row choices per utterance from the same generator."""
    import kaldiio

    mats = [np.asarray(m) for _, m in kaldiio.load_scp_sequential(scp)]
    rows = np.array([len(m) for m in mats], dtype=np.int64)
    n = int(np.ceil(percent * rows.sum()))
    n = min(n, max_frames) if max_frames else n
    rng = np.random.default_rng(seed)
    if n == rows.sum():
        counts = rows.copy()
    elif by == "frame":
        counts = rng.multivariate_hypergeometric(rows, n, method="marginals")
    else:
        counts, need = np.zeros_like(rows), n
        for i in rng.permutation(len(rows)):
            if need <= 0:
                break
            counts[i] = min(rows[i], need)
            need -= counts[i]
    parts = [m if c == len(m) else m[np.sort(rng.choice(len(m), size=int(c), replace=False))]
             for m, c in zip(mats, counts) if c]
    return np.concatenate(parts)


@pytest.mark.parametrize("by,percent,max_frames,seed", [("frame", 0.1, 0, 0), ("frame", 0.37, 0, 5),
                                                        ("utterance", 0.3, 0, 2), ("frame", 1.0, 4000, 11)])
def test_learn_samples_the_same_frames_as_before(tmp_path, by, percent, max_frames, seed):
    """Same seed, same frames: the in-memory sample and the on-disk one that `learn` keeps hold the rows the
    sampler drew before samples could live on disk (checked once against main's sample_frames as well)."""
    x, _, _ = clustered(12000, 16, 12, seed=7)
    scp = write_feats(str(tmp_path / "feats"), split_utts(x, seed=3, lo=50, hi=400))
    ref = reference_sample(scp, percent, max_frames, seed, by)
    np.testing.assert_array_equal(sample_frames(scp, percent, max_frames, seed, by).frames, ref)
    out = str(tmp_path / "km.npz")
    opts = ["--n_clusters", "4", "--percent", str(percent), "--max_frames", str(max_frames), "--seed", str(seed),
            "--sample_by", by, "--keep_sample", "--sample_dtype", "float32"]
    assert learn(scp, out, *opts)["sample_storage"] == "disk float32"
    np.testing.assert_array_equal(np.load(str(tmp_path / "km.sample" / "frames.npy")), ref)
