"""Stage 2 at a released size: ``stok-kmeans dump`` with a 1024-cluster model on 768-dim (HuBERT base
width) features; every label 0..1023 is used, and every reader returns exactly the nearest centroid:
kaldiio, Kaldi's C++ reader (``kaldi_native_io``), ``load_codes`` and ``km_labels.txt``."""

from __future__ import annotations

import os

import kaldiio
import numpy as np

from stok.bin import kmeans as cli
from stok.core.storage import load_codes
from stok.models.kmeans import KMeansModel
from tests import kaldi_cpp
from tests.kmeans_helpers import split_utts, write_feats

K, DIM = 1024, 768


def test_dump_1024_clusters_labels_exact_in_every_reader(tmp_path):
    rng = np.random.default_rng(0)
    centres = (8.0 * rng.standard_normal((K, DIM))).astype(np.float32)
    labels = rng.permutation(np.concatenate([np.arange(K), rng.integers(0, K, K)]))  # each label at least once
    x = (centres[labels] + rng.standard_normal((len(labels), DIM))).astype(np.float32)
    x64, c64 = x.astype(np.float64), centres.astype(np.float64)
    nearest = ((x64 ** 2).sum(1)[:, None] - 2 * x64 @ c64.T + (c64 ** 2).sum(1)[None]).argmin(1)
    assert np.array_equal(nearest, labels)  # well separated: the drawn cluster is the nearest centroid
    mats = split_utts(x, seed=1, lo=20, hi=200)
    truth, pos = {}, 0
    for key in mats:  # split_utts cuts the frames in order
        truth[key] = labels[pos:pos + len(mats[key])]
        pos += len(mats[key])
    scp = write_feats(str(tmp_path / "feats"), mats)
    km = str(tmp_path / "km1024.npz")
    KMeansModel(centres, {"teacher": {"model": "hubert", "layer": 9, "dim": DIM}}).save(km)

    out = str(tmp_path / "km1024")
    summary = cli.main(["dump", "--km_model", km, "--feats_scp", scp, "--output_dir", out, "--device", "cpu",
                        "--batch_frames", "500"])
    assert summary["failed"] == 0 and summary["usage"]["clusters_used"] == K
    labels_scp = os.path.join(out, "km_labels.scp")
    readers = {
        "kaldiio": dict(kaldiio.load_scp_sequential(labels_scp)),
        "kaldi_native_io": kaldi_cpp.int32_vectors(labels_scp),
        "load_codes": dict(load_codes(labels_scp)),
        "text": {k: np.array(t, dtype=np.int64)
                 for k, *t in (line.split() for line in open(os.path.join(out, "km_labels.txt")))},
    }
    assert readers["kaldiio"][next(iter(truth))].dtype == np.int32
    for name, got in readers.items():
        assert sorted(got) == sorted(truth), name
        for key, ref in truth.items():
            np.testing.assert_array_equal(got[key], ref, err_msg=f"{name}: {key}")
    every = np.concatenate([readers["kaldi_native_io"][k] for k in truth])
    assert set(every.tolist()) == set(range(K)) and (every >= 256).mean() > 0.7
