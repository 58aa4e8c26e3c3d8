"""What a dump reads: the engine's pluggable input, audio utterances or the records of a feature scp.

An input lists its items (key order), tells each item's cost for length bucketing, loads batches in DataLoader
workers, names the files that identify it (a finished dump is not redone while they are unchanged) and gives the
cut source of the dump's cut set. It is read once per run, when first needed (:meth:`load`): a finished dump's
rerun never reads it.

- :class:`AudioInput`: a Kaldi data dir (``wav.scp``, ``segments``, ``utt2dur``, ``text``, ``utt2spk``) or a bare
  ``wav.scp`` (+ ``segments``); items are utterances, their cost the model's frames of their duration.
- :class:`FeatureInput`: a feature scp (stage 1's ``feats.scp``); items are its records, their cost their rows
  (read from the record headers). Used for k-means labels of a feature dump.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from stok.core.ark import read_shape, split_location
from stok.core.errors import UserError
from stok.core.model_api import DumpModel
from stok.core.tables import read_table
from stok.data.audio import AudioError, duration_seconds
from stok.data.kaldi_dir import KaldiDir, Utterance, read_kaldi_dir, read_segments, read_wav_scp
from stok.dump.dataset import Collate, FeatureDataset, ThreadLoader, UtteranceDataset

log = logging.getLogger("stok.dump")

#: files of a Kaldi data dir whose contents change the dump's outputs (values or cuts)
DATA_DIR_FILES = ("wav.scp", "segments", "utt2dur", "text", "utt2spk")


def find_manifest(manifest_dir: str, split: str) -> Tuple[Optional[str], str]:
    """(path or None, why) of stage 0's cuts (or recordings) manifest of ``split`` in ``manifest_dir``."""
    for kind in ("cuts", "recordings"):
        found = sorted(glob.glob(os.path.join(glob.escape(manifest_dir), f"*_{kind}_{glob.escape(split)}.jsonl.gz")))
        if len(found) > 1:
            return None, f"{len(found)} {kind} manifests of split {split!r} in {manifest_dir} ({', '.join(found)})"
        if found:
            return found[0], ""
    return None, f"no *_cuts_{split}.jsonl.gz in {manifest_dir}"


def _make_loader(dataset, model: DumpModel, batches: List[List[int]], num_workers: int, pin_memory: bool,
                 threads: bool = False):
    """DataLoader worker processes; ``threads`` (audio on CPU): worker threads instead
    (:class:`~stok.dump.dataset.ThreadLoader`: forked workers cost the model's compute page faults)."""
    if threads and num_workers and not pin_memory:
        return ThreadLoader(dataset, batches, Collate(model), num_workers, prefetch=4)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=Collate(model),
                                       num_workers=num_workers, pin_memory=pin_memory,
                                       prefetch_factor=4 if num_workers else None)


