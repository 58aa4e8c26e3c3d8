"""SpeechTokenizer encode: the public package and stok one utterance at a time vs stok's dump path (batches).

The released-size model (``SpeechTokenizerConfig()``: 103 M parameters, 8 x 1024 codes) with random weights;
its codebooks are filled with encoder frames of random audio (residuals for the later layers, plus a little
noise) so that codes are spread. The data: ``--n_utts`` utterances of random audio, durations uniform in
``[--min_seconds, --max_seconds]``, shuffled. Measured, on the same model and data, ``--repeats`` rounds of
(a), (b), (c) in turn (the fastest round of each is reported: a shared machine is noisy):

  (a) ``model.encode`` on each utterance alone, in the shuffled order: the reference codes;
  (b) what ``stok-dump-codes --cpu_kernels fast`` runs: the dump engine's length-sorted batches
      (``stok.core.bucketing``, at most ``--batch_seconds`` of padded audio and ``--batch_size`` utterances)
      through ``STDumpModel``: on CPU in fp32 the fast path (:mod:`stok.models.speechtokenizer.fast_encode`),
      elsewhere ``model.encode`` on the padded batch. Its codes are compared with (a): codes that differ,
      frames where they differ, and for each such frame the decision margin of the first layer that differs
      (how much nearer, relatively, the code (b) chose is than the code (a) chose, measured on (b)'s
      residual): a flip at a float near-tie;
  (c) when the public ``speechtokenizer`` package is installed (and not ``--no_public``): its ``encode`` on each
      utterance alone, with the same weights; its codes are compared with (a) too;
  (e) the same batches through the fast path's exact mode (``FastEncoder(exact=True)``: ELU by the model's module,
      LSTMs item by item; bitwise (a)'s codes), which ``--cpu_kernels auto`` runs where it beats (a)
      (``stok.models.speechtokenizer.dump_model.auto_kernels``).

Every figure is printed with the CPU's instruction sets (``stok.models.cpu_isa``). ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2`` makes torch and oneDNN run their AVX2 kernels on an AVX-512 CPU (an approximation of an
AVX2 machine; printed as such).

``--nproc N`` instead times ``stok-dump-codes --cpu_kernels fast`` end to end (model load, audio reading,
writing; ``--num_workers 0``) on the same utterances written as float WAV files: one process with every
thread, then ``torchrun --nproc_per_node N`` (each process ``cores / N`` threads), and compares their codes
with each other and with (a).

``--device cuda --dtype bf16`` runs (a) and (b) under bf16 autocast on a GPU (the quantizer stays in fp32).

    python bench/st_encode.py [--n_utts 16] [--min_seconds 1] [--max_seconds 8] [--batch_seconds S]
                              [--batch_size 64] [--repeats 2] [--device cpu|cuda] [--dtype fp32|bf16]
                              [--no_public] [--nproc N] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import types
import warnings
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import stok  # noqa: E402,F401  before torch: MKL's AVX-512 kernels on AMD CPUs (stok.mkl_on_amd)

import torch  # noqa: E402

from stok.core.bucketing import make_batches  # noqa: E402
from stok.models.cpu_isa import cpu_isa  # noqa: E402
from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig  # noqa: E402
from stok.models.speechtokenizer.dump_model import STDumpModel  # noqa: E402
from tests.st_helpers import flip_margins as st_flip_margins  # noqa: E402

SR = 16000


def fill_codebooks(model: SpeechTokenizer, seconds: float, seed: int) -> None:
    """Codebook rows = residual frames of ``seconds`` of random audio (drawn with replacement) + 5 % noise."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    wav = 0.1 * torch.randn(1, 1, int(seconds * SR), generator=g)
    with torch.no_grad():
        z, _ = model.encoder(wav.to(dev))
        r = z[0].t().float()
        for layer in model.quantizer.layers:
            cb = layer._codebook
            pick = torch.randint(r.shape[0], (cb.size,), generator=g).to(dev)
            noise = torch.randn(cb.size, r.shape[1], generator=g).to(dev)
            cb.embed.copy_(r[pick] + 0.05 * r.std() * noise)
            cb.embed_avg.copy_(cb.embed)
            cb.cluster_size.fill_(1.0)
            cb.inited.fill_(1.0)
            r = r - cb.lookup(cb.nearest(r))


