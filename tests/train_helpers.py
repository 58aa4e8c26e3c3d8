"""Shared pieces of the trainer tests: a tiny corpus with teacher features, and a tiny training config."""

from __future__ import annotations

import os

import kaldiio
import numpy as np
import soundfile as sf

from tests.conftest import write_corpus

TEACHER_DIM = 8


def tiny_data(root, durations=(0.7, 1.3, 2.0, 0.4, 1.1, 1.6, 0.9, 1.2), dev=(1.0, 0.6), dim=TEACHER_DIM):
    """Kaldi dirs ``root/data/{train,dev}`` and teacher feature scps ``root/feats_{train,dev}.scp``.

    The teacher is a smooth function of the audio's frame energy, so distillation has something to learn."""
    out = {}
    for split, durs in (("train", durations), ("dev", dev)):
        scp = write_corpus(os.path.join(root, "audio_" + split), durs, prefix=split)
        d = os.path.join(root, "data", split)
        os.makedirs(d, exist_ok=True)
        with open(scp) as src, open(os.path.join(d, "wav.scp"), "w") as dst:
            dst.write(src.read())
        feats = os.path.join(root, f"feats_{split}")
        rng = np.random.default_rng(0)
        proj = rng.standard_normal((4, dim)).astype(np.float32)
        with kaldiio.WriteHelper(f"ark,scp:{feats}.ark,{feats}.scp") as w:
            for line in open(scp):
                utt, path = line.split()
                wav = sf.read(path, dtype="float32")[0]
                frames = -(-len(wav) // 320)
                wav = np.pad(wav, (0, frames * 320 - len(wav))).reshape(frames, 320)
                e = np.log(1e-4 + (wav ** 2).mean(1))
                basis = np.stack([e, np.sin(e), np.abs(wav).max(1), np.ones_like(e)], 1)
                w(utt, (basis @ proj).astype(np.float32))
        out[split] = (d, feats + ".scp")
    return out


def tiny_config(**sections):
    cfg = {
        "model": dict(n_filters=4, dimension=32, semantic_dimension=TEACHER_DIM, codebook_size=16, n_q=2,
                      lstm_layers=1),
        "loss": dict(),
        "disc": dict(width=0.0625, mpd_periods=[2, 3], msd_scales=2, mstft_filters=4, mstft_n_ffts=[256, 128]),
        "optim": dict(lr=1e-3),
        "data": dict(segment_seconds=0.5, batch_size=2, num_workers=0, dev_seconds=1.0, dev_batch_size=2),
        "sched": dict(max_steps=6, log_every=2, stdout_every=2, valid_every=3, save_every=2, keep_last=2,
                      n_dev_samples=1),
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def tiny_labels(data):
    """k-means-like unit labels (argmax of the teacher features, TEACHER_DIM units) next to each feature scp."""
    out = {}
    for split, (d, scp) in data.items():
        base = scp[: -len(".scp")] + "_labels"
        with kaldiio.WriteHelper(f"ark,scp:{base}.ark,{base}.scp") as w:
            for utt, feats in kaldiio.load_scp(scp).items():
                w(utt, np.asarray(feats).argmax(1).astype(np.int32))
        out[split] = (d, base + ".scp")
    return out
