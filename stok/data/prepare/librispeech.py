"""LibriSpeech (and Mini LibriSpeech, and any corpus in its layout) through ``lhotse.recipes.prepare_librispeech``.

Layout under ``--corpus_dir`` (the ``LibriSpeech/`` dir of the openslr.org/12 archives)::

    <split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt     # "<utt-id> TRANSCRIPT" per line

Splits: ``train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other`` and
Mini LibriSpeech's ``train-clean-5 dev-clean-2``. Without ``--splits``, every known split found is prepared,
and when none is found, every subdirectory that holds ``*.trans.txt`` files (any name works when listed
explicitly: lhotse's auto-detection only knows the official names). Each utterance is a whole file,
so the Kaldi dirs have no ``segments``; speaker = the first field of the utterance id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from stok.data.prepare.recipe import CORPUS_OPTIONS, CorpusRecipe
from stok.data.prepare.settings import CorpusSettings


def known_splits() -> List[str]:
    from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH

    return list(LIBRISPEECH) + list(MINI_LIBRISPEECH)


def scan(corpus: Path, splits: List[str], manifest_dir: str, s: CorpusSettings) -> Dict[str, Dict]:
    """lhotse writes ``librispeech_{recordings,supervisions}_<split>.jsonl.gz`` (and reuses them when there)."""
    from lhotse.recipes import prepare_librispeech  # after the checks: importing lhotse takes seconds

    return prepare_librispeech(corpus, dataset_parts=splits, output_dir=manifest_dir,
                               normalize_text=s.normalize_text, num_jobs=s.num_jobs)


def fetch(s: CorpusSettings) -> Path:
    from lhotse.recipes import download_librispeech

    return download_librispeech(target_dir=s.download_dir, dataset_parts=s.splits or "mini_librispeech")


RECIPE = CorpusRecipe(
    name="librispeech", summary="LibriSpeech or Mini LibriSpeech (lhotse recipe)", about=__doc__,
    options=CORPUS_OPTIONS + ("normalize_text",), title="LibriSpeech", prefix="librispeech",
    hint="Expected <split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac with <spk>-<chapter>.trans.txt; "
         "get it from https://www.openslr.org/12 or pass --download.",
    known_splits=known_splits, scan=scan, fetch=fetch, transcripts="*.trans.txt")
