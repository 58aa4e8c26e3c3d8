"""Training data: random fixed-length crops of a Kaldi data dir with the teacher frames aligned to them.

- Utterances come from a Kaldi data dir (``wav.scp``, optional ``segments``/``utt2dur``), held as a compact
  :class:`~stok.train.utt_index.UtteranceIndex` (numpy arrays, no object per utterance: the index of 281,241
  utterances is a few tens of MB, shared untouched by forked DataLoader workers), and read with
  :func:`stok.data.audio.load_audio` (any rate is resampled to the model's).
- Teacher targets come from the stage 1 feature scp (float ``[T, D]`` per utterance) or the stage 2 k-means
  label scp (int ``[T]``): each row's ``ark:offset`` is kept in the index and read with ``kaldiio.load_mat`` when
  the item is loaded; utterances missing from the scp are dropped (counted, logged).
  With an online teacher there is no scp and the step computes the targets.
- Alignment (one rule, shared with stage 1, :mod:`stok.core.frames`): an utterance of n samples has
  ``codec_frames(n) = ceil(n / hop)`` frames; a crop starting at sample s uses teacher rows from ``floor(s / hop)``
  for ``codec_frames(crop)`` rows, padded by repeating the last row or truncated (``crop_teacher``).
- Crops: ``segment_seconds`` long, starting on a frame boundary (a multiple of the hop, so the teacher rows line
  up exactly with the codec frames) drawn uniformly from a generator seeded by (seed, epoch, index), so the
  data does not depend on worker processes or on where a run was resumed. Shorter utterances are zero-padded to the
  crop length and carry their true ``length``; losses mask the padding.
- Sampling: :class:`ShardedBatchSampler` shuffles with ``seed + epoch``, forms global batches of
  ``batch_size x world`` and gives each rank its slice (DistributedSampler-like, drop-last); it runs over
  epochs without end from a data position ``(epoch, batch)`` that checkpoints store, so a resumed run reads the
  same batches as an uninterrupted one (one permutation array per epoch, batches cut from it when asked for).
  Each batch says which position it is.
- Unreadable audio: the item is replaced by the next readable utterance of the list (deterministically), the
  utterance is logged once and appended to ``bad_audio.list`` in the experiment dir.
- Dev set: the first ``dev_seconds`` of each dev utterance, in key order, padded per batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from stok.core.errors import UserError
from stok.data.audio import AudioError, load_audio
from stok.data.kaldi_dir import Utterance
from stok.core.frames import codec_frames, crop_teacher
from stok.train.signals import ignore_stop_signals
from stok.train.utt_index import TeacherColumn, UtteranceIndex, read_index, read_teacher_scp, release_free_heap

log = logging.getLogger("stok.train")


class DataError(UserError, ValueError):
    """Training data that cannot be used as given (the message says why and what to do)."""


def read_utterances(data_dir: str, teacher_scp: Optional[str] = None, min_seconds: float = 0.0,
                    what: str = "train") -> UtteranceIndex:
    """Utterances of a data dir that have a teacher entry (when a scp is given) and are long enough, as a compact
    :class:`UtteranceIndex` (with the teacher locations when a scp is given)."""
    utts = read_index(data_dir)
    if teacher_scp:
        if not os.path.isfile(teacher_scp):
            raise DataError(f"{what} teacher scp {teacher_scp} not found (stage 1 writes "
                            "dump/<teacher>/<split>/feats.scp, stage 2 dump/km<K>/<split>/km_labels.scp)")
        utts.teacher = read_teacher_scp(teacher_scp, utts.ids)
        missing = np.flatnonzero(utts.teacher.ark == -2)
        if len(missing):
            log.warning("%s: %d of %d utterances have no entry in %s and are skipped (e.g. %s)",
                        what, len(missing), len(utts), teacher_scp, utts.utt_id(int(missing[0])))
            utts = utts.select(utts.teacher.ark != -2)
    if min_seconds > 0:
        short = utts.duration < min_seconds  # unknown durations (NaN) are kept
        if short.any():
            log.info("%s: %d utterances shorter than %.2f s are skipped", what, int(short.sum()), min_seconds)
            utts = utts.select(~short)
    if not len(utts):
        raise DataError(f"{what}: no usable utterances in {data_dir}"
                        + (f" with teacher entries in {teacher_scp}" if teacher_scp else ""))
    release_free_heap()
    return utts


def holdout_split(utts, n: int, seed: int):
    """(train, dev): ``n`` utterances chosen with a seeded permutation, both in key order."""
    if n <= 0:
        return utts, utts[:0]
    if n >= len(utts):
        raise DataError(f"cannot hold out {n} dev utterances from {len(utts)}")
    index = as_index(utts)
    pick = np.zeros(len(index), dtype=bool)
    pick[np.random.default_rng(seed).permutation(len(index))[:n]] = True
    return index.select(~pick), index.select(pick)


def as_index(utts) -> UtteranceIndex:
    """An :class:`UtteranceIndex` of an index or a list of :class:`Utterance`."""
    return utts if isinstance(utts, UtteranceIndex) else UtteranceIndex.from_utterances(list(utts))


def teacher_crop(target: np.ndarray, start: int, num_samples: int, hop: int) -> np.ndarray:
    """Teacher rows for ``num_samples`` samples from sample ``start`` (features ``[T, D]`` or labels ``[T]``)."""
    return np.array(crop_teacher(np.asarray(target), start, codec_frames(num_samples, hop), hop), copy=True)


def check_teacher_rate(utt_id: str, teacher_frames: int, num_samples: int, hop: int) -> None:
    want = codec_frames(num_samples, hop)
    if abs(teacher_frames - want) > max(3, 0.05 * want):
        raise DataError(
            f"utterance {utt_id}: the teacher has {teacher_frames} frames for {num_samples} samples, but hop {hop} "
            f"gives {want}: the teacher must be at the codec frame rate (e.g. 50 Hz at 16 kHz), dumped from the same audio")


class CropDataset(Dataset):
    """Items are ``(epoch, index)`` keys; returns a dict with ``wav [S]``, ``length``, ``teacher``, ``utt_id``."""

    def __init__(self, utts: Sequence[Utterance], teacher_scp: Optional[str], segment_samples: int,
                 sample_rate: int, hop: int, seed: int, bad_list: Optional[str] = None, random_crop: bool = True):
        self.utts = as_index(utts)
        self.teacher_scp = teacher_scp
        self.segment = int(segment_samples)
        self.sample_rate, self.hop, self.seed = sample_rate, hop, seed
        self.bad_list = bad_list
        self.random_crop = random_crop
        self.teacher: Optional[TeacherColumn] = None
        if teacher_scp:
            known = self.utts.teacher
            if known is not None and os.path.abspath(known.scp) == os.path.abspath(teacher_scp):
                self.teacher = known
            else:
                if not os.path.isfile(teacher_scp):
                    raise DataError(f"teacher scp {teacher_scp} not found (stage 1 writes "
                                    "dump/<teacher>/<split>/feats.scp, stage 2 dump/km<K>/<split>/km_labels.scp)")
                self.teacher = read_teacher_scp(teacher_scp, self.utts.ids)
        self._bad: set = set()

    def __len__(self) -> int:
        return len(self.utts)

    def read_teacher(self, row: int) -> np.ndarray:
        """The teacher array of utterance ``row`` (features ``[T, D]`` or labels ``[T]``)."""
        import kaldiio

        utt_id = self.utts.utt_id(row)
        where = self.teacher.location(row, utt_id)
        if where is None:
            raise DataError(f"utterance {utt_id} has no entry in {self.teacher.scp}")
        return np.asarray(kaldiio.load_mat(where))

    def _mark_bad(self, utt: Utterance, err: Exception) -> None:
        if utt.utt_id in self._bad:
            return
        self._bad.add(utt.utt_id)
        log.warning("skipping unreadable utterance %s: %s", utt.utt_id, err)
        if self.bad_list:
            try:
                with open(self.bad_list, "a", encoding="utf-8") as f:
                    f.write(f"{utt.utt_id} {str(err).splitlines()[0] if str(err) else type(err).__name__}\n")
            except OSError:
                pass

    def _load(self, row: int, utt: Utterance, rng: Optional[np.random.Generator]):
        wav = load_audio(utt.spec, self.sample_rate, utt.start, utt.end).numpy()
        n = wav.shape[0]
        target = None
        if self.teacher is not None:
            target = self.read_teacher(row)
            if target.ndim == 2 and target.shape[0] == 1 and target.shape[1] != 1 and n > self.hop:
                raise DataError(f"utterance {utt.utt_id}: teacher array of shape {target.shape} looks like it keeps "
                                f"a batch dimension; store [frames, dim]")
            check_teacher_rate(utt.utt_id, target.shape[0], n, self.hop)
        seg = self.segment
        start = 0
        if n > seg:  # crops start on a frame boundary, so teacher rows line up exactly with codec frames
            start = self.hop * int(rng.integers(0, (n - seg) // self.hop + 1)) if rng is not None else 0
            wav = wav[start:start + seg]
        length = wav.shape[0]
        if target is not None:
            target = teacher_crop(target, start, length, self.hop)
        return wav, length, target

    def _pad(self, wav: np.ndarray, target: Optional[np.ndarray]):
        seg = self.segment
        if wav.shape[0] < seg:
            wav = np.pad(wav, (0, seg - wav.shape[0]))
        if target is not None:
            frames = codec_frames(seg, self.hop)
            if target.shape[0] < frames:
                pad = [(0, frames - target.shape[0])] + [(0, 0)] * (target.ndim - 1)
                target = np.pad(target, pad)
        return wav, target

    def __getitem__(self, key) -> Dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        for k in range(len(self.utts)):
            row = (index + k) % len(self.utts)
            utt = self.utts[row]
            if utt.utt_id in self._bad:
                continue
            rng = np.random.default_rng([self.seed, epoch, row]) if self.random_crop else None
            try:
                wav, length, target = self._load(row, utt, rng)
            except AudioError as e:
                self._mark_bad(utt, e)
                continue
            wav, target = self._pad(wav, target)
            return _item(utt, wav, length, target)
        raise DataError("no readable utterance left in the training list (see bad_audio.list)")


class DevDataset(CropDataset):
    """The first ``segment`` samples of each utterance, not padded (the collate pads per batch)."""

    def __init__(self, utts, teacher_scp, max_samples, sample_rate, hop, bad_list=None):
        super().__init__(utts, teacher_scp, max_samples, sample_rate, hop, seed=0, bad_list=bad_list,
                         random_crop=False)

    def _pad(self, wav, target):
        return wav, target

    def __getitem__(self, key) -> Dict:
        utt = self.utts[key]
        try:
            wav, length, target = self._load(key, utt, None)
        except AudioError as e:
            self._mark_bad(utt, e)
            return None
        return _item(utt, wav, length, target)


def _item(utt: Utterance, wav: np.ndarray, length: int, target: Optional[np.ndarray]) -> Dict:
    """A dataset item: float32 audio, its true length, and the teacher (float features or int64 labels)."""
    item = {"wav": torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), "length": length,
            "utt_id": utt.utt_id}
    if target is not None:
        target = np.ascontiguousarray(target)
        item["teacher"] = torch.from_numpy(target).float() if target.dtype.kind == "f" \
            else torch.from_numpy(target.astype(np.int64))
    return item


@dataclass
class Batch:
    wav: torch.Tensor  # [B, 1, T]
    lengths: torch.Tensor  # [B] true samples
    teacher: Optional[torch.Tensor]  # [B, frames, D] float or [B, frames] int, zero-padded
    utt_ids: List[str]
    epoch: int = 0
    index: int = 0  # batch index within the epoch
    last_in_epoch: bool = False

    def to(self, device) -> "Batch":
        t = self.teacher.to(device, non_blocking=True) if self.teacher is not None else None
        return Batch(self.wav.to(device, non_blocking=True), self.lengths.to(device), t, self.utt_ids,
                     self.epoch, self.index, self.last_in_epoch)

    def pin_memory(self) -> "Batch":
        return Batch(self.wav.pin_memory(), self.lengths.pin_memory(),
                     self.teacher.pin_memory() if self.teacher is not None else None,
                     self.utt_ids, self.epoch, self.index, self.last_in_epoch)


def collate(items: List[Optional[Dict]], hop: int = 320) -> Optional[Batch]:
    items = [it for it in items if it is not None]
    if not items:
        return None
    T = max(it["wav"].shape[0] for it in items)
    wav = torch.zeros(len(items), 1, T)
    for i, it in enumerate(items):
        wav[i, 0, : it["wav"].shape[0]] = it["wav"]
    lengths = torch.tensor([it["length"] for it in items], dtype=torch.long)
    teacher = None
    if "teacher" in items[0]:
        frames = max(codec_frames(T, hop), max(it["teacher"].shape[0] for it in items))
        first = items[0]["teacher"]
        teacher = torch.zeros((len(items), frames) + tuple(first.shape[1:]), dtype=first.dtype)
        for i, it in enumerate(items):
            teacher[i, : it["teacher"].shape[0]] = it["teacher"]
    return Batch(wav, lengths, teacher, [it["utt_id"] for it in items])


class ShardedBatchSampler:
    """Deterministic, epoch-seeded, rank-sharded batches of ``(epoch, index)`` keys, endless from a position.

    Epoch e: a permutation of the dataset seeded by ``seed + e`` (repeated when the dataset is smaller than one
    global batch), cut into global batches of ``batch_size x world`` (the incomplete tail is dropped); rank r
    takes items ``[r x batch_size, (r+1) x batch_size)`` of each global batch.
    """

    def __init__(self, n: int, batch_size: int, world: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, start: Tuple[int, int] = (0, 0), max_epochs: Optional[int] = None):
        if n <= 0:
            raise DataError("empty training set")
        self.n, self.batch_size, self.world, self.rank = n, batch_size, world, rank
        self.seed, self.shuffle = seed, shuffle
        self.start = start
        self.max_epochs = max_epochs

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def batches_per_epoch(self) -> int:
        return max(self.n, self.global_batch) // self.global_batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed + epoch)
        reps = -(-self.global_batch // self.n)  # at least one global batch
        parts = [rng.permutation(self.n) if self.shuffle else np.arange(self.n) for _ in range(reps)]
        return np.concatenate(parts)

    def epoch_batches(self, epoch: int) -> List[List[Tuple[int, int]]]:
        order = self.epoch_order(epoch)
        return [self.batch(order, epoch, b) for b in range(self.batches_per_epoch())]

    def batch(self, order: np.ndarray, epoch: int, b: int) -> List[Tuple[int, int]]:
        """This rank's keys of global batch ``b`` of an epoch's ``order``."""
        first = b * self.global_batch + self.rank * self.batch_size
        return [(epoch, int(i)) for i in order[first:first + self.batch_size]]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        """Batches from ``start`` on, each made when asked for (an epoch's batches are never all held)."""
        epoch, b0 = self.start
        while self.max_epochs is None or epoch < self.max_epochs:
            order = self.epoch_order(epoch)
            for b in range(b0, self.batches_per_epoch()):
                yield self.batch(order, epoch, b)
            epoch, b0 = epoch + 1, 0


def make_train_loader(ds: CropDataset, sampler: ShardedBatchSampler, num_workers: int, hop: int, seed: int,
                      pin_memory: bool = False):
    """An endless loader of :class:`Batch` tagged with their (epoch, index) data positions."""
    from torch.utils.data import DataLoader

    gen = torch.Generator()
    gen.manual_seed(seed)  # the loader draws its base seed from here, never from the global RNG
    return DataLoader(PositionedDataset(ds), batch_sampler=_PositionedSampler(sampler), num_workers=num_workers,
                      collate_fn=_PositionedCollate(hop), pin_memory=pin_memory, generator=gen,
                      prefetch_factor=2 if num_workers else None,
                      worker_init_fn=ignore_stop_signals if num_workers else None)


class _PositionedSampler:
    """Wraps a :class:`ShardedBatchSampler`: each key carries (epoch, index, batch_index, last_in_epoch)."""

    def __init__(self, sampler: ShardedBatchSampler):
        self.sampler = sampler

    def __iter__(self):
        per_epoch = self.sampler.batches_per_epoch()
        b = self.sampler.start[1]
        for keys in self.sampler:
            yield [(e, i, b, b == per_epoch - 1) for (e, i) in keys]
            b = 0 if b == per_epoch - 1 else b + 1


class _PositionedCollate:
    def __init__(self, hop: int):
        self.hop = hop

    def __call__(self, items):
        batch = collate([it[0] for it in items], self.hop)
        epoch, _, b, last = items[0][1]
        batch.epoch, batch.index, batch.last_in_epoch = epoch, b, last
        return batch


class PositionedDataset(Dataset):
    """Adapter: ``ds[(epoch, index, batch_index, last)] -> (item, key)`` so the collate knows the position."""

    def __init__(self, ds: CropDataset):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        epoch, index, _, _ = key
        return self.ds[(epoch, index)], key
