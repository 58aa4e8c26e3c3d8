"""HuBERT-base teacher extraction on CPU: stok against torchaudio one utterance at a time, with a roofline.

    python bench/teacher.py                      # 40 utterances of 1-16 s, --layer 9, modes t,a,b,e,d (2 procs)
    python bench/teacher.py --quick              # 12 utterances of 1-8 s, modes t,e
    python bench/teacher.py --layers 9,avg --modes t,a,b,e,d,n --nproc 2

A HuBERT-base model (12 x 768, GroupNorm front end; random weights with the norms moved away from identity:
speed and exactness do not depend on the weights' origin), saved as a torchaudio state dict, and a synthetic
mixed-length set written as float WAV files (what every mode reads is bit-identical). Modes, all with the same
torch thread count, models built and warmed up before timing unless said otherwise:

  (t) the baseline: torchaudio's own ``hubert_base()`` with the same weights, one utterance at a time,
      ``extract_features(w, num_layers=L)`` (fairseq's ``dump_hubert_feature.py`` does the same);
      for ``--layer avg`` all 12 layers (what the average needs);
  (a) stok's extractor, one utterance at a time (CPU kernels: ``stok.models.hubert.cpu_kernels``, prepacked
      Linear layers);
  (b) stok's extractor on length-sorted batches of ``--batch_seconds`` padded audio (per-utterance front end,
      one masked transformer pass per batch), in memory;
  (e) the dump engine in this process, as ``stok-dump-features --teacher hubert --checkpoint <file>`` runs it
      (``run_dump``: reads the files in DataLoader workers, buckets, writes ark/scp, cuts);
  (d) ``torchrun --nproc_per_node N -m stok.bin.dump_features ...`` (``--nproc N`` processes of cores/N
      threads), end to end including process start-up and model loading;
  (n) for reference, torchaudio's plain padded batch call on (b)'s batches: fast, but wrong for base
      (its GroupNorm statistics include the padding);
  (r) the dump engine as (e) with ``--dtype bfloat16`` (CPU: the Linear layers' products in bfloat16; only on CPUs
      with AVX-512 BF16 or AMX), with its own copy of the model. Besides the feature difference it prints the share
      of frames whose k-means label (``--clusters`` clusters, ``stok.models.kmeans``, learned on (t)'s fp32
      features of the set) equals the label of the fp32 features.

Every figure is printed with the CPU's instruction sets (``stok.models.cpu_isa``).

Printed per layer: wall time and audio seconds per wall second of each mode, the speed ratios against (t)
(and d/e), the max |difference| of each mode's features from (t) (from stok's plain-kernel extractor for avg,
which the tests hold equal to torchaudio/Hugging Face), and the roofline: the model FLOPs of the set (counted
from the shapes, one utterance at a time), the measured single-core fp32 GEMM peak (``bench/roofline.py``, same
run), each mode's fraction of its cores' peak, and the most any mode could gain over (t) at 100% of peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import stok  # noqa: E402,F401  before torch: MKL's AVX-512 kernels on AMD CPUs (stok.mkl_on_amd)

import kaldiio  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import torchaudio  # noqa: E402

from bench.roofline import fraction, gemm_peak, print_peak  # noqa: E402
from stok.bin.dump_features import NAME, get_parser  # noqa: E402
from stok.core.bucketing import make_batches  # noqa: E402
from stok.dump.engine import run_dump  # noqa: E402
from stok.dump.settings import DumpSettings  # noqa: E402
from stok.models.hubert import load_hubert  # noqa: E402
from stok.models.hubert.configs import get_config  # noqa: E402
from stok.models.cpu_isa import cpu_isa  # noqa: E402
from stok.models.hubert.extract import HubertExtractor, conv_frames  # noqa: E402
from stok.models.teacher import HubertTeacher  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = {"t": "torchaudio hubert_base, one at a time", "a": "stok extractor, one at a time",
          "b": "stok extractor, length-sorted batches", "e": "stok dump engine (stok-dump-features)",
          "d": "stok dump engine under torchrun", "n": "torchaudio padded batches (wrong for base)",
          "r": "stok dump engine --dtype bfloat16"}
RATIOS = (("a", "t"), ("b", "t"), ("e", "t"), ("d", "t"), ("d", "e"), ("r", "t"), ("r", "e"))


def label_agreement(reference, feats, clusters: int) -> str:
    """Share of frames whose k-means label (``clusters`` centroids learned on ``reference``) is the same for
    ``feats``."""
    from stok.models.kmeans.assign import Assigner
    from stok.models.kmeans.fit import fit_kmeans

    ref = torch.cat([f.float() for f in reference])
    assigner = Assigner(fit_kmeans(ref, min(clusters, ref.shape[0] // 4), seed=0).centroids)
    got = torch.cat([f.float() for f in feats])
    same = (assigner.assign_tensor(ref) == assigner.assign_tensor(got)).double().mean().item()
    return f"k-means labels {100 * same:.2f}% equal"


def make_set(root: str, n: int, lo: float, hi: float, seed: int = 0):
    """(keys, waves) written as float WAV files + a Kaldi dir (wav.scp, utt2dur) under ``root``."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    keys, waves = [], []
    with open(os.path.join(root, "wav.scp"), "w") as scp, open(os.path.join(root, "utt2dur"), "w") as dur:
        for i in range(n):
            wave = (0.1 * rng.standard_normal(int(rng.uniform(lo, hi) * 16000))).astype(np.float32)
            key, path = f"utt{i:04d}", os.path.join(root, f"utt{i:04d}.wav")
            sf.write(path, wave, 16000, subtype="FLOAT")
            scp.write(f"{key} {path}\n")
            dur.write(f"{key} {len(wave) / 16000:.4f}\n")
            keys.append(key)
            waves.append(torch.from_numpy(wave))
    return keys, waves


