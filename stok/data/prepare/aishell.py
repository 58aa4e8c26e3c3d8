"""AISHELL-1 through ``lhotse.recipes.prepare_aishell``.

Layout under ``--corpus_dir`` (the ``aishell/`` dir that unpacking openslr.org/33 gives; the per-speaker
tarballs under ``wav/`` must be unpacked too, as ``--download`` does)::

    data_aishell/wav/{train,dev,test}/<speaker>/<utt>.wav          # e.g. S0002/BAC009S0002W0122.wav
    data_aishell/transcript/aishell_transcript_v0.8.txt             # "<utt> 而 对 楼市 ..." per line

lhotse always scans all three parts (about 100 s for the full corpus); ``--splits`` chooses which are
written. Utterances without a transcript are skipped by lhotse (with a warning); the text has the
spaces between words removed, as lhotse does; speaker = the ``<speaker>`` directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from stok.data.prepare.recipe import CORPUS_OPTIONS, CorpusRecipe
from stok.data.prepare.settings import CorpusSettings

SPLITS = ("train", "dev", "test")


def scan(corpus: Path, splits: List[str], manifest_dir: str, s: CorpusSettings) -> Dict[str, Dict]:
    """lhotse scans train, dev and test whatever is asked, and has no cache: it rescans every time."""
    from lhotse.recipes import prepare_aishell

    return prepare_aishell(corpus, output_dir=manifest_dir)


def fetch(s: CorpusSettings) -> Path:
    from lhotse.recipes import download_aishell

    return download_aishell(target_dir=s.download_dir)


RECIPE = CorpusRecipe(
    name="aishell", summary="AISHELL-1 (lhotse recipe)", about=__doc__, options=CORPUS_OPTIONS,
    title="AISHELL-1", prefix="aishell",
    hint="Expected data_aishell/wav/{train,dev,test}/<spk>/<utt>.wav and "
         "data_aishell/transcript/aishell_transcript_v0.8.txt; get it from https://www.openslr.org/33 or pass "
         "--download.",
    known_splits=lambda: SPLITS, scan=scan, fetch=fetch, split_root="data_aishell/wav", closed_splits=True,
    required=("data_aishell/transcript/aishell_transcript_v0.8.txt",))
