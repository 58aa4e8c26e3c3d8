"""stok: discrete speech tokens from raw speech corpora.

Sub-packages: ``stok.data`` (Kaldi dirs, lhotse manifests, corpus recipes), ``stok.dump``
(the one dump engine), ``stok.models`` (teachers, k-means, SpeechTokenizer, S3Tokenizer),
``stok.train`` (SpeechTokenizer trainer) and ``stok.bin`` (command-line entry points).
"""

__version__ = "0.1.0"
