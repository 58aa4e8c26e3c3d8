"""The one comparison of nested settings (fingerprints, training configs): which leaves changed, old and new.

``{"a": {"b": 1}}`` has the leaf ``a.b``; an empty dict and every non-dict value is a leaf. Numbers compare by
value (``1 == 1.0``; JSON turns one into the other), a leaf missing on one side is :data:`ABSENT`.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Tuple

ABSENT = "(absent)"


def leaves(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not (isinstance(tree, dict) and tree):
        return {prefix: tree}
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        out.update(leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def changes(old: Any, new: Any, ignore: Iterable[str] = (), sort: bool = False) -> List[Tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every leaf that differs; in the new tree's order (its identity
    keys first), or sorted by key; ``ignore`` lists leaves that may differ."""
    a, b = leaves(old), leaves(new)
    keys = list(b) + [k for k in a if k not in b]
    if sort:
        keys = sorted(keys)
    skip = set(ignore)
    return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in keys
            if k not in skip and not _same(a.get(k, ABSENT), b.get(k, ABSENT))]


def show(value: Any, width: int = 40, quote_strings: bool = False) -> str:
    """A leaf value for a message, JSON-like, cut to ``width`` characters."""
    s = value if isinstance(value, str) and not quote_strings else json.dumps(value)
    return s if len(s) <= width else s[: width - 3] + "..."
