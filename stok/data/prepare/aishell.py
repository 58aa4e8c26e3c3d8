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

import logging
from typing import List

from stok.data.prepare.common import (add_lhotse_arguments, check_combine, drop_cached, finish, manifest_dir_of,
                                      require_corpus_dir)
from stok.data.prepare.manifests import PrepareError, SplitSummary

log = logging.getLogger("stok.prepare")

PREFIX = "aishell"
SPLITS = ("train", "dev", "test")
HINT = ("Expected data_aishell/wav/{train,dev,test}/<spk>/<utt>.wav and "
        "data_aishell/transcript/aishell_transcript_v0.8.txt; get it from https://www.openslr.org/33 or pass --download.")


def add_arguments(p) -> None:
    add_lhotse_arguments(p)


def run(args) -> List[SplitSummary]:
    from lhotse.recipes import download_aishell, prepare_aishell

    corpus_dir = args.corpus_dir
    if args.download:
        log.info("downloading AISHELL-1 into %s", args.download_dir)
        corpus_dir = str(download_aishell(target_dir=args.download_dir))
    corpus = require_corpus_dir(corpus_dir, "aishell", HINT)
    transcript = corpus / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    if not transcript.is_file():
        raise PrepareError(f"aishell: {transcript} not found. {HINT}")
    splits = args.splits or [s for s in SPLITS if (corpus / "data_aishell" / "wav" / s).is_dir()]
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise PrepareError(f"aishell: unknown splits {bad}; AISHELL-1 has {list(SPLITS)}")
    missing = [s for s in splits if not (corpus / "data_aishell" / "wav" / s).is_dir()]
    if missing or not splits:
        raise PrepareError(f"aishell: no wav dir for {missing or list(SPLITS)} under {corpus}/data_aishell/wav. {HINT}")
    check_combine(args, PREFIX, splits)
    manifest_dir = manifest_dir_of(args)
    # prepare_aishell has no cache: it rescans every time, so --force only matters for our own files
    if args.force:
        drop_cached(manifest_dir, PREFIX, SPLITS)
    log.info("aishell: preparing from %s (lhotse scans train, dev and test)", corpus)
    manifests = prepare_aishell(corpus, output_dir=manifest_dir)
    return finish(manifests, PREFIX, splits, args)
