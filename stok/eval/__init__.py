"""Reconstruction metrics and report plots for codecs (``stok-eval``)."""
