"""What the corpus preparers take: typed settings that ``stok-prepare``, recipes and YAML build the same way.

- :class:`PrepareSettings`: what every preparer takes (where the Kaldi dirs and manifests go, parallel jobs);
- :class:`CorpusSettings`: the corpora that have their own splits (LibriSpeech, LibriTTS, AISHELL-1, the demo):
  corpus dir, splits, combined splits, download, and the two options only one corpus has (``normalize_text``:
  LibriSpeech's; ``librittsr``: LibriTTS's); each corpus recipe says which fields it takes
  (:class:`stok.data.prepare.recipe.Preparer`), and a field it does not take is refused when set;
- :class:`FolderSettings`: any audio (``stok-prepare folder``): a directory, a ``wav.scp`` or a Kaldi dir, and
  how to carve out a dev split.

``stok-prepare`` declares a preparer's options with :func:`add_prepare_arguments` (the help groups of the
settings class, in its ``cli_groups`` order) and builds the settings with ``from_args``; code builds them with
``CorpusSettings(corpus_dir=..., splits=[...])`` or ``from_dict(yaml_section, prefix="prepare")``. Errors name
a setting as the user wrote it (``--splits`` or ``prepare.splits``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Tuple

from stok.core.fileio import check_output_dir
from stok.core.settings import Settings, SettingsError, setting
from stok.data.prepare.manifests import parse_combine

#: the help groups of a settings class: (title or None for the main group, field names), in --help order
Groups = Tuple[Tuple[Optional[str], Tuple[str, ...]], ...]


@dataclass
class PrepareSettings(Settings):
    """What every corpus preparation takes."""

    output_dir: str = setting("data", help="Kaldi data dirs go to OUTPUT_DIR/<split>/ (default: %(default)s)")
    manifest_dir: Optional[str] = setting(
        None, help="lhotse manifests (jsonl.gz) go here (default: OUTPUT_DIR/manifests)")
    num_jobs: int = setting(1, help="parallel jobs for lhotse's scan (default: %(default)s)")

    #: argparse keywords of the fields that are not plain ``--name value`` options (lists, extra option names)
    cli_special: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    cli_groups: ClassVar[Groups] = (("output", ("output_dir", "manifest_dir")), (None, ("num_jobs",)))

    @property
    def manifest_path(self) -> str:
        """Where the manifests go: ``manifest_dir``, or ``<output_dir>/manifests``."""
        return self.manifest_dir or os.path.join(self.output_dir, "manifests")

    def validate(self) -> None:
        if self.num_jobs < 1:
            raise SettingsError(f"{self.setting_name('num_jobs')} must be >= 1, got {self.num_jobs}")
        if not self.output_dir:
            raise SettingsError(f"{self.setting_name('output_dir')} is empty; give a directory for the output")

    def check_outputs(self) -> None:
        """The places the preparation writes can be written (nothing is created)."""
        check_output_dir(self.output_dir, self.setting_name("output_dir"))
        if self.manifest_dir:
            check_output_dir(self.manifest_dir, self.setting_name("manifest_dir"))


def _word_list(value: Any) -> List[str]:
    """A list setting from the command line (a list), code (any sequence) or YAML (a list, or words in a string)."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


@dataclass
class CorpusSettings(PrepareSettings):
    """A corpus with its own splits, prepared by its lhotse recipe (:mod:`stok.data.prepare.recipe`)."""

    force: bool = setting(
        False, help="redo the lhotse preparation even when its manifests are already there (they are reused by "
                    "default, which saves rescanning a large corpus)")
    corpus_dir: Optional[str] = setting(None, help="the corpus root on local disk (see the layout above)")
    splits: List[str] = setting(
        default_factory=list, help="dataset parts to prepare (default: every part found in CORPUS_DIR, as said above)")
    combine: List[str] = setting(
        default_factory=list, help="also write a split made of prepared parts, e.g. "
                                   "train_960=train-clean-100,train-clean-360,train-other-500 (repeatable)")
    download: bool = setting(False, help="download and unpack the corpus first, with lhotse's download function")
    download_dir: str = setting(
        "downloads", help="where --download puts the archives and the unpacked corpus (default: %(default)s)")
    normalize_text: str = setting(
        "none", choices=("none", "lower"),
        help="lhotse's text normalisation: keep LibriSpeech's upper case, or lower it (default: %(default)s)")
    librittsr: bool = setting(False, help="--download fetches LibriTTS-R instead of LibriTTS")

    cli_special: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "splits": {"nargs": "+", "metavar": "SPLIT"},
        "combine": {"action": "append", "metavar": "NAME=PART1,PART2"},
    }
    cli_groups: ClassVar[Groups] = (
        ("output", ("output_dir", "manifest_dir", "force")),
        (None, ("corpus_dir", "splits", "combine", "num_jobs", "normalize_text", "librittsr")),
        ("download (off unless --download is given)", ("download", "download_dir")),
    )

    def __post_init__(self) -> None:
        self.splits = list(dict.fromkeys(_word_list(self.splits)))  # "train dev dev" -> once each, order kept
        self.combine = _word_list(self.combine)

    def validate(self) -> None:
        super().validate()
        parse_combine(self.combine, self.setting_name("combine"))


