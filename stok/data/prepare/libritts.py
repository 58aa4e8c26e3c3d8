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

import logging
from typing import List

from stok.data.prepare.common import (add_lhotse_arguments, check_combine, drop_cached, finish, manifest_dir_of,
                                      require_corpus_dir)
from stok.data.prepare.manifests import PrepareError, SplitSummary

log = logging.getLogger("stok.prepare")

PREFIX = "libritts"
HINT = ("Expected <split>/<spk>/<chapter>/<utt>.wav with <spk>_<chapter>.trans.tsv and .book.tsv; "
        "get it from https://www.openslr.org/60 (LibriTTS-R: /141) or pass --download.")


def known_splits() -> List[str]:
    from lhotse.recipes.libritts import LIBRITTS

    return list(LIBRITTS)


def add_arguments(p) -> None:
    add_lhotse_arguments(p)
    p.add_argument("--librittsr", action="store_true", help="--download fetches LibriTTS-R instead of LibriTTS")


def run(args) -> List[SplitSummary]:
    from lhotse.recipes import download_libritts, prepare_libritts

    corpus_dir = args.corpus_dir
    if args.download:
        parts = args.splits or "all"
        log.info("downloading %s parts %s into %s", "LibriTTS-R" if args.librittsr else "LibriTTS", parts, args.download_dir)
        corpus_dir = str(download_libritts(target_dir=args.download_dir, dataset_parts=parts, use_librittsr=args.librittsr))
    corpus = require_corpus_dir(corpus_dir, "libritts", HINT)
    splits = args.splits or [s for s in known_splits() if (corpus / s).is_dir()]
    if not splits:
        raise PrepareError(f"libritts: none of {known_splits()} found in {corpus}. {HINT}")
    missing = [s for s in splits if not (corpus / s).is_dir()]
    if missing:
        raise PrepareError(f"libritts: split dirs {missing} not found in {corpus}. {HINT}")
    check_combine(args, PREFIX, splits)
    manifest_dir = manifest_dir_of(args)
    if args.force:
        drop_cached(manifest_dir, PREFIX, splits)
    log.info("libritts: preparing %s from %s", list(splits), corpus)
    manifests = prepare_libritts(corpus, dataset_parts=list(splits), output_dir=manifest_dir, num_jobs=max(1, args.num_jobs))
    return finish(manifests, PREFIX, splits, args)
