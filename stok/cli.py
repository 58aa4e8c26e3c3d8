"""How every stok tool reports a user's mistake: one line naming the file, line or option and the fix.

Library code raises :class:`UserError` for anything the user can fix (a malformed list, a missing or
unusable file, an option that does not apply); each tool's ``main`` is wrapped in :func:`entry_point`,
which turns it into ``SystemExit("error: ...")``: Python prints that one line to stderr and exits with
status 1, with no traceback. Anything else is a bug in stok and keeps its traceback. ``STOK_DEBUG=1``
(or ``--debug`` where a tool offers it) shows the traceback of user errors too.

Tools check everything (options, inputs, the output location, the model) *before* they create or remove
any output: :func:`check_output_dir` tells whether a directory could be created and written without
touching it.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """A mistake the user can fix; its message is the whole report (name the file/option and the fix)."""


def debug_enabled() -> bool:
    return os.environ.get("STOK_DEBUG", "").lower() not in ("", "0", "false", "no")


def entry_point(main: F) -> F:
    """Wrap a tool's ``main``: a :class:`UserError` becomes one ``error: ...`` line and exit status 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        argv = args[0] if args and isinstance(args[0], list) else sys.argv[1:]
        try:
            return main(*args, **kwargs)
        except UserError as e:
            if "--debug" in argv or debug_enabled():
                raise
            one_line = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
            raise SystemExit(f"error: {one_line}") from None

    return wrapper  # type: ignore[return-value]


def check_output_dir(path: str, what: str = "--output_dir") -> None:
    """Raise :class:`UserError` unless ``path`` is (or could be created as) a writable directory.

    Nothing is created: the nearest existing ancestor must be a writable directory.
    """
    if not path:
        raise UserError(f"{what} is empty; give a directory for the output")
    p = os.path.abspath(path)
    if os.path.exists(p):
        if not os.path.isdir(p):
            raise UserError(f"{what} {path} exists and is not a directory; choose another path")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{what} {path} is not writable; fix its permissions or choose another directory")
        return
    parent = os.path.dirname(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{what} {path} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be created: {parent} is not writable")