def hubert_flops(cfg: dict, num_samples: int, num_layers: int) -> float:
    """Multiply-add FLOPs (x2) of one utterance: the conv front end, the feature projection, the positional
    convolution, and per layer the 4 projections, QK^T and AV and the FFN (norms, softmax, GELU left out)."""
    t, c_in, total = max(num_samples, 400), 1, 0.0
    for c_out, k, s in cfg["extractor_conv_layer_config"]:
        t = (t - k) // s + 1
        total += 2 * t * c_out * c_in * k
        c_in = c_out
    d, ffn = cfg["encoder_embed_dim"], cfg["encoder_ff_interm_features"]
    total += 2 * t * c_in * d + 2 * t * d * (d // cfg["encoder_pos_conv_groups"]) * cfg["encoder_pos_conv_kernel"]
    total += num_layers * (2 * t * d * d * 4 + 2 * 2 * t * t * d + 2 * 2 * t * d * ffn)
    return total


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def engine(teacher, data_dir: str, out_dir: str, layer: str, workers: int, extra) -> list:
    args = get_parser().parse_args(["--teacher", "hubert", "--checkpoint", "unused", "--layer", layer,
                                    "--data_dir", data_dir, "--output_dir", out_dir, "--device", "cpu",
                                    "--num_workers", str(workers), "--overwrite", *extra])
    run_dump(DumpSettings.from_args(args), lambda device: teacher, name=NAME)
    return dict(kaldiio.load_scp(os.path.join(out_dir, f"{NAME}.scp")))


def torchrun(ckpt: str, nproc: int, data_dir: str, out_dir: str, layer: str, workers: int, extra) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "stok.bin.dump_features", "--teacher", "hubert", "--checkpoint", ckpt, "--layer", layer,
           "--data_dir", data_dir, "--output_dir", out_dir, "--device", "cpu", "--num_workers", str(workers),
           "--overwrite", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return dict(kaldiio.load_scp(os.path.join(out_dir, f"{NAME}.scp")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_utts", type=int, default=40)
    p.add_argument("--min_s", type=float, default=1.0)
    p.add_argument("--max_s", type=float, default=16.0)
    p.add_argument("--batch_seconds", type=float, default=HubertTeacher.batch_seconds["cpu"],
                   help="padded audio seconds per batch for (b), (e), (d) (default: stok-dump-features' CPU default)")
    p.add_argument("--layers", default="9", help="comma-separated --layer values to measure (numbers or avg)")
    p.add_argument("--modes", default="t,a,b,e,d", help="what to run, in order (see above)")
    p.add_argument("--nproc", type=int, default=2, help="processes for (d)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for (e) and (d)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--repeats", type=int, default=2, help="run the modes this many times, interleaved; best time counts")
    p.add_argument("--quick", action="store_true", help="12 utterances of 1-8 s, modes t,e, one run")
    p.add_argument("--workdir", default="", help="where the set, the weights and the dumps go (default: a temp dir)")
    p.add_argument("--clusters", type=int, default=1024, help="k-means clusters for (r)'s label agreement")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.quick:
        args.num_utts, args.max_s, args.modes, args.repeats = 12, 8.0, "t,e", 1
    modes = args.modes.split(",")
    if set(modes) - set(LABELS):
        p.error(f"--modes takes {','.join(LABELS)}")
    isa = cpu_isa().label
    if "r" in modes and not cpu_isa().bf16:
        print(f"mode (r) left out: --dtype bfloat16 on CPU needs AVX-512 BF16 or AMX; this CPU is {isa}", flush=True)
        modes = [m for m in modes if m != "r"]
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    work = args.workdir or tempfile.mkdtemp(prefix="teacher_bench_")
    data = os.path.join(work, "data")
    keys, waves = make_set(data, args.num_utts, args.min_s, args.max_s)
    audio_s = sum(w.numel() for w in waves) / 16000

    torch.manual_seed(0)
    cfg = get_config("base")
    baseline = torchaudio.models.hubert_base().eval()  # torchaudio's own model; stok's loads its weights file
    with torch.no_grad():  # norms away from identity, so that a GroupNorm error would show
        for name, prm in baseline.named_parameters():
            if "norm" in name:
                prm.add_(0.1 * torch.randn_like(prm))
    ckpt = os.path.join(work, "hubert_base_state_dict.pt")
    torch.save(baseline.state_dict(), ckpt)
    loaded = load_hubert(ckpt)
    lengths = [w.numel() for w in waves]
    batches = make_batches(lengths, int(args.batch_seconds * 16000), 0)
    padded_s = sum(len(b) * max(lengths[i] for i in b) for b in batches) / 16000
    print(f"set: {len(waves)} utterances, {audio_s:.0f} s of audio ({args.min_s}-{args.max_s} s), {len(batches)} "
          f"batches of <= {args.batch_seconds:g} s (padding {100 * (1 - audio_s / padded_s):.1f}%), torch threads "
          f"{threads}, {os.cpu_count()} cores ({isa}; MKL on AMD {stok.mkl_on_amd.status()}), HuBERT base "
          f"({sum(q.numel() for q in baseline.parameters()) / 1e6:.1f} M params, random weights)", flush=True)
    peak = gemm_peak()
    print_peak(peak)
    extra = ["--batch_seconds", f"{args.batch_seconds:g}"]
    results = {}
    for layer in args.layers.split(","):
        ex = HubertExtractor(loaded, layer=layer)
        n_layers = ex.num_layers if ex.layer == "avg" else ex.layer
        ta_layers = None if ex.layer == "avg" else ex.layer
        teacher = HubertTeacher(ex)
        ex16 = HubertExtractor(load_hubert(ckpt), layer=layer, dtype="bfloat16") if "r" in modes else None
        @torch.inference_mode()
        def torchaudio_one():
            return [baseline.extract_features(w[None], num_layers=ta_layers)[0][-1][0] for w in waves]

        def stok_batched():
            out = [None] * len(waves)
            for b in batches:
                for i, f in zip(b, ex.extract([waves[i] for i in b])):
                    out[i] = f
            return out

        @torch.inference_mode()
        def naive():
            out = [None] * len(waves)
            for b in batches:
                pad = torch.nn.utils.rnn.pad_sequence([waves[i] for i in b], batch_first=True)
                feats, lens = baseline.extract_features(pad, torch.tensor([lengths[i] for i in b]),
                                                        num_layers=ta_layers)
                for j, i in enumerate(b):
                    out[i] = feats[-1][j, : int(lens[j])]
            return out

        def by_key(table):
            return [torch.from_numpy(np.array(table[k][: conv_frames(max(n, 400))])) for k, n in zip(keys, lengths)]

        runners = {
            "t": torchaudio_one,
            "a": lambda: [ex.extract([w])[0] for w in waves],
            "b": stok_batched,
            "e": lambda: by_key(engine(teacher, data, os.path.join(work, f"dump_{layer}"), layer, args.workers, extra)),
            "d": lambda: by_key(torchrun(ckpt, args.nproc, data, os.path.join(work, f"dump_{layer}_d"), layer,
                                         args.workers, extra)),
            "n": naive,
            "r": lambda: by_key(engine(HubertTeacher(ex16), data, os.path.join(work, f"dump_{layer}_bf16"), layer,
                                       args.workers, extra + ["--dtype", "bfloat16"])),
        }
        with torch.inference_mode():  # warm-up: packing, first-call allocations
            baseline.extract_features(waves[0][None][:, :16000], num_layers=ta_layers)
            ex.extract([waves[0][:16000]])
            if ex16 is not None:
                ex16.extract([waves[0][:16000]])
        times, feats = {}, {}
        for r in range(max(1, args.repeats)):  # interleaved, so that load from elsewhere hits every mode alike
            for mode in modes:
                torch.set_num_threads(threads)
                feats[mode], dt = timed(runners[mode])
                times[mode] = min(dt, times.get(mode, dt))
                print(f"  --layer {layer} ({mode}) run {r + 1}: {dt:7.1f} s  {audio_s / dt:6.2f} audio s/s [{isa}]",
                      flush=True)
        if ex.layer == "avg":  # torchaudio has no average: the reference is stok's plain-kernel extractor
            plain = HubertExtractor(load_hubert(ckpt), layer=layer, fast_cpu=False)
            reference, ref_name = [plain.extract([w])[0] for w in waves], "stok plain kernels"
        else:
            reference, ref_name = (feats["t"] if "t" in feats else torchaudio_one()), "(t)"
        flops = sum(hubert_flops(cfg, n, n_layers) for n in lengths)
        print(f"--layer {layer}: audio seconds per wall second; max |features - {ref_name}|; model FLOPs of the set "
              f"{flops / 1e12:.2f} TFLOP", flush=True)
        rows = {}
        for mode in modes:
            if ex.layer == "avg" and mode in ("t", "n"):  # torchaudio's outputs are layers, not their average
                diff = float("nan")
            else:
                diff = max((a - b).abs().max().item() for a, b in zip(reference, feats[mode]))
            cores = os.cpu_count() if mode == "d" else min(threads, os.cpu_count())
            rows[mode] = {"seconds": times[mode], "audio_s_per_s": audio_s / times[mode], "max_abs_diff": diff}
            labels = ""
            if mode == "r":
                labels = "  " + label_agreement(reference, feats[mode], args.clusters)
                rows[mode]["labels"] = labels.strip()
            print(f"  ({mode}) {LABELS[mode]:<42} {audio_s / times[mode]:7.2f} [{isa}]  diff {diff:.1e}  "
                  f"{fraction(flops, times[mode], peak['gflops'], cores)}{labels}", flush=True)
        ratios = {f"{a}/{b}": times[b] / times[a] for a, b in RATIOS if a in times and b in times}
        if ratios:
            print(f"  speed ratios [{isa}]: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()), flush=True)
        cores = min(threads, os.cpu_count())
        ceiling = flops / (peak["gflops"] * 1e9 * cores)
        line = f"  roofline: at 100% of {cores} cores' measured peak the set takes {ceiling:.1f} s"
        if "t" in times:
            line += f"; the most any mode can gain over (t) is {times['t'] / ceiling:.2f}x"
        print(line, flush=True)
        results[layer] = {"modes": rows, "ratios": ratios, "tflop": flops / 1e12, "ceiling_s": ceiling}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"audio_seconds": audio_s, "num_utts": len(waves), "isa": isa, "peak": peak, "results": results},
                      f, indent=1)


if __name__ == "__main__":
    main()
