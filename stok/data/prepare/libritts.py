"""LibriTTS and LibriTTS-R through ``lhotse.recipes.prepare_libritts``.

Layout under ``--corpus_dir`` (the ``LibriTTS/`` or ``LibriTTS_R/`` dir of openslr.org/60 or /141)::

    <split>/<speaker>/<chapter>/<speaker>_<chapter>_<para>_<sent>.wav            # 24 kHz
    <split>/<speaker>/<chapter>/<speaker>_<chapter>_<para>_<sent>.normalized.txt
    <split>/<speaker>/<chapter>/<speaker>_<chapter>_<para>_<sent>.original.txt
    <split>/<speaker>/<chapter>/<speaker>_<chapter>.trans.tsv     # "<utt>\\t<original>\\t<normalized>"
    <split>/<speaker>/<chapter>/<speaker>_<chapter>.book.tsv      # per-utterance metadata, last column SNR
    SPEAKERS.txt                                                  # optional: gender per speaker

lhotse reads the transcripts from ``*.trans.tsv`` (the normalized text goes to ``text``) and needs the
``*.book.tsv`` next to each. Splits: ``train-clean-100 train-clean-360 train-other-500 dev-clean dev-other
test-clean test-other``; without ``--splits`` every one found is prepared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from stok.data.prepare.recipe import CORPUS_OPTIONS, CorpusRecipe
from stok.data.prepare.settings import CorpusSettings


def known_splits() -> List[str]:
    from lhotse.recipes.libritts import LIBRITTS

    return list(LIBRITTS)


def scan(corpus: Path, splits: List[str], manifest_dir: str, s: CorpusSettings) -> Dict[str, Dict]:
    from lhotse.recipes import prepare_libritts

    return prepare_libritts(corpus, dataset_parts=splits, output_dir=manifest_dir, num_jobs=s.num_jobs)


def fetch(s: CorpusSettings) -> Path:
    from lhotse.recipes import download_libritts

    return download_libritts(target_dir=s.download_dir, dataset_parts=s.splits or "all", use_librittsr=s.librittsr)


RECIPE = CorpusRecipe(
    name="libritts", summary="LibriTTS or LibriTTS-R (lhotse recipe)", about=__doc__,
    options=CORPUS_OPTIONS + ("librittsr",), title="LibriTTS", prefix="libritts",
    hint="Expected <split>/<spk>/<chapter>/<utt>.wav with <spk>_<chapter>.trans.tsv and .book.tsv; "
         "get it from https://www.openslr.org/60 (LibriTTS-R: /141) or pass --download.",
    known_splits=known_splits, scan=scan, fetch=fetch)
