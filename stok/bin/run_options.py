"""``python -m stok.bin.run_options --recipe DIR name=value ...``: run.sh's option checks, before any stage runs.

run.sh passes every option it checks as ``name=value`` after its command line is parsed (and the environment is
set up). Every value, and the recipe files the chosen stages read, are checked here, so a mistake is one line,
``run.sh: error: ...`` naming the option and the fix, exit status 1, and nothing is written. Stages are 0..5;
``--stop_stage`` may be larger (Kaldi habit: run to the end) but not below ``--stage``. The S3Tokenizer versions
are :data:`stok.models.s3.config.VERSIONS` (read from that module's file, without importing the model package
and torch, so that this check takes a fraction of a second). With ``--launcher slurm`` the Slurm settings of the
recipe's ``conf/cmd.sh`` are checked too (:class:`stok.launch.settings.SlurmSettings`), and sbatch must be on PATH.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from typing import Dict, List, Optional, Tuple

import stok
from stok.core.errors import UserError
from stok.core.settings import SettingsError
from stok.launch.settings import LAUNCHERS, SlurmSettings

STAGES = 5
#: (option, smallest value) of run.sh's whole-number options, in the order they are checked
WHOLE_NUMBERS = (("nj", 1), ("ngpu", 0), ("num_workers", 0), ("train_nj", 1), ("n_clusters", 1), ("st_n_q", 0),
                 ("shar_shard_size", 1))
TEACHERS = ("mfcc", "hubert")
_WHOLE = re.compile(r"^[0-9]+$")
_FRACTION = re.compile(r"^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")


def s3_versions() -> Tuple[str, ...]:
    """:data:`stok.models.s3.config.VERSIONS`, read from ``stok/models/s3/config.py`` alone (that file imports
    only the standard library; importing it as ``stok.models.s3.config`` would import torch with its package)."""
    path = os.path.join(os.path.dirname(stok.__file__), "models", "s3", "config.py")
    spec = importlib.util.spec_from_file_location("_stok_s3_config", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return tuple(module.VERSIONS)


def one_of(values) -> str:
    values = list(values)
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


def _whole(opts: Dict[str, str], name: str, low: int) -> int:
    value = opts.get(name, "")
    if not _WHOLE.match(value):
        raise UserError(f"--{name} {value} is not a whole number (see run.sh --help)")
    if int(value) < low:
        raise UserError(f"--{name} {value} must be at least {low}")
    return int(value)


def _in_range(opts: Dict[str, str], first: int, last: int) -> bool:
    """Whether stage ``first..last`` runs."""
    return int(opts["stage"]) <= last and int(opts["stop_stage"]) >= first


def check_values(opts: Dict[str, str]) -> None:
    stage, stop = _whole(opts, "stage", 0), _whole(opts, "stop_stage", 0)
    if stage > STAGES:
        raise UserError(f"--stage {stage} is out of range: the stages are 0..{STAGES}")
    if stop < stage:
        raise UserError(f"--stop_stage {stop} is below --stage {stage}: nothing would run")
    for name, low in WHOLE_NUMBERS:
        _whole(opts, name, low)
    if opts.get("shar") not in ("true", "false"):
        raise UserError(f"--shar {opts.get('shar')}: use true or false")
    if opts.get("teacher") not in TEACHERS:
        raise UserError(f"--teacher {opts.get('teacher')}: use {one_of(TEACHERS)}")
    versions = s3_versions()
    if opts.get("s3_version") not in versions:
        raise UserError(f"--s3_version {opts.get('s3_version')}: use {one_of(versions)}")
    p = opts.get("km_percent", "")
    if not (_FRACTION.match(p) and 0 < float(p) <= 1):
        raise UserError(f"--km_percent {p} must be a fraction in (0, 1] (0.1 = 10%)")


def check_recipe(opts: Dict[str, str], recipe: str) -> None:
    if _in_range(opts, 0, 0) and not os.path.isfile(os.path.join(recipe, "local", "data.sh")):
        raise UserError(f"{recipe}/local/data.sh not found: stage 0 runs the recipe's data preparation (start at "
                        "--stage 1 to skip it)")
    conf = opts.get("train_config", "")
    path = conf if conf.startswith("/") else f"{recipe}/{conf}"
    if _in_range(opts, 3, 3) and not os.path.isfile(path):
        raise UserError(f"--train_config {conf}: {path} not found (stage 3 reads it; a recipe keeps it in conf/)")


def slurm_settings(opts: Dict[str, str], recipe: str) -> SlurmSettings:
    """The recipe's Slurm settings (``slurm_*`` of its conf/cmd.sh and the command line), checked."""
    names = {f.metadata["flag"]: f for f in SlurmSettings.__dataclass_fields__.values()}
    missing = [n for n in names if n not in opts]
    if missing:
        raise UserError(f"--launcher slurm: {recipe}/conf/cmd.sh does not set {', '.join(missing)}; the Slurm "
                        "resources live there (copy recipes/demo/conf/cmd.sh and adapt it)")
    values = {}
    for flag, f in names.items():
        value = opts[flag]
        if f.type in (int, "int"):
            if not _WHOLE.match(value):
                raise UserError(f"--{flag} {value} is not a whole number")
            values[f.name] = int(value)
        else:
            values[f.name] = value
    settings = SlurmSettings(**values)
    settings.check()
    for stage in range(STAGES + 1):
        settings.for_stage(opts.get(f"slurm_stage{stage}", ""), f"--slurm_stage{stage}")
    return settings


def check(opts: Dict[str, str], recipe: str) -> Optional[SlurmSettings]:
    check_values(opts)
    check_recipe(opts, recipe)
    launcher = opts.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher {launcher}: use {one_of(LAUNCHERS)} (a recipe sets it in conf/cmd.sh)")
    if launcher != "slurm":
        return None
    settings = slurm_settings(opts, recipe)
    if shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: sbatch not found on PATH; run on a Slurm login node (or use "
                        "--launcher local)")
    return settings


def parse(argv: List[str]) -> Tuple[str, Dict[str, str]]:
    if len(argv) < 2 or argv[0] != "--recipe":
        raise UserError("usage: python -m stok.bin.run_options --recipe DIR name=value ...")
    opts = {}
    for item in argv[2:]:
        name, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"{item!r} is not name=value")
        opts[name] = value
    return argv[1], opts


def main(argv: Optional[List[str]] = None) -> None:
    try:
        recipe, opts = parse(list(sys.argv[1:] if argv is None else argv))
        check(opts, recipe)
    except (UserError, SettingsError) as e:
        raise SystemExit(f"run.sh: error: {' '.join(str(e).split())}") from None


if __name__ == "__main__":
    main()
