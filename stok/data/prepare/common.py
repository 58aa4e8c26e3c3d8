"""Options and steps shared by the corpus preparations (the lhotse-recipe ones in particular)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from stok.data.prepare.manifests import (PrepareError, SplitSummary, combine_splits, manifest_paths,
                                         parse_combine, write_split)

log = logging.getLogger("stok.prepare")


def add_output_arguments(p: argparse.ArgumentParser, force: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", default="data",
                   help="Kaldi data dirs go to OUTPUT_DIR/<split>/ (default: %(default)s)")
    g.add_argument("--manifest_dir", default=None,
                   help="lhotse manifests (jsonl.gz) go here (default: OUTPUT_DIR/manifests)")
    if not force:  # nothing cached to redo: every run rescans
        p.set_defaults(force=False)
        return
    g.add_argument("--force", action="store_true",
                   help="redo the lhotse preparation even when its manifests are already there "
                        "(they are reused by default, which saves rescanning a large corpus)")


def add_lhotse_arguments(p: argparse.ArgumentParser, default_download_dir: str = "downloads") -> None:
    add_output_arguments(p)
    p.add_argument("--corpus_dir", default=None, help="the corpus root on local disk (see the layout above)")
    p.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                   help="dataset parts to prepare (default: every known part found in CORPUS_DIR)")
    p.add_argument("--combine", action="append", default=[], metavar="NAME=PART1,PART2",
                   help="also write a split made of prepared parts, e.g. train_960=train-clean-100,train-clean-360,"
                        "train-other-500 (repeatable)")
    p.add_argument("--num_jobs", type=int, default=1, help="parallel jobs for lhotse's scan (default: %(default)s)")
    g = p.add_argument_group("download (off unless --download is given)")
    g.add_argument("--download", action="store_true",
                   help="download and unpack the corpus first, with lhotse's download function")
    g.add_argument("--download_dir", default=default_download_dir,
                   help="where --download puts the archives and the unpacked corpus (default: %(default)s)")


def manifest_dir_of(args) -> str:
    return args.manifest_dir or os.path.join(args.output_dir, "manifests")


def require_corpus_dir(corpus_dir: Optional[str], name: str, hint: str) -> Path:
    if not corpus_dir:
        raise PrepareError(f"{name}: --corpus_dir is required (or --download). {hint}")
    path = Path(corpus_dir)
    if not path.is_dir():
        raise PrepareError(f"{name}: corpus dir {corpus_dir} does not exist. {hint}")
    return path


def check_combine(args, prefix: str, splits: Sequence[str]) -> None:
    """Every part of ``--combine`` is prepared now or has its manifests from an earlier run (checked before work)."""
    manifest_dir = manifest_dir_of(args)
    for name, parts in parse_combine(getattr(args, "combine", None)):
        if name in splits:
            raise PrepareError(f"--combine {name}=...: {name} is also a split being prepared; name the combination "
                               "differently")
        lost = [p for p in parts if p not in splits and not manifest_paths(manifest_dir, prefix, p)["recordings"].exists()]
        if lost:
            raise PrepareError(f"--combine {name}=...: parts {lost} are neither among the splits prepared now "
                               f"({', '.join(splits)}) nor prepared before in {manifest_dir}; add them to --splits")


def drop_cached(manifest_dir: str, prefix: str, parts: Iterable[str]) -> None:
    for part in parts:
        for p in manifest_paths(manifest_dir, prefix, part).values():
            if p.exists():
                p.unlink()


def finish(manifests: Dict[str, Dict], prefix: str, parts: Sequence[str], args) -> List[SplitSummary]:
    """lhotse's ``{part: {"recordings", "supervisions"}}`` -> sorted manifests + cuts + Kaldi dirs."""
    manifest_dir = manifest_dir_of(args)
    summaries = []
    for part in parts:
        if part not in manifests:
            raise PrepareError(f"lhotse prepared no manifests for {part!r} (found: {sorted(manifests)})")
        m = manifests[part]
        recs, sups = m["recordings"], m.get("supervisions")
        if len(recs) == 0:
            raise PrepareError(f"{prefix} {part}: no recordings found; check the corpus layout under --corpus_dir")
        summaries.append(write_split(args.output_dir, part, recs, sups, manifest_dir=manifest_dir, prefix=prefix, part=part))
    for name, combined in parse_combine(getattr(args, "combine", None)):
        summaries.append(combine_splits(args.output_dir, manifest_dir, prefix, name, combined))
    return summaries
