"""The public ``speechtokenizer`` package (PyPI 1.0.1), the test oracle for stok's SpeechTokenizer.

``import speechtokenizer`` also imports the package's trainer (accelerate, lion_pytorch, beartype, ...). When
the package is installed but one of those is not, only ``speechtokenizer/model.py`` and the modules it
needs (torch, numpy, einops) are loaded, under a stand-in package module that is removed afterwards.
A missing package goes through ``require_peer``: a failure under ``CI=true``, a skip elsewhere.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from typing import Iterator

from tests.conftest import require_peer

PACKAGE = "speechtokenizer"


def _own(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _drop_modules() -> None:
    for name in [n for n in sys.modules if _own(n)]:
        del sys.modules[name]


@contextlib.contextmanager
def public_speechtokenizer() -> Iterator[type]:
    """Yields the package's ``SpeechTokenizer`` class."""
    if importlib.util.find_spec(PACKAGE) is None:
        require_peer(PACKAGE)  # fails under CI=true, skips elsewhere
    before = {n: m for n, m in sys.modules.items() if _own(n)}
    try:
        import speechtokenizer

        cls = speechtokenizer.SpeechTokenizer
    except ImportError:  # the trainer's dependencies are missing: load the model alone
        _drop_modules()
        cls = None
    if cls is not None:
        yield cls
        return
    require_peer("einops")
    stand_in = types.ModuleType(PACKAGE)
    stand_in.__path__ = list(importlib.util.find_spec(PACKAGE).submodule_search_locations)
    sys.modules[PACKAGE] = stand_in
    try:
        from speechtokenizer.model import SpeechTokenizer as cls

        yield cls
    finally:
        _drop_modules()
        sys.modules.update(before)
