"""Shared checks of the user-error tests: what a directory holds, to assert a failed run left it untouched."""

from __future__ import annotations

import hashlib
import os
from typing import Dict, Tuple

BIG = 16 << 20


def snapshot(root) -> Dict[str, Tuple]:
    """``relative path -> (kind, size, content hash or mtime)`` of everything under ``root`` (dirs included)."""
    out: Dict[str, Tuple] = {}
    root = str(root)
    if not os.path.exists(root):
        return out
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root)] = ("dir",)
        for name in files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            if st.st_size > BIG:
                out[os.path.relpath(p, root)] = ("file", st.st_size, st.st_mtime_ns)
            else:
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = ("file", st.st_size, hashlib.sha256(f.read()).hexdigest())
    return out


def one_line_error(excinfo) -> str:
    """The message of a tool's ``SystemExit``: one ``error: ...`` line."""
    msg = excinfo.value.code
    assert isinstance(msg, str) and msg.startswith("error: ") and "\n" not in msg, msg
    return msg
