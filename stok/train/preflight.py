"""Checks ``stok-train`` makes before it creates or changes anything in the experiment dir.

- ``--exp_dir`` must be (or be creatable as) a writable directory.
- A dir that already holds a training run (checkpoints, or an exported model) is continued only with
  ``--resume``; a fresh run there would mix two runs' checkpoints, logs and export, so it is refused.
- ``--resume`` refuses a config that differs from the one the checkpoint was trained with, naming each changed
  key; only bookkeeping (logging, validation and checkpoint intervals, retention, workers, export choice) and
  the run's length (``sched.max_steps``/``epochs``, ``--max_steps``: training may be extended) may change.
- A checkpoint that cannot be read is named, with the way out (remove it to resume from the one before).

:func:`tidy_logs` then (after every check, and the model build, passed) drops what a killed run left behind
past the resumed step, so ``train_log.jsonl``/``dev_log.jsonl`` hold each step once.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from typing import List, Optional

from stok.core.errors import UserError
from stok.core.fileio import check_output_dir
from stok.core.treediff import changes, show

#: config keys a resumed run may change: they do not change what is trained, only its length and bookkeeping
MAY_CHANGE_ON_RESUME = frozenset({
    "data.num_workers", "sched.max_steps", "sched.epochs", "sched.log_every", "sched.stdout_every",
    "sched.valid_every", "sched.valid_at_start", "sched.save_every", "sched.keep_last", "sched.keep_best",
    "sched.n_dev_samples", "sched.export_from",
})
_CKPT = re.compile(r"^ckpt_(\d+)\.pt$")
LOGS = ("train_log.jsonl", "dev_log.jsonl")


def checkpoints(exp_dir: str) -> List[str]:
    """Checkpoint files of ``exp_dir``, oldest step first."""
    d = os.path.join(exp_dir, "checkpoints")
    if not os.path.isdir(d):
        return []
    found = [(int(m.group(1)), n) for n in os.listdir(d) for m in [_CKPT.match(n)] if m]
    return [os.path.join(d, n) for _, n in sorted(found)]


def config_changes(old: dict, new: dict) -> List[str]:
    """``key old -> new`` for every config value that differs and may not change on resume."""
    return [f"{k} {show(a, quote_strings=True)} -> {show(b, quote_strings=True)}"
            for k, a, b in changes(old, new, ignore=MAY_CHANGE_ON_RESUME, sort=True)]


def read_checkpoint_config(path: str) -> dict:
    """The training config stored in a checkpoint (memory-mapped: the tensors are not read)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes torch raise, the file is the problem
        text = str(e).strip().splitlines()[0].split(". ")[0][:100] if str(e).strip() else ""
        raise UserError(f"{path}: cannot be read ({type(e).__name__}: {text}); remove it to resume from the "
                        "checkpoint before it") from e
    cfg = state.get("config") if isinstance(state, dict) else None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: not a stok training checkpoint (no config); remove it or use another --exp_dir")
    return cfg


def with_defaults(config: dict) -> dict:
    """A checkpoint's config with the defaults of keys added to stok since it was written (a run of an earlier
    stok resumes as it was trained); as stored when it no longer parses."""
    from stok.train.config import ConfigError, from_dict

    try:
        return from_dict(config).to_dict()
    except ConfigError:
        return config


def check_exp_dir(exp_dir: str, config: dict, resume: bool) -> Optional[str]:
    """Run every check on ``exp_dir`` (nothing is written); returns the checkpoint a resume starts from."""
    check_output_dir(exp_dir, "--exp_dir")
    ckpts = checkpoints(exp_dir)
    export = os.path.join(exp_dir, "export", "SpeechTokenizer.pt")
    if not ckpts:
        if os.path.isfile(export):
            raise UserError(f"--exp_dir {exp_dir} holds an exported model ({export}) but no checkpoints to resume "
                            "from; a new run would overwrite it: give a new --exp_dir")
        return None
    if not resume:
        raise UserError(f"--exp_dir {exp_dir} already holds a training run (up to {os.path.basename(ckpts[-1])}); "
                        "add --resume to continue it, or give a new --exp_dir")
    latest = ckpts[-1]
    changed = config_changes(with_defaults(read_checkpoint_config(latest)), config)
    if changed:
        shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise UserError(f"--resume: the config differs from the one {latest} was trained with ({shown}); resume "
                        f"with the same --config and --set values (see {os.path.join(exp_dir, 'train_config.yaml')}),"
                        " or give a new --exp_dir")
    return latest