def public_model_class():
    """The public package's SpeechTokenizer class, or None. Its ``__init__`` also imports its trainer's
    dependencies; without them, ``speechtokenizer/model.py`` is loaded under a stand-in package module."""
    spec = importlib.util.find_spec("speechtokenizer")
    if spec is None:
        return None
    try:
        import speechtokenizer

        return speechtokenizer.SpeechTokenizer
    except ImportError:
        for k in [k for k in sys.modules if k == "speechtokenizer" or k.startswith("speechtokenizer.")]:
            del sys.modules[k]
    if importlib.util.find_spec("einops") is None:
        return None
    stub = types.ModuleType("speechtokenizer")
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules["speechtokenizer"] = stub
    from speechtokenizer.model import SpeechTokenizer as Public

    return Public


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_single(encode, wavs: List[torch.Tensor], device: torch.device, autocast) -> tuple:
    codes = []
    sync(device)
    t0 = time.perf_counter()
    for w in wavs:
        with autocast():
            codes.append(encode(w.to(device)[None, None]).cpu())
    sync(device)
    return time.perf_counter() - t0, [c[:, 0] for c in codes]


def engine_batches(wavs: List[torch.Tensor], batch_seconds: float, batch_size: int) -> List[List[int]]:
    """The dump engine's batches: length-sorted, within the padded budget and the utterance count."""
    return make_batches([w.numel() for w in wavs], int(batch_seconds * SR), batch_size)


def padded(wavs: List[torch.Tensor], idx: List[int]) -> tuple:
    lens = torch.tensor([wavs[i].numel() for i in idx])
    out = torch.zeros(len(idx), int(lens.max()))
    for row, i in enumerate(idx):
        out[row, : wavs[i].numel()] = wavs[i]
    return out, lens


def run_dump_model(dump: STDumpModel, wavs: List[torch.Tensor], batches: List[List[int]],
                   device: torch.device) -> tuple:
    """``STDumpModel.encode`` per batch, as the engine calls it; codes as ``[n_q, frames]`` per utterance."""
    out: List[Optional[torch.Tensor]] = [None] * len(wavs)
    sync(device)
    t0 = time.perf_counter()
    for idx in batches:
        wav, lens = padded(wavs, idx)
        for i, codes in zip(idx, dump.encode(wav.to(device), lens.to(device))):
            out[i] = torch.from_numpy(codes).long().t()
    sync(device)
    return time.perf_counter() - t0, out


def n_diff(a: List[torch.Tensor], b: List[torch.Tensor]) -> int:
    return sum(int((x != y).sum()) if x.shape == y.shape else max(x.numel(), y.numel()) for x, y in zip(a, b))


@torch.no_grad()
def flip_margins(model: SpeechTokenizer, dump: STDumpModel, wavs: List[torch.Tensor], batches: List[List[int]],
                 ref: List[torch.Tensor], got: List[torch.Tensor]) -> List[float]:
    """For each frame whose codes differ, at its first differing layer: ``(d_ref - d_got) / |r|^2`` on (b)'s
    latents (``tests.st_helpers.flip_margins``)."""
    fast = getattr(dump, "fast", None)
    margins: List[float] = []
    for idx in batches:
        if fast is None or all(torch.equal(ref[i], got[i]) for i in idx):
            continue
        wav, lens = padded(wavs, idx)
        for i, z in zip(idx, fast.latents(wav, lens)):
            margins += st_flip_margins(model, z, ref[i], got[i])
    return margins


def write_utterances(root: str, wavs: List[torch.Tensor]) -> str:
    """The utterances as float WAV files (read back bit for bit) in a Kaldi data dir; returns the dir."""
    import soundfile as sf

    data = os.path.join(root, "data")
    os.makedirs(os.path.join(root, "audio"))
    os.makedirs(data)
    with open(os.path.join(data, "wav.scp"), "w") as scp, open(os.path.join(data, "utt2dur"), "w") as dur:
        for i, w in enumerate(wavs):
            path = os.path.join(root, "audio", f"utt{i:03d}.wav")
            sf.write(path, w.numpy(), SR, subtype="FLOAT")
            scp.write(f"utt{i:03d} {path}\n")
            dur.write(f"utt{i:03d} {w.numel() / SR}\n")
    return data


