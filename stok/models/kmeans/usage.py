"""k-means labels after the dump: cluster-usage statistics and the ``km_labels.txt`` text form.

``km_labels.txt`` holds ``utt 12 12 7 ...`` lines (fairseq's ``.km`` files are the same lines without the key:
``cut -d' ' -f2-``); the usage (clusters used, entropy, perplexity, the largest cluster's share) goes into the
dump's summary and is printed.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from stok.core.fileio import atomic_open
from stok.core.storage import load_codes

NAME = "km_labels"


def usage_stats(counts: np.ndarray) -> dict:
    """Cluster usage of label counts ``[K]``: clusters used, entropy (bits), perplexity, largest share."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    k = len(counts)
    p = counts[counts > 0] / max(1, total)
    h = float(-(p * np.log2(p)).sum()) if total else 0.0
    return {"n_clusters": k, "frames": total, "clusters_used": int((counts > 0).sum()),
            "entropy_bits": h, "max_entropy_bits": math.log2(k) if k else 0.0,
            "normalized_entropy": h / math.log2(k) if k > 1 else 0.0, "perplexity": 2.0 ** h,
            "largest_cluster_share": float(counts.max() / total) if total else 0.0,
            "counts": counts.tolist()}


def format_usage(u: dict) -> str:
    return (f"{u['frames']} frames: {u['clusters_used']} of {u['n_clusters']} clusters used, entropy "
            f"{u['entropy_bits']:.3f} bits of {u['max_entropy_bits']:.3f} (normalised {u['normalized_entropy']:.3f}), "
            f"perplexity {u['perplexity']:.1f}, largest cluster {100 * u['largest_cluster_share']:.2f}% of frames")


def finalize(out_dir: str, n_clusters: int, text: bool = True) -> dict:
    """Write ``km_labels.txt`` from ``km_labels.scp`` (``text``) and return the cluster usage of every label in it."""
    scp = os.path.join(out_dir, f"{NAME}.scp")
    counts = np.zeros(n_clusters, dtype=np.int64)
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(atomic_open(os.path.join(out_dir, f"{NAME}.txt"), "w")) if text else None
        for key, labels in load_codes(scp):
            if labels.size and (labels.min() < 0 or labels.max() >= n_clusters):
                raise ValueError(f"{scp}:{key}: labels outside [0, {n_clusters}); written by another model?")
            counts += np.bincount(labels, minlength=n_clusters)
            if f is not None:
                f.write(key + (" " + " ".join(map(str, labels.tolist())) if labels.size else "") + "\n")
    return usage_stats(counts)
