"""Every dump as a lhotse ``CutSet``: ``cuts.jsonl.gz`` beside ``<name>.scp``, read by plain lhotse.

Each cut carries the dump as a custom field named after it (``s3_tokens``, ``st_codes``, ``km_labels``,
``feats``): a lhotse ``Array`` in one of lhotse's own storage types, plus ``<name>_frame_shift``
(:mod:`stok.dump.cut_fields`): ``cut.load_<name>()`` returns the whole record, every frame, in a Python
that has lhotse, ``kaldi_native_io`` and ``h5py`` and no stok. Cut ids, recordings and supervisions come from
stage 0's manifests where they exist, else from the dump's Kaldi dir / wav.scp (``stok.dump.cut_sources``).
Only utterances in the scp get a cut (failed ones are absent); the dump's summary JSON gets
``cuts_written`` and a ``cuts`` block.

At scale (281k utterances) the writer holds the index (keys, locations, shapes) and streams the rest: the
record headers are read in offset order, the ``<name>.h5`` copy of int32 records is written by a child process
meanwhile, each line is made from plain dicts with its recording's JSON made once per recording, and gzip runs
in a second thread. Crash-safe: ``<name>.h5`` and ``cuts.jsonl.gz`` are written under temporary names and
renamed, the copy first; a failed or killed write leaves the previous ones.

Hook: :func:`write_dump_cuts` (the dump engine, after the merge), with the cut source of the dump's input
(:mod:`stok.dump.inputs`). ``--overwrite`` removes the cut set and the copy with the dump's outputs.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import List, Optional

from stok.core.failed import read_failed
from stok.core.fileio import atomic_open
from stok.core.storage import read_scp_entries
from stok.dump.cut_fields import RecordCopy, field, h5_name, scan_records
from stok.dump.cut_sources import ChainSource
from stok.dump.outputs import CUTS_FILE

log = logging.getLogger("stok.dump")

GZIP_LEVEL = 6  # zlib's default: 2.2x faster than gzip's 9 on cut sets, 2% larger


def frame_shift_of(meta: dict) -> Optional[float]:
    """Seconds per frame from a model's ``describe()``: ``frame_rate``/``token_rate``, ``hop``/``sample_rate``,
    or its teacher's (k-means labels)."""
    if not isinstance(meta, dict):
        return None
    rate = meta.get("frame_rate") or meta.get("token_rate")
    if rate:
        return 1.0 / float(rate)
    if meta.get("hop") and meta.get("sample_rate"):
        return float(meta["hop"]) / float(meta["sample_rate"])
    return frame_shift_of(meta.get("teacher"))


class GzipLines:
    """Text lines into a gzip file; the compression of each ~1 MB block runs in a second thread (zlib and
    crc32 release the GIL) while the next block is made."""

    BLOCK = 1 << 20

    def __init__(self, path: str, level: int = GZIP_LEVEL):
        self.raw = open(path, "wb")
        self.gz = gzip.GzipFile(fileobj=self.raw, mode="wb", compresslevel=level, mtime=0)
        self.pool = ThreadPoolExecutor(1)
        self.pending: Optional[Future] = None
        self.lines: List[str] = []
        self.size = 0

    def write(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line)
        if self.size >= self.BLOCK:
            self._hand_over()

    def _hand_over(self) -> None:
        data = "".join(self.lines).encode("utf-8")
        self.lines, self.size = [], 0
        if self.pending is not None:
            self.pending.result()
        self.pending = self.pool.submit(self.gz.write, data)

    def close(self) -> None:
        try:
            self._hand_over()
            self.pending.result()
            self.gz.close()
            self.raw.flush()
            os.fsync(self.raw.fileno())
        finally:
            self.pool.shutdown()
            self.raw.close()


