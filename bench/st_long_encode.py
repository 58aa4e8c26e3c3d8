"""SpeechTokenizer codes of a long utterance encoded in overlapping windows against whole-utterance encoding.

    python bench/st_long_encode.py [--seconds 150] [--span 3000] [--margins 25,50,100,250,500]
                                   [--forget_bias 0,3,5] [--fast] [--seed 0] [--model_dir DIR] [--wav FILE]

The input: the demo corpus's utterances (``recipes/demo/corpus``, espeak-ng speech) joined end to end, with 0.3 s
of silence between them, to ``--seconds`` (a length whose whole-utterance encode fits in memory: ~3.5 GB at
150 s). The model: the released size with random weights; its codebooks hold encoder frames of the input
(residuals for the later layers, plus 5% noise), so codes spread as a trained model's do. ``--forget_bias b``
adds ``b`` to the forget-gate biases of the encoder's LSTM (0: the random init, whose memory fades within a few
frames; 3 or 5: a forget gate near 0.95 or 0.993, memory of seconds, a stand-in for a trained LSTM's longer
memory, which random weights cannot show).

For each forget bias and each margin: the latents of :func:`stok.models.speechtokenizer.long_audio.encode_windows`
(windows of ``--span`` frames keeping ``margin`` frames of context on each inner side; ``--fast``: through
``--cpu_kernels fast``'s encoder instead of ``model.encode``) against the whole utterance's: the frames whose
codes differ (any of the 8 layers, RVQ-1 alone, and per layer), the largest relative latent difference, and how near a
tie each flipped frame was (``tests.st_helpers.flip_margins``: a flip at a margin ~1e-6 or less is float
rounding's). Printed as a table; the README states the row of the defaults (``ENCODE_SPAN``, ``ENCODE_MARGIN``).

``--model_dir`` measures a real model instead (a released ``config.json`` + ``SpeechTokenizer.pt`` pair: its own
codebooks and LSTM, ``--forget_bias`` ignored), ``--wav`` real audio (16 kHz mono, cut to ``--seconds``).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
import soundfile as sf
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig  # noqa: E402
from stok.models.speechtokenizer.fast_encode import FastEncoder  # noqa: E402
from stok.models.speechtokenizer.long_audio import ENCODE_MARGIN, ENCODE_SPAN, plan_windows  # noqa: E402
from tests.st_helpers import flip_margins  # noqa: E402

SR = 16000


def demo_speech(seconds: float, seed: int) -> torch.Tensor:
    files = sorted(glob.glob(os.path.join(ROOT, "recipes/demo/corpus/**/*.flac"), recursive=True))
    if not files:
        raise SystemExit("recipes/demo/corpus holds no .flac files")
    rng = np.random.default_rng(seed)
    parts, total, gap = [], 0, np.zeros(int(0.3 * SR), np.float32)
    while total < seconds * SR:
        for i in rng.permutation(len(files)):
            x, rate = sf.read(files[i], dtype="float32")
            assert rate == SR
            parts += [x, gap]
            total += len(x) + len(gap)
    return torch.from_numpy(np.concatenate(parts)[: int(seconds * SR)])


@torch.no_grad()
def fill_codebooks(model: SpeechTokenizer, z: torch.Tensor, seed: int) -> None:
    """Codebook rows: latent frames ``z [D, F]`` (residuals for later layers), drawn with replacement, + 5% noise."""
    g = torch.Generator().manual_seed(seed)
    r = z.t().float()
    for layer in model.quantizer.layers:
        cb = layer._codebook
        pick = torch.randint(r.shape[0], (cb.embed.shape[0],), generator=g)
        cb.embed.copy_(r[pick] + 0.05 * r.std() * torch.randn(cb.embed.shape, generator=g))
        cb.embed_avg.copy_(cb.embed)
        cb.cluster_size.fill_(1.0)
        cb.inited.fill_(1.0)
        r = r - cb.lookup(cb.nearest(r))


@torch.no_grad()
def windowed_latents(latents, wave: torch.Tensor, hop: int, span: int, margin: int) -> torch.Tensor:
    frames = -(-wave.numel() // hop)
    out = None
    for w in plan_windows(frames, span, margin):
        z = latents(wave[w.start * hop: min(wave.numel(), w.end * hop)].reshape(1, 1, -1))
        if out is None:
            out = z.new_zeros(z.shape[0], frames)
        out[:, w.keep_from: w.keep_to] = z[:, w.keep_from - w.start: w.keep_to - w.start]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=150.0)
    p.add_argument("--span", type=int, default=ENCODE_SPAN, help="window length in frames")
    p.add_argument("--margins", default=f"25,50,100,{ENCODE_MARGIN},500", help="comma-separated, frames")
    p.add_argument("--forget_bias", default="0,3,5", help="comma-separated additions to the LSTM forget gates")
    p.add_argument("--fast", action="store_true", help="encode windows with the --cpu_kernels fast encoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model_dir", help="a released-layout model to measure instead of random weights")
    p.add_argument("--wav", help="16 kHz audio to encode instead of the demo corpus (cut to --seconds)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    if args.model_dir:
        from stok.models.speechtokenizer import load_released

        model = load_released(args.model_dir)
        args.forget_bias = "0"
    else:
        model = SpeechTokenizer(SpeechTokenizerConfig()).eval()
    hop = model.hop
    if args.wav:
        from stok.data.audio import load_audio

        wave = load_audio(args.wav, model.sample_rate)[: int(args.seconds * model.sample_rate)]
    else:
        wave = demo_speech(args.seconds, args.seed)
    frames = -(-wave.numel() // hop)
    lstm = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.LSTM))
    hidden = lstm.hidden_size
    base = {n: prm.detach().clone() for n, prm in lstm.named_parameters() if n.startswith("bias_ih")}
    fast = FastEncoder(model)

    def latents(w: torch.Tensor) -> torch.Tensor:
        if args.fast:
            return fast.latents(w)[0]
        return model.encoder(w)[0][0]

    print(f"input: {args.wav or 'demo corpus speech'}, {wave.numel() / SR:g} s ({frames} frames); model "
          f"{args.model_dir or 'released size, random weights'}; windows of {args.span} frames "
          f"({args.span * hop / SR:g} s); encoder {'fast' if args.fast else 'reference'}; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    print("| forget bias | margin (frames / s) | windows | frames differing (any layer) | RVQ-1 codes differing | "
          "codes differing per layer (1..n_q) | max rel. latent diff | flips at margin < 1e-5 | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fb in [float(x) for x in args.forget_bias.split(",")]:
        with torch.no_grad():
            for n, prm in lstm.named_parameters():
                if n in base:
                    prm.copy_(base[n])
                    prm[hidden: 2 * hidden] += fb
        with torch.inference_mode():
            z_whole = model.encoder(wave.reshape(1, 1, -1))[0][0]
            if not args.model_dir:
                fill_codebooks(model, z_whole[:, : min(frames, 1500)], args.seed)
            ref = model.quantizer.encode(z_whole[None])[:, 0]
            for margin in [int(x) for x in args.margins.split(",")]:
                t = time.perf_counter()
                z = windowed_latents(latents, wave, hop, args.span, margin)
                secs = time.perf_counter() - t
                got = model.quantizer.encode(z[None])[:, 0]
                diff = (ref != got).any(0)
                rel = ((z - z_whole).norm(dim=0) / z_whole.norm(dim=0)).max().item()
                flips = flip_margins(model, z, ref, got)
                near = sum(abs(f) < 1e-5 for f in flips)
                n_win = len(plan_windows(frames, args.span, margin))
                print(f"| {fb:g} | {margin} / {margin * hop / SR:g} | {n_win} | {int(diff.sum())} of {frames} "
                      f"({100 * diff.float().mean():.3f}%) | {int((ref[0] != got[0]).sum())} | "
                      f"{' '.join(str(int(n)) for n in (ref != got).sum(1).tolist())} | {rel:.2e} | "
                      f"{near} of {len(flips)} | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