class AudioInput:
    """Utterances of a Kaldi dir or a bare wav.scp (+ segments); see the module docstring."""

    noun = "utterances"

    def __init__(self, data_dir: Optional[str] = None, wav_scp: Optional[str] = None, segments: Optional[str] = None,
                 limit: int = 0):
        self.data_dir, self.wav_scp, self.segments, self.limit = data_dir, wav_scp, segments, limit
        self.where = data_dir or wav_scp
        if data_dir:
            self.files = [os.path.join(data_dir, n) for n in DATA_DIR_FILES]
        else:
            self.files = [wav_scp] + ([segments] if segments else [])
        self._kd: Optional[KaldiDir] = None
        self._items: Optional[List[Utterance]] = None

    def load(self) -> "AudioInput":
        """Read (and check) the lists now; a malformed list is a user error naming its file and line."""
        if self._items is None:
            if self.data_dir:
                self._kd = read_kaldi_dir(self.data_dir)
            else:
                table = read_wav_scp(self.wav_scp)
                self._kd = KaldiDir(wav_scp=table, segments=read_segments(self.segments, table) if self.segments
                                    else None)
            utts = self._kd.utterances()
            items = utts[:self.limit] if self.limit else utts
            if not items:
                raise UserError(f"no utterances in {self.where}; give a non-empty list")
            self._items = items
        return self

    @property
    def kd(self) -> KaldiDir:
        return self.load()._kd

    @property
    def items(self) -> List[Utterance]:
        return self.load()._items

    def keys(self) -> List[str]:
        return [u.utt_id for u in self.items]

    def durations(self) -> List[Optional[float]]:
        return [u.duration for u in self.items]

    def audio_hours(self) -> Optional[float]:
        """Total hours from utt2dur/segments; None when some durations are unknown."""
        if any(u.duration is None for u in self.items):
            return None
        return sum(u.duration for u in self.items) / 3600.0

    def costs(self, model: DumpModel, todo: List[int], failures: Dict[str, str], show: bool) -> Dict[int, int]:
        """Cost (model frames) of each item of ``todo``; durations come from headers where utt2dur gave none,
        and unreadable files fail here."""
        missing = [i for i in todo if self.items[i].duration is None]
        probed: Dict[int, float] = {}
        if missing:
            if show:
                log.warning("%d utterances have no duration (no utt2dur): reading headers; "
                            "stage 0 writes utt2dur and saves this pass", len(missing))

            def probe(i: int):
                u = self.items[i]
                try:
                    d = duration_seconds(u.spec)
                    if u.start is not None:
                        d = (u.end if u.end is not None and u.end >= 0 else d) - u.start
                    return d, None
                except AudioError as e:
                    return None, f"AudioError: {e}"

            with ThreadPoolExecutor(8) as pool:
                results = list(tqdm(pool.map(probe, missing), total=len(missing), desc="durations", disable=not show))
            for i, (d, err) in zip(missing, results):
                if err:
                    failures[self.items[i].utt_id] = err
                else:
                    probed[i] = d
        sr = model.sample_rate
        out = {}
        for i in todo:
            d = self.items[i].duration if self.items[i].duration is not None else probed.get(i)
            if d is not None:
                out[i] = model.num_frames(max(1, int(round(d * sr))))
        return out

    def loader(self, model: DumpModel, todo: Sequence[int], batches: List[List[int]], num_workers: int,
               pin_memory: bool):
        return _make_loader(UtteranceDataset([self.items[i] for i in todo], model), model, batches, num_workers,
                            pin_memory, threads=True)

    def cut_source(self, manifest_dir: str = ""):
        """Where the dump's cuts come from: stage 0's manifests when found, else this input."""
        from stok.dump.cut_sources import ChainSource, KaldiCuts, ManifestCuts, load_manifest

        manifest, why = self.manifest(manifest_dir)
        if manifest is None and manifest_dir:
            log.warning("--manifest_dir %s: %s; cuts are built from %s", manifest_dir, why, self.where)
        manifest_cuts = ManifestCuts(load_manifest(manifest), manifest, self.kd.segments) if manifest else None
        return ChainSource([manifest_cuts, KaldiCuts(self.kd, self.where)])

    def manifest(self, manifest_dir: str = "") -> Tuple[Optional[str], str]:
        """Stage 0's manifest for this input: ``manifest_dir`` (default: ``manifests`` beside the data dir,
        i.e. ``data/manifests`` for ``data/<split>``), file ``*_cuts_<split>.jsonl.gz``."""
        data = os.path.abspath(self.data_dir or os.path.dirname(os.path.abspath(self.where)))
        split = os.path.basename(os.path.normpath(data))
        manifest_dir = manifest_dir or os.path.join(os.path.dirname(os.path.normpath(data)), "manifests")
        if not os.path.isdir(manifest_dir):
            return None, f"no directory {manifest_dir}"
        return find_manifest(manifest_dir, split)

    def identity_files(self, manifest_dir: str = "") -> List[str]:
        """Files whose contents make the dump's outputs (their size and time identify a finished dump)."""
        manifest, _ = self.manifest(manifest_dir)
        return self.files + ([manifest] if manifest else [])


