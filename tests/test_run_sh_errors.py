"""run.sh and the recipes' local/data.sh: a wrong option, value or recipe is one line on stderr and exit status 1,
before any stage runs or any file is written (run in a subprocess, on a copy of a recipe)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.user_error_helpers import snapshot


@pytest.fixture
def recipe(tmp_path):
    """A copy of recipes/demo's conf and local (not its corpus), so that nothing lands in the repository."""
    rec = tmp_path / "demo"
    for part in ("conf", "local"):
        shutil.copytree(os.path.join(REPO, "recipes", "demo", part), rec / part)
    return rec


def run_sh(*args, cwd=REPO):
    env = {**os.environ, "STOK_VENV": sys.prefix}
    return subprocess.run(["bash", os.path.join(REPO, "run.sh"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def one_error_line(res) -> str:
    assert res.returncode == 1, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Stage" not in res.stdout
    return lines[0]


@pytest.mark.parametrize("args,expect", [
    (["--no_such_option", "1"], "unknown option --no_such_option"),
    (["--stage"], "option --stage needs a value"),
    (["--stage", "7"], "--stage 7 is out of range: the stages are 0..5"),
    (["--stage", "-1"], "--stage -1 is not a whole number"),
    (["--stage", "two"], "--stage two is not a whole number"),
    (["--stage", "3", "--stop_stage", "1"], "--stop_stage 1 is below --stage 3: nothing would run"),
    (["--nj", "0"], "--nj 0 must be at least 1"),
    (["--ngpu", "x"], "--ngpu x is not a whole number"),
    (["--n_clusters", "0"], "--n_clusters 0 must be at least 1"),
    (["--teacher", "wav2vec"], "--teacher wav2vec: use mfcc or hubert"),
    (["--s3_version", "v4"], "--s3_version v4: use v1_50hz"),
    (["--km_percent", "2"], "--km_percent 2 must be a fraction in (0, 1]"),
    (["--km_percent", "abc"], "--km_percent abc must be a fraction"),
    (["--shar", "yes"], "--shar yes: use true or false"),
    (["--shar_shard_size", "0"], "--shar_shard_size 0 must be at least 1"),
    (["--train_config", "conf/nope.yaml"], "--train_config conf/nope.yaml:"),
    (["extra"], "unexpected argument extra"),
])
def test_bad_options(recipe, args, expect):
    before = snapshot(recipe)
    line = one_error_line(run_sh("--recipe", str(recipe), *args))
    assert expect in line, line
    assert snapshot(recipe) == before


def test_bad_recipe(tmp_path, recipe):
    line = one_error_line(run_sh("--recipe", str(tmp_path / "nowhere")))
    assert "nowhere/conf/corpus.sh not found" in line and "--recipe must be a recipe dir" in line
    line = one_error_line(run_sh("--recipe"))
    assert "option --recipe needs a value" in line
    os.remove(recipe / "local" / "data.sh")
    os.rename(recipe / "conf" / "train.yaml", recipe / "conf" / "train.yml")
    before = snapshot(recipe)
    line = one_error_line(run_sh("--recipe", str(recipe)))
    assert "local/data.sh not found" in line and "--stage 1" in line
    line = one_error_line(run_sh("--recipe", str(recipe), "--stage", "1", "--stop_stage", "3"))
    assert "conf/train.yaml not found" in line and "stage 3" in line
    one_error_line(run_sh("--recipe", str(recipe), "--stage", "1", "--stop_stage", "2", "--nj", "-3"))
    assert snapshot(recipe) == before


def test_missing_corpus_dir_fails_in_stage_0_before_writing(recipe, tmp_path):
    before = snapshot(recipe)
    res = run_sh("--recipe", str(recipe), "--stop_stage", "0", "--corpus_dir", str(tmp_path / "no_corpus"))
    assert res.returncode == 1 and "Stage 0" in res.stdout
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "no_corpus does not exist" in errors[0], res.stderr
    assert snapshot(recipe) == before  # no data/ dir


def test_data_sh_on_its_own(recipe):
    before = snapshot(recipe)
    env = {**os.environ, "STOK_VENV": sys.prefix, "STOK_ROOT": REPO}
    for args, expect in ((["--no_such", "1"], "unknown option --no_such"), (["--output_dir"], "needs a value")):
        res = subprocess.run(["bash", str(recipe / "local" / "data.sh"), *args], env=env, capture_output=True,
                             text=True, timeout=120)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 1 and len(lines) == 1 and expect in lines[0], res.stderr
    assert snapshot(recipe) == before
