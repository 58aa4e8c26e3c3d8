"""Reads dump cut sets with lhotse alone, in a Python where stok cannot be imported (run by the tests).

    python -I -S tests/plain_lhotse_reader.py OUT SITE_DIRS CUTS.jsonl.gz ...

``-I -S``: no PYTHONPATH, no current directory, no ``.pth`` files (so no editable stok install); only the
``os.pathsep``-separated ``SITE_DIRS`` (lhotse, numpy, h5py, kaldi_native_io ...) are added. Exits non-zero
if ``stok`` is importable or gets imported. For every cut of every cut set (numbered in argument order):
``OUT.npz`` holds each array field as ``cut.load_<name>()`` returns it, under ``<set>/<cut id>/<name>``, and
``OUT.json`` each cut as lhotse serialises it, under ``<set>/<cut id>``. The tests call
:func:`read_without_stok`.
"""

import importlib.util
import json
import os
import sys


def read_without_stok(tmp_path, cut_sets) -> tuple:
    """(arrays, cuts) as above, of ``cut_sets`` read in a subprocess by this script (``tmp_path``: a pathlib dir)."""
    import site
    import subprocess

    import numpy as np

    out = str(tmp_path / f"plain{len(list(tmp_path.glob('plain*.npz')))}")
    proc = subprocess.run([sys.executable, "-I", "-S", os.path.abspath(__file__), out,
                           os.pathsep.join(site.getsitepackages()), *cut_sets], capture_output=True, text=True,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(out + ".npz") as z:
        arrays = {k: z[k] for k in z.files}
    with open(out + ".json", encoding="utf-8") as f:
        return arrays, json.load(f)


def main() -> None:
    out, site_dirs, *cut_sets = sys.argv[1:]
    sys.path.extend(site_dirs.split(os.pathsep))
    if importlib.util.find_spec("stok") is not None:
        raise SystemExit(f"stok is importable here ({importlib.util.find_spec('stok').origin}); sys.path={sys.path}")
    import numpy as np
    from lhotse import CutSet
    from lhotse.array import Array, TemporalArray

    arrays, cuts = {}, {}
    for i, path in enumerate(cut_sets):
        for cut in CutSet.from_file(path):
            cuts[f"{i}/{cut.id}"] = cut.to_dict()
            for name, value in (cut.custom or {}).items():
                if isinstance(value, (Array, TemporalArray)):
                    arrays[f"{i}/{cut.id}/{name}"] = getattr(cut, f"load_{name}")()
    if any(m == "stok" or m.startswith("stok.") for m in sys.modules):
        raise SystemExit("stok was imported")
    np.savez(out + ".npz", **arrays)
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(cuts, f)


if __name__ == "__main__":
    main()
