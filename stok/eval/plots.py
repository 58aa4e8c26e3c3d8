"""PNG plots of a ``stok-eval`` report: codebook usage per RVQ layer, mel distance per utterance and per layer count."""

from __future__ import annotations

import os
from typing import Dict, List

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_code_usage(usage: List[Dict[str, float]], hist: np.ndarray, codebook_size: int, path: str) -> str:
    """Left: codes used and perplexity per layer; right: each layer's sorted code frequencies."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    layers = [u["layer"] for u in usage]
    x = np.arange(len(layers))
    a.bar(x - 0.2, [u["codes_used"] for u in usage], 0.4, label="codes used")
    a.bar(x + 0.2, [u["perplexity"] for u in usage], 0.4, label="perplexity")
    a.axhline(codebook_size, color="gray", linestyle="--", linewidth=1, label=f"codebook size {codebook_size}")
    a.set_xticks(x, [str(layer) for layer in layers])
    a.set_xlabel("RVQ layer")
    a.set_title("codebook usage")
    a.legend(fontsize=8)
    for layer, h in enumerate(hist):
        freq = np.sort(h)[::-1] / max(1, h.sum())
        b.plot(np.arange(1, len(freq) + 1), freq, label=f"layer {layer + 1}")
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("code rank")
    b.set_ylabel("frequency")
    b.set_title("code frequencies (sorted)")
    b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_mel_distance(per_utt: List[Dict], sweep: Dict[int, float], path: str) -> str:
    """Histogram of per-utterance mel distance; with a layer sweep, mean mel distance against layers used."""
    plt = _pyplot()
    cols = 2 if sweep else 1
    fig, axes = plt.subplots(1, cols, figsize=(5.5 * cols, 4))
    axes = np.atleast_1d(axes)
    axes[0].hist([u["mel_distance"] for u in per_utt], bins=min(30, max(5, len(per_utt) // 3)))
    axes[0].set_xlabel("mel distance (mean log-mel L1)")
    axes[0].set_ylabel("utterances")
    axes[0].set_title("reconstruction, all layers")
    if sweep:
        ks = sorted(sweep)
        axes[1].plot(ks, [sweep[k] for k in ks], marker="o")
        axes[1].set_xticks(ks)
        axes[1].set_xlabel("RVQ layers decoded (1..k)")
        axes[1].set_ylabel("mean mel distance")
        axes[1].set_title("quality against bitrate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.path.abspath(path)
