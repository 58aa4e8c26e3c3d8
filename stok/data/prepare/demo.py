"""The demo corpus shipped in ``recipes/demo/corpus``: espeak-ng speech in LibriSpeech layout.

It is prepared exactly as LibriSpeech is (``lhotse.recipes.prepare_librispeech``, see :mod:`.librispeech`; the
manifests are named ``librispeech_*``), its splits (``train-clean-demo``, ``dev-clean-demo``) found by their
``*.trans.txt`` files: lhotse's auto-detection only knows the official names. ``--corpus_dir`` defaults to
``recipes/demo/corpus`` of the source tree stok runs from. ``recipes/demo/local/make_corpus.py`` made the
corpus; its README says how.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stok.data.prepare import librispeech

SPLITS = ("train-clean-demo", "dev-clean-demo")


def default_corpus_dir() -> Path:
    """``recipes/demo/corpus`` of the source tree stok runs from (an editable install)."""
    return Path(__file__).resolve().parents[3] / "recipes" / "demo" / "corpus"


RECIPE = dataclasses.replace(
    librispeech.RECIPE, name="demo", summary="the shipped espeak-ng demo corpus (recipes/demo/corpus)",
    about=__doc__, options=("output_dir", "manifest_dir", "force", "corpus_dir", "splits"), title="the demo corpus",
    hint="Expected the demo corpus made by recipes/demo/local/make_corpus.py (LibriSpeech layout).", fetch=None,
    default_corpus_dir=default_corpus_dir)
