"""The base layer: what every other part of stok stands on, importing nothing of stok above it.

Kaldi tables (:mod:`~stok.core.tables`), ark records and their storage (:mod:`~stok.core.ark`,
:mod:`~stok.core.storage`), checksums, records and tree diffs of what made an output
(:mod:`~stok.core.checksums`, :mod:`~stok.core.records`, :mod:`~stok.core.treediff`), crash-safe writing
(:mod:`~stok.core.fileio`), failure lists, processes and devices (:mod:`~stok.core.distributed`), length
bucketing, the frame rule (:mod:`~stok.core.frames`), typed settings (:mod:`~stok.core.settings`), the user-error
type (:mod:`~stok.core.errors`) and the contract between the dump engine and a model (:mod:`~stok.core.model_api`).
"""
