"""k-means centroids as dump-engine models: unit labels of a feature dump, or straight from audio.

- :class:`KMeansFeatureLabels`: the records of a feature scp (the engine's feature input) are checked
  (dimension, finite values), packed without padding, and every frame of a batch is assigned in one pass.
- :class:`KMeansLabels`: audio goes through the teacher's own ``prepare``/``collate``/``encode`` (so the frames
  are exactly those a feature dump would store), then every utterance of the batch is assigned in one matrix
  product on the engine's device; no feature dump is needed. An utterance the teacher computes in several
  blocks (HuBERT above ``--max_chunk_seconds``) is assigned block by block as the teacher gives them
  (``Teacher.feature_blocks``), so its features are never held whole: memory does not grow with its length.

Output: one int32 label vector per utterance (``km_labels.scp`` through the engine).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch

from stok.core.model_api import BadInput, DumpModel
from stok.models.kmeans.assign import Assigner
from stok.models.kmeans.model import KMeansModel


class KMeansLabels(DumpModel):
    def __init__(self, teacher: DumpModel, km: KMeansModel, device: torch.device | str = "cpu",
                 km_path: str = ""):
        self.teacher, self.km, self.km_path = teacher, km, km_path
        self.sample_rate = teacher.sample_rate
        self.min_samples = teacher.min_samples
        self.batch_seconds = teacher.batch_seconds
        self.assigner = Assigner(km.centroids, device)

    def prepare(self, wave: torch.Tensor):
        return self.teacher.prepare(wave)

    def num_frames(self, num_samples: int) -> int:
        return self.teacher.num_frames(num_samples)

    def collate(self, items: Sequence) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.teacher.collate(items)

    def to(self, device: torch.device) -> "KMeansLabels":
        self.teacher = self.teacher.to(device) or self.teacher
        self.assigner.to(device)
        return self

    def _check(self, shape) -> None:
        if len(shape) != 2 or shape[1] != self.km.dim:
            raise ValueError(f"the teacher gives features of shape {tuple(shape)}, the k-means model "
                             f"{self.km_path or ''} has dimension {self.km.dim}: use the teacher (and layer) "
                             "the model was fitted on")

    @torch.inference_mode()
    def encode(self, padded: torch.Tensor, lengths: torch.Tensor) -> List[np.ndarray]:
        is_long = getattr(self.teacher, "is_long", lambda n: False)
        long = {i for i, n in enumerate(lengths.tolist()) if is_long(int(n))}
        short = [i for i in range(len(lengths)) if i not in long]
        out: List[np.ndarray] = [None] * len(lengths)
        if short:
            if long:
                idx = torch.tensor(short, device=padded.device)
                feats = self.teacher.encode(padded[idx][..., : int(lengths[idx].max())], lengths[idx])
            else:
                feats = self.teacher.encode(padded, lengths)
            for f in feats:
                self._check(np.shape(f))
            for i, labels in zip(short, self.assigner.assign_many(feats)):
                out[i] = labels
        for i in sorted(long):
            parts = []
            for f in self.teacher.feature_blocks(padded[i, : int(lengths[i])]):
                self._check(f.shape)
                parts.append(self.assigner(f.float()))
            out[i] = np.concatenate(parts)
        return out

    def describe(self) -> dict:
        return {"model": "kmeans_labels", "teacher": self.teacher.describe(), "n_clusters": self.km.n_clusters,
                "dim": self.km.dim, "km_model": self.km_path, "km_fingerprint": self.km.fingerprint()}

    def fingerprint(self) -> dict:
        """The centroids' checksum and the teacher's fingerprint (not the model's path)."""
        return {"model": "kmeans_labels", "n_clusters": self.km.n_clusters, "dim": self.km.dim,
                "km_fingerprint": self.km.fingerprint(), "teacher": self.teacher.fingerprint()}


class KMeansFeatureLabels(DumpModel):
    """Nearest-centroid labels of feature matrices ``[T, D]`` (see the module docstring). ``features``: the
    feature dump's own fingerprint (None when it has none); ``meta``: its model's ``describe()``, and the frame
    rate of the labels with where it came from."""

    min_samples = 0
    batch_seconds = {"cpu": 0.0, "cuda": 0.0}  # batches are bounded by frames (--batch_frames)

    def __init__(self, km: KMeansModel, device: torch.device | str = "cpu", km_path: str = "",
                 features: dict | None = None, meta: dict | None = None):
        self.km, self.km_path, self.features = km, km_path, features
        self.meta = dict(meta or {})
        self.assigner = Assigner(km.centroids, device)

    def prepare(self, mat: torch.Tensor) -> torch.Tensor:
        if mat.shape[1] != self.km.dim:
            raise BadInput(f"dimension {mat.shape[1]} != {self.km.dim} of the k-means model")
        if not bool(torch.isfinite(mat).all()):
            raise BadInput("non-finite values (NaN/inf)")
        return mat

    def num_frames(self, num_samples: int) -> int:
        return num_samples

    def collate(self, items: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Packed, not padded: the frames of every item one after another ``[sum T, D]``."""
        return torch.cat(list(items), 0), torch.tensor([len(x) for x in items], dtype=torch.long)

    def to(self, device: torch.device) -> "KMeansFeatureLabels":
        self.assigner.to(device)
        return self

    @torch.inference_mode()
    def encode(self, packed: torch.Tensor, lengths: torch.Tensor) -> List[np.ndarray]:
        labels = self.assigner.assign_tensor(packed).to(torch.int32).cpu().numpy()
        ends = np.cumsum(lengths.cpu().numpy())
        return np.split(labels, ends[:-1]) if len(ends) else []

    def describe(self) -> dict:
        return {"model": "kmeans_labels", "mode": "features", "n_clusters": self.km.n_clusters, "dim": self.km.dim,
                "km_model": self.km_path, "km_fingerprint": self.km.fingerprint(), **self.meta}

    def fingerprint(self) -> dict:
        """The centroids' checksum and the feature dump's own fingerprint (not the paths)."""
        return {"model": "kmeans_labels", "n_clusters": self.km.n_clusters, "dim": self.km.dim,
                "km_fingerprint": self.km.fingerprint(), "features": self.features}
