"""S3Tokenizer dump throughput on CPU: one at a time vs fixed batches vs the stok engine.

    python bench/s3_dump.py            # the issue's set: 100 utterances of 1-30 s, v1_50hz and v2_25hz
    python bench/s3_dump.py --quick    # 24 utterances of 1-8 s (a few minutes on a 2-core machine)

A mixed-length corpus (uniform durations, shuffled, synthesized speech-like FLAC files) and full-size
models with random weights (the official dimensions; tokens do not depend on the weights' origin
for timing). Three ways to dump it, all in this process with the same torch thread count:

  (a) one utterance at a time in file order (CosyVoice's extractor style): read, log-mel, encode;
  (b) fixed batches of 32 in file order without bucketing (the peer's style);
  (c) the stok dump engine (``run_dump``, what ``stok.bin.dump_s3`` runs): length bucketing by a
      padded-frame budget, log-mel in DataLoader workers, resumable ark/scp output.

Printed: wall time, throughput (audio seconds per wall second), the ratios c/a and c/b, and the
tokens of (b) and (c) that differ from (a) (must be 0).

On a GPU: ``--device cuda --dtype bf16`` runs (a), (b), (c) there, and ``--nproc N`` adds
(d): ``torchrun --nproc_per_node N -m stok.bin.dump_s3`` (N processes sharing the GPUs round-robin,
the model saved as a stok checkpoint), timed end to end including process start-up and model loading.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stok.bin.dump_s3 import NAME, get_parser, resolve_defaults  # noqa: E402
from stok.data.audio import load_audio  # noqa: E402
from stok.dump.engine import run_dump  # noqa: E402
from stok.dump.storage import load_codes  # noqa: E402
from stok.models.s3.checkpoint import save_checkpoint  # noqa: E402
from stok.models.s3.config import full_config  # noqa: E402
from stok.models.s3.dump_model import S3DumpModel  # noqa: E402
from stok.models.s3.frontend import log_mel  # noqa: E402
from stok.models.s3.model import build_model  # noqa: E402


def speechlike(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    return (0.1 * voice * env + 0.01 * rng.standard_normal(n)).astype(np.float32)


def make_corpus(root: str, n: int, lo: float, hi: float, seed: int):
    rng = np.random.default_rng(seed)
    durations = rng.uniform(lo, hi, n)
    rng.shuffle(durations)
    os.makedirs(root, exist_ok=True)
    keys, paths = [], []
    for i, d in enumerate(durations):
        key = f"utt{i:04d}"
        path = os.path.join(root, f"{key}.flac")
        sf.write(path, speechlike(d, seed + i), 16000)
        keys.append(key)
        paths.append(path)
    with open(os.path.join(root, "wav.scp"), "w") as f:
        f.writelines(f"{k} {p}\n" for k, p in zip(keys, paths))
    with open(os.path.join(root, "utt2dur"), "w") as f:
        f.writelines(f"{k} {sf.info(p).frames / 16000:.4f}\n" for k, p in zip(keys, paths))
    return keys, paths, float(sum(sf.info(p).frames for p in paths) / 16000)


@torch.inference_mode()
def one_at_a_time(model, keys, paths):
    out = {}
    for k, p in zip(keys, paths):
        mel = log_mel(load_audio(p, 16000)).to(model.device)
        codes, n = model.quantize(mel[None], torch.tensor([mel.shape[1]]))
        out[k] = codes[0, : int(n)].cpu().numpy()
    return out


@torch.inference_mode()
def fixed_batches(model, keys, paths, size=32):
    out = {}
    for j in range(0, len(keys), size):
        mels = [log_mel(load_audio(p, 16000)) for p in paths[j: j + size]]
        lens = torch.tensor([m.shape[1] for m in mels])
        batch = torch.zeros(len(mels), 128, int(lens.max()))
        for i, m in enumerate(mels):
            batch[i, :, : m.shape[1]] = m
        codes, n = model.quantize(batch.to(model.device), lens)
        for i, k in enumerate(keys[j: j + size]):
            out[k] = codes[i, : int(n[i])].cpu().numpy()
    return out


def engine(model, data_dir, out_dir, workers, extra):
    args = resolve_defaults(get_parser().parse_args(
        ["--model", "unused", "--data_dir", data_dir, "--output_dir", out_dir, "--num_workers", str(workers),
         "--device", str(model.device), "--overwrite", *extra]))
    model.window_batch = args.window_batch
    run_dump(args, lambda device: S3DumpModel(model), name=NAME)
    return {k: v for k, v in load_codes(os.path.join(out_dir, f"{NAME}.scp"))}


def torchrun(ckpt, version, nproc, data_dir, out_dir, workers, device, dtype, extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "stok.bin.dump_s3", "--model", ckpt, "--version", version, "--data_dir", data_dir,
           "--output_dir", out_dir, "--num_workers", str(workers), "--device", device, "--dtype", dtype,
           "--overwrite", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {k: v for k, v in load_codes(os.path.join(out_dir, f"{NAME}.scp"))}


def mismatch(ref, got):
    diff = sum(int((ref[k] != got[k]).sum()) if len(ref[k]) == len(got[k]) else max(len(ref[k]), len(got[k]))
               for k in ref)
    return diff, sum(len(v) for v in ref.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="24 utterances of 1-8 s instead of 100 of 1-30 s")
    p.add_argument("--n", type=int, default=0, help="utterances (default 100, or 24 with --quick)")
    p.add_argument("--min_seconds", type=float, default=1.0)
    p.add_argument("--max_seconds", type=float, default=0, help="default 30, or 8 with --quick")
    p.add_argument("--versions", default="v1_50hz,v2_25hz")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--workers", type=int, default=2, help="engine DataLoader workers for (c)")
    p.add_argument("--engine_opts", default="", help="extra dump options for (c), e.g. '--batch_seconds 120'")
    p.add_argument("--workdir", default="", help="where the corpus and dumps go (default: a temp dir)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="encoder precision (GPU)")
    p.add_argument("--nproc", type=int, default=0, help="also (d): torchrun with this many processes")
    p.add_argument("--repeats", type=int, default=1,
                   help="run (a), (b), (c) this many times, interleaved, and keep each mode's fastest run "
                        "(on a shared machine the load of other tenants varies from minute to minute)")
    args = p.parse_args(argv)
    n = args.n or (24 if args.quick else 100)
    hi = args.max_seconds or (8.0 if args.quick else 30.0)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    work = args.workdir or tempfile.mkdtemp(prefix="s3bench_")
    keys, paths, audio = make_corpus(os.path.join(work, "data"), n, args.min_seconds, hi, seed=0)
    print(f"corpus: {n} utterances, {args.min_seconds:g}-{hi:g} s shuffled, {audio:.1f} s of audio; "
          f"torch threads {threads}, {os.cpu_count()} cores", flush=True)
    for version in args.versions.split(","):
        model = build_model(full_config(version), seed=0)
        ckpt = os.path.join(work, f"s3_{version}.pt")
        if args.nproc:
            save_checkpoint(model, ckpt)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        model.to(args.device).set_dtype(dtype)
        with torch.inference_mode():  # warm-up: first-call allocations are not part of any mode's time
            model.quantize(torch.randn(2, 128, 300, device=model.device), torch.tensor([300, 200]))
        times, toks = {}, {}
        modes = (("a", lambda: one_at_a_time(model, keys, paths)),
                 ("b", lambda: fixed_batches(model, keys, paths)),
                 ("c", lambda: engine(model, os.path.join(work, "data"), os.path.join(work, f"dump_{version}"),
                                      args.workers, args.engine_opts.split() + ["--dtype", args.dtype])))
        if args.nproc:
            modes += (("d", lambda: torchrun(ckpt, version, args.nproc, os.path.join(work, "data"),
                                             os.path.join(work, f"dump_{version}_d"), args.workers, args.device,
                                             args.dtype, args.engine_opts.split())),)
        for r in range(max(1, args.repeats)):
            for mode, fn in modes:
                torch.set_num_threads(threads)
                t = time.perf_counter()
                toks[mode] = fn()
                dt = time.perf_counter() - t
                times[mode] = min(dt, times.get(mode, dt))
                print(f"  {version} ({mode}) run {r + 1}: {dt:8.1f} s  {audio / dt:6.2f} audio s/s", flush=True)
        db, total = mismatch(toks["a"], toks["b"])
        dc, _ = mismatch(toks["a"], toks["c"])
        if args.nproc:
            dd, _ = mismatch(toks["a"], toks["d"])
            print(f"{version}: (d) torchrun x{args.nproc} {audio / times['d']:.2f} audio s/s, d/a = "
                  f"{times['a'] / times['d']:.2f}, tokens differing from (a): {dd} of {total}", flush=True)
        print(f"{version} [{args.device} {args.dtype}]: (a) one at a time {audio / times['a']:.2f} | (b) batches of 32 {audio / times['b']:.2f} | "
              f"(c) stok engine {audio / times['c']:.2f} audio s/s;  c/a = {times['a'] / times['c']:.2f}, "
              f"c/b = {times['b'] / times['c']:.2f};  tokens differing from (a): (b) {db}, (c) {dc} of {total}",
              flush=True)


if __name__ == "__main__":
    main()
