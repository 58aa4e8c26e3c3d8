"""The package's layering is a contract: ``lint-imports`` (import-linter) checks it against ``setup.cfg``.

Layers, top to bottom: ``stok.bin`` > ``stok.dump | stok.train | stok.eval`` (independent of each other) >
``stok.models`` > ``stok.data`` > ``stok.core``. The real tree keeps it; a copy of the tree with one upward
import (the base layer reaching into the dump engine) and one sideways import (evaluation reaching into the
trainer) breaks it, and the tool names the offending import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.conftest import REPO

LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(root: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": root}
    return subprocess.run([LINT, "--no-cache", "setup.cfg"], cwd=root, env=env, capture_output=True, text=True)


def test_the_tree_keeps_its_layers():
    r = lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_an_upward_or_sideways_import_breaks_the_contract(tmp_path):
    root = str(tmp_path / "tree")
    shutil.copytree(os.path.join(REPO, "stok"), os.path.join(root, "stok"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "setup.cfg"), root)
    with open(os.path.join(root, "stok", "core", "tables.py"), "a") as f:
        f.write("\nfrom stok.dump import engine  # noqa: E402,F401 - an upward import\n")
    r = lint(root)
    assert r.returncode != 0 and "BROKEN" in r.stdout
    assert "stok.core is not allowed to import stok.dump" in r.stdout
    assert "stok.core.tables -> stok.dump" in r.stdout

    with open(os.path.join(root, "stok", "core", "tables.py"), "w") as f:  # undo; then a sideways import
        f.write(open(os.path.join(REPO, "stok", "core", "tables.py")).read())
    with open(os.path.join(root, "stok", "eval", "metrics.py"), "a") as f:
        f.write("\nfrom stok.train import losses  # noqa: E402,F401 - eval may not import train\n")
    r = lint(root)
    assert r.returncode != 0 and "stok.eval is not allowed to import stok.train" in r.stdout
