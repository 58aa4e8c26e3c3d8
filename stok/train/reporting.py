"""What a run reports (rank 0 only): TensorBoard, ``train_log.jsonl``, ``dev_log.jsonl``, the progress bar.

- ``train_log.jsonl``: one line per step with every loss (what resume tests compare step for step).
- TensorBoard (``<exp_dir>/tensorboard``): the step's values every ``sched.log_every`` steps (and at step 1),
  codebook usage and perplexity per RVQ layer, speed (audio hours per hour, seconds per step), skipped steps,
  epoch, fp16 loss scale; after each validation the dev values, dev audio and mel images (ground truth once per
  process, reconstructions at every validation). A resumed run purges events past its step.
- ``dev_log.jsonl``: one line per validation. The progress bar shows the latest losses every ``stdout_every``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, Optional

import torch

from stok.core.distributed import DistInfo
from stok.train import losses as L
from stok.train.state import TrainState


class Reporter:
    def __init__(self, exp_dir: str, info: DistInfo, log_every: int, stdout_every: int, sample_rate: int,
                 codebook_size: int, mel_spectrogram: Callable[[torch.Tensor], torch.Tensor],
                 show_progress: bool = True):
        self.exp_dir, self.main = exp_dir, info.is_main
        self.world = info.world
        self.log_every, self.stdout_every = log_every, stdout_every
        self.sr, self.codebook_size, self.mel_spectrogram = sample_rate, codebook_size, mel_spectrogram
        self.show_progress = show_progress and self.main
        self.writer = None
        self._bar = None
        self._train_log = None
        self._gt_logged: set = set()
        self._window = (time.time(), 0.0, 0)

    # ------------------------------------------------------------------ a training session
    def start(self, step: int, total: int) -> None:
        """Open TensorBoard (rank 0), ``train_log.jsonl`` and the progress bar for a run at ``step`` of ``total``."""
        from tqdm import tqdm

        self.open_writer(step)
        self._bar = tqdm(total=total, initial=step, disable=not self.show_progress, desc="train", dynamic_ncols=True)
        if self.main:
            self._train_log = open(os.path.join(self.exp_dir, "train_log.jsonl"), "a")
        self._window = (time.time(), 0.0, 0)

    def open_writer(self, step: int) -> None:
        if self.main and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(self.exp_dir, "tensorboard"),
                                        purge_step=step + 1 if step else None)

    def stop(self) -> None:
        """End of a training session (the writer stays open for the final values)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._train_log is not None:
            self._train_log.close()
            self._train_log = None

    def close(self) -> None:
        self.stop()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ------------------------------------------------------------------ every step
    def step(self, state: TrainState, vals: Optional[Dict[str, float]], audio_seconds: float,
             codes: Optional[torch.Tensor] = None, frame_mask: Optional[torch.Tensor] = None,
             loss_scale: Optional[float] = None) -> None:
        """A step done: ``vals`` its values (None: skipped), ``audio_seconds`` of audio (all ranks), the step's
        ``codes`` for codebook statistics, the fp16 ``loss_scale`` when a grad scaler is on."""
        t0, audio, steps = self._window
        self._window = (t0, audio + audio_seconds, steps + 1)
        if self._bar is not None:
            self._bar.update(1)
        if not self.main:
            return
        if vals is not None:
            self._train_log.write(json.dumps({"step": state.step, "epoch": state.position[0], **vals}) + "\n")
            self._train_log.flush()
        if state.step % self.log_every == 0 or state.step == 1:
            self._scalars(state, vals, codes, frame_mask, loss_scale)
            self._window = (time.time(), 0.0, 0)
        if vals is not None and state.step % self.stdout_every == 0 and self._bar is not None:
            self._bar.set_postfix(g=f"{vals['loss/generator']:.3f}", mel=f"{vals['loss/mel_error']:.3f}",
                                  d=f"{vals['loss/discriminator']:.3f}", dis=f"{vals['loss/distill']:.3f}")

    def _scalars(self, state, vals, codes, frame_mask, loss_scale) -> None:
        w = self.writer
        if w is None:
            return
        t0, audio, steps = self._window
        elapsed = max(1e-9, time.time() - t0)
        step = state.step
        if vals is not None:
            for k, v in vals.items():
                w.add_scalar(k, v, step)
            if codes is not None:
                for i, (used, ppl) in enumerate(L.codebook_stats(codes, self.codebook_size, frame_mask)):
                    w.add_scalar(f"codes/train_used_layer{i + 1}", used, step)
                    w.add_scalar(f"codes/train_perplexity_layer{i + 1}", ppl, step)
        w.add_scalar("speed/audio_hours_per_hour", audio / elapsed, step)
        w.add_scalar("speed/seconds_per_step", elapsed / max(1, steps), step)
        w.add_scalar("train/nan_skips", state.nan_skips, step)
        w.add_scalar("train/epoch", state.position[0], step)
        if loss_scale is not None:
            w.add_scalar("train/amp_overflows", state.amp_overflows, step)
            w.add_scalar("train/loss_scale_generator", loss_scale, step)

    def final(self, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/nan_skips", state.nan_skips, state.step)
            self.writer.flush()

    # ------------------------------------------------------------------ validation
    def dev(self, state: TrainState, res: Dict[str, float]) -> None:
        """A validation result at ``state.step`` (already added to the state): TensorBoard, stdout, dev_log."""
        if not self.main:
            return
        step = state.step
        for k, v in res.items():
            self.writer.add_scalar(k, v, step)
        used = " ".join(f"{int(res[k])}" for k in sorted(res) if k.startswith("codes/dev_used_layer"))
        self.print(f"step {step}: dev mel error {res['dev/mel_error']:.4f}, dev distill {res['dev/distill']:.4f}, "
                   f"codes used per layer [{used}]")
        with open(os.path.join(self.exp_dir, "dev_log.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **res}) + "\n")

    def dev_sample_sink(self, step: int):
        """Where the dev pass at ``step`` sends its samples (None where nothing is written: other ranks)."""
        if self.writer is None:
            return None
        return lambda i, wav, recon: self.dev_sample(i, wav, recon, step)

    def dev_sample(self, i: int, wav: torch.Tensor, recon: torch.Tensor, step: int) -> None:
        """Dev sample ``i``: its reconstruction at ``step`` (and the ground truth, once per process)."""
        w = self.writer
        if w is None:
            return
        if i not in self._gt_logged:
            self._gt_logged.add(i)
            w.add_audio(f"dev_audio/{i}_ground_truth", wav.float().cpu().clamp(-1, 1), 0, sample_rate=self.sr)
            self._mel_image(f"dev_mel/{i}_ground_truth", wav, 0)
        w.add_audio(f"dev_audio/{i}_reconstruction", recon.float().cpu().clamp(-1, 1), step, sample_rate=self.sr)
        self._mel_image(f"dev_mel/{i}_reconstruction", recon, step)

    def _mel_image(self, tag: str, wav: torch.Tensor, step: int) -> None:
        try:
            import PIL  # noqa: F401  (TensorBoard encodes images with Pillow)
        except ImportError:
            return
        mel = self.mel_spectrogram(wav.float()[None])[0]  # [n_mels, frames]
        lo, hi = mel.min(), mel.max()
        img = ((mel - lo) / (hi - lo).clamp_min(1e-5)).flip(0)  # low frequencies at the bottom
        self.writer.add_image(tag, img[None].cpu(), step, dataformats="CHW")

    def print(self, msg: str) -> None:
        if not self.main:
            return
        if self.show_progress:
            from tqdm import tqdm

            tqdm.write(msg)
        else:
            print(msg, flush=True)