def write_cut_set(out_dir: str, name: str, frame_shift: float, source: ChainSource) -> dict:
    """Write ``<out_dir>/cuts.jsonl.gz`` (and ``<name>.h5`` for int32 records) for the entries of
    ``<out_dir>/<name>.scp``; returns what was written."""
    failed = read_failed(os.path.join(out_dir, "failed.list"))
    entries = {k: v for k, v in read_scp_entries([os.path.join(out_dir, f"{name}.scp")]).items() if k not in failed}
    del failed
    path = os.path.join(out_dir, CUTS_FILE)
    tmp = os.path.join(out_dir, f"cuts.tmp{os.getpid()}.jsonl.gz")
    h5_path = os.path.abspath(h5_name(out_dir, name))
    for stale in glob.glob(glob.escape(os.path.join(out_dir, "cuts.tmp")) + "*.jsonl.gz") + glob.glob(
            glob.escape(h5_path + ".tmp") + "*"):  # left by a killed run (the engine holds the dump's lock)
        os.remove(stale)
    copy = RecordCopy(h5_path)
    off: List[str] = []
    off_frames = 0
    try:
        records = scan_records(entries, copy)
        copy.start()
        source.prepare(entries)
        out = GzipLines(tmp)
        try:
            for key, loc in entries.items():
                record = records[key]
                frames = record[0][0]
                cut = source.entry(key, frames, frame_shift)
                if abs(frames * frame_shift - cut.fields["duration"]) >= frame_shift + 1e-6:
                    if not off:
                        off_frames = frames
                    off.append(key)
                out.write(cut.line(field(name, key, loc, record, h5_path, frame_shift)))
        finally:
            out.close()
        copied = copy.commit()  # the copy is in place before the cut set that points into it
        os.replace(tmp, path)
    finally:
        copy.discard()
        if os.path.exists(tmp):
            os.remove(tmp)
    if off:
        log.warning("%s: %d cuts differ from their %d-frame arrays by more than one frame (frame shift %.4f s), "
                    "e.g. %s; is the frame rate right?", path, len(off), off_frames, frame_shift, off[0])
    info = {"path": os.path.abspath(path), "field": name, "frame_shift": frame_shift, "written": len(entries),
            "sources": dict(source.counts), "off_by_more_than_one_frame": len(off)}
    if copied:
        info["copy"] = {"path": h5_path, "arrays": copied}
    return info


def record_in_summary(out_dir: str, name: str, info: dict, summary: Optional[dict] = None) -> None:
    """Add ``cuts_written`` and the ``cuts`` block to ``summary`` (default: read from ``<name>.summary.json``)
    and write it to ``<name>.summary.json``."""
    path = os.path.join(out_dir, f"{name}.summary.json")
    if summary is None:
        summary = {}
        if os.path.exists(path):
            with open(path) as f:
                summary = json.load(f)
    summary["cuts_written"] = info.get("written", 0)
    summary["cuts"] = info
    with atomic_open(path, "w") as f:
        json.dump(summary, f, indent=2)


def write_dump_cuts(out_dir: str, name: str, summary: dict, source: ChainSource) -> dict:
    """The dump engine's hook (after the merge): the cut set of the dump in ``out_dir``, cuts from ``source``
    (:meth:`stok.dump.inputs.AudioInput.cut_source` ...); ``summary`` (the merged summary, holding the model's
    ``describe()`` under ``model``) gets ``cuts_written`` and ``cuts`` and is written again."""
    model_meta = summary.get("model") or {}
    frame_shift = frame_shift_of(model_meta)
    if frame_shift is None:
        info = {"written": 0, "skipped": "the model's describe() gives no frame_rate/token_rate"}
        log.warning("%s: no cut set written: %s", out_dir, info["skipped"])
        for stale in (os.path.join(out_dir, CUTS_FILE), h5_name(out_dir, name)):  # left by an earlier run
            if os.path.exists(stale):
                os.remove(stale)
        record_in_summary(out_dir, name, info, summary)
        return info
    info = write_cut_set(out_dir, name, frame_shift, source)
    if model_meta.get("frame_shift_from"):
        info["frame_shift_from"] = model_meta["frame_shift_from"]
    record_in_summary(out_dir, name, info, summary)
    log.info("%s: %d cuts (%s) -> %s", name, info["written"],
             ", ".join(f"{n} from {s}" for s, n in info["sources"].items()) or "none", info["path"])
    return info
