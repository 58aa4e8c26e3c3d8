"""S3Tokenizer dump throughput on CPU: stok against CosyVoice's extractor and the public peer, with a roofline.

    python bench/s3_dump.py            # the issue's set: 100 utterances of 1-30 s, v1_50hz and v2_25hz
    python bench/s3_dump.py --quick    # 24 utterances of 1-8 s (a few minutes on a 2-core machine)
    python bench/s3_dump.py --modes a,c,o,p,d --nproc 2    # every baseline and torchrun

A mixed-length corpus (uniform durations, shuffled, synthesized speech-like FLAC files) and full-size
models with random weights (the official dimensions; v1 codebooks spread over encoder outputs so that tokens
vary; timing does not depend on the weights' origin). Modes, all with the same torch thread count:

  (a) stok one utterance at a time in file order with the plain reference kernels (``set_fast_cpu(False)``:
      torch's MKL Linear, the FSMN as a depthwise conv): the fp32 reference every mode's tokens are checked against;
  (b) stok, fixed batches of 32 in file order without bucketing (the peer's batching, stok's model);
  (c) the stok dump engine (``run_dump``, what ``stok.bin.dump_s3`` runs): length bucketing by a padded-frame
      budget, log-mel in DataLoader workers, resumable ark/scp output, stok's CPU kernels;
  (o) CosyVoice's own extractor (``tools/extract_speech_token.py``) as it runs: the model exported to an ONNX
      file in the official layout, run by onnxruntime one utterance at a time with its session options (all
      graph optimisations, one intra-op thread per session) from a pool with one thread per core;
  (p) the public ``s3tokenizer`` package (when installed) as its CLI runs on CPU: its own model class (as
      ``load_model`` builds it) with the same weights through its own ONNX->torch converter from that file,
      its own log-mel, ``padding`` and ``quantize``, fixed batches of 32 in file order, one process;
  (d) ``torchrun --nproc_per_node N -m stok.bin.dump_s3`` (N processes of cores/N threads, the model saved as
      a stok checkpoint; ``--nproc N``), timed end to end including process start-up and model loading
      (the other modes' models and sessions are built and warmed up before their timing starts);
  (r) the stok dump engine as (c) with ``--dtype bf16`` on CPU (bf16 matrix products by the version's recipe,
      ``stok.models.s3.cpu_infer.BF16``; only on CPUs with AVX-512 BF16 or AMX): speed, and the share of tokens
      equal to (a)'s fp32 tokens.

The engine modes (c), (r) use the model built in this process; its weights checksum (what a real run reads from
its cache, ``$STOK_CACHE/checksums.json``) is computed once before timing.
Every figure is printed with the CPU's instruction sets (``stok.models.cpu_isa``: AVX2 / AVX-512 / +BF16 / +AMX /
+VNNI): CPU speeds are only comparable within one ISA.

Printed per version: wall time and audio seconds per wall second of each mode; tokens that differ from (a),
with how many of those are near-ties (decision margin under 1e-5, ``stok.models.s3.margins``: rounding's
call); the speed ratios c/a, c/b, c/o, c/p, d/o, d/p, d/c; and the roofline: the model FLOPs of the corpus
(counted from the shapes, one utterance at a time, no padding), the measured single-core fp32 GEMM peak
(``bench/roofline.py``, same run), each mode's achieved fraction of its cores' peak, and the most any mode
could gain over (o) on these cores (100% of peak).

On a GPU: ``--device cuda --dtype bf16`` runs (a), (b), (c) there, and (d) with ``--nproc``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import stok  # noqa: E402,F401  before torch: MKL's AVX-512 kernels on AMD CPUs (stok.mkl_on_amd)

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from bench.roofline import fraction, gemm_peak, print_peak  # noqa: E402
from stok.bin.dump_s3 import NAME, get_parser  # noqa: E402
from stok.data.audio import load_audio  # noqa: E402
from stok.dump.engine import run_dump  # noqa: E402
from stok.core.checksums import module_checksum  # noqa: E402
from stok.dump.settings import DumpSettings  # noqa: E402
from stok.core.storage import load_codes  # noqa: E402
from stok.models.s3.checkpoint import save_checkpoint  # noqa: E402
from stok.models.cpu_isa import cpu_isa  # noqa: E402
from stok.models.s3.config import full_config  # noqa: E402
from stok.models.s3.cpu_infer import BF16, FP32  # noqa: E402
from stok.models.s3.dump_model import S3DumpModel  # noqa: E402
from stok.models.s3.frontend import log_mel, mel_frames  # noqa: E402
from stok.models.s3.long_audio import plan_windows  # noqa: E402
from stok.models.s3.margins import classify_differences, decision_margins  # noqa: E402
from stok.models.s3.model import build_model  # noqa: E402
from stok.models.s3.onnx_export_official import export_official  # noqa: E402
from tests.conftest import speechlike  # noqa: E402  (the tests' synthetic voiced signal)
from tests.s3_helpers import spread_codebook  # noqa: E402


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
    args = get_parser().parse_args(
        ["--model", "unused", "--data_dir", data_dir, "--output_dir", out_dir, "--num_workers", str(workers),
         "--device", str(model.device), "--overwrite", *extra])
    model.window_batch = args.window_batch or (8 if model.device.type == "cuda" else 2)
    run_dump(DumpSettings.from_args(args), lambda device: S3DumpModel(model), name=NAME)
    return {k: v for k, v in load_codes(os.path.join(out_dir, f"{NAME}.scp"))}


def cosyvoice_session(onnx_path):
    """CosyVoice's extractor's session: all graph optimisations, one intra-op thread (built before timing)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])


