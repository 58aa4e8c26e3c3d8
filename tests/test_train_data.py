"""Training data: crops aligned to teacher frames, padding, sharding, resumable positions, bad audio."""

from __future__ import annotations

import logging

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from stok.train.data import (CropDataset, DataError, DevDataset, ShardedBatchSampler, collate, holdout_split,
                             make_train_loader, read_utterances)
from tests.conftest import write_corpus


def make_data(tmp_path, durations, dim=4, labels=False, rate=16000):
    scp = write_corpus(str(tmp_path / "audio"), durations, rate=rate)
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    (d / "wav.scp").write_text(open(scp).read())
    feats = str(tmp_path / ("labels" if labels else "feats"))
    with kaldiio.WriteHelper(f"ark,scp:{feats}.ark,{feats}.scp") as w:
        for line in open(scp):
            utt, path = line.split()
            frames = -(-int(round(sf.info(path).duration * 16000)) // 320)
            if labels:
                w(utt, (np.arange(frames) % 7).astype(np.int32))
            else:
                # row r holds r in every column: the frame index is visible in the crop
                w(utt, np.repeat(np.arange(frames, dtype=np.float32)[:, None], dim, 1))
    return str(d), feats + ".scp"


def test_crop_uses_teacher_rows_from_floor_start_over_hop(tmp_path):
    data, scp = make_data(tmp_path, [2.0, 1.5])
    utts = read_utterances(data, scp)
    ds = CropDataset(utts, scp, segment_samples=8000, sample_rate=16000, hop=320, seed=3)
    full = {u.utt_id: sf.read(u.spec, dtype="float32")[0] for u in utts}
    for epoch in range(3):
        for i in range(2):
            item = ds[(epoch, i)]
            wav = item["wav"].numpy()
            src = full[item["utt_id"]]
            # locate the crop in the source to recover its start sample
            start = next(s for s in range(len(src) - 8000 + 1) if np.array_equal(src[s:s + 8000], wav))
            assert item["length"] == 8000 and start % 320 == 0  # crops start on a frame boundary
            assert item["teacher"].shape == (25, 4)
            assert item["teacher"][:, 0].tolist() == [float(start // 320 + k) for k in range(25)]
    # the same (epoch, index) gives the same crop; another epoch another one
    assert torch.equal(ds[(1, 0)]["wav"], ds[(1, 0)]["wav"])
    starts = {ds[(e, 0)]["teacher"][0, 0].item() for e in range(8)}
    assert len(starts) > 1


def test_short_utterance_padded_with_length_and_labels(tmp_path):
    data, scp = make_data(tmp_path, [0.3, 1.2], labels=True)
    utts = read_utterances(data, scp)
    ds = CropDataset(utts, scp, segment_samples=16000, sample_rate=16000, hop=320, seed=0)
    item = ds[(0, 0)]
    assert item["wav"].shape == (16000,) and item["length"] == 4800
    assert item["wav"][4800:].abs().sum() == 0
    assert item["teacher"].dtype == torch.int64 and item["teacher"].shape == (50,)
    assert item["teacher"][:15].tolist() == [k % 7 for k in range(15)]
    batch = collate([ds[(0, 0)], ds[(0, 1)]])
    assert batch.wav.shape == (2, 1, 16000) and batch.lengths.tolist() == [4800, 16000]
    assert batch.teacher.shape == (2, 50)


def test_missing_teacher_entries_skipped_and_rate_checked(tmp_path, caplog):
    data, scp = make_data(tmp_path, [1.0, 1.0, 1.0])
    lines = open(scp).read().splitlines()
    open(scp, "w").write("\n".join(lines[:2]) + "\n")
    with caplog.at_level(logging.WARNING, logger="stok.train"):
        utts = read_utterances(data, scp)
    assert len(utts) == 2 and "have no entry" in caplog.text
    # a teacher at 100 Hz is refused with an explanation
    bad = str(tmp_path / "bad")
    with kaldiio.WriteHelper(f"ark,scp:{bad}.ark,{bad}.scp") as w:
        for u in utts:
            w(u.utt_id, np.zeros((100, 4), np.float32))
    ds = CropDataset(utts, bad + ".scp", 8000, 16000, 320, 0)
    with pytest.raises(DataError, match="frame rate"):
        ds[(0, 0)]


def test_unreadable_audio_skipped_and_listed(tmp_path, caplog):
    data, scp = make_data(tmp_path, [1.0, 1.0, 1.0])
    utts = read_utterances(data, scp)
    with open(utts[1].spec, "wb") as f:
        f.write(b"not audio at all")
    bad_list = str(tmp_path / "bad_audio.list")
    ds = CropDataset(utts, scp, 8000, 16000, 320, 0, bad_list=bad_list)
    with caplog.at_level(logging.WARNING, logger="stok.train"):
        item = ds[(0, 1)]
    assert item["utt_id"] == utts[2].utt_id  # replaced by the next readable utterance
    assert "skipping unreadable utterance" in caplog.text
    assert open(bad_list).read().split()[0] == utts[1].utt_id
    dev = DevDataset(utts, scp, 16000, 16000, 320)
    assert dev[1] is None and collate([dev[0], dev[1]]).wav.shape[0] == 1


def test_sampler_shards_disjoint_deterministic_and_resumable():
    n = 23
    s0 = ShardedBatchSampler(n, 3, world=2, rank=0, seed=5)
    s1 = ShardedBatchSampler(n, 3, world=2, rank=1, seed=5)
    assert s0.batches_per_epoch() == 3  # 23 // 6, tail dropped
    for e in range(3):
        b0, b1 = s0.epoch_batches(e), s1.epoch_batches(e)
        flat0 = [i for b in b0 for (_, i) in b]
        flat1 = [i for b in b1 for (_, i) in b]
        assert not set(flat0) & set(flat1) and len(set(flat0)) == 9
    assert s0.epoch_batches(0) != s0.epoch_batches(1)
    assert ShardedBatchSampler(n, 3, 2, 0, seed=5).epoch_batches(1) == s0.epoch_batches(1)
    it = iter(s0)
    stream = [next(it) for _ in range(8)]
    resumed = ShardedBatchSampler(n, 3, 2, 0, seed=5, start=(1, 1))
    it2 = iter(resumed)
    assert [next(it2) for _ in range(4)] == stream[4:8]
    # a set smaller than one global batch is repeated
    tiny = ShardedBatchSampler(2, 3, world=2, rank=1, seed=0)
    assert tiny.batches_per_epoch() == 1 and len(tiny.epoch_batches(0)[0]) == 3


def test_loader_positions_and_workers_do_not_change_data(tmp_path):
    data, scp = make_data(tmp_path, [1.0, 0.6, 1.4, 0.8, 1.1])
    utts = read_utterances(data, scp)
    ds = CropDataset(utts, scp, 8000, 16000, 320, seed=7)

    def first(k, workers, start=(0, 0)):
        sampler = ShardedBatchSampler(len(ds), 2, seed=7, start=start)
        it = iter(make_train_loader(ds, sampler, workers, 320, seed=0))
        return [next(it) for _ in range(k)]

    a = first(5, 0)
    assert [(b.epoch, b.index, b.last_in_epoch) for b in a] == [(0, 0, False), (0, 1, True), (1, 0, False),
                                                                 (1, 1, True), (2, 0, False)]
    b = first(5, 2)
    c = first(2, 0, start=(1, 1))
    for x, y in zip(a, b):
        assert torch.equal(x.wav, y.wav) and torch.equal(x.teacher, y.teacher) and x.utt_ids == y.utt_ids
    assert torch.equal(c[0].wav, a[3].wav) and torch.equal(c[1].wav, a[4].wav)


def test_holdout_split(tmp_path):
    data, scp = make_data(tmp_path, [0.5] * 6)
    utts = read_utterances(data, scp)
    tr, dev = holdout_split(utts, 2, seed=1)
    assert len(tr) == 4 and len(dev) == 2 and not {u.utt_id for u in tr} & {u.utt_id for u in dev}
    assert holdout_split(utts, 2, seed=1) == (tr, dev)
    with pytest.raises(DataError):
        holdout_split(utts, 6, seed=1)
