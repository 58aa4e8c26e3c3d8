"""Training configuration for SpeechTokenizer (stage 3), read from a recipe's YAML file.

The YAML file has one section per dataclass below::

    model:   {...}        # SpeechTokenizerConfig fields, exactly the released config.json names
    loss:    {...}        # LossConfig
    disc:    {...}        # DiscConfig
    optim:   {...}        # OptimConfig
    data:    {...}        # DataConfig
    sched:   {...}        # ScheduleConfig (steps, validation, checkpoints, logging)
    teacher: {...}        # TeacherConfig (dumped features/labels, or an online teacher)

Unknown keys are errors (a typo must not silently fall back to a default). The defaults are the
released trainer's (``speechtokenizer`` 2024 ``spt_base_cfg.json``) unless a comment says otherwise.
``--set section.key=value`` on the command line overrides single values (the value is parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from stok.core.errors import UserError
from stok.models.speechtokenizer.mel import MelSettings


class ConfigError(UserError, ValueError):
    """A bad training configuration; the message names the key."""


@dataclass
class LossConfig(MelSettings):
    # the mel_* fields (multi-resolution log-mel L1) come from MelSettings
    recon_lambda: float = 500.0  # time-domain L1
    commit_lambda: float = 10.0
    distill_lambda: float = 120.0
    distill_type: str = "d_axis"  # d_axis | t_axis | kmeans
    lambda_sim: float = 1.0  # t_axis: weight of the cosine term next to L1
    n_units: int = 0  # kmeans: number of k-means clusters (labels in [0, n_units))
    adv_type: str = "lsgan"  # lsgan (released) | hinge (paper)
    adv_lambda: float = 1.0
    feat_lambda: float = 2.0  # feature matching (the released code multiplies by 2 inside)
    feat_norm: bool = False  # paper: each layer's L1 divided by mean |D(x)| of that layer

    def check(self) -> None:
        if self.distill_type not in ("d_axis", "t_axis", "kmeans"):
            raise ConfigError(f"loss.distill_type must be d_axis, t_axis or kmeans, got {self.distill_type!r}")
        if self.distill_type == "kmeans" and self.n_units <= 0:
            raise ConfigError("loss.distill_type kmeans needs loss.n_units (the number of k-means clusters)")
        if self.adv_type not in ("lsgan", "hinge"):
            raise ConfigError(f"loss.adv_type must be lsgan or hinge, got {self.adv_type!r}")
        if not self.mel_lambdas:
            raise ConfigError("loss.mel_lambdas must list at least one resolution")
        if self.mel_n_fft >> (len(self.mel_lambdas) - 1) < 16:
            raise ConfigError("loss.mel_n_fft is too small for that many resolutions")


@dataclass
class DiscConfig:
    mpd: bool = True
    mpd_periods: List[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    msd: bool = True
    msd_scales: int = 3
    mstft: bool = True
    mstft_filters: int = 32
    mstft_n_ffts: List[int] = field(default_factory=lambda: [1024, 2048, 512, 256, 128])
    mstft_hops: Optional[List[int]] = None  # None: n_fft // 4
    width: float = 1.0  # scales MPD/MSD channel counts (1.0: the released 32..1024); small values for tiny runs
    # the discriminators train, and the adversarial and feature-matching losses count, from this step on; before it
    # the generator learns from mel + time L1 + commitment + distillation alone (0: from the first step, as released)
    start_step: int = 0

    def check(self) -> None:
        if not (self.mpd or self.msd or self.mstft):
            raise ConfigError("disc: at least one of mpd, msd, mstft must be true")
        if self.mstft_hops is not None and len(self.mstft_hops) != len(self.mstft_n_ffts):
            raise ConfigError("disc.mstft_hops must have one hop per n_fft")
        if not 0 < self.width <= 4:
            raise ConfigError("disc.width must be in (0, 4]")
        if self.start_step < 0:
            raise ConfigError("disc.start_step must be >= 0")


@dataclass
class OptimConfig:
    optimizer: str = "adam"  # adam | adamw
    lr: float = 1e-4
    disc_lr: Optional[float] = None  # None: same as lr
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # cosine | constant
    warmup_steps: int = 0  # linear warm-up from 0 (none in the released trainer)
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: Optional[float] = None  # max global grad norm (None: no clipping, as released)
    amp: str = "none"  # none | bf16 | fp16 (GPU only; ignored with a warning on CPU)
    ema_decay: Optional[float] = None  # generator weight EMA (None: off, as released)

    def check(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optim.optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.scheduler not in ("cosine", "constant"):
            raise ConfigError(f"optim.scheduler must be cosine or constant, got {self.scheduler!r}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"optim.amp must be none, bf16 or fp16, got {self.amp!r}")
        if len(self.betas) != 2:
            raise ConfigError("optim.betas must be two numbers")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError("optim.ema_decay must be in (0, 1)")


@dataclass
class DataConfig:
    sample_rate: int = 16000
    segment_seconds: float = 3.0  # random crop length; shorter utterances are padded (and masked)
    batch_size: int = 6  # per process
    num_workers: int = 2
    min_seconds: float = 0.0  # drop shorter training utterances
    dev_seconds: float = 30.0  # each dev utterance is cut to its first dev_seconds (released: 30 s)
    dev_max_utts: int = 0  # 0: all dev utterances
    dev_batch_size: int = 1
    dev_holdout: int = 0  # without --dev_dir: hold out this many training utterances (deterministic)
    hop: int = 320  # samples per codec frame; must equal the product of the model strides

    def check(self) -> None:
        if self.segment_seconds <= 0 or self.batch_size <= 0:
            raise ConfigError("data.segment_seconds and data.batch_size must be positive")


@dataclass
class ScheduleConfig:
    seed: int = 1234
    max_steps: int = 0  # 0: epochs x batches per epoch
    epochs: int = 10
    log_every: int = 100  # TensorBoard scalars
    stdout_every: int = 10
    valid_every: int = 2500
    valid_at_start: bool = False  # validate before the first step (the demo prints the first dev mel)
    save_every: int = 2500
    keep_last: int = 6
    keep_best: int = 1
    n_dev_samples: int = 8  # dev audio samples and mel images written to TensorBoard
    export_from: str = "best"  # best (lowest dev mel) | final
    guard_buffers: bool = True  # restore the generator's buffers (codebooks) when a step is skipped

    def check(self) -> None:
        if self.export_from not in ("best", "final"):
            raise ConfigError("sched.export_from must be best or final")
        if self.max_steps < 0 or self.epochs <= 0:
            raise ConfigError("sched.max_steps must be >= 0 and sched.epochs > 0")
        for name in ("log_every", "stdout_every", "valid_every", "save_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"sched.{name} must be positive")
        if self.keep_last < 1:
            raise ConfigError("sched.keep_last must be at least 1 (resume needs the latest checkpoint)")


@dataclass
class TeacherConfig:
    # features: a dumped teacher feature scp (stage 1); labels: k-means labels scp (stage 2);
    # online: compute the teacher inside the step (kind hubert or mfcc)
    source: str = "features"
    online_kind: str = "hubert"
    online_checkpoint: Optional[str] = None  # HuBERT weights (file, HF dir, or bundle name)
    online_layer: str = "avg"  # "avg" or a 1-based layer number, as stage 1's --layer
    online_opts: Dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.source not in ("features", "labels", "online"):
            raise ConfigError(f"teacher.source must be features, labels or online, got {self.source!r}")


@dataclass
class TrainConfig:
    model: Dict[str, Any] = field(default_factory=dict)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sched: ScheduleConfig = field(default_factory=ScheduleConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def check(self) -> None:
        for sec in (self.loss, self.disc, self.optim, self.data, self.sched, self.teacher):
            sec.check()
        if self.loss.distill_type == "kmeans" and self.teacher.source != "labels":
            raise ConfigError("loss.distill_type kmeans needs teacher.source labels (a k-means labels scp)")
        if self.teacher.source == "labels" and self.loss.distill_type != "kmeans":
            raise ConfigError("teacher.source labels needs loss.distill_type kmeans")
        strides = self.model.get("strides")
        if strides:
            hop = 1
            for s in strides:
                hop *= int(s)
            if hop != self.data.hop:
                raise ConfigError(f"data.hop {self.data.hop} differs from the product of model.strides ({hop})")
        rate = self.model.get("sample_rate")
        if rate and int(rate) != self.data.sample_rate:
            raise ConfigError(f"data.sample_rate {self.data.sample_rate} differs from model.sample_rate {rate}")

    def model_config(self):
        """The :class:`SpeechTokenizerConfig` of the ``model`` section (errors name unknown fields)."""
        from stok.models.speechtokenizer import SpeechTokenizerConfig

        try:
            return SpeechTokenizerConfig(**self.model)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from e

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


_SECTIONS = {"loss": LossConfig, "disc": DiscConfig, "optim": OptimConfig, "data": DataConfig,
             "sched": ScheduleConfig, "teacher": TeacherConfig}


def _build(cls, values: Dict[str, Any], where: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    return cls(**{k: _coerce(v, types[k], f"{where}.{k}") for k, v in values.items()})


def _coerce(value: Any, typ: str, where: str) -> Any:
    """YAML reads ``2e-4`` as a string and ``1`` as an int: convert to the declared float/int types."""
    if value is None:
        return None
    try:
        if typ in ("float", "Optional[float]") and isinstance(value, (str, int)) and not isinstance(value, bool):
            return float(value)
        if typ in ("int", "Optional[int]") and isinstance(value, str):
            return int(value)
        if typ == "List[float]" and isinstance(value, list):
            return [float(v) for v in value]
        if typ == "List[int]" and isinstance(value, list):
            return [int(v) for v in value]
    except ValueError:
        raise ConfigError(f"{where}: expected {typ}, got {value!r}")
    return value


def from_dict(d: Dict[str, Any]) -> TrainConfig:
    d = dict(d or {})
    unknown = sorted(set(d) - set(_SECTIONS) - {"model"})
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: model, {', '.join(_SECTIONS)}")
    model = d.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError("model must be a mapping of SpeechTokenizer config.json fields")
    cfg = TrainConfig(model=dict(model), **{k: _build(c, d.get(k), k) for k, c in _SECTIONS.items()})
    cfg.check()
    return cfg


def apply_overrides(d: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """``section.key=value`` strings (value parsed as YAML) applied to a raw config dict."""
    d = json.loads(json.dumps(d or {}))
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set wants section.key=value, got {item!r}")
        path, value = item.split("=", 1)
        section, key = path.split(".", 1)
        d.setdefault(section, {})
        if d[section] is None:
            d[section] = {}
        if not isinstance(d[section], dict):
            raise ConfigError(f"--set {item}: section {section} is not a mapping in the config")
        try:
            d[section][key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: the value {value!r} is not valid YAML (quote it)") from None
    return d


def _read_yaml(path: str) -> Any:
    """The YAML document of ``path``; a missing, unreadable or malformed file names itself (and the line)."""
    if os.path.isdir(path):
        raise ConfigError(f"--config {path} is a directory; give the training YAML file (e.g. conf/train.yaml)")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path} not found (a recipe keeps it in conf/train.yaml)") from None
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path} is not a text (YAML) file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({what}); fix the file") from None


def load_config(path: Optional[str], overrides: Optional[List[str]] = None) -> TrainConfig:
    raw: Dict[str, Any] = {}
    if path:
        raw = _read_yaml(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return from_dict(apply_overrides(raw, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{path or '<defaults>'}: {e}") from e