def cosyvoice_ort(sess, keys, paths, threads):
    names = [i.name for i in sess.get_inputs()]

    def one(path):
        mel = log_mel(load_audio(path, 16000))[None].numpy()
        return sess.run(None, {names[0]: mel, names[1]: np.array([mel.shape[2]], dtype=np.int32)})[0].reshape(-1)

    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(keys, pool.map(one, paths)))


PEER_NAMES = {"v1_50hz": "speech_tokenizer_v1", "v1_25hz": "speech_tokenizer_v1_25hz",
              "v2_25hz": "speech_tokenizer_v2_25hz", "v3_25hz": "speech_tokenizer_v3_25hz"}


def peer_model(version, onnx_path):
    """The peer's model as its ``load_model`` builds it, with the weights its own converter reads from the
    official-layout file (strict: every tensor)."""
    import s3tokenizer as s3
    from s3tokenizer.model_v2 import S3TokenizerV2
    from s3tokenizer.model_v3 import S3TokenizerV3

    name = PEER_NAMES[version]
    if version == "v3_25hz":
        model, weights = S3TokenizerV3(name), s3.onnx2torch_v3(onnx_path)
    elif version == "v2_25hz":
        model, weights = S3TokenizerV2(name), s3.onnx2torch(onnx_path)
    else:
        model, weights = s3.S3Tokenizer(name), s3.onnx2torch(onnx_path)
    model.load_state_dict(weights, strict=True)
    return model.eval()


@torch.inference_mode()
def peer_batches(peer, keys, paths, size=32):
    """The peer's CLI on CPU: its log-mel and ``padding``, batches of ``size`` in file order, its ``quantize``."""
    import s3tokenizer as s3

    out = {}
    for j in range(0, len(keys), size):
        mels, lens = s3.padding([s3.log_mel_spectrogram(load_audio(p, 16000)) for p in paths[j: j + size]])
        codes, n = peer.quantize(mels, lens)
        for i, k in enumerate(keys[j: j + size]):
            out[k] = codes[i, : int(n[i])].numpy()
    return out