class FeatureInput:
    """Records of a feature scp; see the module docstring. ``reference``: the feature dump's cut set, if any."""

    noun = "entries"

    def __init__(self, feats_scp: str, limit: int = 0):
        if not os.path.isfile(feats_scp):
            raise UserError(f"feature scp not found: {feats_scp} (stage 1 writes dump/<teacher>/<split>/feats.scp)")
        self.where, self.limit = feats_scp, limit
        self._items: Optional[List[Tuple[str, str]]] = None

    def load(self) -> "FeatureInput":
        """Read (and check) the scp now."""
        if self._items is None:
            entries = list(read_table(self.where, scp=True).items())
            if not entries:
                raise UserError(f"feature scp is empty: {self.where}")
            self._items = entries[:self.limit] if self.limit else entries
        return self

    @property
    def items(self) -> List[Tuple[str, str]]:
        return self.load()._items

    def keys(self) -> List[str]:
        return [k for k, _ in self.items]

    def durations(self) -> List[Optional[float]]:
        return [None] * len(self.items)  # shards in key order

    def audio_hours(self) -> Optional[float]:
        return None

    def costs(self, model: DumpModel, todo: List[int], failures: Dict[str, str], show: bool) -> Dict[int, int]:
        """Rows of each record from its header (each ark read in offset order); other specs are loaded."""
        by_ark = defaultdict(list)
        out: Dict[int, int] = {}
        for i in todo:
            key, spec = self.items[i]
            try:
                path, offset = split_location(spec)
            except ValueError:
                path, offset = None, 0
            if path and os.path.isfile(path) and not spec.rstrip().endswith("|"):
                by_ark[path].append((offset, i))
            else:
                out[i] = 1  # read when its batch is loaded; a failure is listed then
        for path, items in by_ark.items():
            with open(path, "rb") as fd:
                for offset, i in sorted(items):
                    try:
                        out[i] = max(1, int(read_shape(fd, offset, f"{path}:{offset}")[0][0]))
                    except Exception:  # noqa: BLE001 - read (and listed as a failure) when its batch is loaded
                        out[i] = 1
        return out

    def loader(self, model: DumpModel, todo: Sequence[int], batches: List[List[int]], num_workers: int,
               pin_memory: bool):
        return _make_loader(FeatureDataset([self.items[i] for i in todo], model), model, batches, num_workers,
                            pin_memory)

    def cut_source(self, manifest_dir: str = ""):
        """The feature dump's cuts (``cuts.jsonl.gz`` beside the scp) without its field; else frames only."""
        from stok.dump.cut_sources import ChainSource, DumpCuts, FramesOnlyCuts
        from stok.dump.outputs import CUTS_FILE

        path = os.path.join(os.path.dirname(os.path.abspath(self.where)), CUTS_FILE)
        if not os.path.isfile(path):
            log.warning("no %s beside %s: the cuts carry no audio (dump the features with this stok to get it)",
                        CUTS_FILE, self.where)
        return ChainSource([DumpCuts(path) if os.path.isfile(path) else None, FramesOnlyCuts()])

    def identity_files(self, manifest_dir: str = "") -> List[str]:
        from stok.dump.outputs import CUTS_FILE

        return [self.where, os.path.join(os.path.dirname(os.path.abspath(self.where)), CUTS_FILE)]



def make_input(settings):
    """The input ``settings`` name: a feature scp, or audio of a Kaldi dir or wav.scp (read once, here)."""
    if settings.feats_scp:
        return FeatureInput(settings.feats_scp, settings.limit)
    return AudioInput(settings.data_dir, settings.wav_scp, settings.segments, settings.limit)
