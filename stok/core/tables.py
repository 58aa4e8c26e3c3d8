"""The one reader and writer of Kaldi-style tables: ``key value...`` per line (wav.scp, text, utt2spk, scp ...).

Keys are unique; files are sorted by key in C-locale (byte) order when written. Reading checks every line and
fails with ``file:line`` and the fix (:class:`TableError`, a user error). ``scp=True`` reads ``utt location``
lists (feature, label and code scps) with messages that say so; ``torn_tail=True`` ignores a last line written
without its newline (a shard scp of a dump killed mid-line).
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple, Type

from stok.core.errors import UserError


class TableError(UserError, ValueError):
    """A malformed, unreadable or inconsistent table; the message names the file and line."""


def sort_keys(keys: Iterable[str]) -> list:
    """C-locale order (bytes), as Kaldi's ``sort`` with LC_ALL=C."""
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def split_line(line: str, path: str, n: int, min_fields: int = 2, max_fields: Optional[int] = None,
               scp: bool = False, error: Type[TableError] = TableError) -> Tuple[str, str]:
    """``(key, rest)`` of one stripped, non-blank table line (line ``n`` of ``path``), its field count checked."""
    parts = line.split(maxsplit=1)
    rest = parts[1] if len(parts) > 1 else ""
    nfields = 1 + len(rest.split()) if (max_fields or min_fields > 2) else (2 if rest else 1)
    if nfields < min_fields or (max_fields and nfields > max_fields):
        if scp:
            raise error(f"{path}:{n}: expected 'utt location', got {line!r}")
        want = f"{min_fields}" if max_fields == min_fields else f"at least {min_fields}"
        raise error(f"{path}:{n}: expected {want} fields, got {nfields}: {line!r}; "
                    "each line is 'key value...': fix or remove it")
    return parts[0], rest


def read_table(path: str, min_fields: int = 2, max_fields: Optional[int] = None, *, scp: bool = False,
               what: str = "", torn_tail: bool = False, error: Type[TableError] = TableError) -> Dict[str, str]:
    """``key -> rest of the line`` (stripped), in file order. Blank lines are skipped; a short line, a repeated
    key, a file that is not UTF-8 text or cannot be read raise ``error`` (a :class:`TableError`) naming
    ``path:line``. ``what`` names the option the file came from (``--codes_scp``) in the not-text message."""
    out: Dict[str, str] = {}
    n = 0
    try:
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        if scp:
            raise error(f"{(what + ' ') if what else ''}{path} is not a text scp (an .ark given instead of "
                             "its .scp?)") from None
        raise error(f"{path}:{line}: not UTF-8 text; Kaldi lists are UTF-8") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e}); check the path and its permissions") from None
    lines = text.split("\n")
    if torn_tail and lines and lines[-1] != "":
        lines.pop()  # written without its newline: an interrupted append
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        key, rest = split_line(line, path, n, min_fields, max_fields, scp, error)
        if key in out:
            raise error(f"{path}:{n}: duplicate key {key!r}; keys must be unique")
        out[key] = rest
    return out


def write_table(path: str, table: Dict[str, object]) -> None:
    """Write ``key value`` lines sorted by key (lists and tuples joined by spaces), atomically."""
    from stok.core.fileio import atomic_open

    with atomic_open(path, "w") as f:
        for key in sort_keys(table):
            value = table[key]
            if isinstance(value, (list, tuple)):
                value = " ".join(str(v) for v in value)
            f.write(f"{key} {value}\n")

