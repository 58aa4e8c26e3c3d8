"""The k-means model file: centroids + metadata in a ``.npz`` that needs no pickle to load.

Layout (``numpy.savez``, uncompressed):

- ``centroids``: float32 ``[K, D]``
- ``meta``: a 0-d unicode string array holding a JSON object (format name and version, ``n_clusters``,
  ``dim``, the feature scp and teacher it was fitted on, sampling and fit settings, inertia, timings)

Both arrays are plain dtypes, so ``numpy.load(path, allow_pickle=False)`` reads the file, and torch users do
``torch.from_numpy(numpy.load(path)["centroids"])`` (``torch.load`` does not read ``.npz``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np

from stok.core.fileio import atomic_open

FORMAT = "stok-kmeans"
VERSION = 1


class KMeansModelError(ValueError):
    """A k-means model file that is missing, unreadable or malformed; the message names the file."""


@dataclass
class KMeansModel:
    centroids: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        c = np.asarray(self.centroids)
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            raise KMeansModelError(f"centroids must be a [K, D] matrix, got shape {c.shape}")
        if not np.isfinite(c).all():
            raise KMeansModelError("centroids hold non-finite values")
        self.centroids = np.ascontiguousarray(c, dtype=np.float32)

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the centroids: identifies the model that wrote a label dump."""
        return hashlib.sha256(self.centroids.tobytes()).hexdigest()[:16]

    def save(self, path: str) -> str:
        """Write atomically to ``path`` (any name: numpy's automatic ``.npz`` suffix is not added)."""
        meta = {"format": FORMAT, "version": VERSION, **self.meta,
                "n_clusters": self.n_clusters, "dim": self.dim, "fingerprint": self.fingerprint()}
        with atomic_open(path) as f:
            np.savez(f, centroids=self.centroids, meta=np.array(json.dumps(meta, sort_keys=True)))
        self.meta = meta
        return path

    @classmethod
    def load(cls, path: str) -> "KMeansModel":
        if not os.path.isfile(path):
            raise KMeansModelError(f"k-means model not found: {path} (write one with 'stok-kmeans learn')")
        try:
            with np.load(path, allow_pickle=False) as z:
                names = set(z.files)
                if "centroids" not in names:
                    raise KMeansModelError(f"{path}: no 'centroids' array (has {sorted(names)}); "
                                           "not a stok k-means model")
                centroids = z["centroids"]
                meta = json.loads(str(z["meta"])) if "meta" in names else {}
        except KMeansModelError:
            raise
        except Exception as e:  # not a zip, pickled object arrays, bad JSON ...
            raise KMeansModelError(f"{path}: cannot read as a stok k-means model (.npz without pickle): {e}") from e
        if not np.issubdtype(centroids.dtype, np.floating):
            raise KMeansModelError(f"{path}: centroids have dtype {centroids.dtype}, expected float")
        if meta.get("format", FORMAT) != FORMAT or int(meta.get("version", VERSION)) > VERSION:
            raise KMeansModelError(f"{path}: format {meta.get('format')} version {meta.get('version')} "
                                   f"is not {FORMAT} <= {VERSION}")
        try:
            return cls(centroids, meta)
        except KMeansModelError as e:
            raise KMeansModelError(f"{path}: {e}") from e
