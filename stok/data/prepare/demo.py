"""The demo corpus shipped in ``recipes/demo/corpus``: espeak-ng speech in LibriSpeech layout.

It is prepared exactly as LibriSpeech is (``lhotse.recipes.prepare_librispeech``, see :mod:`.librispeech`),
with its split names listed explicitly (``train-clean-demo``, ``dev-clean-demo``: lhotse's auto-detection
only knows the official names). ``recipes/demo/local/make_corpus.py`` made it; its README says how.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from stok.data.prepare import librispeech
from stok.data.prepare.common import add_output_arguments
from stok.data.prepare.manifests import SplitSummary

SPLITS = ("train-clean-demo", "dev-clean-demo")


def default_corpus_dir() -> Path:
    """``recipes/demo/corpus`` of the source tree stok runs from (an editable install)."""
    return Path(__file__).resolve().parents[3] / "recipes" / "demo" / "corpus"


def add_arguments(p) -> None:
    add_output_arguments(p)
    p.add_argument("--corpus_dir", default=None,
                   help=f"the demo corpus (default: {default_corpus_dir()})")
    p.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                   help="splits to prepare (default: every split dir with *.trans.txt files: %s)" % " ".join(SPLITS))


def run(args) -> List[SplitSummary]:
    args.download = False
    args.combine = []
    args.num_jobs = 1
    args.normalize_text = "none"
    hint = "Expected the demo corpus made by recipes/demo/local/make_corpus.py (LibriSpeech layout)."
    return librispeech.prepare(args.corpus_dir or str(default_corpus_dir()), args, name="demo", hint=hint)
