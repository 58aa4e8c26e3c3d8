"""k-means labels for every utterance of a feature scp, and cluster-usage statistics.

Output in ``output_dir`` (the dump engine's layout, so both ``stok-kmeans dump`` modes look alike):

- ``km_labels.scp`` (sorted by key) -> ``km_labels.0.ark``: one Kaldi int32 vector per utterance
  (``kaldiio.load_scp``, Kaldi's ``copy-int-vector``); ``km_labels.0.scp`` is the shard's own index
- ``km_labels.txt``: ``utt 12 12 7 ...`` (fairseq's ``.km`` files are the same lines without the key:
  ``cut -d' ' -f2-``)
- ``failed.list``: ``utt<TAB>reason`` (unreadable, not a matrix, wrong dimension, NaN/inf)
- ``km_labels.summary.json``: counts, timings and the cluster usage (clusters used, entropy, perplexity)
- ``km_labels.fingerprint.json``: what made the labels (the centroids' checksum and the features' or the
  teacher's fingerprint, ``stok.dump.fingerprint``); resuming with another model or features is refused

The pass over the features is streaming and resumable: records are flushed before the shard scp names them
(``stok.dump.storage.ShardWriter``), and a rerun skips the keys already written. Utterances are assigned in
blocks of about ``batch_frames`` frames (one matrix product each).
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import time
from typing import Dict, Iterator, List, Optional, Tuple

import kaldiio
import numpy as np
from tqdm import tqdm

from stok.cli import check_output_dir
from stok.data.kaldi_dir import sort_keys
from stok.dump.fingerprint import check_fingerprint, read_fingerprint, start_output
from stok.dump.merge import write_failed
from stok.dump.storage import ShardWriter, read_scp_entries
from stok.fileio import atomic_open
from stok.models.kmeans.assign import Assigner
from stok.models.kmeans.model import KMeansModel
from stok.models.kmeans.sample import MatrixReader, read_feats_scp

log = logging.getLogger("stok.kmeans")

NAME = "km_labels"
_INT_PAIR = np.dtype([("size", "u1"), ("value", "<i4")])


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


def read_int_vector(fd) -> Optional[np.ndarray]:
    """A Kaldi binary int32 vector at the current position (vectorised; kaldiio reads it value by value)."""
    head = fd.read(7)
    if len(head) < 7 or head[:3] != b"\0B\4":
        return None
    n = struct.unpack("<i", head[3:7])[0]
    buf = fd.read(5 * n)
    if len(buf) != 5 * n:
        raise ValueError("truncated int32 vector")
    pairs = np.frombuffer(buf, dtype=_INT_PAIR)
    if n and not (pairs["size"] == 4).all():
        raise ValueError("malformed int32 vector")
    return pairs["value"].astype(np.int32)


def iter_labels(scp: str) -> Iterator[Tuple[str, np.ndarray]]:
    """(key, int32 labels) in the order of ``scp``."""
    with open(scp, encoding="utf-8") as f:
        lines = [line.split(maxsplit=1) for line in f if line.strip()]
    with MatrixReader() as reader:
        for key, spec in lines:
            spec = spec.strip()
            fd = reader._at(spec)
            arr = read_int_vector(fd) if fd is not None else None
            if arr is None:
                arr = np.asarray(kaldiio.load_mat(spec), dtype=np.int32)
            yield key, arr


def finalize(out_dir: str, n_clusters: int, text: bool = True) -> dict:
    """Write ``km_labels.txt`` from ``km_labels.scp`` and return the cluster usage of every label in it."""
    scp = os.path.join(out_dir, f"{NAME}.scp")
    counts = np.zeros(n_clusters, dtype=np.int64)
    txt = os.path.join(out_dir, f"{NAME}.txt")
    f = open(txt + ".tmp", "w", encoding="utf-8") if text else None
    try:
        for key, labels in iter_labels(scp):
            if labels.size and (labels.min() < 0 or labels.max() >= n_clusters):
                raise ValueError(f"{scp}:{key}: labels outside [0, {n_clusters}); written by another model?")
            counts += np.bincount(labels, minlength=n_clusters)
            if f is not None:
                f.write(key + (" " + " ".join(map(str, labels.tolist())) if labels.size else "") + "\n")
    finally:
        if f is not None:
            f.close()
    if text:
        os.replace(txt + ".tmp", txt)
    return usage_stats(counts)


def features_fingerprint(km: KMeansModel, feats_scp: str) -> dict:
    """The fingerprint of labels from a feature scp: the centroids and the feature dump's own fingerprint
    (``<stem>.fingerprint.json`` beside the scp, when stage 1 wrote one)."""
    stem = os.path.splitext(os.path.basename(feats_scp))[0]
    features = read_fingerprint(os.path.dirname(os.path.abspath(feats_scp)), stem)
    return {"name": NAME, "model": {"model": "kmeans_labels", "n_clusters": km.n_clusters, "dim": km.dim,
                                    "km_fingerprint": km.fingerprint(), "features": features}}


def dump_from_feats(km: KMeansModel, km_path: str, feats_scp: str, out_dir: str, device: str = "cpu",
                    batch_frames: int = 100_000, overwrite: bool = False, text: bool = True) -> dict:
    """Labels for every entry of ``feats_scp`` (see the module docstring); returns the summary.

    Everything is checked (the scp, the output location, the fingerprint of what ``out_dir`` holds) before
    any output is created or, with ``overwrite``, removed."""
    start = time.time()
    entries = read_feats_scp(feats_scp)
    check_output_dir(out_dir)
    fingerprint = features_fingerprint(km, feats_scp)
    if not overwrite:
        check_fingerprint(out_dir, NAME, fingerprint)
    start_output(out_dir, NAME, fingerprint, overwrite)
    writer = ShardWriter(os.path.join(out_dir, f"{NAME}.0"))
    done = writer.done
    assigner = Assigner(km.centroids, device)
    failures: Dict[str, str] = {}
    batch: List[Tuple[str, np.ndarray]] = []
    pending = 0
    written = frames = 0

    def flush():
        nonlocal batch, pending, written, frames
        if not batch:
            return
        for (key, _), labels in zip(batch, assigner.assign_many([m for _, m in batch])):
            writer.write(key, labels)
            frames += len(labels)
        written += len(batch)
        batch, pending = [], 0

    todo = [(k, s) for k, s in entries if k not in done]
    log.info("%s: %d entries, %d already written, %d to do; %d clusters, dim %d, device %s", feats_scp,
             len(entries), len(entries) - len(todo), len(todo), km.n_clusters, km.dim, device)
    try:
        with MatrixReader() as reader:
            for key, spec in tqdm(todo, desc=NAME, unit="utt", mininterval=5, disable=None):
                try:
                    mat = reader.load(spec)
                except Exception as e:  # noqa: BLE001 - listed in failed.list
                    failures[key] = f"unreadable: {type(e).__name__}: {e}"
                    continue
                if mat.ndim != 2:
                    failures[key] = f"not a feature matrix: shape {mat.shape}"
                elif mat.shape[1] != km.dim:
                    failures[key] = f"dimension {mat.shape[1]} != {km.dim} of the k-means model"
                elif not np.isfinite(mat).all():
                    failures[key] = "non-finite values (NaN/inf)"
                else:
                    batch.append((key, mat))
                    pending += mat.shape[0]
                    if pending >= batch_frames:
                        flush()
            flush()
    finally:
        writer.close()
    for key, reason in failures.items():
        log.warning("%s failed: %s", key, reason)
    entries_map = read_scp_entries([os.path.join(out_dir, f"{NAME}.0.scp")])
    scp_path = os.path.join(out_dir, f"{NAME}.scp")
    with atomic_open(scp_path, "w") as f:
        for key in sort_keys(entries_map):
            f.write(f"{key} {entries_map[key]}\n")
    write_failed(os.path.join(out_dir, "failed.list"), failures)
    usage = finalize(out_dir, km.n_clusters, text)
    wall = time.time() - start
    summary = {"name": NAME, "mode": "features", "feats_scp": os.path.abspath(feats_scp),
               "km_model": os.path.abspath(km_path), "km_fingerprint": km.fingerprint(), "fingerprint": fingerprint,
               "device": str(device),
               "entries": len(entries), "already_done": len(entries) - len(todo), "written_now": written,
               "frames_now": frames, "entries_in_scp": len(entries_map), "failed": len(failures),
               "wall_seconds": wall, "frames_per_second": frames / wall if wall else None, "usage": usage}
    with atomic_open(os.path.join(out_dir, f"{NAME}.summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
