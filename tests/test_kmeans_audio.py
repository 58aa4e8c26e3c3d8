"""k-means labels straight from audio (teacher + centroids in one dump-engine pass) equal the two-step path."""

from __future__ import annotations

import os

import kaldiio
import numpy as np
import pytest
import torch

from stok.bin import dump_features
from stok.bin import kmeans as cli
from stok.dump.engine import run_dump
from stok.core.model_api import DumpModel
from stok.dump.settings import DumpSettings, add_dump_arguments
from stok.models.kmeans import KMeansModel
from stok.models.kmeans.labels_model import KMeansLabels
from tests.conftest import write_corpus
from tests.kmeans_helpers import brute_force_labels


@pytest.fixture
def corpus(tmp_path):
    durations = np.random.default_rng(3).uniform(0.4, 3.0, size=10)
    return write_corpus(str(tmp_path / "audio"), durations)


def labels_of(scp):
    return {k: v for k, v in kaldiio.load_scp_sequential(scp)}


def test_from_audio_equals_feature_dump_then_labels(tmp_path, corpus):
    feats = str(tmp_path / "dump" / "mfcc")
    dump_features.main(["--teacher", "mfcc", "--wav_scp", corpus, "--output_dir", feats, "--num_workers", "0"])
    km = str(tmp_path / "km16.npz")
    s = cli.main(["learn", "--feats_dir", feats, "--n_clusters", "16", "--output", km])
    assert s["dim"] == 39
    assert KMeansModel.load(km).meta["teacher"]["model"] == "mfcc"
    two_step = str(tmp_path / "two_step")
    ref = cli.main(["dump", "--km_model", km, "--feats_dir", feats, "--output_dir", two_step])
    one_pass = str(tmp_path / "one_pass")
    got = cli.main(["dump", "--from_audio", "--km_model", km, "--teacher", "mfcc", "--wav_scp", corpus,
                    "--output_dir", one_pass, "--num_workers", "2", "--batch_seconds", "5", "--device", "cpu"])
    a, b = labels_of(os.path.join(two_step, "km_labels.scp")), labels_of(os.path.join(one_pass, "km_labels.scp"))
    assert a.keys() == b.keys() and len(a) == 10
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert open(os.path.join(two_step, "km_labels.txt")).read() == open(os.path.join(one_pass, "km_labels.txt")).read()
    assert got["usage"]["counts"] == ref["usage"]["counts"] and got["mode"] == "audio"
    assert got["model"]["model"] == "kmeans_labels" and got["model"]["teacher"]["model"] == "mfcc"
    # resuming with another model into the same dir is refused
    other = str(tmp_path / "km8.npz")
    cli.main(["learn", "--feats_dir", feats, "--n_clusters", "8", "--output", other])
    with pytest.raises(SystemExit, match="another model or settings"):
        cli.main(["dump", "--from_audio", "--km_model", other, "--teacher", "mfcc", "--wav_scp", corpus,
                  "--output_dir", one_pass, "--num_workers", "0"])


class Fake(DumpModel):
    """A weight-free teacher: per 320-sample frame, [mean |x|, max |x|, rms] of the frame."""

    dim = 3

    def num_frames(self, n):
        return -(-n // 320)

    def encode(self, padded, lengths):
        out = []
        for i, n in enumerate(lengths.tolist()):
            x = torch.nn.functional.pad(padded[i, :n], (0, -(-n // 320) * 320 - n)).view(-1, 320).abs()
            out.append(torch.stack([x.mean(1), x.max(1).values, x.square().mean(1).sqrt()], 1).numpy())
        return out


def test_labels_model_equals_assigning_teacher_features(tmp_path, corpus):
    import argparse

    p = argparse.ArgumentParser()
    add_dump_arguments(p)
    teacher = Fake()
    rng = np.random.default_rng(0)
    km = KMeansModel(np.abs(rng.standard_normal((6, 3))).astype(np.float32) * 0.05)
    args = p.parse_args(["--wav_scp", corpus, "--output_dir", str(tmp_path / "out"), "--num_workers", "0",
                         "--batch_seconds", "4"])
    run_dump(DumpSettings.from_args(args), lambda device: KMeansLabels(teacher, km, device), name="km_labels")
    got = labels_of(str(tmp_path / "out" / "km_labels.scp"))
    import soundfile as sf

    for line in open(corpus):
        key, path = line.split()
        wav = torch.from_numpy(sf.read(path, dtype="float32")[0])
        f = teacher.encode(wav[None], torch.tensor([len(wav)]))[0]
        np.testing.assert_array_equal(got[key], brute_force_labels(f, km.centroids)[0])
    bad = KMeansLabels(teacher, KMeansModel(np.zeros((4, 5), np.float32)))
    with pytest.raises(ValueError, match="dimension 5"):
        bad.encode(torch.zeros(1, 640), torch.tensor([640]))


def test_from_audio_teacher_dimension_mismatch_fails_early(tmp_path, corpus):
    km = str(tmp_path / "km.npz")
    KMeansModel(np.zeros((4, 768), np.float32)).save(km)
    with pytest.raises(SystemExit, match="39-dim features.*768-dim"):
        cli.main(["dump", "--from_audio", "--km_model", km, "--teacher", "mfcc", "--wav_scp", corpus,
                  "--output_dir", str(tmp_path / "o"), "--num_workers", "0"])
