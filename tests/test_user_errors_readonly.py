"""An output location the user may not write is one error line naming it, before any work. Root ignores mode
bits, so the tools run as ``nobody`` (``setpriv``) on inputs in a world-readable temporary dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, save_released
from tests.conftest import REPO, write_corpus
from tests.train_helpers import tiny_config, tiny_data
from tests.user_error_helpers import snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv to run a tool as an unprivileged user")


@pytest.fixture(scope="module")
def shared():
    root = tempfile.mkdtemp(prefix="stok_readonly_")
    os.chmod(root, 0o755)
    try:
        data = tiny_data(os.path.join(root, "train"))
        conf = os.path.join(root, "train.yaml")
        with open(conf, "w") as f:
            yaml.safe_dump(tiny_config(), f)
        torch.manual_seed(0)
        model_dir = save_released(SpeechTokenizer(SpeechTokenizerConfig(
            n_filters=4, dimension=32, semantic_dimension=8, codebook_size=16, n_q=2, lstm_layers=1)),
            os.path.join(root, "model"))
        base = os.path.join(root, "codes")
        with kaldiio.WriteHelper(f"ark,scp:{base}.ark,{base}.scp") as w:
            w("utt0", np.zeros((5, 2), np.float32))
        audio = os.path.dirname(write_corpus(os.path.join(root, "audio"), [0.5]))
        locked = os.path.join(root, "locked")  # root's, mode 755: nobody may not write here
        os.makedirs(locked)
        yield {"root": root, "data": data, "conf": conf, "model": model_dir, "codes": base + ".scp",
               "audio": audio, "locked": locked}
    finally:
        shutil.rmtree(root)


def as_nobody(module, *args):
    env = {**os.environ, "PYTHONPATH": REPO, "HOME": "/nonexistent", "OMP_NUM_THREADS": "1"}
    env.pop("STOK_DEBUG", None)
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", module, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd="/")


@pytest.mark.parametrize("tool,existing", [("train", False), ("decode", True), ("kmeans", False), ("prepare", True)])
def test_unwritable_output(shared, tool, existing):
    """A dir to create under one the user may not write (``existing=False``), or such a dir itself."""
    s = shared
    out, expect = (s["locked"], "is not writable") if existing else (os.path.join(s["locked"], "out"),
                                                                      "cannot be created")
    if tool == "train":
        res = as_nobody("stok.bin.train", "--config", s["conf"], "--data_dir", s["data"]["train"][0],
                        "--teacher_scp", s["data"]["train"][1], "--exp_dir", out, "--device", "cpu")
        what = "--exp_dir"
    elif tool == "decode":
        res = as_nobody("stok.bin.decode", "--model_dir", s["model"], "--codes_scp", s["codes"],
                        "--output_dir", out, "--device", "cpu")
        what = "--output_dir"
    elif tool == "kmeans":
        res = as_nobody("stok.bin.kmeans", "learn", "--feats_scp", s["data"]["train"][1], "--output",
                        os.path.join(out, "km.npz"), "--n_clusters", "2", "--device", "cpu")
        what = "--output"
    else:
        res = as_nobody("stok.bin.prepare", "folder", "--audio_dir", s["audio"], "--output_dir", out)
        what = "--output_dir"
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.returncode == 1 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert what in errors[0] and expect in errors[0] and s["locked"] in errors[0], errors[0]
    assert snapshot(s["locked"]) == {}
