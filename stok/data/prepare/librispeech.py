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

import logging
from pathlib import Path
from typing import List, Optional, Sequence

from stok.data.prepare.common import (add_lhotse_arguments, check_combine, drop_cached, finish, manifest_dir_of,
                                      require_corpus_dir)
from stok.data.prepare.manifests import PrepareError, SplitSummary

log = logging.getLogger("stok.prepare")

PREFIX = "librispeech"
HINT = ("Expected <split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac with <spk>-<chapter>.trans.txt; "
        "get it from https://www.openslr.org/12 or pass --download.")


def known_splits() -> List[str]:
    from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH

    return list(LIBRISPEECH) + list(MINI_LIBRISPEECH)


def find_splits(corpus_dir: Path) -> List[str]:
    """Known split names present, else any subdirectory with ``*.trans.txt`` files under it."""
    present = sorted(p.name for p in corpus_dir.iterdir() if p.is_dir())
    known = [s for s in present if s in known_splits()]
    if known:
        return known
    return [s for s in present if next((corpus_dir / s).rglob("*.trans.txt"), None) is not None]


def add_arguments(p) -> None:
    add_lhotse_arguments(p)
    p.add_argument("--normalize_text", choices=("none", "lower"), default="none",
                   help="lhotse's text normalisation: keep LibriSpeech's upper case, or lower it (default: %(default)s)")


def prepare(corpus_dir: Optional[str], args, name: str = "librispeech", hint: str = HINT) -> List[SplitSummary]:
    """lhotse writes ``librispeech_{recordings,supervisions}_<split>.jsonl.gz``; we sort them and add the cuts."""
    prefix = PREFIX
    if getattr(args, "download", False):
        from lhotse.recipes import download_librispeech

        parts = args.splits or "mini_librispeech"
        log.info("downloading LibriSpeech parts %s into %s", parts, args.download_dir)
        corpus_dir = str(download_librispeech(target_dir=args.download_dir, dataset_parts=parts))
    corpus = require_corpus_dir(corpus_dir, name, hint)
    splits: Sequence[str] = args.splits or find_splits(corpus)
    if not splits:
        raise PrepareError(f"{name}: no split found in {corpus}. {hint}")
    missing = [s for s in splits if not (corpus / s).is_dir()]
    if missing:
        raise PrepareError(f"{name}: split dirs {missing} not found in {corpus} (found: {find_splits(corpus)}). {hint}")
    check_combine(args, prefix, splits)
    manifest_dir = manifest_dir_of(args)
    if args.force:
        drop_cached(manifest_dir, prefix, splits)
    log.info("%s: preparing %s from %s", name, list(splits), corpus)
    from lhotse.recipes import prepare_librispeech  # after the checks: importing lhotse takes seconds

    manifests = prepare_librispeech(corpus, dataset_parts=list(splits), output_dir=manifest_dir,
                                    normalize_text=getattr(args, "normalize_text", "none"),
                                    num_jobs=max(1, args.num_jobs))
    return finish(manifests, prefix, splits, args)


def run(args) -> List[SplitSummary]:
    return prepare(args.corpus_dir, args)
