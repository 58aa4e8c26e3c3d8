"""Training configuration for SpeechTokenizer (stage 3), read from a recipe's YAML file.

The YAML file has one section per dataclass below::

    model:   {...}        # SpeechTokenizerConfig fields, exactly the released config.json names
    loss:    {...}        # LossConfig
    disc:    {...}        # DiscConfig
    optim:   {...}        # OptimConfig
    data:    {...}        # DataConfig
    sched:   {...}        # ScheduleConfig (steps, validation, checkpoints, logging)
    teacher: {...}        # TeacherConfig (dumped features/labels, or an online teacher)

Each section is a typed settings class (:class:`stok.core.settings.Settings`: ``Settings.from_dict`` builds it,
converting YAML's strings and ints to the declared types; choices and lower bounds are checked and errors name
``section.key``). Unknown keys are errors (a typo must not silently fall back to a default). The defaults are the
released trainer's (``speechtokenizer`` 2024 ``spt_base_cfg.json``) unless a help text says otherwise.
``--set section.key=value`` on the command line overrides single values (the value is parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from stok.core.settings import Settings, SettingsError, setting
from stok.models.speechtokenizer.mel import MelSettings


#: a bad training configuration; the message names the key (the core settings error: one type for every setting)
ConfigError = SettingsError


@dataclass
class LossConfig(MelSettings, Settings):
    # the mel_* fields (multi-resolution log-mel L1) come from MelSettings
    recon_lambda: float = setting(500.0, help="weight of the time-domain L1")
    commit_lambda: float = setting(10.0, help="weight of the RVQ commitment loss")
    distill_lambda: float = setting(120.0, help="weight of the semantic distillation of RVQ-1")
    distill_type: str = setting("d_axis", choices=("d_axis", "t_axis", "kmeans"),
                                help="d_axis (released), t_axis, or kmeans (cross-entropy on k-means labels)")
    lambda_sim: float = setting(1.0, help="t_axis: weight of the cosine term next to L1")
    n_units: int = setting(0, help="kmeans: number of k-means clusters (labels in [0, n_units))")
    adv_type: str = setting("lsgan", choices=("lsgan", "hinge"), help="lsgan (released) or hinge (paper)")
    adv_lambda: float = setting(1.0, help="weight of the adversarial loss")
    feat_lambda: float = setting(2.0, help="feature matching (the released code multiplies by 2 inside)")
    feat_norm: bool = setting(False, help="paper: each layer's L1 divided by mean |D(x)| of that layer")

    def validate(self) -> None:
        if self.distill_type == "kmeans" and self.n_units <= 0:
            raise ConfigError("loss.distill_type kmeans needs loss.n_units (the number of k-means clusters)")
        if not self.mel_lambdas:
            raise ConfigError("loss.mel_lambdas must list at least one resolution")
        if self.mel_n_fft >> (len(self.mel_lambdas) - 1) < 16:
            raise ConfigError("loss.mel_n_fft is too small for that many resolutions")


@dataclass
class DiscConfig(Settings):
    mpd: bool = setting(True, help="multi-period discriminator")
    mpd_periods: List[int] = setting(default_factory=lambda: [2, 3, 5, 7, 11], help="MPD periods")
    msd: bool = setting(True, help="multi-scale discriminator")
    msd_scales: int = setting(3, minimum=1, help="MSD scales")
    mstft: bool = setting(True, help="multi-scale STFT discriminator")
    mstft_filters: int = setting(32, minimum=1, help="MS-STFT channels")
    mstft_n_ffts: List[int] = setting(default_factory=lambda: [1024, 2048, 512, 256, 128], help="MS-STFT n_fft")
    mstft_hops: Optional[List[int]] = setting(None, help="MS-STFT hops (None: n_fft // 4)")
    width: float = setting(1.0, help="scales MPD/MSD channel counts (1.0: the released 32..1024); small values for "
                                     "tiny runs")
    start_step: int = setting(
        0, minimum=0, help="the discriminators train, and the adversarial and feature-matching losses count, from "
                           "this step on; before it the generator learns from mel + time L1 + commitment + "
                           "distillation alone (0: from the first step, as released)")

    def validate(self) -> None:
        if not (self.mpd or self.msd or self.mstft):
            raise ConfigError("disc: at least one of mpd, msd, mstft must be true")
        if self.mstft_hops is not None and len(self.mstft_hops) != len(self.mstft_n_ffts):
            raise ConfigError("disc.mstft_hops must have one hop per n_fft")
        if not 0 < self.width <= 4:
            raise ConfigError("disc.width must be in (0, 4]")


@dataclass
class OptimConfig(Settings):
    optimizer: str = setting("adam", choices=("adam", "adamw"), help="adam (released) or adamw")
    lr: float = setting(1e-4, minimum=0, help="learning rate of the generator")
    disc_lr: Optional[float] = setting(None, minimum=0, help="learning rate of the discriminators (None: lr)")
    betas: List[float] = setting(default_factory=lambda: [0.9, 0.99], help="Adam betas")
    weight_decay: float = setting(0.0, minimum=0, help="weight decay")
    scheduler: str = setting("cosine", choices=("cosine", "constant"), help="learning-rate schedule")
    warmup_steps: int = setting(0, minimum=0, help="linear warm-up from 0 (none in the released trainer)")
    min_lr_ratio: float = setting(0.0, minimum=0, help="cosine floor, as a fraction of lr")
    grad_clip: Optional[float] = setting(None, help="max global grad norm (None: no clipping, as released)")
    amp: str = setting("none", choices=("none", "bf16", "fp16"),
                       help="autocast dtype (GPU only; ignored with a warning on CPU)")
    ema_decay: Optional[float] = setting(None, help="generator weight EMA (None: off, as released)")

    def validate(self) -> None:
        if len(self.betas) != 2:
            raise ConfigError("optim.betas must be two numbers")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError("optim.ema_decay must be in (0, 1)")


@dataclass
class DataConfig(Settings):
    sample_rate: int = setting(16000, minimum=1, help="audio is resampled to this rate")
    segment_seconds: float = setting(3.0, help="random crop length; shorter utterances are padded (and masked)")
    batch_size: int = setting(6, help="utterances per batch, per process")
    num_workers: int = setting(2, minimum=0, help="audio-reading DataLoader workers")
    min_seconds: float = setting(0.0, minimum=0, help="drop shorter training utterances")
    dev_seconds: float = setting(30.0, help="each dev utterance is cut to its first dev_seconds (released: 30 s)")
    dev_max_utts: int = setting(0, minimum=0, help="0: all dev utterances")
    dev_batch_size: int = setting(1, minimum=1, help="dev utterances per batch")
    dev_holdout: int = setting(0, minimum=0, help="without --dev_dir: hold out this many training utterances "
                                                  "(deterministic)")
    hop: int = setting(320, minimum=1, help="samples per codec frame; must equal the product of the model strides")

    def validate(self) -> None:
        if self.segment_seconds <= 0 or self.batch_size <= 0:
            raise ConfigError("data.segment_seconds and data.batch_size must be positive")


@dataclass
class ScheduleConfig(Settings):
    seed: int = setting(1234, help="seed of weights, crops and shuffling")
    max_steps: int = setting(0, help="0: epochs x batches per epoch")
    epochs: int = setting(10, help="epochs when max_steps is 0")
    log_every: int = setting(100, help="TensorBoard scalars every N steps")
    stdout_every: int = setting(10, help="progress-bar losses every N steps")
    valid_every: int = setting(2500, help="validate every N steps")
    valid_at_start: bool = setting(False, help="validate before the first step (the demo prints the first dev mel)")
    save_every: int = setting(2500, help="checkpoint every N steps")
    keep_last: int = setting(6, help="keep the N newest checkpoints")
    keep_best: int = setting(1, minimum=0, help="and the N with the lowest dev mel")
    n_dev_samples: int = setting(8, minimum=0, help="dev audio samples and mel images written to TensorBoard")
    export_from: str = setting("best", help="best (lowest dev mel) or final")
    guard_buffers: bool = setting(True, help="restore the generator's buffers (codebooks) when a step is skipped")

    def validate(self) -> None:
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
class TeacherConfig(Settings):
    source: str = setting("features", choices=("features", "labels", "online"),
                          help="features: a dumped teacher feature scp (stage 1); labels: k-means labels scp "
                               "(stage 2); online: compute the teacher inside the step (kind hubert or mfcc)")
    online_kind: str = setting("hubert", help="online teacher: hubert or mfcc")
    online_checkpoint: Optional[str] = setting(None, help="HuBERT weights (file, HF dir, or bundle name)")
    online_layer: str = setting("avg", help='"avg" or a 1-based layer number, as stage 1\'s --layer')
    online_opts: Dict[str, Any] = setting(default_factory=dict, help="more stage 1 teacher settings")


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
        for name in _SECTIONS:
            getattr(self, name).named(name).check()
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


def _section(cls, values: Any, name: str):
    """One YAML section through :meth:`Settings.from_dict` (unknown keys refused, YAML strings converted)."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{name} must be a mapping, got {type(values).__name__}")
    return cls.from_dict(values, prefix=name)


def from_dict(d: Dict[str, Any]) -> TrainConfig:
    d = dict(d or {})
    unknown = sorted(set(d) - set(_SECTIONS) - {"model"})
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: model, {', '.join(_SECTIONS)}")
    model = d.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError("model must be a mapping of SpeechTokenizer config.json fields")
    cfg = TrainConfig(model=dict(model), **{k: _section(c, d.get(k), k) for k, c in _SECTIONS.items()})
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
