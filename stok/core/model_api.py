"""The contract between the dump engine and a model: how one padded batch becomes codes.

A model used by a dump subclasses :class:`DumpModel`. The engine does everything else:
reading audio (``wav.scp`` + ``segments``), resampling to ``sample_rate``, bucketing by
``num_frames``, DataLoader workers, sharding over ``torchrun`` ranks, resume, ark/scp writing
and the failure list.

Flow per utterance and batch::

    wave (1-D float32 tensor at model.sample_rate, mono)
      -> model.prepare(wave)          # in a DataLoader worker, on CPU; may raise TooShort
      -> model.collate([x1, x2, ...]) # in the worker: (padded, lengths)
      -> model.encode(padded.to(device), lengths.to(device))  # in the main process
      -> list of numpy arrays, one per utterance, in batch order

What ``encode`` returns decides how it is stored (see ``stok.core.storage``):

- 1-D integer array ``[T]``          -> Kaldi int32 vector (single-codebook tokens).
- 2-D integer array ``[T, n_q]``     -> Kaldi float32 matrix, frames as rows, exact integers
                                         (below 2^24); kaldiio reads them exactly, and
                                         ``stok.core.storage.load_codes`` returns int64.
- 2-D float array ``[T, D]``         -> Kaldi float matrix (or two-byte compressed with
                                         ``--feature_storage compressed16``).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch


class BadInput(ValueError):
    """Raised by ``prepare`` for an item the model cannot take (its message is the reason); it goes to failed.list."""


class TooShort(BadInput):
    """Raised by ``prepare`` when an utterance is too short for the model; it goes to failed.list."""


class DumpModel:
    """Base class: override ``encode`` at least; the defaults treat the waveform as the input."""

    #: sample rate the engine resamples every utterance to
    sample_rate: int = 16000
    #: shorter utterances (in samples, after resampling) are written to failed.list as too short
    min_samples: int = 1
    #: ``encode`` returns float features: ``--feature_storage`` applies, ``--text_output`` does not
    float_output: bool = False
    #: padded audio seconds per batch when the user gives no budget (``--batch_seconds 0``), by device type:
    #: the model's own rule, so every tool that dumps it batches alike
    batch_seconds: Dict[str, float] = {"cpu": 240.0, "cuda": 240.0}

    def default_batch_seconds(self, device: torch.device) -> float:
        """The batch budget of :attr:`batch_seconds` for ``device`` (its type; other types take the CPU's)."""
        return float(self.batch_seconds.get(torch.device(device).type, self.batch_seconds["cpu"]))

    def prepare(self, wave: torch.Tensor) -> torch.Tensor:
        """Per-utterance preprocessing in a worker process (CPU). Default: the waveform itself."""
        if wave.numel() < self.min_samples:
            raise TooShort(f"{wave.numel()} samples < {self.min_samples} needed by the model")
        return wave

    def num_frames(self, num_samples: int) -> int:
        """Cost of an utterance for the frame budget of a batch (``--max_frames``). Default: samples."""
        return num_samples

    def collate(self, items: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pad prepared items along their last axis; return (padded [B, ..., T], lengths [B])."""
        lengths = torch.tensor([x.shape[-1] for x in items], dtype=torch.long)
        if len(items) == 1:  # nothing to pad: no copy (a long utterance's waveform is its batch)
            return items[0][None], lengths
        tmax = int(lengths.max())
        shape = (len(items),) + tuple(items[0].shape[:-1]) + (tmax,)
        padded = items[0].new_zeros(shape)
        for i, x in enumerate(items):
            padded[i, ..., : x.shape[-1]] = x
        return padded, lengths

    def to(self, device: torch.device) -> "DumpModel":
        """Move weights to ``device``; models holding an ``nn.Module`` override this."""
        return self

    #: what ``--cpu_kernels auto`` picks: True where the fast kernels can change an output only at float near-ties
    #: that the model's users accept (tokens, features), False where outputs must be bitwise the reference's
    fast_cpu_by_default: bool = True

    def set_fast_cpu(self, enabled: bool) -> None:
        """``--cpu_kernels``: True lets ``encode`` use the model's CPU fast kernels in fp32 (same values to float32
        rounding); False runs its plain reference modules. Default: the model has no such kernels."""

    def set_cpu_kernels(self, kernels: str) -> None:
        """``--cpu_kernels`` as given (auto, fast or reference): ``set_fast_cpu`` (auto: ``fast_cpu_by_default``).
        A model whose best path for ``auto`` depends on the CPU overrides this."""
        self.set_fast_cpu(self.fast_cpu_by_default if kernels == "auto" else kernels == "fast")

    @torch.inference_mode()
    def encode(self, padded: torch.Tensor, lengths: torch.Tensor) -> List[np.ndarray]:
        """Turn one padded batch into one numpy array per utterance (see module docstring)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Metadata written into the dump's summary JSON (model name, version, frame rate ...)."""
        return {"model": type(self).__name__}

    def fingerprint(self) -> dict:
        """What decides the values this model writes; recorded with the dump, and a resume with another
        fingerprint is refused (``stok.dump.outputs``). Give the model's identity, checksums of its weights
        (``stok.core.checksums.file_sha256`` / ``weights_checksum``, cached; ``module_checksum`` for weights not
        read from a file) and every setting that changes the outputs (version, dtype, layer, n_q ...); leave out
        what does not (paths, devices, batch sizes). Default: :meth:`describe`."""
        return self.describe()
