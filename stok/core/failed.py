"""Failure lists: ``utt<TAB>reason`` per line, one per utterance that could not be processed (never skipped silently)."""

from __future__ import annotations

import os
from typing import Dict

from stok.core.fileio import atomic_open
from stok.core.tables import sort_keys


def read_failed(path: str) -> Dict[str, str]:
    """``utt -> reason`` of a failure list (empty when the file does not exist)."""
    out = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, _, reason = line.rstrip("\n").partition("\t")
                if key:
                    out[key] = reason
    return out


def write_failed(path: str, failures: Dict[str, str]) -> None:
    """Write the list atomically, sorted by key; a reason's newlines and tabs become spaces."""
    with atomic_open(path, "w") as f:
        for key in sort_keys(failures):
            reason = str(failures[key]).replace("\n", " ").replace("\t", " ")
            f.write(f"{key}\t{reason}\n")
