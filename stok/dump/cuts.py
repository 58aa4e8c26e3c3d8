"""Every dump as a lhotse ``CutSet``: ``cuts.jsonl.gz`` beside ``<name>.scp``, pointing into the same arks.

Each cut carries the dump as a custom field named after it (``s3_tokens``, ``st_codes``, ``km_labels``,
``feats``): a ``TemporalArray`` (time on axis 0, the model's frame shift, ``start`` = the cut's start in
its recording) whose storage is the dump's own ark record (``stok.dump.lhotse_storage``): nothing is
copied, and ``cut.load_<name>()`` returns exactly the stored array (tokens and codes as int32, features
as float32). Cut ids, recordings and supervisions come from stage 0's manifests where they exist, else
from the dump's Kaldi dir / wav.scp (``stok.dump.cut_sources``). Only utterances in the scp get a cut
(failed ones are absent); the dump's summary JSON gets ``cuts_written`` and a ``cuts`` block.

Hook: :func:`write_dump_cuts` (the dump engine, after the merge), with the cut source of the dump's input
(:mod:`stok.dump.inputs`). ``--overwrite`` removes the cut set with the dump's outputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from typing import Dict, Optional, Tuple

from lhotse import CutSet
from lhotse.array import Array, TemporalArray, seconds_to_frames
from lhotse.cut import Cut

from stok.core.ark import read_shape, split_location
from stok.core.failed import read_failed
from stok.core.fileio import atomic_open
from stok.core.storage import read_scp_entries
from stok.dump.cut_sources import ChainSource
from stok.dump.lhotse_storage import CODES_STORAGE_TYPE, STORAGE_TYPE, make_key
from stok.dump.outputs import CUTS_FILE

log = logging.getLogger("stok.dump")

CODE_DUMPS = ("st_codes",)  # integer matrices stored as float32: loaded back as int32


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


def field_array(location: str, shape: Tuple[int, ...], frame_shift: float, cut: Cut, codes: bool) -> TemporalArray:
    """The ``TemporalArray`` of one ark record, for ``cut`` (see ``stok.dump.lhotse_storage`` for the key)."""
    path, offset = split_location(location)
    cut_frames = seconds_to_frames(cut.duration, frame_shift)
    array = Array(storage_type=CODES_STORAGE_TYPE if codes else STORAGE_TYPE, storage_path=path,
                  storage_key=make_key(offset, cut_frames if cut_frames < shape[0] else None), shape=list(shape))
    return TemporalArray(array=array, temporal_dim=0, frame_shift=frame_shift, start=cut.start)


def read_shapes(entries: Dict[str, str]) -> Dict[str, Tuple[int, ...]]:
    """Shape of every record, from its header; each ark is opened once and read in offset order."""
    by_ark = defaultdict(list)
    for key, loc in entries.items():
        path, offset = split_location(loc)
        by_ark[path].append((offset, key))
    shapes = {}
    for path, items in by_ark.items():
        with open(path, "rb") as fd:
            for offset, key in sorted(items):
                shapes[key] = read_shape(fd, offset, f"{path}:{offset}")[0]
    return shapes


def write_cut_set(out_dir: str, name: str, frame_shift: float, source: ChainSource, codes: bool = False) -> dict:
    """Write ``<out_dir>/cuts.jsonl.gz`` for the entries of ``<out_dir>/<name>.scp``; returns what was written."""
    failed = read_failed(os.path.join(out_dir, "failed.list"))
    entries = {k: v for k, v in read_scp_entries([os.path.join(out_dir, f"{name}.scp")]).items() if k not in failed}
    shapes = read_shapes(entries)
    source.prepare(list(entries))
    path = os.path.join(out_dir, CUTS_FILE)
    tmp = os.path.join(out_dir, f"cuts.tmp{os.getpid()}.jsonl.gz")
    off = []
    try:
        with CutSet.open_writer(tmp) as writer:
            for key, loc in entries.items():
                shape = shapes[key]
                cut = source.cut(key, shape[0], frame_shift)
                if abs(shape[0] * frame_shift - cut.duration) >= frame_shift + 1e-6:
                    off.append(key)
                writer.write(cut.with_custom(name, field_array(loc, shape, frame_shift, cut, codes)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if off:
        log.warning("%s: %d cuts differ from their %d-frame arrays by more than one frame (frame shift %.4f s), "
                    "e.g. %s; is the frame rate right?", path, len(off), shapes[off[0]][0], frame_shift, off[0])
    return {"path": os.path.abspath(path), "field": name, "frame_shift": frame_shift, "written": len(entries),
            "sources": dict(source.counts), "off_by_more_than_one_frame": len(off)}


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
        if os.path.exists(os.path.join(out_dir, CUTS_FILE)):  # one left by an earlier run would be stale
            os.remove(os.path.join(out_dir, CUTS_FILE))
        record_in_summary(out_dir, name, info, summary)
        return info
    info = write_cut_set(out_dir, name, frame_shift, source, codes=name in CODE_DUMPS or "codebook_size" in model_meta)
    if model_meta.get("frame_shift_from"):
        info["frame_shift_from"] = model_meta["frame_shift_from"]
    record_in_summary(out_dir, name, info, summary)
    log.info("%s: %d cuts (%s) -> %s", name, info["written"],
             ", ".join(f"{n} from {s}" for s, n in info["sources"].items()) or "none", info["path"])
    return info
