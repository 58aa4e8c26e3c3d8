"""``stok-dump-features`` / ``python -m stok.bin.dump_features``: stage 1, teacher features through the dump engine.

Writes ``<output_dir>/feats.scp`` (+ ``feats.<rank>.ark``, ``failed.list``, ``feats.summary.json``): one float
matrix ``[T, D]`` per utterance with ``T = ceil(samples / 320)`` rows (50 Hz at 16 kHz; the frame rule of
:mod:`stok.core.frames`, shared with the SpeechTokenizer trainer).

Examples::

    # weight-free MFCC teacher (39 dims; the demo recipe)
    python -m stok.bin.dump_features --teacher mfcc --data_dir data/train --output_dir dump/mfcc/train
    # HuBERT base, mean of all 13 hidden states (the released SpeechTokenizer's teacher), on 4 GPUs
    torchrun --nproc_per_node 4 -m stok.bin.dump_features --teacher hubert \\
        --checkpoint hubert_base_ls960.pt --layer avg --data_dir data/train-clean-100 \\
        --output_dir dump/hubert/train-clean-100 --device cuda --feature_storage compressed16
    # HuBERT layer 9 (k-means units as the SpeechTokenizer authors'), Hugging Face weights
    python -m stok.bin.dump_features --teacher hubert --checkpoint hubert-base-ls960/ --layer 9 ...

Batches: utterances sorted by length, at most ``--batch_seconds`` of padded audio each (default: the teacher's, by
device: 20 s on CPU, where HuBERT is as fast one utterance at a time and larger batches only add memory traffic;
240 s on GPU).

Storage: float32 Kaldi matrices by default (``kaldiio.load_scp(feats.scp)[utt]`` -> float32 ``[T, D]``).
``--feature_storage compressed16`` writes Kaldi compressed matrices (two bytes per value, linear over each
matrix's own min..max range, the size of float16); ``kaldiio``, Kaldi's ``copy-feats`` and the trainer read them
back transparently as float32, with an error of at most (max - min) / 65535 per value. Before the dump starts
the tool prints a disk estimate (hours x 50 frames/s x dims x bytes) and warns when the output disk lacks room.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from typing import Optional

from stok.bin.entry import entry_point
from stok.core.distributed import on_gpu
from stok.core.errors import UserError
from stok.dump.engine import run_dump
from stok.dump.settings import DumpSettings, add_dump_arguments
from stok.models.teacher import TeacherSettings, build_teacher

log = logging.getLogger("stok.dump_features")
NAME = "feats"
FRAME_RATE = 50.0


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    TeacherSettings.add_arguments(p, "teacher")
    add_dump_arguments(p)
    return p


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000.0


def disk_estimate(hours: float, dim: int, storage: str) -> dict:
    """Bytes of a feature dump: frames x dims x bytes per value (+ per-record headers, negligible)."""
    frames = hours * 3600.0 * FRAME_RATE
    bytes_per_value = 2 if storage == "compressed16" else 4
    return {"hours": hours, "frames": frames, "dim": dim, "bytes_per_value": bytes_per_value,
            "bytes": frames * dim * bytes_per_value}


def print_estimate(settings: DumpSettings, hours: Optional[float], dim: int) -> Optional[dict]:
    if hours is None:
        log.info("disk estimate: durations unknown (no utt2dur); %d dims x %d bytes per value at 50 frames/s",
                 dim, 2 if settings.feature_storage == "compressed16" else 4)
        return None
    est = disk_estimate(hours, dim, settings.feature_storage)
    msg = (f"disk estimate: {hours:.2f} h x {FRAME_RATE:.0f} frames/s x {dim} dims x {est['bytes_per_value']} B "
           f"({settings.feature_storage}) = {_human(est['bytes'])}")
    existing = os.path.abspath(settings.output_dir)  # nothing is created before the dump starts
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    est["free"] = free
    if est["bytes"] > free:
        log.warning("%s, but only %s free under %s: the dump will not fit (use --feature_storage compressed16, "
                    "another disk, or an online teacher)", msg, _human(free), settings.output_dir)
    else:
        log.info("%s (%s free)", msg, _human(free))
    if settings.feature_storage == "float32" and est["bytes"] > 50e9:
        log.info("a large dump: --feature_storage compressed16 halves it (error <= (max-min)/65535 per value)")
    return est


@entry_point
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_parser().parse_args(argv)
    if args.text_output:
        raise UserError("--text_output writes integer tokens as text; teacher features are float matrices: leave it "
                        "out (read feats.scp with kaldiio.load_scp)")
    teacher_settings = TeacherSettings.from_args(args)
    settings = DumpSettings.from_args(args)
    if teacher_settings.teacher == "hubert" and teacher_settings.dtype == "bfloat16" and not on_gpu(settings.device):
        from stok.models.cpu_isa import cpu_isa

        isa, flag = cpu_isa(), teacher_settings.setting_name("dtype")
        if not isa.bf16:
            raise UserError(f"{flag} bfloat16 on CPU needs bfloat16 dot products (AVX-512 BF16 or AMX), which this "
                            f"CPU ({isa.label}) lacks: there it would run slower than float32; use {flag} float32")

    def build(device):  # called by the engine once the options and the output dir are checked
        try:
            return build_teacher(teacher_settings, device=device)
        except (FileNotFoundError, ValueError) as e:  # missing or unusable weights, --layer out of range ...
            raise UserError(str(e)) from None

    return run_dump(settings, build, name=NAME,
                    on_start=lambda inp, teacher: print_estimate(settings, inp.audio_hours(), teacher.dim))


if __name__ == "__main__":
    main()
