"""k-means units (stage 2): sample teacher frames, fit k-means, assign labels.

- :mod:`~stok.models.kmeans.sample`: streaming frame sampling from a feature scp (two passes: matrix
  headers for row counts, then only the sampled rows are kept in memory).
- :mod:`~stok.models.kmeans.fit`: greedy k-means++ seeding on a subsample, then Lloyd iterations
  (a warm-up on a subsample, then passes over every sampled frame until the inertia stops improving), in torch
  on CPU or GPU.
- :mod:`~stok.models.kmeans.model`: the model file (``.npz``: centroids + JSON metadata, no pickle).
- :mod:`~stok.models.kmeans.assign`: batched nearest-centroid assignment.
- :mod:`~stok.models.kmeans.labels_model`: teacher + centroids as one dump-engine model (labels from audio).
- :mod:`~stok.models.kmeans.dump`: labels for a feature scp, cluster usage statistics.
"""

from stok.models.kmeans.assign import Assigner
from stok.models.kmeans.fit import KMeansResult, fit_kmeans, kmeans_pp_seed
from stok.models.kmeans.model import KMeansModel

__all__ = ["Assigner", "KMeansModel", "KMeansResult", "fit_kmeans", "kmeans_pp_seed"]