def tidy_logs(exp_dir: str, resumed_step: Optional[int]) -> None:
    """Drop log lines past ``resumed_step`` (a killed run's tail); a fresh start (None) removes a killed
    run's logs, TensorBoard events and bad-audio list, which no checkpoint belongs to."""
    from stok.core.fileio import atomic_write_text

    if resumed_step is None:
        for name in LOGS + ("bad_audio.list",):
            path = os.path.join(exp_dir, name)
            if os.path.isfile(path):
                os.remove(path)
        tb = os.path.join(exp_dir, "tensorboard")
        if os.path.isdir(tb) and glob.glob(os.path.join(tb, "events.out.tfevents.*")):
            shutil.rmtree(tb)
        return
    for name in LOGS:
        path = os.path.join(exp_dir, name)
        if not os.path.isfile(path):
            continue
        kept, dropped = [], 0
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    step = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    dropped += 1
                    continue
                if step <= resumed_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    dropped += 1
        if dropped:
            atomic_write_text("".join(kept), path)


def _first_entry(ds):
    """The teacher array of a dataset's first utterance; a damaged archive or scp line is named."""
    utt_id = ds.utts.utt_id(0)
    try:
        return ds.read_teacher(0)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged archive or scp line: name it
        raise UserError(f"{ds.teacher_scp}: the entry of {utt_id} cannot be read ({type(e).__name__}: {e}); dump the "
                        "teacher again") from e


def check_teacher(source: str, semantic_dim: int, n_units: int, online_teacher=None, datasets=()) -> None:
    """The teacher (first entry of each dataset's scp, or the online teacher) must fit the model's semantic
    output (``semantic_dim``); k-means labels (``source`` labels) must lie in ``[0, n_units)``."""
    want = semantic_dim
    fix = "set model.semantic_dimension to the teacher's dimension, or use the teacher the config was made for"
    if online_teacher is not None:
        dim = getattr(online_teacher.teacher, "dim", 0)
        if dim and dim != want:
            raise UserError(f"the online teacher gives {dim}-dim features, but model.semantic_dimension is {want}: "
                            f"{fix}")
        return
    labels = source == "labels"
    for ds in datasets:
        if ds is None or not ds.teacher_scp or not len(ds):
            continue
        scp, utt = ds.teacher_scp, ds.utts.utt_id(0)
        arr = _first_entry(ds)
        if labels:
            if arr.ndim != 1:
                raise UserError(f"{scp}: {utt} holds a {list(arr.shape)} matrix, not k-means labels [T]: give the "
                                "stage 2 km_labels.scp, or set teacher.source: features and loss.distill_type: d_axis")
            if arr.size and (arr.min() < 0 or arr.max() >= n_units):
                raise UserError(f"{scp}: {utt} has labels {int(arr.min())}..{int(arr.max())}, but loss.n_units is "
                                f"{n_units}: set loss.n_units to the number of k-means clusters")
        else:
            if arr.ndim != 2:
                raise UserError(f"{scp}: {utt} holds a {list(arr.shape)} array, not teacher features [T, D]; for "
                                "k-means labels set teacher.source: labels and loss.distill_type: kmeans")
            if arr.shape[1] != want:
                raise UserError(f"{scp}: {utt} has {arr.shape[1]}-dim features, but model.semantic_dimension is "
                                f"{want}: {fix}")
