"""Records of what made the outputs in a directory, compared before anything is added to it.

A tool that adds outputs to a directory that already holds some (a resumed dump, decoded audio) writes a JSON
record of what makes its outputs (model checksums, settings) and, on the next run, refuses with one line when
the record differs (:func:`refuse_other_record`), naming each changed setting: outputs of two models never mix.
"""

from __future__ import annotations

import json

from stok.core.errors import UserError
from stok.core.treediff import changes, show


def normalise(record: dict) -> dict:
    """As read back from JSON (tuples become lists ...), in the same key order."""
    return json.loads(json.dumps(record))


def differences(old: dict, new: dict) -> list:
    """``key: old -> new`` for every leaf that differs (nested keys dotted), the new record's order first."""
    return [f"{k}: {show(a)} -> {show(b)}" for k, a, b in changes(old, normalise(new))]


def refuse_other_record(path: str, record: dict, holds: str) -> None:
    """Raise :class:`UserError` unless the JSON record at ``path`` equals ``record``; ``holds`` says what the
    output dir holds (``"dump/x holds a s3_tokens dump"``)."""
    fix = "use --overwrite to replace it, or another --output_dir"
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{holds} with no record of what made it ({path} is missing: an earlier stok, or "
                        f"another tool); adding to it could mix outputs: {fix}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); {fix}") from None
    diff = differences(old, record)
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise UserError(f"{holds} made by another model or settings ({shown}); adding to it would mix the two: {fix}")
