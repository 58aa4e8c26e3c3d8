"""Stage 1 teachers as dump-engine models: HuBERT (one layer or the layer average) or weight-free MFCC.

:class:`TeacherSettings` holds the options (command line and YAML alike); ``build_teacher(settings, device)`` returns a
:class:`~stok.core.model_api.DumpModel` whose ``encode`` gives one float32 ``[T, D]`` array per utterance with
``T = codec_frames(num_samples)`` (:mod:`stok.core.frames`: HuBERT's and the MFCC's ``floor((n-400)/320)+1``
frames, padded by repeating the last row to ``ceil(n / 320)``). The same object serves other callers:

- ``teacher.extract(wav [B, T], lengths [B])`` -> list of aligned ``[T_i, D]`` float32 tensors on the device
  (the trainer's online teacher; k-means labels straight from audio);
- ``teacher.extract_waves([w1, w2, ...])`` for a list of 1-D waveforms.

In code: ``build_teacher(TeacherSettings(teacher="hubert", checkpoint="hubert_base_ls960.pt", layer="9"), "cuda")``,
or ``build_teacher("mfcc")``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from stok.core.frames import HOP, align_teacher, codec_frames
from stok.core.model_api import DumpModel, TooShort
from stok.core.settings import Settings, SettingsError, setting
from stok.models.hubert import FORMATS as HUBERT_FORMATS
from stok.models.hubert.configs import CONFIG_NAMES as HUBERT_CONFIG_NAMES

log = logging.getLogger("stok.teacher")
TEACHERS = ("hubert", "mfcc")
MIN_SAMPLES = 400  # one HuBERT/MFCC frame


@dataclass
class TeacherSettings(Settings):
    """What a stage 1 teacher takes: ``--teacher ...`` options of the dump tools, ``teacher.online_*`` in YAML."""

    teacher: str = setting("hubert", choices=TEACHERS,
                           help="hubert (needs --checkpoint) or mfcc (39-dim MFCC + deltas at 50 Hz, no weights)")
    checkpoint: Optional[str] = setting(
        None, help="HuBERT weights: a fairseq .pt, a Hugging Face dir (config.json + pytorch_model.bin or "
                   "model.safetensors), a torchaudio state dict, or a torchaudio bundle name (HUBERT_BASE ...)")
    checkpoint_format: str = setting(
        "auto", choices=HUBERT_FORMATS,
        help="how to read --checkpoint (auto: a dir is hf, a bare name a bundle, a file is inspected)")
    hubert_config: str = setting(
        "auto", choices=("auto",) + HUBERT_CONFIG_NAMES,
        help="architecture for what the checkpoint does not say (heads, pre/post-LN); auto: its own config, else "
             "the preset of the same width")
    layer: str = setting(
        "avg", help="HuBERT output: a 1-based transformer layer (9: fairseq output_layer=9) or avg (mean of all "
                    "hidden states incl. the transformer input: the released SpeechTokenizer's teacher)")
    normalize_waveform: str = setting(
        "auto", choices=("auto", "true", "false"),
        help="normalise each waveform to zero mean, unit variance first (auto: as the checkpoint says; fairseq "
             "task.normalize, HF do_normalize; else true for large/xlarge, false for base)")
    max_chunk_seconds: float = setting(
        100.0, minimum=0, help="longer inputs go through HuBERT in frame-aligned chunks of at most this length "
                               "(fairseq max_chunk: 100 s); 0: whole files")
    dtype: str = setting("float32", choices=("float32", "float16", "bfloat16"),
                         help="HuBERT compute precision (features are stored as float32 either way): on GPUs autocast; on "
                              "CPU bfloat16 multiplies the transformer's Linear layers in bfloat16 and needs bfloat16 "
                              "dot products (AVX-512 BF16 or AMX; refused elsewhere)")
    frontend: str = setting(
        "auto", choices=("auto", "per_item", "batched"),
        help="HuBERT conv front end: per utterance, or batched with per-utterance GroupNorm statistics (both "
             "exact; auto: batched on CUDA)")

    def validate(self) -> None:
        if self.teacher == "hubert" and not self.checkpoint:
            raise SettingsError(f"{self.setting_name('teacher')} hubert needs {self.setting_name('checkpoint')} (a "
                                "fairseq .pt such as hubert_base_ls960.pt, a Hugging Face dir, a torchaudio state "
                                f"dict, or a bundle name like HUBERT_BASE); {self.setting_name('teacher')} mfcc needs "
                                "no weights")


class Teacher(DumpModel):
    """Shared parts: frame alignment, ``encode`` and ``extract`` over :meth:`features`."""

    sample_rate = 16000
    min_samples = MIN_SAMPLES
    float_output = True
    # on CPU HuBERT's matrix products are as fast one utterance at a time as in batches, and batches of many frames
    # only add padding and memory traffic (measured, HuBERT base, 2 cores: 20 s batches as fast as one at a time,
    # 80 s batches 15% slower)
    batch_seconds = {"cpu": 20.0, "cuda": 240.0}
    name = "teacher"
    dim = 0

    def num_frames(self, num_samples: int) -> int:
        return num_samples

    def features(self, waves: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        raise NotImplementedError

    def extract_waves(self, waves: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Aligned ``[codec_frames(n), D]`` float32 features of 1-D waveforms (a long one, :meth:`is_long`, is
        gathered block by block into its output)."""
        out: List[Optional[torch.Tensor]] = [None] * len(waves)
        whole = [i for i, w in enumerate(waves) if not self.is_long(w.numel())]
        if whole:
            for i, f in zip(whole, self.features([waves[i] for i in whole])):
                out[i] = align_teacher(f, codec_frames(waves[i].numel(), HOP))
        for i, w in enumerate(waves):
            if out[i] is None:
                at = 0
                for f in self.feature_blocks(w):
                    if out[i] is None:
                        out[i] = f.new_empty(codec_frames(w.numel(), HOP), f.shape[1])
                    out[i][at: at + f.shape[0]] = f
                    at += f.shape[0]
        return out

    def extract(self, wav: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Aligned features of a padded batch ``[B, T]`` (or ``[B, 1, T]``) with valid ``lengths``."""
        if wav.dim() == 3:
            wav = wav[:, 0]
        if wav.dim() == 1:
            wav = wav[None]
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[-1], dtype=torch.long)
        return self.extract_waves([wav[i, : int(n)] for i, n in enumerate(lengths.tolist())])

    __call__ = extract

    def is_long(self, num_samples: int) -> bool:
        """Whether the teacher computes an input of ``num_samples`` samples in several blocks
        (:meth:`feature_blocks`); such an input is best consumed block by block."""
        return False

    def _raw_blocks(self, wave: torch.Tensor) -> Iterator[torch.Tensor]:
        """Unaligned features of one waveform in consecutive blocks (default: one block)."""
        yield self.features([wave])[0]

    @torch.no_grad()
    def feature_blocks(self, wave: torch.Tensor) -> Iterator[torch.Tensor]:
        """The aligned features of one 1-D waveform (``extract_waves([wave])[0]``) as consecutive row blocks, so a
        long input's features need not be held whole (k-means labels straight from audio)."""
        want, have, last = codec_frames(wave.numel(), HOP), 0, None
        for f in self._raw_blocks(wave):
            f = f[: max(0, want - have)]
            if f.shape[0]:
                yield f
                have, last = have + f.shape[0], f[-1:]
        if have < want:
            if last is None:
                raise ValueError(f"no teacher frames to pad to {want}")
            yield last.expand(want - have, last.shape[1])

    @torch.no_grad()
    def encode(self, padded: torch.Tensor, lengths: torch.Tensor) -> List[np.ndarray]:
        return [f.float().cpu().numpy() for f in self.extract(padded, lengths)]


class HubertTeacher(Teacher):
    name = "hubert"

    def __init__(self, extractor):
        self.extractor = extractor
        self.dim = extractor.dim

    def to(self, device) -> "HubertTeacher":
        self.extractor.to(device)
        return self

    def set_fast_cpu(self, enabled: bool) -> None:
        self.extractor.set_fast_cpu(enabled)

    @property
    def device(self) -> torch.device:
        return self.extractor.device

    def parameters(self):
        return self.extractor.model.parameters()

    def eval(self):
        return self

    def features(self, waves):
        return self.extractor.extract(waves)

    def is_long(self, num_samples: int) -> bool:
        return 0 < self.extractor.max_chunk < max(num_samples, 400)

    def _raw_blocks(self, wave: torch.Tensor) -> Iterator[torch.Tensor]:
        return self.extractor.extract_blocks(wave)

    def describe(self) -> dict:
        return {"model": "hubert", "frame_rate": self.sample_rate / HOP, "frames": "ceil(samples/320)",
                **self.extractor.describe()}

    def fingerprint(self) -> dict:
        """What a resumed feature dump must share: every setting that changes the features and the checksum of
        the weights (not their path or the front-end mode, which gives the same features)."""
        from stok.core.checksums import weights_checksum

        d = self.describe()
        keep = ("model", "frame_rate", "layer", "num_layers", "dim", "normalize", "max_chunk", "dtype", "architecture",
                "cpu_precision")  # cpu_precision: only in CPU bfloat16 runs
        return {**{k: d[k] for k in keep if k in d}, "weights_sha256": weights_checksum(self.extractor.loaded.source)}


class MfccTeacher(Teacher):
    """MFCCs computed in the DataLoader workers (``prepare``); ``encode`` only unpads them."""

    name = "mfcc"

    def __init__(self, device: Union[str, torch.device] = "cpu"):
        from stok.models.mfcc import DIM

        self.dim = DIM
        self._device = torch.device(device)

    def to(self, device) -> "MfccTeacher":
        self._device = torch.device(device)
        return self

    @property
    def device(self) -> torch.device:
        return self._device

    def parameters(self):
        return iter(())

    def eval(self):
        return self

    def features(self, waves):
        from stok.models.mfcc import mfcc_features

        return [mfcc_features(w.float().cpu(), self.sample_rate).to(self._device) for w in waves]

    def prepare(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.numel() < self.min_samples:
            raise TooShort(f"{wave.numel()} samples < {self.min_samples} needed for one frame")
        from stok.models.mfcc import mfcc_features

        # on the CPU of a DataLoader worker (never the model's device: CUDA does not survive a fork)
        feats = align_teacher(mfcc_features(wave, self.sample_rate), codec_frames(wave.numel(), HOP))
        return feats.T.contiguous()  # [39, frames]: the engine pads the last axis

    @torch.no_grad()
    def encode(self, padded: torch.Tensor, lengths: torch.Tensor) -> List[np.ndarray]:
        return [padded[i, :, : int(n)].T.float().cpu().numpy() for i, n in enumerate(lengths.tolist())]

    def describe(self) -> dict:
        return {"model": "mfcc", "dim": self.dim, "frame_rate": self.sample_rate / HOP, "window": 400, "hop": HOP,
                "frames": "ceil(samples/320)", "recipe": "kaldi mfcc 13 + deltas + delta-deltas (fairseq, but 50 Hz)"}


def build_teacher(settings: Union[TeacherSettings, str], device: Union[str, torch.device, None] = "cpu") -> Teacher:
    """A :class:`Teacher` on ``device`` from its settings (or a teacher name with default settings: ``"mfcc"``).
    Errors name the settings as the user wrote them (``--layer`` on the command line, ``teacher.online_layer``
    in a YAML config)."""
    s = TeacherSettings(teacher=settings) if isinstance(settings, str) else settings
    s.check()
    device = torch.device(device if device is not None else "cpu")
    if s.teacher == "mfcc":
        return MfccTeacher(device)
    from stok.models.hubert import load_hubert
    from stok.models.hubert.configs import describe_config
    from stok.models.hubert.extract import HubertExtractor, parse_layer

    loaded = load_hubert(s.checkpoint, s.checkpoint_format, s.hubert_config)
    layer = parse_layer(s.layer, len(loaded.model.encoder.transformer.layers), s.setting_name("layer"))
    normalize = {"auto": None, "true": True, "false": False}[s.normalize_waveform]
    ext = HubertExtractor(loaded, layer=layer, normalize=normalize, max_chunk=int(round(s.max_chunk_seconds * 16000)),
                          dtype=s.dtype, frontend=s.frontend)
    if device.type == "cpu" and ext.dtype == torch.float16:
        log.warning("%s float16 on CPU is slow; use bfloat16 or float32", s.setting_name("dtype"))
    log.info("HuBERT teacher: %s (%s, %s), layer %s, waveform normalisation %s", loaded.source, loaded.fmt,
             describe_config(loaded.config), ext.layer, ext.normalize)
    return HubertTeacher(ext).to(device)
