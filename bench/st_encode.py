"""SpeechTokenizer encode: one utterance at a time vs length-sorted padded batches (stok's length-aware model).

The released-size model (``SpeechTokenizerConfig()``: 103 M parameters, 8 x 1024 codes) with random weights;
its codebooks are filled with encoder frames of random audio (residuals for the later layers, plus a little
noise) so that codes are spread. The data: ``--n_utts`` utterances of random audio, durations uniform in
``[--min_seconds, --max_seconds]``, shuffled. Measured, on the same model and data:

  (a) ``model.encode`` on each utterance alone, in the shuffled order;
  (b) ``model.encode(padded, lengths)`` on length-sorted batches of at most ``--batch_seconds`` padded audio,
      codes cut to ``model.frames(lengths)``, with the default ``exact_batches = True`` (on CPU the model then
      runs the items of a batch one at a time, so the codes must equal (a): 0 differing codes, checked);
  (b') the same batches with ``exact_batches = False``: the padded batch itself (what ``encode`` always runs on
      GPU, and ``forward`` everywhere). Its codes equal (a) up to float rounding of near ties;
  (c) when the public ``speechtokenizer`` package is installed (and not ``--no_public``): its ``encode`` on each
      utterance alone, with the same weights; its codes are compared with (a) too.

The default set (16 utterances of 1-8 s, ~74 s of audio) runs in about 1 minute on 2 idle CPU cores (about
6 s of audio per second for (a); the LSTMs dominate on CPU). ``--device cuda --dtype bf16`` runs the same under
bf16 autocast on a GPU (the quantizer stays in fp32); on GPU (b) is the padded batch.

    python bench/st_encode.py [--n_utts 16] [--min_seconds 1] [--max_seconds 8] [--batch_seconds 20]
                              [--device cpu|cuda] [--dtype fp32|bf16] [--no_public] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import time
import types
import warnings
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig  # noqa: E402

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


def sorted_batches(lengths: List[int], batch_samples: int) -> List[List[int]]:
    """Indices, longest first, grouped so that ``items x longest <= batch_samples`` (at least one item)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: List[List[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_samples:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


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


def run_batched(model: SpeechTokenizer, wavs: List[torch.Tensor], batch_seconds: float, device: torch.device,
                autocast) -> tuple:
    lengths = [w.numel() for w in wavs]
    out: List[Optional[torch.Tensor]] = [None] * len(wavs)
    batches = sorted_batches(lengths, int(batch_seconds * SR))
    sync(device)
    t0 = time.perf_counter()
    for idx in batches:
        lens = torch.tensor([lengths[i] for i in idx])
        padded = torch.zeros(len(idx), 1, int(lens.max()))
        for row, i in enumerate(idx):
            padded[row, 0, : lengths[i]] = wavs[i]
        with autocast():
            codes = model.encode(padded.to(device), lens.to(device)).cpu()
        for row, (i, f) in enumerate(zip(idx, model.frames(lens).tolist())):
            out[i] = codes[:, row, :f]
    sync(device)
    return time.perf_counter() - t0, out, len(batches)


def n_diff(a: List[torch.Tensor], b: List[torch.Tensor]) -> int:
    return sum(int((x != y).sum()) if x.shape == y.shape else max(x.numel(), y.numel()) for x, y in zip(a, b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_utts", type=int, default=16)
    p.add_argument("--min_seconds", type=float, default=1.0)
    p.add_argument("--max_seconds", type=float, default=8.0)
    p.add_argument("--batch_seconds", type=float, default=20.0, help="padded audio per batch in (b)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--no_public", action="store_true", help="skip (c), the public package")
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

    def autocast():
        if args.dtype == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    print(f"device {device} ({torch.get_num_threads()} CPU threads), {args.dtype}; model built and codebooks "
          f"filled in {setup:.1f} s; {args.n_utts} utterances, {total:.1f} s of audio "
          f"({args.min_seconds:g}-{args.max_seconds:g} s)", flush=True)
    run_batched(model, wavs[:1], args.batch_seconds, device, autocast)  # warm-up (allocator, kernels)
    t_a, codes_a = run_single(model.encode, wavs, device, autocast)
    print(f"(a) done in {t_a:.1f} s", flush=True)
    t_b, codes_b, n_batches = run_batched(model, wavs, args.batch_seconds, device, autocast)
    print(f"(b) done in {t_b:.1f} s", flush=True)
    model.exact_batches = False
    t_p, codes_p, _ = run_batched(model, wavs, args.batch_seconds, device, autocast)
    model.exact_batches = True
    print(f"(b') done in {t_p:.1f} s", flush=True)
    rows = [("(a) stok, one at a time", t_a, n_diff(codes_a, codes_a)),
            (f"(b) stok, {n_batches} sorted batch{'es' if n_batches > 1 else ''} <= {args.batch_seconds:g} s", t_b,
             n_diff(codes_a, codes_b)),
            ("(b') the same, exact_batches=False", t_p, n_diff(codes_a, codes_p))]
    with warnings.catch_warnings():  # the package's torch.jit.script and weight_norm are deprecated
        warnings.simplefilter("ignore", FutureWarning)
        public = None if args.no_public else public_model_class()
        theirs = public(SpeechTokenizerConfig().to_dict()) if public is not None else None
    if theirs is not None:
        theirs.load_state_dict(model.state_dict())
        theirs = theirs.eval().to(device)
        with torch.no_grad():
            t_c, codes_c = run_single(theirs.encode, wavs, device, autocast)
        rows.append(("(c) public speechtokenizer, one at a time", t_c, n_diff(codes_a, codes_c)))
    elif not args.no_public:
        print("(c) skipped: the public speechtokenizer package is not installed")

    n_codes = sum(c.numel() for c in codes_a)
    print(f"\n{'method':<48} {'wall s':>8} {'audio s/s':>10} {'speed vs (a)':>12} "
          f"{'codes differing from (a)':>25}")
    for name, t, diff in rows:
        print(f"{name:<48} {t:>8.1f} {total / t:>10.2f} {t_a / t:>11.2f}x {diff:>12d} of {n_codes}")
    if rows[1][2] and device.type == "cpu":
        raise SystemExit("error: (b) codes differ from one-at-a-time codes")


if __name__ == "__main__":
    main()
