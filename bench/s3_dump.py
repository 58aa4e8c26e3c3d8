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
tokens of every mode that differ from (a) (must be 0).

``--modes a,b,c,o`` adds (o), CosyVoice's own extractor (``tools/extract_speech_token.py``) as it runs:
the model exported to an ONNX file in the official layout, run by onnxruntime one utterance at a time with
its session options (all graph optimisations, one intra-op thread per session) from a thread pool with
one thread per core; compared with (c) as c/o.

On a GPU: ``--device cuda --dtype bf16`` runs (a), (b), (c) there, and ``--nproc N`` with mode d adds
(d): ``torchrun --nproc_per_node N -m stok.bin.dump_s3`` (N processes sharing the GPUs round-robin,
the model saved as a stok checkpoint; ``--modes a,b,c,d``), timed end to end including process start-up
and model loading.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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
from stok.models.s3.onnx_export_official import export_official  # noqa: E402
from tests.conftest import speechlike  # noqa: E402  (the tests' synthetic voiced signal)


def make_corpus(root: str, n: int, lo: float, hi: float, seed: int):
    rng = np.random.default_rng(seed)
    durations = rng.uniform(lo, hi, n)
    rng.shuffle(durations)
    os.makedirs(root, exist_ok=True)
    keys, paths = [], []
    for i, d in enumerate(durations):
        key = f"utt{i:04d}"
        path = os.path.join(root, f"{key}.flac")
        sf.write(path, speechlike(d, 16000, seed + i), 16000)
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


def cosyvoice_ort(onnx_path, keys, paths, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def one(path):
        mel = log_mel(load_audio(path, 16000))[None].numpy()
        return sess.run(None, {names[0]: mel, names[1]: np.array([mel.shape[2]], dtype=np.int32)})[0].reshape(-1)

    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(keys, pool.map(one, paths)))


def torchrun(ckpt, version, nproc, data_dir, out_dir, workers, device, dtype, extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "stok.bin.dump_s3", "--model", ckpt, "--version", version, "--data_dir", data_dir,
           "--output_dir", out_dir, "--num_workers", str(workers), "--device", device, "--dtype", dtype,
           "--overwrite", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {k: v for k, v in load_codes(os.path.join(out_dir, f"{NAME}.scp"))}


LABELS = {"a": "one at a time, file order", "b": "batches of 32, file order (the peer's style)",
          "c": "stok engine (bucketing, workers)", "o": "CosyVoice extractor (onnxruntime, 1 thread/session)",
          "d": "stok engine under torchrun"}


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
    p.add_argument("--modes", default="a,b,c",
                   help="what to run, in order: a, b, c as above, o (CosyVoice's onnxruntime extractor), "
                        "d (torchrun, with --nproc)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run (a), (b), (c) this many times, interleaved, and keep each mode's fastest run "
                        "(on a shared machine the load of other tenants varies from minute to minute)")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    if set(modes) - set(LABELS) or ("d" in modes and not args.nproc):
        p.error(f"--modes takes {','.join(LABELS)}; d needs --nproc")
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
        if "d" in modes:
            save_checkpoint(model, ckpt)
        onnx_path = os.path.join(work, f"s3_{version}.onnx")
        if "o" in modes:
            export_official(model, onnx_path)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        model.to(args.device).set_dtype(dtype)
        with torch.inference_mode():  # warm-up: first-call allocations are not part of any mode's time
            model.quantize(torch.randn(2, 128, 300, device=model.device), torch.tensor([300, 200]))
        runners = {
            "a": lambda: one_at_a_time(model, keys, paths),
            "b": lambda: fixed_batches(model, keys, paths),
            "c": lambda: engine(model, os.path.join(work, "data"), os.path.join(work, f"dump_{version}"),
                                args.workers, args.engine_opts.split() + ["--dtype", args.dtype]),
            "o": lambda: cosyvoice_ort(onnx_path, keys, paths, threads),
            "d": lambda: torchrun(ckpt, version, args.nproc, os.path.join(work, "data"),
                                  os.path.join(work, f"dump_{version}_d"), args.workers, args.device,
                                  args.dtype, args.engine_opts.split()),
        }
        times, toks = {}, {}
        for r in range(max(1, args.repeats)):
            for mode in modes:
                torch.set_num_threads(threads)
                t = time.perf_counter()
                toks[mode] = runners[mode]()
                dt = time.perf_counter() - t
                times[mode] = min(dt, times.get(mode, dt))
                print(f"  {version} ({mode}) run {r + 1}: {dt:8.1f} s  {audio / dt:6.2f} audio s/s", flush=True)
        ref = "a" if "a" in toks else modes[0]
        print(f"{version} [{args.device} {args.dtype}], audio seconds per wall second (tokens differing from ({ref})):")
        for mode in modes:
            diff, total = mismatch(toks[ref], toks[mode])
            ratio = f"  c/{mode} = {times[mode] / times['c']:.2f}" if "c" in times and mode != "c" else ""
            print(f"  ({mode}) {LABELS[mode]:<52} {audio / times[mode]:8.2f}  ({diff} of {total}){ratio}", flush=True)

if __name__ == "__main__":
    main()
