"""Kaldi's own C++ table readers (through ``kaldi_native_io``) as the oracle for what stok writes.

``kaldi_native_io`` wraps Kaldi's ``SequentialFloatMatrixReader`` & co., so an ark/scp it reads is one that
``copy-matrix``, ``copy-feats`` and ``copy-int-vector`` read. The import goes through ``require_peer``:
a failure under ``CI=true``, a skip elsewhere.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from tests.conftest import require_peer


def float_matrices(scp: str) -> Dict[str, np.ndarray]:
    """Every record of ``scp`` as Kaldi reads a float matrix (float32 or any compressed matrix)."""
    kni = require_peer("kaldi_native_io")
    return {key: np.array(mat, dtype=np.float32) for key, mat in kni.SequentialFloatMatrixReader(f"scp:{scp}")}


def int32_vectors(scp: str) -> Dict[str, np.ndarray]:
    """Every record of ``scp`` as Kaldi reads an int32 vector."""
    kni = require_peer("kaldi_native_io")
    return {key: np.array(vec, dtype=np.int32) for key, vec in kni.SequentialInt32VectorReader(f"scp:{scp}")}