@dataclass
class FolderSettings(PrepareSettings):
    """Any audio: a directory of files, a ``wav.scp`` or a Kaldi dir (:mod:`stok.data.prepare.folder`)."""

    num_jobs: int = setting(4, help="threads reading audio headers (default: %(default)s)")
    audio_dir: Optional[str] = setting(None, help="a directory of audio files, searched recursively")
    wav_scp: Optional[str] = setting(None, help="an existing wav.scp (paths, 'cmd |' pipes, x.ark:offset)")
    data_dir: Optional[str] = setting(
        None, help="an existing Kaldi data dir (wav.scp [+ segments, utt2spk, text])")
    segments: Optional[str] = setting(None, help="with --wav_scp: a segments file (utt rec start end)")
    utt2spk: Optional[str] = setting(None, help="with --wav_scp or --audio_dir: an utt2spk file")
    text: Optional[str] = setting(None, help="a Kaldi text file (utt transcript) for the utterances")
    speaker_from: str = setting(
        "utt", choices=("utt", "parent", "first_dir"),
        help="speaker of each file of --audio_dir when no utt2spk is given (default: %(default)s)")
    no_sidecar_text: bool = setting(
        False, help="with --audio_dir: do not look for .normalized.txt/.txt/.lab transcripts next to the audio")
    train_name: str = setting("train", help="name of the main split (default: %(default)s)")
    dev_name: str = setting("dev", help="name of the dev split (default: %(default)s)")
    dev_fraction: float = setting(
        0.0, help="fraction of recordings (or speakers) held out as the dev split, at least one when > 0 "
                  "(default: %(default)s: no dev split)")
    dev_count: int = setting(0, help="hold out this many recordings (or speakers) instead")
    dev_by: str = setting("recording", choices=("recording", "speaker"),
                          help="unit of the dev hold-out (default: %(default)s)")
    seed: int = setting(0, help="seed of the dev selection (default: %(default)s)")
    prefix: str = setting("folder", help="manifest name prefix: PREFIX_cuts_<split>.jsonl.gz (default: %(default)s)")

    cli_special: ClassVar[Mapping[str, Mapping[str, Any]]] = {"audio_dir": {"aliases": ("corpus_dir",)}}
    cli_groups: ClassVar[Groups] = (
        ("output", ("output_dir", "manifest_dir")),
        ("input (one of)", ("audio_dir", "wav_scp", "data_dir")),
        (None, ("segments", "utt2spk", "text", "speaker_from", "no_sidecar_text")),
        ("splits", ("train_name", "dev_name", "dev_fraction", "dev_count", "dev_by", "seed")),
        (None, ("prefix", "num_jobs")),
    )

    def validate(self) -> None:
        super().validate()
        n = self.setting_name
        given = [x for x in (self.audio_dir, self.wav_scp, self.data_dir) if x]
        if len(given) != 1:
            alias = " (or --corpus_dir)" if self._prefix is None else ""
            raise SettingsError(f"folder: give exactly one of {n('audio_dir')}{alias}, {n('wav_scp')}, "
                                f"{n('data_dir')}")
        if self.segments and not self.wav_scp:
            raise SettingsError(f"folder: {n('segments')} goes with {n('wav_scp')} (a {n('data_dir')} brings its own "
                                "segments file)")
        for name in ("audio_dir", "data_dir"):
            path = getattr(self, name)
            if path and not os.path.isdir(path):
                raise SettingsError(f"folder: {n(name)} {path} is not a directory")
        for name in ("wav_scp", "segments", "utt2spk", "text"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise SettingsError(f"folder: {n(name)} {path} not found")
        if self.train_name == self.dev_name:
            raise SettingsError(f"{n('train_name')} and {n('dev_name')} must differ")
        if self.dev_fraction < 0 or self.dev_fraction >= 1 or self.dev_count < 0:
            raise SettingsError(f"{n('dev_fraction')} must be in [0, 1) and {n('dev_count')} >= 0, got "
                                f"{self.dev_fraction} and {self.dev_count}")


def add_prepare_arguments(parser, cls: type, options: Iterable[str]) -> None:
    """Declare the ``options`` (field names) of settings class ``cls`` on ``parser``, in its help groups."""
    wanted = set(options)
    fields: Dict[str, dataclasses.Field] = cls._fields()
    for title, names in cls.cli_groups:
        names = [name for name in names if name in wanted]
        if not names:
            continue
        group = parser.add_argument_group(title) if title else parser
        for name in names:
            special = cls.cli_special.get(name)
            if special is None:
                cls.add_arguments(group, only=[name])
                continue
            f = fields[name]
            kwargs = {k: v for k, v in special.items() if k != "aliases"}
            flags = [f"--{name}"] + [f"--{alias}" for alias in special.get("aliases", ())]
            # lists default to None: argparse's "append" would otherwise add to the one default list object
            default = None if f.default is dataclasses.MISSING else f.default
            group.add_argument(*flags, dest=name, default=default, help=f.metadata["help"], **kwargs)