def timed_dump(launcher: List[str], model_dir: str, data: str, out: str) -> tuple:
    """Wall seconds of one ``stok-dump-codes`` run, and its codes ``[n_q, frames]`` by utterance index."""
    from stok.core.storage import load_codes

    cmd = launcher + ["--model_dir", model_dir, "--data_dir", data, "--output_dir", out, "--device", "cpu",
                      "--num_workers", "0", "--cpu_kernels", "fast"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    codes = {int(k[3:]): torch.from_numpy(v).t() for k, v in load_codes(os.path.join(out, "st_codes.scp"))}
    return wall, [codes[i] for i in range(len(codes))]


def compare_processes(model: SpeechTokenizer, wavs: List[torch.Tensor], ref: List[torch.Tensor], nproc: int,
                      total: float) -> None:
    from stok.models.speechtokenizer import save_released

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_released(model, os.path.join(tmp, "model"))
        data = write_utterances(tmp, wavs)
        one = [sys.executable, "-m", "stok.bin.dump_codes"]
        many = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "stok.bin.dump_codes"]
        t1, c1 = timed_dump(one, model_dir, data, os.path.join(tmp, "one"))
        tn, cn = timed_dump(many, model_dir, data, os.path.join(tmp, "many"))
    n_codes = sum(c.numel() for c in ref)
    print(f"\n{'stok-dump-codes, end to end':<48} {'wall s':>8} {'audio s/s':>10} {'codes differing from (a)':>25}")
    print(f"{'1 process, ' + str(torch.get_num_threads()) + ' threads':<48} {t1:>8.1f} {total / t1:>10.2f} "
          f"{n_diff(ref, c1):>12d} of {n_codes}")
    print(f"{f'torchrun --nproc_per_node {nproc}':<48} {tn:>8.1f} {total / tn:>10.2f} {n_diff(ref, cn):>12d} of "
          f"{n_codes}")
    print(f"{nproc} processes vs 1: {t1 / tn:.2f}x; codes differing between the two runs: {n_diff(c1, cn)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_utts", type=int, default=16)
    p.add_argument("--min_seconds", type=float, default=1.0)
    p.add_argument("--max_seconds", type=float, default=8.0)
    p.add_argument("--batch_seconds", type=float, default=STDumpModel.batch_seconds["cpu"],
                   help="padded audio per batch in (b) (default: stok-dump-codes' CPU default)")
    p.add_argument("--batch_size", type=int, default=64, help="utterances per batch in (b) (the dump's default)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of (a), (b), (c); the fastest of each counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--no_public", action="store_true", help="skip (c), the public package")
    p.add_argument("--nproc", type=int, default=0, help="time stok-dump-codes: 1 process vs torchrun with N")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = SpeechTokenizer(SpeechTokenizerConfig()).eval().to(device)
    fill_codebooks(model, 4.0, args.seed)
    setup = time.perf_counter() - t0
    g = torch.Generator().manual_seed(args.seed + 1)
    durs = torch.empty(args.n_utts).uniform_(args.min_seconds, args.max_seconds, generator=g)
    wavs = [0.1 * torch.randn(int(d * SR), generator=g) for d in durs]
    total = sum(w.numel() for w in wavs) / SR
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    dump = STDumpModel(model, dtype=dtype)
    dump.set_fast_cpu(True)  # stok-dump-codes --cpu_kernels fast
    exact = STDumpModel(model, dtype=dtype)
    exact.set_cpu_kernels("exact")
    batches = engine_batches(wavs, args.batch_seconds, args.batch_size)

    def autocast():
        if args.dtype == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    isa = cpu_isa().label
    if os.environ.get("ATEN_CPU_CAPABILITY") or os.environ.get("ONEDNN_MAX_CPU_ISA"):
        isa += (f" running ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '-')} "
                f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')} kernels")
    print(f"ISA: {isa}; MKL on AMD {stok.mkl_on_amd.status()}")
    print(f"device {device} ({torch.get_num_threads()} CPU threads), {args.dtype}; model built and codebooks "
          f"filled in {setup:.1f} s; {args.n_utts} utterances, {total:.1f} s of audio "
          f"({args.min_seconds:g}-{args.max_seconds:g} s); (b): {len(batches)} batch(es) of <= "
          f"{args.batch_seconds:g} s, <= {args.batch_size} utterances", flush=True)
    with torch.no_grad():
        model.encode(wavs[0][None, None].to(device))  # warm-up (allocator, kernels)
        run_dump_model(dump, wavs, batches[-1:], device)
    if args.nproc:
        _, ref = run_single(model.encode, wavs, device, autocast)
        compare_processes(model, wavs, ref, args.nproc, total)
        return
    with warnings.catch_warnings():  # the package's torch.jit.script and weight_norm are deprecated
        warnings.simplefilter("ignore", FutureWarning)
        public = None if args.no_public else public_model_class()
        theirs = public(SpeechTokenizerConfig().to_dict()) if public is not None else None
    if theirs is not None:
        theirs.load_state_dict(model.state_dict())
        theirs = theirs.eval().to(device)
    elif not args.no_public:
        print("(c) skipped: the public speechtokenizer package is not installed")
    times = {"a": [], "b": [], "c": [], "e": []}
    for rnd in range(args.repeats):
        with torch.no_grad():
            t, codes_a = run_single(model.encode, wavs, device, autocast)
            times["a"].append(t)
            t, codes_b = run_dump_model(dump, wavs, batches, device)
            times["b"].append(t)
            if device.type == "cpu" and args.dtype == "fp32":
                t, codes_e = run_dump_model(exact, wavs, batches, device)
                times["e"].append(t)
            if theirs is not None:
                t, codes_c = run_single(theirs.encode, wavs, device, autocast)
                times["c"].append(t)
        print(f"round {rnd + 1}: " + ", ".join(f"({k}) {v[-1]:.1f} s" for k, v in times.items() if v), flush=True)
    t_a, t_b = min(times["a"]), min(times["b"])
    rows = [("(a) stok model.encode, one at a time", t_a, n_diff(codes_a, codes_a)),
            (f"(b) stok-dump-codes --cpu_kernels fast, {len(batches)} batch{'es' if len(batches) > 1 else ''}", t_b,
             n_diff(codes_a, codes_b))]
    if theirs is not None:
        rows.append(("(c) public speechtokenizer, one at a time", min(times["c"]), n_diff(codes_a, codes_c)))
    if times["e"]:
        rows.append(("(e) fast path, exact mode, same batches", min(times["e"]), n_diff(codes_a, codes_e)))
    n_codes = sum(c.numel() for c in codes_a)
    print(f"\n[{isa}]\n{'method':<48} {'wall s':>8} {'audio s/s':>10} {'speed vs (a)':>12} "
          f"{'codes differing from (a)':>25}")
    for name, t, diff in rows:
        print(f"{name:<48} {t:>8.1f} {total / t:>10.2f} {t_a / t:>11.2f}x {diff:>12d} of {n_codes}")
    if theirs is not None:
        print(f"(b) vs (c), the public package one at a time: {min(times['c']) / t_b:.2f}x")
        if times["e"]:
            print(f"(e) vs (c): {min(times['c']) / min(times['e']):.2f}x")
    margins = flip_margins(model, dump, wavs, batches, codes_a, codes_b)
    frames = sum(c.shape[1] for c in codes_a)
    if margins:
        m = sorted(margins)
        print(f"(b) vs (a): {len(m)} of {frames} frames differ (a flip, then the later layers of that frame); "
              f"margin (d_ref - d_b) / |r|^2 at the first flip: max |.| {max(abs(v) for v in m):.1e}, median "
              f"{m[len(m) // 2]:.1e}")
    elif rows[1][2]:
        print("(b) vs (a): codes differ (margins are measured for the CPU fast path only)")
    else:
        print(f"(b) vs (a): all {frames} frames identical")


if __name__ == "__main__":
    main()
