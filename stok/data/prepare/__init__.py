"""Stage 0: corpus -> lhotse manifests (``data/manifests/*.jsonl.gz``) + one Kaldi data dir per split (``data/<split>/``).

- :mod:`.settings`: what the preparers take (typed settings, built the same way by the command line, recipes
  and YAML);
- :mod:`.recipe`: one skeleton for the corpora with a lhotse recipe; :mod:`.librispeech`, :mod:`.aishell`,
  :mod:`.libritts` and :mod:`.demo` (the small espeak-ng corpus shipped in ``recipes/demo/corpus``, LibriSpeech
  layout) each describe only what differs (downloading is optional and off by default);
- :mod:`.folder`: any directory of audio files, or an existing ``wav.scp`` (+ ``segments``/``utt2spk``/``text``);
- :mod:`.manifests`: what they share: writing sorted manifests and cuts, and turning recordings + supervisions
  into a Kaldi data dir with stok's own writer (plain paths in ``wav.scp``, ``segments`` only when utterances are
  parts of recordings).

Each corpus module has a ``RECIPE`` (:class:`.recipe.Preparer`): ``recipe_of("librispeech").run(settings)``.
The command line is ``stok-prepare <corpus>`` (``python -m stok.bin.prepare``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stok.data.prepare.recipe import Preparer

CORPORA = ("demo", "librispeech", "aishell", "libritts", "folder")


def recipe_of(corpus: str) -> "Preparer":
    """The preparer of ``corpus`` (one of :data:`CORPORA`)."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; known: {', '.join(CORPORA)}")
    return importlib.import_module(f"stok.data.prepare.{corpus}").RECIPE
