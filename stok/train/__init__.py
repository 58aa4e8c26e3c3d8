"""SpeechTokenizer trainer (stage 3): config, data, discriminators, losses, checkpoints, the loop, export.

Entry point: ``stok-train`` / ``python -m stok.bin.train`` (:mod:`stok.bin.train`).
"""
