"""A dump's output dir: which files belong to dump ``name``, what is done, and the fingerprint of what made it.

Layout: ``<name>.<rank>.ark`` + ``<name>.<rank>.scp`` per rank (or shard), the merged ``<name>.scp``,
``failed.<rank>.list`` and ``failed.list``, ``<name>.summary[.<rank>].json``, ``cuts.jsonl.gz`` (with
``<name>.h5``, the cut set's copy of int32 records) and
``<name>.fingerprint.json``: the dump's fingerprint, the model's own
(:meth:`stok.core.model_api.DumpModel.fingerprint`: its identity, checksums of its weights files, every
setting that changes the values) plus the engine settings that change what is stored. A rerun into the same
dir compares first (:func:`check_fingerprint`) and refuses, naming what differs, unless ``--overwrite``;
then :func:`start_output` creates the dir, removes old outputs (``--overwrite``) and records the fingerprint.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import List, Optional

from stok.core.fileio import atomic_write_text
from stok.core.records import normalise, refuse_other_record
from stok.core.storage import read_scp_entries

CUTS_FILE = "cuts.jsonl.gz"


def shard_scps(out_dir: str, name: str) -> List[str]:
    pat = re.compile(re.escape(name) + r"\.\d+\.scp$")
    return sorted(p for p in glob.glob(os.path.join(glob.escape(out_dir), f"{glob.escape(name)}.*.scp"))
                  if pat.search(p))


def done_keys(out_dir: str, name: str) -> set:
    return set(read_scp_entries(shard_scps(out_dir, name)))


def remove_outputs(out_dir: str, name: str, shard: Optional[int] = None) -> None:
    """Remove dump ``name``'s outputs (not the lock files of running writers); with ``shard``, that shard's own
    files and the merged outputs only (the other shards' stay)."""
    if shard is None:
        patterns = [f"{glob.escape(name)}.*", "failed.*list", CUTS_FILE]  # the cut set points into these arks
    else:
        patterns = [f"{glob.escape(name)}.{shard}.ark", f"{glob.escape(name)}.{shard}.scp", f"failed.{shard}.list",
                    f"{glob.escape(name)}.summary.{shard}.json", f"{glob.escape(name)}.scp", "failed.list",
                    f"{glob.escape(name)}.summary.json", f"{glob.escape(name)}.txt", f"{glob.escape(name)}.complete.json",
                    CUTS_FILE, f"{glob.escape(name)}.h5"]
    for pat in patterns:
        for p in glob.glob(os.path.join(glob.escape(out_dir), pat)):
            if not p.endswith((".lock", ".takeover")):
                os.remove(p)


def fingerprint_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f"{name}.fingerprint.json")


def check_fingerprint(out_dir: str, name: str, fp: dict) -> None:
    """Raise :class:`UserError` if ``out_dir`` holds ``name`` outputs made with another fingerprint (nothing is
    written). A dir without outputs of ``name`` (fresh, or a run that stopped before its first record) passes."""
    if os.path.isdir(out_dir) and done_keys(out_dir, name):
        refuse_other_record(fingerprint_path(out_dir, name), fp, f"{out_dir} holds a {name} dump")


def start_output(out_dir: str, name: str, fp: dict, overwrite: bool, shard: Optional[int] = None) -> None:
    """After every check passed: create ``out_dir``, remove old ``name`` outputs (``overwrite``; only shard
    ``shard``'s and the merged ones for a shard job) and record ``fp`` atomically."""
    os.makedirs(out_dir, exist_ok=True)
    if overwrite:
        remove_outputs(out_dir, name, shard)
    atomic_write_text(json.dumps(normalise(fp), indent=2) + "\n", fingerprint_path(out_dir, name))


def read_fingerprint(out_dir: str, name: str) -> Optional[dict]:
    try:
        with open(fingerprint_path(out_dir, name), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
