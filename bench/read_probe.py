"""Run a Python module as ``python -m`` would, counting how often it opens chosen files (an audit hook).

    STOK_PROBE_WATCH=data/train STOK_PROBE_OUT=reads.json python bench/read_probe.py stok.bin.dump_energy ...
    torchrun --nproc_per_node 2 bench/read_probe.py stok.bin.dump_energy ...   # one reads.json.<rank> per rank

``STOK_PROBE_WATCH``: files or directories (``os.pathsep``-separated); every ``open`` of a watched file, or of a
file directly inside a watched directory, is counted by path. At exit the counts (``{path: opens}``, every
watched file listed, 0 when never opened) are written to ``STOK_PROBE_OUT`` (``.<RANK>`` appended under torchrun).
Only this process counts: DataLoader workers and other children are not followed. Used by ``bench/scale.py``
("the Kaldi dir is read once per run") and by the tests of finished dumps' reruns.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys


def _watched(spec: str):
    files, dirs = set(), set()
    for p in filter(None, spec.split(os.pathsep)):
        p = os.path.abspath(p)
        if os.path.isdir(p):
            dirs.add(p)
            files.update(os.path.join(p, n) for n in os.listdir(p) if os.path.isfile(os.path.join(p, n)))
        else:
            files.add(p)
    return files, dirs


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: read_probe.py MODULE [ARGS ...] (with STOK_PROBE_WATCH and STOK_PROBE_OUT set)")
    files, dirs = _watched(os.environ.get("STOK_PROBE_WATCH", ""))
    out = os.environ["STOK_PROBE_OUT"] + (f".{os.environ['RANK']}" if "RANK" in os.environ else "")
    counts = {p: 0 for p in files}

    def hook(event, args):
        if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.abspath(os.fsdecode(args[0]))
        if path in counts or os.path.dirname(path) in dirs:
            counts[path] = counts.get(path, 0) + 1

    pid = os.getpid()

    def write():
        if os.getpid() == pid:  # not in forked children that happen to exit through atexit
            with open(out, "w") as f:
                json.dump(counts, f, indent=1, sort_keys=True)

    atexit.register(write)
    sys.addaudithook(hook)
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
