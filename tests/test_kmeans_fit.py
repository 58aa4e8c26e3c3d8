"""k-means fitting, assignment and the model file (stok.models.kmeans)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from stok.models.kmeans import Assigner, KMeansModel, fit_kmeans, kmeans_pp_seed
from stok.models.kmeans.assign import inertia
from stok.models.kmeans.model import KMeansModelError
from tests.kmeans_helpers import brute_force_labels, clustered, inertia64, lloyd_reference


def test_recovers_well_separated_clusters():
    x, truth, centres = clustered(4000, 16, 10, seed=1)
    res = fit_kmeans(x, 10, seed=0)
    labels = Assigner(res.centroids)(x)
    # every true cluster maps to exactly one fitted cluster and back
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 10 and len({a for a, _ in pairs}) == 10 and len({b for _, b in pairs}) == 10
    # centroids close to the true centres, inertia close to the noise (1 per dimension)
    nearest = brute_force_labels(res.centroids, centres)[1][:, 0]
    assert nearest.max() < 0.1
    assert res.inertia == pytest.approx(16.0, rel=0.05)
    assert res.converged and res.counts.sum() == 4000


@pytest.fixture
def always_prune(monkeypatch):
    """Use the bounds even for small k x D (by default only k x D >= PRUNE_MIN_WORK uses them)."""
    import stok.models.kmeans.lloyd as lloyd

    monkeypatch.setattr(lloyd, "PRUNE_MIN_WORK", 0)


@pytest.mark.parametrize("prune", [True, False])
def test_lloyd_passes_equal_reference_lloyd(prune, always_prune):
    """From the same initial centroids, every pass equals a float64 brute-force Lloyd pass."""
    x, _, _ = clustered(3000, 8, 12, seed=2, spread=1.5, noise=1.0)  # overlapping: many frames change cluster
    init = x[np.random.default_rng(0).choice(len(x), 12, replace=False)]
    for iters in (1, 4, 9):
        res = fit_kmeans(x, 12, init_centroids=init, warmup_iters=0, max_iter=iters, tol=-1.0, prune=prune)
        ref, _ = lloyd_reference(x, init, iters)
        assert res.n_iter == iters
        np.testing.assert_allclose(res.centroids, ref, atol=2e-4)
    if prune:  # the last passes went through the bounds
        assert min(h["recomputed"] for h in res.history) < 0.6
    # the reported inertia is that of the last pass's assignment
    ref8, _ = lloyd_reference(x, init, 8)
    assert res.inertia == pytest.approx(inertia64(x, ref8), rel=1e-5)


def test_pruned_and_plain_lloyd_agree_on_larger_data(always_prune):
    x, _, _ = clustered(20000, 32, 60, seed=3, spread=1.0, noise=1.0)
    a = fit_kmeans(x, 40, seed=5, prune=True)
    b = fit_kmeans(x, 40, seed=5, prune=False)
    assert a.n_iter == b.n_iter
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-3)
    assert a.inertia == pytest.approx(b.inertia, rel=1e-5)
    assert any(h["recomputed"] < 0.9 for h in a.history[1:])  # the bounds skipped work
    assert a.settings["prune"] and not b.settings["prune"]


def test_bounds_only_for_large_work():
    x, _, _ = clustered(2000, 8, 5, seed=3)
    assert not fit_kmeans(x, 5, seed=0).settings["prune"]  # 5 x 8 < PRUNE_MIN_WORK


def test_inertia_no_worse_than_best_of_restarts_reference():
    """One fit is within 1% of the best of 5 randomly initialised float64 Lloyd runs to convergence."""
    x, _, _ = clustered(3000, 12, 40, seed=4, spread=2.0, noise=1.0)
    ours = inertia64(x, fit_kmeans(x, 20, seed=0).centroids)
    rng = np.random.default_rng(0)
    ref = min(inertia64(x, lloyd_reference(x, x[rng.choice(len(x), 20, replace=False)], 40)[0]) for _ in range(5))
    assert ours <= 1.01 * ref


def test_warmup_phase_and_determinism():
    x, _, _ = clustered(30000, 8, 30, seed=5, spread=2.0)
    a = fit_kmeans(x, 30, seed=7, warmup_frames=5000)
    b = fit_kmeans(x, 30, seed=7, warmup_frames=5000)
    c = fit_kmeans(x, 30, seed=8, warmup_frames=5000)
    assert a.n_iter_warmup > 0 and {h["phase"] for h in a.history} == {"warmup", "full"}
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, c.centroids)


def test_seeding_greedy_distinct_and_degenerate_data():
    x, _, _ = clustered(2000, 8, 10, seed=6)
    g = torch.Generator().manual_seed(0)
    idx = kmeans_pp_seed(torch.from_numpy(x), 10, g)
    assert len(set(idx.tolist())) == 10
    # one seed per true cluster on well separated data
    _, truth, _ = clustered(2000, 8, 10, seed=6)
    assert len(set(truth[idx.numpy()].tolist())) == 10
    # fewer distinct points than clusters: still k distinct indices, fit still works
    few = np.repeat(np.eye(4, dtype=np.float32), 50, axis=0)
    idx = kmeans_pp_seed(torch.from_numpy(few), 6, torch.Generator().manual_seed(0))
    assert len(set(idx.tolist())) == 6
    res = fit_kmeans(few, 6, seed=0)
    assert res.inertia == pytest.approx(0.0, abs=1e-6)


def test_empty_clusters_are_reseeded():
    x, _, _ = clustered(500, 4, 3, seed=7)
    init = np.full((5, 4), 1e3, dtype=np.float32)  # far away: all but one get no frames in the first pass
    init[0] = 0
    res = fit_kmeans(x, 5, init_centroids=init, warmup_iters=0, max_iter=20)
    assert res.history[0]["empty"] == 4
    assert (res.counts > 0).all()


def test_bad_fit_inputs():
    x, _, _ = clustered(50, 4, 3)
    with pytest.raises(ValueError, match="only 50 frames for 100 clusters"):
        fit_kmeans(x, 100)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_kmeans(x, 3)


def test_assigner_equals_brute_force():
    x, _, centres = clustered(5000, 24, 50, seed=8)
    a = Assigner(centres)
    a.chunk = 777  # blocks that do not divide the data
    labels, dist = a(x, return_dist=True)
    ref, d2 = brute_force_labels(x, centres)
    np.testing.assert_array_equal(labels, ref)
    assert labels.dtype == np.int32
    np.testing.assert_allclose(dist, d2[:, 0], rtol=1e-4, atol=1e-3)
    parts = a.assign_many([x[:10], x[10:10], x[10:3000], x[3000:]])
    np.testing.assert_array_equal(np.concatenate(parts), ref)
    assert [len(p) for p in parts] == [10, 0, 2990, 2000]
    # random (not clustered) data: any disagreement is a float32 near-tie
    rng = np.random.default_rng(0)
    y = rng.standard_normal((4000, 24)).astype(np.float32)
    c = rng.standard_normal((64, 24)).astype(np.float32)
    ours = Assigner(c)(y)
    ref, d2 = brute_force_labels(y, c)
    diff = ours != ref
    assert ((d2[diff, 1] - d2[diff, 0]) < 1e-4 * d2[diff, 1]).all()
    with pytest.raises(ValueError, match="dimension 24"):
        a(x[:, :10])
    m, total = inertia(x, centres)
    assert m == pytest.approx(brute_force_labels(x, centres)[1][:, 0].mean(), rel=1e-4)
    assert total == pytest.approx(m * len(x))


def test_model_file_round_trip_without_pickle(tmp_path):
    c = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    path = str(tmp_path / "km" / "model.bin")  # any name: no '.npz' gets appended
    KMeansModel(c, {"teacher": {"model": "mfcc"}, "fit": {"inertia": 1.5}}).save(path)
    assert os.listdir(tmp_path / "km") == ["model.bin"]
    m = KMeansModel.load(path)
    np.testing.assert_array_equal(m.centroids, c)
    assert m.meta["teacher"] == {"model": "mfcc"} and m.meta["n_clusters"] == 7 and m.meta["dim"] == 5
    assert m.meta["format"] == "stok-kmeans" and m.meta["fingerprint"] == m.fingerprint()
    # plain numpy and torch read it with pickle disabled
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(torch.from_numpy(z["centroids"]).numpy(), c)
        assert json.loads(str(z["meta"]))["n_clusters"] == 7
        assert z["meta"].dtype.kind == "U"


def test_model_file_errors(tmp_path):
    with pytest.raises(KMeansModelError, match="not found: .*nothere.npz"):
        KMeansModel.load(str(tmp_path / "nothere.npz"))
    bad = tmp_path / "pickled.npz"
    np.savez(bad, centroids=np.zeros((2, 2), np.float32), meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(KMeansModelError, match="pickled.npz: cannot read"):
        KMeansModel.load(str(bad))
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(KMeansModelError, match="no 'centroids'"):
        KMeansModel.load(str(other))
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(KMeansModelError, match="text.npz"):
        KMeansModel.load(str(text))
    nan = tmp_path / "nan.npz"
    np.savez(nan, centroids=np.full((2, 2), np.nan, np.float32))
    with pytest.raises(KMeansModelError, match="non-finite"):
        KMeansModel.load(str(nan))
