"""Data: audio reading, Kaldi data dirs, lhotse manifests and corpus preparation."""
