"""Writing a dump's cut set at corpus scale: wall time and peak memory of ``stok.dump.cuts.write_dump_cuts``.

    python bench/cut_set.py --work_dir /tmp/cutbench            # 281,241 utterances (LibriSpeech 960 h)
    python bench/cut_set.py --work_dir /tmp/cutbench --quick    # 20,000 utterances

A LibriSpeech-shaped input that costs little disk: a Kaldi dir whose ``segments`` cut utterances of 1-16 s
(mean ~12.3 s) out of 5,000 recordings, which are 20 real FLAC files (20-30 s) under different keys, with
``text`` and ``utt2spk``; and a finished S3 token dump of it at 25 Hz (``s3_tokens.0.ark`` with Kaldi int32
vectors of random tokens, one per started hop, and its scp). The cuts come from the Kaldi dir (no stage-0
manifests: ``KaldiCuts``), as the engine's hook gets them. ``--kind feats`` dumps 39-dim float32 matrices at
50 Hz instead (no copy is made of matrices: the cut set points into the ark).

Each measurement runs in a fresh process: (i) the index alone (the Kaldi dir read, the scp and failed list
read: what any writer must hold), (ii) the whole ``write_dump_cuts``. Printed: wall seconds, peak RSS of each,
the peak over the index (what the writer adds), the outputs' sizes, and the ratio (ii)/(i) of peak RSS.
``--stok PATH`` times another checkout's stok (e.g. an export of main) on the same input. ``--load`` adds (iii):
the written cut set loaded eagerly by plain lhotse in a Python without stok, and 2000 random cuts' fields read
(an earlier stok's cut set needs its reader: only with this checkout's output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tests.conftest import speechlike  # noqa: E402

N_FILES, N_RECS = 20, 5000


def make_corpus(work: str, n: int, kind: str, seed: int = 0) -> str:
    """The Kaldi dir and the finished dump (see the module docstring); returns the dump dir."""
    rng = np.random.default_rng(seed)
    data, dump, audio = (os.path.join(work, d) for d in ("data/train", f"dump/{kind}/train", "audio"))
    stamp = os.path.join(dump, ".made")
    if os.path.exists(stamp) and open(stamp).read() == f"{n}\n":
        return dump
    for d in (data, dump, audio):
        os.makedirs(d, exist_ok=True)
    lengths = []
    for i in range(N_FILES):
        seconds = float(rng.uniform(20, 30))
        path = os.path.join(audio, f"f{i:02d}.flac")
        if not os.path.exists(path):
            sf.write(path, speechlike(seconds, seed=i), 16000)
        lengths.append(sf.info(path).frames / 16000)
    recs = [(f"{1000 + r // 20}-{r:06d}", r % N_FILES) for r in range(N_RECS)]
    with open(os.path.join(data, "wav.scp"), "w") as f:
        f.writelines(f"{r} {os.path.join(audio, f'f{i:02d}.flac')}\n" for r, i in recs)
    utts = []
    for u in range(n):
        rec, i = recs[u % N_RECS]
        dur = float(np.clip(rng.normal(12.3, 3.5), 1.0, 16.0))
        start = float(rng.uniform(0, lengths[i] - dur))
        utts.append((f"{rec}-{u:07d}", rec, round(start, 2), round(start + dur, 2)))
    utts.sort()
    words = ["THE", "OF", "AND", "SPEECH", "TOKENS", "LIBRI", "CHAPTER", "A", "TO", "IN"]
    with open(os.path.join(data, "segments"), "w") as seg, open(os.path.join(data, "text"), "w") as text, \
            open(os.path.join(data, "utt2spk"), "w") as spk:
        for utt, rec, b, e in utts:
            seg.write(f"{utt} {rec} {b:.2f} {e:.2f}\n")
            text.write(f"{utt} {' '.join(words[j] for j in rng.integers(0, 10, 30))}\n")
            spk.write(f"{utt} {rec.split('-')[0]}\n")
    name = "s3_tokens" if kind == "s3_tokens" else "feats"
    ark = os.path.join(dump, f"{name}.0.ark")
    pair = np.dtype([("size", "u1"), ("value", "<i4")])
    with open(ark, "wb") as a, open(os.path.join(dump, f"{name}.0.scp"), "w") as s:
        for utt, _, b, e in utts:
            samples = int(round((e - b) * 16000))
            a.write(f"{utt} ".encode())
            offset = a.tell()
            if kind == "s3_tokens":
                t = -(-samples // 640)
                rec = np.empty(t, pair)
                rec["size"], rec["value"] = 4, rng.integers(0, 6561, t)
                a.write(b"\0B\4" + np.int32(t).tobytes() + rec.tobytes())
            else:
                t = -(-samples // 320)
                a.write(b"\0BFM \4" + np.int32(t).tobytes() + b"\4" + np.int32(39).tobytes())
                a.write(rng.standard_normal((t, 39)).astype(np.float32).tobytes())
            s.write(f"{utt} {ark}:{offset}\n")
    os.replace(os.path.join(dump, f"{name}.0.scp"), os.path.join(dump, f"{name}.scp"))
    open(os.path.join(dump, "failed.list"), "w").close()
    rate = {"token_rate": 25.0} if kind == "s3_tokens" else {"frame_rate": 50.0}
    with open(os.path.join(dump, f"{name}.summary.json"), "w") as f:
        json.dump({"name": name, "model": {"model": "bench", **rate}}, f)
    with open(stamp, "w") as f:
        f.write(f"{n}\n")
    return dump


CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
data, dump, name, mode = sys.argv[2:6]
t = time.perf_counter()
from stok.dump.inputs import AudioInput
from stok.core.storage import read_scp_entries
from stok.core.failed import read_failed
if mode == "index":
    inp = AudioInput(data_dir=data)
    entries = read_scp_entries([os.path.join(dump, name + ".scp")])
    failed = read_failed(os.path.join(dump, "failed.list"))
else:
    from stok.dump.cuts import write_dump_cuts
    summary = json.load(open(os.path.join(dump, name + ".summary.json")))
    inp = AudioInput(data_dir=data)
    info = write_dump_cuts(dump, name, summary, inp.cut_source(""))
    assert info["written"] > 0, info
wall = time.perf_counter() - t
print(json.dumps({"wall": wall, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


LOAD = r"""
import json, random, resource, sys, time
t = time.perf_counter()
from lhotse import CutSet
cuts = CutSet.from_file(sys.argv[1])
load = time.perf_counter() - t
sample = random.Random(0).sample(range(len(cuts)), 2000)
t = time.perf_counter()
frames = sum(len(getattr(cuts[i], "load_" + sys.argv[2])()) for i in sample)
read = (time.perf_counter() - t) / len(sample)
assert "stok" not in sys.modules
print(json.dumps({"load": load, "read_ms": read * 1e3, "frames": frames, "peak_mb": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure_load(cuts: str, name: str) -> dict:
    """(iii) plain lhotse, no stok on the path: the cut set loaded eagerly, and 2000 random cuts' fields read."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", LOAD, cuts, name], check=True, capture_output=True, text=True,
                         env=env, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(stok: str, data: str, dump: str, name: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, stok, data, dump, name, mode], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": stok})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", required=True, help="scratch dir for the corpus and the dump (reused)")
    p.add_argument("--num_utts", type=int, default=281241)
    p.add_argument("--kind", choices=("s3_tokens", "feats"), default="s3_tokens")
    p.add_argument("--quick", action="store_true", help="20,000 utterances")
    p.add_argument("--load", action="store_true",
                   help="also (iii): the cut set loaded by plain lhotse (no stok) and 2000 random fields read")
    p.add_argument("--stok", default=REPO, help="the stok checkout to time (default: this one)")
    args = p.parse_args()
    n = 20000 if args.quick else args.num_utts
    t = time.perf_counter()
    dump = make_corpus(args.work_dir, n, args.kind)
    print(f"input: {n} utterances over {N_RECS} recordings ({N_FILES} FLAC files), {args.kind} "
          f"(made/reused in {time.perf_counter() - t:.1f} s)")
    name = "s3_tokens" if args.kind == "s3_tokens" else "feats"
    data = os.path.join(args.work_dir, "data/train")
    index = measure(args.stok, data, dump, name, "index")
    write = measure(args.stok, data, dump, name, "write")
    sizes = {f: os.path.getsize(os.path.join(dump, f)) / 1e6 for f in sorted(os.listdir(dump))
             if f.endswith((".gz", ".h5", ".ark"))}
    print(f"stok: {args.stok}")
    print(f"(i) index alone:     {index['wall']:7.1f} s, peak RSS {index['peak_mb']:7.0f} MB")
    print(f"(ii) write_dump_cuts: {write['wall']:7.1f} s, peak RSS {write['peak_mb']:7.0f} MB "
          f"(+{write['peak_mb'] - index['peak_mb']:.0f} MB over the index; ratio {write['peak_mb'] / index['peak_mb']:.2f})")
    print("outputs: " + ", ".join(f"{f} {mb:.1f} MB" for f, mb in sizes.items()))
    if args.load:
        got = measure_load(os.path.join(dump, "cuts.jsonl.gz"), name)
        print(f"(iii) plain lhotse: CutSet.from_file {got['load']:.1f} s (peak RSS {got['peak_mb']:.0f} MB), "
              f"cut.load_{name}() {got['read_ms']:.2f} ms a cut (2000 random cuts)")


if __name__ == "__main__":
    main()
