"""A finished dump is not redone: ``<name>.complete.json`` records what made it and what it wrote.

Written last, after the merge, the cut set and the tool's own outputs, only when nothing failed. It holds the
dump's fingerprint, the identity of its input (each input file's path, size and mtime; ``--limit``, the manifest
dir, ``--text_output``) and the size and mtime of every output file of the dump. A rerun whose fingerprint and
input identity are equal, and whose outputs are untouched, is a no-op: nothing is read past these few ``stat``
calls and nothing is written. Anything else (a changed input file, an output touched or removed, a failure to
retry) takes the normal path: resume, merge, rewrite.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Optional

from stok.core.fileio import atomic_write_text
from stok.core.records import normalise

SUFFIX = ".complete.json"


def record_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, name + SUFFIX)


def _stat(path: str) -> Optional[List[int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def input_identity(files: List[str], settings: dict) -> dict:
    """Identity of a dump's input: ``{path: [size, mtime_ns] or None}`` of its files, and the settings that choose
    what is read from them."""
    return {"files": {os.path.abspath(p): _stat(p) for p in files}, "settings": settings}


def output_files(out_dir: str, name: str) -> List[str]:
    """Every file of dump ``name`` in ``out_dir`` but the completion record itself (and lock files)."""
    found = set()
    for pat in (f"{glob.escape(name)}.*", "failed.*list", "cuts.jsonl.gz", "utt2speech_token.pt"):
        found.update(glob.glob(os.path.join(glob.escape(out_dir), pat)))
    return sorted(p for p in found if not p.endswith((SUFFIX, ".lock", ".takeover")) and ".tmp" not in p)


def _outputs(out_dir: str, name: str) -> Dict[str, Optional[List[int]]]:
    return {os.path.basename(p): _stat(p) for p in output_files(out_dir, name)}


def finished(out_dir: str, name: str, fingerprint: dict, identity: dict) -> bool:
    """True when ``out_dir`` holds a finished dump of this fingerprint and input, untouched since."""
    try:
        with open(record_path(out_dir, name), encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return False
    return (rec.get("fingerprint") == normalise(fingerprint) and rec.get("input") == normalise(identity)
            and rec.get("outputs") == _outputs(out_dir, name))


def record(out_dir: str, name: str, fingerprint: dict, identity: dict) -> None:
    """Write the completion record (after every other output of the dump)."""
    atomic_write_text(json.dumps({"fingerprint": normalise(fingerprint), "input": normalise(identity),
                                  "outputs": _outputs(out_dir, name)}, indent=1) + "\n", record_path(out_dir, name))


def forget(out_dir: str, name: str) -> None:
    """Drop the record before outputs change (a resumed or overwritten dump)."""
    try:
        os.remove(record_path(out_dir, name))
    except FileNotFoundError:
        pass
