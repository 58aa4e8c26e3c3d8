"""The training index at scale: a compact, array-based index of a Kaldi dir and its teacher scp whose memory per
utterance stays bounded (measured in a child process at two corpus sizes), read with the same checks as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench.corpus import make_corpus
from stok.core.tables import TableError
from stok.data.kaldi_dir import KaldiDirError, read_kaldi_dir
from stok.train.data import CropDataset, read_utterances
from stok.train import utt_index
from stok.train.utt_index import read_index
from tests.conftest import REPO

SMALL, LARGE = 2000, 30000


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return {n: make_corpus(str(root / f"c{n}"), n, n_dev=4, n_sources=3, teacher_dim=8) for n in (SMALL, LARGE)}


def test_index_equals_the_kaldi_dir_reader(corpora, tmp_path):
    """Same utterances, specs, times and durations as ``read_kaldi_dir``, with and without segments/utt2dur."""
    c = corpora[SMALL]
    ref = read_kaldi_dir(c.data_dir).utterances()
    index = read_index(c.data_dir)
    assert list(index) == ref
    assert index[5] == ref[5] and index[-1] == ref[-1] and list(index[10:20]) == ref[10:20]
    plain = tmp_path / "plain"
    plain.mkdir()
    lines = open(os.path.join(c.data_dir, "wav.scp")).read().splitlines()[:50]
    (plain / "wav.scp").write_text("\n".join(reversed(lines)) + "\n")  # unsorted: the index sorts, as Kaldi does
    assert list(read_index(str(plain))) == read_kaldi_dir(str(plain)).utterances()


def test_teacher_entries_and_filters(corpora):
    c = corpora[SMALL]
    utts = read_utterances(c.data_dir, c.teacher_scp, min_seconds=8.0)
    durations = np.array([float(line.split()[1]) for line in open(os.path.join(c.data_dir, "utt2dur"))])
    assert len(utts) == int((durations >= 8.0).sum())
    ds = CropDataset(utts, c.teacher_scp, 16000, 16000, 320, seed=0)
    assert ds.teacher is utts.teacher  # the locations read with the index are reused, not read again
    import kaldiio

    table = kaldiio.load_scp(c.teacher_scp)
    for row in (0, len(utts) // 2, len(utts) - 1):
        np.testing.assert_array_equal(ds.read_teacher(row), table[utts.utt_id(row)])
    item = ds[(0, 3)]
    assert item["teacher"].shape == (50, 8) and item["wav"].shape == (16000,)


def test_tables_read_in_many_chunks(corpora, monkeypatch):
    """Chunk boundaries change nothing: 7-line chunks give the same utterances and teacher locations."""
    c = corpora[SMALL]
    whole = read_utterances(c.data_dir, c.teacher_scp)
    monkeypatch.setattr(utt_index, "_CHUNK", 7)
    chunked = read_utterances(c.data_dir, c.teacher_scp)
    assert list(chunked) == read_kaldi_dir(c.data_dir).utterances() == list(whole)
    assert [chunked.teacher.location(i, chunked.utt_id(i)) for i in range(len(chunked))] == \
        [whole.teacher.location(i, whole.utt_id(i)) for i in range(len(whole))]


def test_teacher_locations_other_than_ark_offset(tmp_path):
    """Slices and missing entries: a slice is kept as written and read by kaldiio; a missing entry drops the row."""
    import kaldiio

    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text("u1 /x1.flac\nu2 /x2.flac\nu3 /x3.flac\n")
    ark = str(tmp_path / "t.ark")
    with kaldiio.WriteHelper(f"ark,scp:{ark},{tmp_path / 'ref.scp'}") as w:
        for i, u in enumerate(("u1", "u2")):
            w(u, np.full((4, 3), i, dtype=np.float32) + np.arange(4, dtype=np.float32)[:, None])
    ref = dict(line.split() for line in open(tmp_path / "ref.scp"))
    scp = tmp_path / "t.scp"
    scp.write_text(f"u2 {ref['u2']}[1:2]\nu1 {ref['u1']}\n")
    utts = read_utterances(str(d), str(scp))
    assert [u.utt_id for u in utts] == ["u1", "u2"]
    assert utts.teacher.arks == [ark] and utts.teacher.other == {"u2": f"{ref['u2']}[1:2]"}
    ds = CropDataset(utts, str(scp), 16000, 16000, 320, seed=0)
    np.testing.assert_array_equal(ds.read_teacher(0), kaldiio.load_mat(ref["u1"]))
    np.testing.assert_array_equal(ds.read_teacher(1), kaldiio.load_mat(ref["u2"])[1:3])


def test_malformed_tables_name_file_and_line(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text("a /x.flac\nb /y.flac\na /z.flac\n")
    with pytest.raises(KaldiDirError, match=r"wav.scp:3: duplicate key 'a'"):
        read_index(str(d))
    (d / "wav.scp").write_text("a /x.flac\nb /y.flac\n")
    (d / "segments").write_text("u1 a 0 1\nu2 c 0 1\n")
    with pytest.raises(KaldiDirError, match="'u2' refers to recording 'c', which is not in wav.scp"):
        read_index(str(d))
    (d / "segments").write_text("u1 a 0 1\nu2 b 2\n")
    with pytest.raises(KaldiDirError, match=r"segments:2: expected 4 fields"):
        read_index(str(d))
    (d / "segments").write_text("u1 a 0 1\n")
    (d / "utt2dur").write_text("u1 1.0\nu9 2.0\n")
    with pytest.raises(KaldiDirError, match="1 keys not among the utterances, e.g. 'u9'"):
        read_index(str(d))
    (d / "utt2dur").unlink()
    (tmp_path / "t.ark").write_bytes(b"u1 \0BFM \x04\x01\x00\x00\x00" + bytes(range(256)) * 8)
    with pytest.raises(TableError, match="not a text scp"):
        read_utterances(str(d), str(tmp_path / "t.ark"))


_MEASURE = r"""
import gc, json, sys
sys.path.insert(0, sys.argv[1])
from stok.train.data import CropDataset, read_utterances
def kb(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
before = kb("VmRSS")
utts = read_utterances(sys.argv[2], sys.argv[3])
ds = CropDataset(utts, sys.argv[3], 48000, 16000, 320, seed=0)
gc.collect()
print(json.dumps({"n": len(utts), "held": kb("VmRSS") - before, "peak": kb("VmHWM") - before,
                  "index_bytes": utts.nbytes}))
"""


def _measure(c) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, REPO, c.data_dir, c.teacher_scp], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_per_utterance_stays_bounded(corpora):
    """The index holds its arrays and nothing per utterance beyond them: bytes per utterance of the index stay
    within the ids, four numbers, the ``wav.scp`` values and the teacher locations; what the process keeps after
    reading grows by the index's bytes plus at most a constant (one parse chunk's Python objects, a few MB; the
    dict-and-object reader before kept ~0.6 KB per utterance, 16.8 MB here), and its peak by less than 1 KB per
    added utterance."""
    small, large = _measure(corpora[SMALL]), _measure(corpora[LARGE])
    assert (small["n"], large["n"]) == (SMALL, LARGE)
    c = corpora[LARGE]
    ids = [line.split()[0] for line in open(os.path.join(c.data_dir, "segments"))]
    specs = sum(len(line.split(maxsplit=1)[1].strip().encode()) + 8 for line in open(os.path.join(c.data_dir,
                                                                                               "wav.scp")))
    bound = LARGE * (max(len(i) for i in ids) + 4 + 3 * 8 + 12) + specs + 8
    assert large["index_bytes"] <= bound, (large["index_bytes"], bound)
    per_utt = (large["index_bytes"] - small["index_bytes"]) / (LARGE - SMALL)
    assert per_utt < 200, per_utt  # ~15-byte ids, a 60-byte path per recording, numbers
    held_beyond_index = (large["held"] - small["held"]) - (large["index_bytes"] - small["index_bytes"])
    assert held_beyond_index < 8 * 2**20, (small, large)
    growth_peak = (large["peak"] - small["peak"]) / (LARGE - SMALL)
    assert growth_peak < 1024, (small, large)
