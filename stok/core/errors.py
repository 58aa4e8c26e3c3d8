"""The user's mistakes as one exception type: :class:`UserError`, whose message is the whole report.

Library code raises :class:`UserError` for anything the user can fix (a malformed list, a missing or unusable
file, an option that does not apply); its message names the file, line, option or setting and the fix. The
command-line tools (``stok.bin.entry.entry_point``) turn it into one ``error: ...`` line and exit status 1.
Anything else is a bug in stok and keeps its traceback. ``STOK_DEBUG=1`` (or a tool's ``--debug``) shows the
traceback of user errors too.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """A mistake the user can fix; its message is the whole report (name the file/option and the fix)."""


def debug_enabled() -> bool:
    return os.environ.get("STOK_DEBUG", "").lower() not in ("", "0", "false", "no")
