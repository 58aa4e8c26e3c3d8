"""stok: discrete speech tokens from raw speech corpora.

Sub-packages: ``stok.data`` (Kaldi dirs, lhotse manifests, corpus recipes), ``stok.dump``
(the one dump engine), ``stok.models`` (teachers, k-means, SpeechTokenizer, S3Tokenizer),
``stok.train`` (SpeechTokenizer trainer) and ``stok.bin`` (command-line entry points).

Importing the package first lets MKL use its AVX-512 kernels on AMD CPUs that have them
(:mod:`stok.mkl_on_amd`; it must happen before torch is imported).
"""

from stok import mkl_on_amd as _mkl_on_amd

_mkl_on_amd.enable()

__version__ = "0.1.0"
