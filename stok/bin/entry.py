"""How every stok tool reports a user's mistake: ``main`` wrapped in :func:`entry_point`.

A :class:`stok.core.errors.UserError` becomes ``SystemExit("error: ...")``: Python prints that one line to
stderr and exits with status 1, with no traceback. ``--debug`` (where a tool offers it) or ``STOK_DEBUG=1``
re-raises it with its traceback. Tools check everything (options, inputs, the output location, the model)
*before* they create or remove any output.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

from stok.core.errors import UserError, debug_enabled

F = TypeVar("F", bound=Callable)


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
