"""Two torchrun nodes on one host: two launchers with ``--nnodes 2 --node_rank 0/1`` and c10d rendezvous on
127.0.0.1 dump exactly what one node with two ranks dumps (same shards, records byte for byte, same merged scp keys
and fingerprint); so does ``python -m stok.bin.launch node`` on each node of a (simulated) two-node Slurm allocation,
which builds that torchrun command line from SLURM_JOB_NODELIST, SLURM_NNODES and SLURM_NODEID (both "nodes"
being this host)."""

from __future__ import annotations

import os
import socket
import subprocess

import kaldiio
import numpy as np

from tests.conftest import PYTHON, REPO, write_data_dir

TORCHRUN = os.path.join(os.path.dirname(PYTHON), "torchrun")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dump_args(model: str, data: str, out: str):
    return ["stok.bin.dump_s3", "--model", model, "--version", "v2_25hz", "--device", "cpu", "--num_workers", "0",
            "--threads", "1", "--data_dir", data, "--output_dir", out]


def _env(**extra):
    return {**os.environ, "PYTHONPATH": REPO, **extra}


def _both(procs, what):
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"{what}: {out[-3000:]}"


def _same_dump(a: str, b: str) -> None:
    for name in ("s3_tokens.0.ark", "s3_tokens.1.ark", "s3_tokens.fingerprint.json", "failed.list"):
        with open(os.path.join(a, name), "rb") as x, open(os.path.join(b, name), "rb") as y:
            assert x.read() == y.read(), name
    sa, sb = kaldiio.load_scp(os.path.join(a, "s3_tokens.scp")), kaldiio.load_scp(os.path.join(b, "s3_tokens.scp"))
    assert list(sa) == list(sb) and len(sa) == 10
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])


def test_two_torchrun_nodes_dump_what_one_node_dumps(tmp_path):
    data, _ = write_data_dir(tmp_path, [0.6 + 0.3 * i for i in range(10)])
    model = str(tmp_path / "demo_v2_25hz.onnx")
    subprocess.run([PYTHON, "-m", "stok.bin.make_demo_s3", "--version", "v2_25hz", "--output", model], env=_env(),
                   check=True, capture_output=True)
    one, two, slurm = (str(tmp_path / n) for n in ("one_node", "two_nodes", "slurm_nodes"))
    single = subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", *_dump_args(model, data, one)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _both([single], "one node, two ranks")

    port = _port()
    nodes = [subprocess.Popen([TORCHRUN, "--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1",
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "stok",
                               "-m", *_dump_args(model, data, two)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    _both(nodes, "two torchrun nodes")
    _same_dump(one, two)

    port = _port()
    nodes = [subprocess.Popen([PYTHON, "-m", "stok.bin.launch", "node", "--nproc_per_node", "1", "--rdzv_port",
                               str(port), "--", *_dump_args(model, data, slurm)],
                              env=_env(SLURM_JOB_NODELIST="localhost,localhost", SLURM_NNODES="2",
                                       SLURM_NODEID=str(r), SLURM_JOB_ID="123"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    outs = []
    for p in nodes:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
        outs.append(out)
    assert f"torchrun --nnodes 2 --node_rank 1 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint localhost:{port}" \
           " --rdzv_id stok-123-0" in outs[1]
    _same_dump(one, slurm)
