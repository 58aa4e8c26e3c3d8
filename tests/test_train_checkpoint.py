"""Checkpoints: atomic writes, keep last N and best by dev mel, RNG state round trip."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch

from stok.train.checkpoint import CheckpointManager, get_rng_state, load_checkpoint, set_rng_state


def test_keep_last_and_best(tmp_path):
    m = CheckpointManager(str(tmp_path / "ck"), keep_last=2, keep_best=1)
    mels = {1: 5.0, 2: 1.0, 3: 4.0, 4: None, 5: 3.0, 6: 2.5}
    for step, mel in mels.items():
        m.save({"step": step, "w": torch.full((3,), float(step))}, step, mel)
    kept = [e["step"] for e in m.entries()]
    assert kept == [2, 5, 6]  # the best (step 2, mel 1.0) and the last two
    assert m.best()["step"] == 2 and m.latest().endswith("ckpt_00000006.pt")
    assert load_checkpoint(m.latest())["w"].tolist() == [6.0] * 3
    index = json.loads((tmp_path / "ck" / "index.json").read_text())
    assert [e["step"] for e in index] == [2, 5, 6] and index[0]["dev_mel"] == 1.0
    assert not [f for f in os.listdir(tmp_path / "ck") if ".tmp" in f]


def test_keep_best_two_and_index_rebuilt(tmp_path):
    m = CheckpointManager(str(tmp_path / "ck"), keep_last=1, keep_best=2)
    for step, mel in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 9.0)]:
        m.save({"step": step}, step, mel)
    assert [e["step"] for e in m.entries()] == [2, 3, 4]
    os.remove(m.index_path)  # lost index: files still found (dev mel unknown)
    (tmp_path / "ck" / "ckpt_00000009.pt.tmp123").write_bytes(b"torn")
    m2 = CheckpointManager(str(tmp_path / "ck"), keep_last=1, keep_best=2)
    assert [e["step"] for e in m2.entries()] == [2, 3, 4]
    assert not (tmp_path / "ck" / "ckpt_00000009.pt.tmp123").exists()


def test_failed_write_leaves_previous_state(tmp_path, monkeypatch):
    m = CheckpointManager(str(tmp_path / "ck"), keep_last=3)
    m.save({"step": 1}, 1)

    def boom(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    try:
        m.save({"step": 2}, 2)
    except OSError:
        pass
    monkeypatch.undo()
    assert [e["step"] for e in m.entries()] == [1]
    assert sorted(os.listdir(tmp_path / "ck")) == ["ckpt_00000001.pt", "index.json"]


def test_rng_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    st = get_rng_state()
    torch.save(st, tmp_path / "rng.pt")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
