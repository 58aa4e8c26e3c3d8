"""Batched nearest-centroid assignment: ``argmin_k (|c_k|^2 - 2 x . c_k)`` with precomputed centroid norms.

One ``[rows, D] x [D, K]`` product per block of rows (blocks of about 32 MB of distances on CPU, 512 MB on
GPU), on the device the :class:`Assigner` lives on. Ties and near-ties are decided in float32 like every
GEMM-based k-means (faiss, scikit-learn); frames whose two nearest centroids are closer than float32
rounding can differ from a float64 brute force.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np
import torch

from stok.models.kmeans.fit import chunk_rows

ArrayLike = Union[np.ndarray, torch.Tensor]


class Assigner:
    def __init__(self, centroids: ArrayLike, device: Union[str, torch.device] = "cpu"):
        c = torch.as_tensor(np.asarray(centroids, dtype=np.float32)) if isinstance(centroids, np.ndarray) \
            else centroids.detach().float()
        if c.ndim != 2:
            raise ValueError(f"centroids must be [K, D], got shape {tuple(c.shape)}")
        self.cpu_centroids = c.cpu().contiguous()
        self.to(device)

    @property
    def n_clusters(self) -> int:
        return int(self.cpu_centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.cpu_centroids.shape[1])

    def to(self, device: Union[str, torch.device]) -> "Assigner":
        self.device = torch.device(device)
        self.C = self.cpu_centroids.to(self.device)
        self.Ct = self.C.T.contiguous()
        self.cc = (self.C * self.C).sum(1)
        self.chunk = chunk_rows(self.n_clusters, self.device)
        return self

    @torch.inference_mode()
    def assign_tensor(self, x: torch.Tensor, return_dist: bool = False):
        """Labels (int64 tensor on the assigner's device) of the rows of ``x`` [N, D]; with ``return_dist`` also
        the squared distance to the chosen centroid (float32, clamped at 0)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features of shape {tuple(x.shape)} do not match the centroids' dimension {self.dim}")
        n = x.shape[0]
        labels = torch.empty(n, dtype=torch.long, device=self.device)
        dists = torch.empty(n, dtype=torch.float32, device=self.device) if return_dist else None
        for s in range(0, n, self.chunk):
            xb = x[s:s + self.chunk].to(self.device, torch.float32, non_blocking=True)
            d = torch.addmm(self.cc[None], xb, self.Ct, alpha=-2)
            if return_dist:
                mind, lab = d.min(1)
                dists[s:s + len(xb)] = mind.add_((xb * xb).sum(1)).clamp_(min=0)
            else:
                lab = d.argmin(1)
            labels[s:s + len(xb)] = lab
        return (labels, dists) if return_dist else labels

    def __call__(self, x: ArrayLike, return_dist: bool = False):
        """Labels as int32 numpy ``[N]`` (and float32 squared distances with ``return_dist``)."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
        out = self.assign_tensor(xt, return_dist)
        if return_dist:
            return out[0].to(torch.int32).cpu().numpy(), out[1].cpu().numpy()
        return out.to(torch.int32).cpu().numpy()

    def assign_many(self, mats: Sequence[ArrayLike]) -> List[np.ndarray]:
        """One product for several utterances ([T_i, D] each): int32 label vectors, in order."""
        if not len(mats):
            return []
        if len(mats) == 1:  # no copy of a long utterance's features
            return [self(mats[0])]
        lens = [int(m.shape[0]) for m in mats]
        if isinstance(mats[0], torch.Tensor):
            x = torch.cat([m.to(self.device, torch.float32) for m in mats])
        else:
            x = torch.from_numpy(np.concatenate([np.asarray(m, dtype=np.float32) for m in mats]))
        labels = self.assign_tensor(x).to(torch.int32).cpu().numpy()
        return list(np.split(labels, np.cumsum(lens)[:-1]))


def inertia(x: ArrayLike, centroids: ArrayLike, device: Union[str, torch.device] = "cpu") -> Tuple[float, float]:
    """(mean, sum) of squared distances of the rows of ``x`` to their nearest centroid (float64 accumulation)."""
    _, d = Assigner(centroids, device)(x, return_dist=True)
    total = float(d.astype(np.float64).sum())
    return total / max(1, len(d)), total