def s3_flops(cfg, num_frames: int) -> float:
    """Multiply-add FLOPs (x2) of one utterance: conv stem, per block the 4 projections, QK^T and AV, the FFN and
    the FSMN taps, and the quantizer product (norms, softmax and activations left out); windows as ``quantize``."""
    d, total = cfg.d_model, 0.0
    for w in plan_windows(num_frames, cfg):
        t1 = -(-(w.end - w.start) // cfg.conv1_stride)
        t = -(-t1 // 2)
        total += 2 * t1 * d * cfg.n_mels * 3 + 2 * t * d * d * 3
        block = 2 * t * d * d * 4 + 2 * 2 * t * t * d + 2 * 2 * t * d * d * cfg.mlp_ratio + 2 * t * d * cfg.fsmn_kernel
        total += cfg.n_layers * block
        total += 2 * t * d * (cfg.codebook_size if cfg.quantizer == "vq" else cfg.fsq_dims)
    return total


def torchrun(ckpt, version, nproc, data_dir, out_dir, workers, device, dtype, extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "stok.bin.dump_s3", "--model", ckpt, "--version", version, "--data_dir", data_dir,
           "--output_dir", out_dir, "--num_workers", str(workers), "--device", device, "--dtype", dtype,
           "--overwrite", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {k: v for k, v in load_codes(os.path.join(out_dir, f"{NAME}.scp"))}


LABELS = {"a": "stok one at a time, reference kernels", "b": "stok batches of 32, file order",
          "c": "stok engine (bucketing, workers)", "o": "CosyVoice extractor (onnxruntime, 1 thread/session)",
          "p": "s3tokenizer package, batches of 32", "d": "stok engine under torchrun",
          "r": "stok engine --dtype bf16 (CPU bf16 products)"}
RATIOS = (("c", "a"), ("c", "b"), ("c", "o"), ("c", "p"), ("d", "o"), ("d", "p"), ("d", "c"), ("r", "o"), ("r", "c"))


def agreement(ref, got) -> str:
    same = sum(int(np.sum(np.asarray(got[k])[: len(v)] == v)) if len(got[k]) == len(v) else 0 for k, v in ref.items())
    total = sum(len(v) for v in ref.values())
    return f"{100.0 * same / total:.2f}% of {total} tokens equal to fp32"


def compare(ref, got, margins_of):
    """(differing tokens, of which near-ties, total); ``margins_of(key)`` is called only for utterances that differ."""
    diff = ties = 0
    for k, expected in ref.items():
        if len(expected) == len(got[k]) and np.array_equal(expected, got[k]):
            continue
        d, t = classify_differences(expected, got[k], margins_of(k))
        diff, ties = diff + d, ties + t
    return diff, ties, sum(len(v) for v in ref.values())


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
                        "p (the s3tokenizer package), d (torchrun, with --nproc)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every mode this many times, interleaved, and keep each mode's fastest run "
                        "(on a shared machine the load of other tenants varies from minute to minute)")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    if set(modes) - set(LABELS) or ("d" in modes and not args.nproc):
        p.error(f"--modes takes {','.join(LABELS)}; d needs --nproc")
    isa = cpu_isa().label if args.device == "cpu" else args.device
    if "r" in modes and (args.device != "cpu" or not cpu_isa().bf16):
        print(f"mode (r) left out: --dtype bf16 on CPU needs AVX-512 BF16 or AMX; this CPU is {isa}", flush=True)
        modes = [m for m in modes if m != "r"]
    n = args.n or (24 if args.quick else 100)
    hi = args.max_seconds or (8.0 if args.quick else 30.0)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    work = args.workdir or tempfile.mkdtemp(prefix="s3bench_")
    keys, paths, audio = make_corpus(os.path.join(work, "data"), n, args.min_seconds, hi, seed=0)
    print(f"corpus: {n} utterances, {args.min_seconds:g}-{hi:g} s shuffled, {audio:.1f} s of audio; "
          f"torch threads {threads}, {os.cpu_count()} cores; ISA {isa}; MKL on AMD {stok.mkl_on_amd.status()}",
          flush=True)
    peak = gemm_peak() if args.device == "cpu" else None
    if peak:
        print_peak(peak)
    frames = {k: mel_frames(sf.info(path).frames) for k, path in zip(keys, paths)}
    for version in args.versions.split(","):
        model = build_model(full_config(version), seed=0)
        if model.cfg.quantizer == "vq":
            spread_codebook(model, [log_mel(load_audio(p, 16000)) for p in paths[:3]])
        ckpt = os.path.join(work, f"s3_{version}.pt")
        if "d" in modes:
            save_checkpoint(model, ckpt)
        onnx_path = os.path.join(work, f"s3_{version}.onnx")
        if "o" in modes or "p" in modes:
            export_official(model, onnx_path)
        peer = peer_model(version, onnx_path) if "p" in modes else None
        session = cosyvoice_session(onnx_path) if "o" in modes else None
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        model.to(args.device).set_dtype(dtype)
        model.info["source_sha256"] = module_checksum(model)  # a real run reads its weights checksum from the cache
        with torch.inference_mode():  # warm-up (both kernel sets, the peer): first calls are not part of any time
            for fast in (False, True):
                model.set_fast_cpu(fast).quantize(torch.randn(2, 128, 300, device=model.device),
                                                  torch.tensor([300, 200]))
            if peer is not None:
                peer.quantize(torch.randn(2, 128, 300), torch.tensor([300, 200]))
            if session is not None:
                session.run(None, {session.get_inputs()[0].name: np.zeros((1, 128, 300), np.float32),
                                   session.get_inputs()[1].name: np.array([300], np.int32)})

        def reference():
            model.set_fast_cpu(False)
            try:
                return one_at_a_time(model, keys, paths)
            finally:
                model.set_fast_cpu(True)

        def reduced():
            model.set_cpu_precision(BF16[version])
            try:
                return engine(model, os.path.join(work, "data"), os.path.join(work, f"dump_{version}_bf16"),
                              args.workers, args.engine_opts.split() + ["--dtype", "bf16"])
            finally:
                model.set_cpu_precision(FP32)

        @torch.inference_mode()
        def warm(precision):  # packed weights in place before timing, as onnxruntime's session has its own
            model.set_fast_cpu(True).set_cpu_precision(precision)
            model.quantize(torch.randn(1, 128, 300, device=model.device), torch.tensor([300]))
            model.set_cpu_precision(FP32)

        warm_up = {"c": lambda: warm(FP32), "r": lambda: warm(BF16[version])}

        runners = {
            "a": reference,
            "b": lambda: fixed_batches(model, keys, paths),
            "c": lambda: engine(model, os.path.join(work, "data"), os.path.join(work, f"dump_{version}"),
                                args.workers, args.engine_opts.split() + ["--dtype", args.dtype]),
            "o": lambda: cosyvoice_ort(session, keys, paths, threads),
            "r": reduced,
            "p": lambda: peer_batches(peer, keys, paths),
            "d": lambda: torchrun(ckpt, version, args.nproc, os.path.join(work, "data"),
                                  os.path.join(work, f"dump_{version}_d"), args.workers, args.device,
                                  args.dtype, args.engine_opts.split()),
        }
        times, toks = {}, {}
        for r in range(max(1, args.repeats)):
            for mode in modes:
                torch.set_num_threads(threads)
                if args.device == "cpu" and mode in warm_up:
                    warm_up[mode]()
                t = time.perf_counter()
                toks[mode] = runners[mode]()
                dt = time.perf_counter() - t
                times[mode] = min(dt, times.get(mode, dt))
                print(f"  {version} ({mode}) run {r + 1}: {dt:8.1f} s  {audio / dt:6.2f} audio s/s [{isa}]", flush=True)

        margins = {}

        def margins_of(key):  # the reference kernels' decision margins, only for utterances that differ
            if key not in margins:
                model.set_fast_cpu(False)
                margins[key] = decision_margins(model, log_mel(load_audio(paths[keys.index(key)], 16000)))
                model.set_fast_cpu(True)
            return margins[key]

        flops = sum(s3_flops(model.cfg, frames[k]) for k in keys)
        ref = "a" if "a" in toks else modes[0]
        print(f"{version} [{args.device} {args.dtype}, {isa}]: audio seconds per wall second; tokens differing from "
              f"({ref}) (near-ties: decision margin < 1e-5); model FLOPs of the corpus {flops / 1e12:.2f} TFLOP")
        for mode in modes:
            if mode == "r":  # reduced precision: agreement, not near-ties
                tokens = agreement(toks[ref], toks[mode])
            else:
                diff, ties, total = compare(toks[ref], toks[mode], margins_of)
                tokens = f"{diff} of {total} differ, {ties} near-ties"
            line = f"  ({mode}) {LABELS[mode]:<52} {audio / times[mode]:7.2f} [{isa}]  ({tokens})"
            if peak:
                cores = os.cpu_count() if mode == "d" else min(threads, os.cpu_count())
                line += "  " + fraction(flops, times[mode], peak["gflops"], cores)
                line += " (fp32 peak)" if mode == "r" else ""
            print(line, flush=True)
        ratios = [f"{a}/{b} = {times[b] / times[a]:.2f}" for a, b in RATIOS if a in times and b in times]
        if ratios:
            print(f"  speed ratios [{isa}]: " + ", ".join(ratios), flush=True)
        if peak:
            cores = min(threads, os.cpu_count())
            ceiling = flops / (peak["gflops"] * 1e9 * cores)
            line = (f"  roofline: at 100% of {cores} cores' measured peak the corpus takes {ceiling:.1f} s "
                    f"({audio / ceiling:.1f} audio s/s)")
            for base in ("o", "p"):
                if base in times:
                    line += f"; the most any mode can gain over ({base}) is {times[base] / ceiling:.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
