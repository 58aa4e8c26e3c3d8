"""One skeleton for every corpus with a lhotse recipe: a :class:`CorpusRecipe` says what differs, one function runs it.

A corpus module (:mod:`.librispeech`, :mod:`.libritts`, :mod:`.aishell`, :mod:`.demo`) holds only a description:
its split names and where their dirs are, the files it must have, lhotse's functions that scan and download it,
the options it takes and the hint its errors end with. :func:`prepare_corpus` does the rest, the same for all:

1. the settings are checked (values, options this corpus does not take, output dirs writable) before any
   corpus file is read or any output written (:meth:`Preparer.run`);
2. with ``download``, lhotse's download function fetches and unpacks the corpus (off by default);
3. the corpus dir, its required files, the splits (given, or found) and their dirs, and the parts of every
   ``combine`` are checked;
4. lhotse's recipe writes ``<prefix>_{recordings,supervisions}_<split>.jsonl.gz`` (reused when already there,
   unless ``force``);
5. they are sorted, the cuts added and one Kaldi dir written per split, then the combined splits
   (:mod:`.manifests`).

:class:`Preparer` is what ``stok-prepare <name>`` needs of any preparer, :mod:`.folder`'s included: the settings
class, the options it takes, its help texts and ``run(settings)``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type

from stok.core.settings import SettingsError
from stok.data.prepare.manifests import (PrepareError, SplitSummary, combine_splits, manifest_paths, parse_combine,
                                         write_split)
from stok.data.prepare.settings import CorpusSettings, PrepareSettings

log = logging.getLogger("stok.prepare")

#: what a corpus with a lhotse recipe takes; each recipe adds the options only it has
CORPUS_OPTIONS = ("output_dir", "manifest_dir", "force", "corpus_dir", "splits", "combine", "num_jobs", "download",
                  "download_dir")


@dataclass(frozen=True, kw_only=True)
class Preparer:
    """One ``stok-prepare <name>``: which settings it takes and how it runs."""

    name: str  # stok-prepare <name>
    summary: str  # its line in stok-prepare --help
    about: str  # stok-prepare <name> --help: the input it expects
    settings_class: Type[PrepareSettings]
    options: Tuple[str, ...]  # the settings fields it takes: its command-line options

    def run(self, settings: PrepareSettings) -> List[SplitSummary]:
        """Check ``settings`` (before any file is read or written), then prepare; one summary per split written."""
        if not isinstance(settings, self.settings_class):
            raise TypeError(f"{self.name} takes {self.settings_class.__name__}, not {type(settings).__name__}")
        settings.check()
        defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                    for f in dataclasses.fields(settings)}
        stray = [n for n, d in defaults.items() if n not in self.options and getattr(settings, n) != d]
        if stray:
            raise SettingsError(f"{self.name}: {', '.join(settings.setting_name(n) for n in stray)} does not apply "
                                f"to {self.name}; leave it out")
        settings.check_outputs()
        return self.prepare(settings)

    def prepare(self, settings: PrepareSettings) -> List[SplitSummary]:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class CorpusRecipe(Preparer):
    """A corpus with its own splits, prepared by its lhotse recipe; everything here is what differs between corpora."""

    title: str  # the corpus, as --download's message names it
    prefix: str  # manifest names: <prefix>_{recordings,supervisions,cuts}_<split>.jsonl.gz (lhotse's)
    hint: str  # the end of every corpus error: the layout expected and where to get the corpus
    known_splits: Callable[[], Sequence[str]]  # the corpus's split names, in its order (lhotse's constants)
    # lhotse's recipe: (corpus dir, splits, manifest dir, settings) -> {split: {"recordings": ..., "supervisions": ...}}
    scan: Callable[[Path, List[str], str, CorpusSettings], Dict[str, Dict]]
    fetch: Optional[Callable[[CorpusSettings], Path]] = None  # lhotse's download -> the unpacked corpus dir
    settings_class: Type[PrepareSettings] = CorpusSettings
    split_root: str = ""  # the dir holding one dir per split, relative to the corpus dir
    transcripts: str = ""  # glob: without a known split there, a dir holding such files (at any depth) is one
    closed_splits: bool = False  # no other split names exist, and lhotse scans every split whatever is asked
    required: Tuple[str, ...] = ()  # files the corpus must have, relative to the corpus dir
    default_corpus_dir: Optional[Callable[[], Path]] = None  # the corpus when corpus_dir is not given

    def find_splits(self, corpus: Path) -> List[str]:
        """Known splits present (in the corpus's order), else dirs holding ``transcripts`` files."""
        root = corpus / self.split_root
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        known = [s for s in self.known_splits() if s in present]
        if known or not self.transcripts:
            return known
        return [s for s in present if next((root / s).rglob(self.transcripts), None) is not None]

    def prepare(self, settings: PrepareSettings) -> List[SplitSummary]:
        assert isinstance(settings, CorpusSettings)
        return prepare_corpus(self, settings)


def prepare_corpus(recipe: CorpusRecipe, s: CorpusSettings) -> List[SplitSummary]:
    """The steps of the module docstring (2-5) for one corpus; ``s`` is checked already (:meth:`Preparer.run`)."""
    name, hint = recipe.name, recipe.hint
    corpus_dir = s.corpus_dir or (str(recipe.default_corpus_dir()) if recipe.default_corpus_dir else None)
    if s.download:
        assert recipe.fetch is not None  # download is among the options of recipes that can fetch
        log.info("downloading %s%s into %s", recipe.title, f" parts {s.splits}" if s.splits else "", s.download_dir)
        corpus_dir = str(recipe.fetch(s))
    corpus = require_corpus_dir(corpus_dir, recipe, s)
    for rel in recipe.required:
        if not (corpus / rel).is_file():
            raise PrepareError(f"{name}: {corpus / rel} not found. {hint}")
    root = corpus / recipe.split_root
    known = list(recipe.known_splits())
    splits = s.splits or recipe.find_splits(corpus)
    if not splits:
        also = f" nor a dir holding {recipe.transcripts} files" if recipe.transcripts else ""
        raise PrepareError(f"{name}: none of the splits {known}{also} found in {root}. {hint}")
    unknown = [p for p in splits if p not in known] if recipe.closed_splits else []
    if unknown:
        raise PrepareError(f"{name}: unknown splits {unknown}; {recipe.title} has {known}")
    missing = [p for p in splits if not (root / p).is_dir()]
    if missing:
        raise PrepareError(f"{name}: split dirs {missing} not found in {root} (found: {recipe.find_splits(corpus)}). "
                           f"{hint}")
    check_combine(s, recipe.prefix, splits)
    if s.force:  # a recipe that scans every split rescans them all: drop every cached one
        drop_cached(s.manifest_path, recipe.prefix, known if recipe.closed_splits else splits)
    log.info("%s: preparing %s from %s%s", name, list(splits), corpus,
             f" (lhotse scans {', '.join(known)})" if recipe.closed_splits else "")
    manifests = recipe.scan(corpus, list(splits), s.manifest_path, s)
    return finish(manifests, recipe.prefix, splits, s)


def require_corpus_dir(corpus_dir: Optional[str], recipe: CorpusRecipe, s: CorpusSettings) -> Path:
    if not corpus_dir:
        alt = f" (or {s.setting_name('download')})" if "download" in recipe.options else ""
        raise PrepareError(f"{recipe.name}: {s.setting_name('corpus_dir')} is required{alt}. {recipe.hint}")
    path = Path(corpus_dir)
    if not path.is_dir():
        raise PrepareError(f"{recipe.name}: corpus dir {corpus_dir} does not exist. {recipe.hint}")
    return path


def check_combine(s: CorpusSettings, prefix: str, splits: Sequence[str]) -> None:
    """Every part of ``combine`` is prepared now or has its manifests from an earlier run (checked before work)."""
    opt = s.setting_name("combine")
    for name, parts in parse_combine(s.combine, opt):
        if name in splits:
            raise PrepareError(f"{opt} {name}=...: {name} is also a split being prepared; name the combination "
                               "differently")
        lost = [p for p in parts if p not in splits
                and not manifest_paths(s.manifest_path, prefix, p)["recordings"].exists()]
        if lost:
            raise PrepareError(f"{opt} {name}=...: parts {lost} are neither among the splits prepared now "
                               f"({', '.join(splits)}) nor prepared before in {s.manifest_path}; add them to "
                               f"{s.setting_name('splits')}")


def drop_cached(manifest_dir: str, prefix: str, parts: Iterable[str]) -> None:
    for part in parts:
        for p in manifest_paths(manifest_dir, prefix, part).values():
            if p.exists():
                p.unlink()


def finish(manifests: Dict[str, Dict], prefix: str, parts: Sequence[str], s: CorpusSettings) -> List[SplitSummary]:
    """lhotse's ``{part: {"recordings", "supervisions"}}`` -> sorted manifests + cuts + Kaldi dirs."""
    summaries = []
    for part in parts:
        if part not in manifests:
            raise PrepareError(f"lhotse prepared no manifests for {part!r} (found: {sorted(manifests)})")
        m = manifests[part]
        recs, sups = m["recordings"], m.get("supervisions")
        if len(recs) == 0:
            raise PrepareError(f"{prefix} {part}: no recordings found; check the corpus layout under "
                               f"{s.setting_name('corpus_dir')}")
        summaries.append(write_split(s.output_dir, part, recs, sups, manifest_dir=s.manifest_path, prefix=prefix,
                                     part=part))
    for name, combined in parse_combine(s.combine, s.setting_name("combine")):
        summaries.append(combine_splits(s.output_dir, s.manifest_path, prefix, name, combined))
    return summaries
