"""The fields of a dump's cut set in lhotse's own storage (``stok.dump.cut_fields``), on arks written here.

Cases the dumps of ``tests/test_dump_cuts.py`` do not make: code records in the two-byte compressed format of
earlier stok versions, utterance ids that HDF5 would read as paths, a failed write, a stale copy, and cut sets
of earlier stok versions (``TemporalArray`` in stok's own storage type).
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
from kaldiio.matio import write_array
from lhotse import CutSet

from stok.core.storage import load_codes
from stok.dump import cut_fields
from stok.dump.cut_sources import ChainSource, FramesOnlyCuts
from stok.dump.cuts import write_dump_cuts
from tests.plain_lhotse_reader import read_without_stok


def write_ark(out_dir, name, records, method=None):
    """``<name>.0.ark`` and ``<name>.scp`` of ``records`` (key -> array), as the engine lays them out."""
    os.makedirs(out_dir, exist_ok=True)
    ark = os.path.join(out_dir, f"{name}.0.ark")
    with open(ark, "wb") as a, open(os.path.join(out_dir, f"{name}.scp"), "w") as s:
        for key, array in records.items():
            a.write(f"{key} ".encode())
            offset = a.tell()
            write_array(a, array, compression_method=method)
            s.write(f"{key} {ark}:{offset}\n")


def codes(t, seed):
    x = (np.arange(t)[:, None] * 131 + np.arange(8)[None] * 37 + seed) % 1024
    x[:4] = np.array([1023, 640, 128, 384])[:, None]  # 128 (mod 256): kaldiio decodes these 2^-8 off
    return x.astype(np.float32)


def test_old_two_byte_code_records_read_as_exact_integers_without_stok(tmp_path):
    out = str(tmp_path / "st_codes")
    write_ark(out, "st_codes", {"u1": codes(7, 1), "u2": codes(50, 2)}, method=4)  # kTwoByteSignedInteger
    summary = {"model": {"model": "st", "frame_rate": 50.0, "codebook_size": 1024}}
    info = write_dump_cuts(out, "st_codes", summary, ChainSource([FramesOnlyCuts()]))
    assert info["written"] == 2 and "copy" not in info and not os.path.exists(os.path.join(out, "st_codes.h5"))
    arrays, _ = read_without_stok(tmp_path, [os.path.join(out, "cuts.jsonl.gz")])
    exact = dict(load_codes(os.path.join(out, "st_codes.scp")))
    for key in ("u1", "u2"):
        x = arrays[f"0/{key}/st_codes"]
        assert x.dtype == np.float32 and np.array_equal(x, exact[key]) and x.max() == 1023


def test_ids_with_slashes_tokens_of_released_size_and_a_stale_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(cut_fields, "COPY_IN_CHILD_FROM", 0)  # the copy in a child process, as at scale
    out = str(tmp_path / "s3")
    tokens = {"a%2Fb": np.array([6560, 0, 4095], np.int32), "a/b": np.arange(6561, dtype=np.int32),
              "c": np.array([], np.int32), "d/e/f": np.array([7], np.int32)}
    write_ark(out, "s3_tokens", tokens)
    summary = {"model": {"token_rate": 25.0}}
    info = write_dump_cuts(out, "s3_tokens", summary, ChainSource([FramesOnlyCuts()]))
    assert info["copy"] == {"path": os.path.join(out, "s3_tokens.h5"), "arrays": 4}
    arrays, cuts = read_without_stok(tmp_path, [os.path.join(out, "cuts.jsonl.gz")])
    for key, ref in tokens.items():
        x = arrays[f"0/{key}/s3_tokens"]
        assert x.dtype == np.int32 and np.array_equal(x, ref), key
        assert cuts[f"0/{key}"]["custom"]["s3_tokens_frame_shift"] == 0.04
        assert cuts[f"0/{key}"]["duration"] == pytest.approx(len(ref) * 0.04)
    assert sorted(os.listdir(out)) == ["cuts.jsonl.gz", "s3_tokens.0.ark", "s3_tokens.h5", "s3_tokens.scp",
                                       "s3_tokens.summary.json"]
    # the same dir rewritten as float matrices: the copy of the int32 records is stale and goes
    write_ark(out, "s3_tokens", {"u": np.ones((3, 2), np.float32)})
    info = write_dump_cuts(out, "s3_tokens", summary, ChainSource([FramesOnlyCuts()]))
    assert "copy" not in info and not os.path.exists(os.path.join(out, "s3_tokens.h5"))
    assert np.array_equal(CutSet.from_file(os.path.join(out, "cuts.jsonl.gz"))[0].load_s3_tokens(), np.ones((3, 2)))


class Broken(FramesOnlyCuts):
    def entry(self, utt, frames, frame_shift):
        if utt == "u2":
            raise RuntimeError("source broke")
        return super().entry(utt, frames, frame_shift)


@pytest.mark.parametrize("in_child", [False, True], ids=["copy_here", "copy_in_child"])
def test_a_failed_write_leaves_the_previous_cut_set_and_copy(tmp_path, monkeypatch, in_child):
    monkeypatch.setattr(cut_fields, "COPY_IN_CHILD_FROM", 0 if in_child else 5000)
    out = str(tmp_path / "km")
    write_ark(out, "km_labels", {"u1": np.array([1, 2], np.int32), "u2": np.array([3, 4, 5], np.int32)})
    summary = {"model": {"frame_rate": 50.0}}
    write_dump_cuts(out, "km_labels", summary, ChainSource([FramesOnlyCuts()]))
    files = ["cuts.jsonl.gz", "km_labels.0.ark", "km_labels.h5", "km_labels.scp", "km_labels.summary.json"]
    before = {f: open(os.path.join(out, f), "rb").read() for f in ("cuts.jsonl.gz", "km_labels.h5")}
    with pytest.raises(RuntimeError, match="source broke"):
        write_dump_cuts(out, "km_labels", summary, ChainSource([Broken()]))
    assert sorted(os.listdir(out)) == files  # no temporary file left
    assert before == {f: open(os.path.join(out, f), "rb").read() for f in before}
    ark = os.path.join(out, "km_labels.0.ark")  # a record cut short: the copy fails, naming the record
    with open(ark, "rb+") as f:
        f.truncate(os.path.getsize(ark) - 3)
    with pytest.raises((RuntimeError, ValueError), match="truncated int32 vector"):
        write_dump_cuts(out, "km_labels", summary, ChainSource([FramesOnlyCuts()]))
    assert sorted(os.listdir(out)) == files
    assert before == {f: open(os.path.join(out, f), "rb").read() for f in before}


def test_cut_sets_of_earlier_stok_versions_still_load_with_stok(tmp_path):
    """Earlier cut sets point into the ark with stok's own storage type (a ``TemporalArray`` whose key carries the
    cut's frame count): ``import stok.dump.lhotse_storage`` (``stok-export-shar`` does) still reads them whole."""
    import stok.dump.lhotse_storage  # noqa: F401

    out = str(tmp_path / "old")
    write_ark(out, "s3_tokens", {"u": np.arange(26, dtype=np.int32)})
    offset = int(open(os.path.join(out, "s3_tokens.scp")).read().split(":")[-1])
    line = {"id": "u", "start": 0.0, "duration": 1.01, "channel": 0, "supervisions": [], "custom": {"s3_tokens": {
        "array": {"storage_type": "stok_kaldi_ark", "storage_path": os.path.join(out, "s3_tokens.0.ark"),
                  "storage_key": f"{offset}:25", "shape": [26]}, "temporal_dim": 0, "frame_shift": 0.04,
        "start": 0.0}}, "type": "MonoCut"}
    with gzip.open(os.path.join(out, "cuts.jsonl.gz"), "wt") as f:
        f.write(json.dumps(line) + "\n")
    cut = CutSet.from_file(os.path.join(out, "cuts.jsonl.gz"))[0]
    assert np.array_equal(cut.load_s3_tokens(), np.arange(26))  # round(1.01 / 0.04) = 25 frames, and the 26th
