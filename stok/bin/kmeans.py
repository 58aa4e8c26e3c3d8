"""``stok-kmeans``: k-means units (stage 2): learn a model on teacher features, dump unit labels.

    stok-kmeans learn --feats_scp dump/mfcc/train/feats.scp --n_clusters 100 --output exp/kmeans/km100.npz
    stok-kmeans dump --km_model exp/kmeans/km100.npz --feats_scp dump/mfcc/dev/feats.scp --output_dir dump/km100/dev
    stok-kmeans dump --from_audio --km_model exp/kmeans/km500.npz --teacher hubert --checkpoint hubert_base_ls960.pt \\
        --layer 9 --data_dir data/train --output_dir dump/km500/train    # no feature dump (torchrun works too)

learn: samples frames from the feature scp in two streaming passes (``--percent``, ``--max_frames``,
``--sample_by``) into memory or, when the fit would not fit ``--memory_gb``, into an on-disk sample that every
Lloyd pass streams (memory then grows by 12 bytes a frame only), seeds with greedy k-means++ on a subsample,
runs Lloyd passes (torch, CPU or GPU) and saves centroids + metadata as ``.npz``
(``numpy.load(path, allow_pickle=False)``; no pickle anywhere).
dump: nearest-centroid labels for every utterance -> ``km_labels.scp`` (int32 vectors), ``km_labels.txt``
(``utt 12 12 7 ...``), ``failed.list`` and the cluster usage (clusters used, entropy, perplexity) printed and in
``km_labels.summary.json``. Run ``stok-kmeans <command> --help`` for the options.
This module only dispatches: learn lives in ``stok.bin.kmeans_learn``, dump in ``stok.bin.kmeans_dump``.
"""

from __future__ import annotations

import logging
import sys

from stok.bin.entry import entry_point
from stok.bin.kmeans_dump import dump
from stok.bin.kmeans_learn import learn

COMMANDS = {"learn": learn, "dump": dump}


@entry_point
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"error: unknown command {argv[0]!r}; use 'learn' or 'dump'")
        if not argv:
            raise SystemExit(2)
        return None
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
