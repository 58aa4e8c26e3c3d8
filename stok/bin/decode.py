"""``stok-decode`` / ``python -m stok.bin.decode``: SpeechTokenizer codes (a stage 4 scp) back to audio.

    python -m stok.bin.decode --model_dir exp/st/export --codes_scp dump/st_codes/dev/st_codes.scp \\
        --output_dir exp/st/decode/dev [--first_layer 1] [--n_q 1]

Writes ``<output_dir>/wav/<utt>.wav`` (16-bit PCM at the model's rate, ``frames x hop`` samples) and
``<output_dir>/wav.scp`` listing them, so the result is a data dir that can be listened to, evaluated or
tokenized again. Layers: column i of a codes record is RVQ layer i + 1. ``--first_layer k`` decodes from
layer k + 1 on, i.e. the residual stack of layers k+1..: ``sum_i codebook_i[code_i]`` over those layers
only (``--first_layer 0 --n_q 1`` is RVQ-1 alone, the content layer; ``--first_layer 1`` leaves it out).
Codes are decoded in length-sorted batches, each item with its own length, read from the archive batch by
batch (what is held is the keys, lengths and locations, not the scp's codes); an utterance longer than
``--chunk_seconds`` (60 s) is decoded as a stream of chunks of that length and written as it comes, so memory
does not grow with its length (the decoder's LSTM state is carried from chunk to chunk and the convolutions
see their neighbours' frames: the audio equals whole-utterance decoding to float32 rounding, see
``stok.models.speechtokenizer.long_audio``). ``decode_info.json`` records
what made the audio (checksums of the model files, the codes scp, the layers): a rerun with the same skips the
files already written; a rerun with others is refused, naming what differs, unless ``--overwrite``, which
removes the old audio once every check (options, codes, model load) has passed. Every check runs before
anything is written.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import time
from typing import BinaryIO, Dict, Iterator, List, Tuple

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from stok.bin.entry import entry_point
from stok.core.bucketing import make_batches
from stok.core.checksums import file_sha256
from stok.core.distributed import resolve_device
from stok.core.errors import UserError
from stok.core.fileio import atomic_open, atomic_write_text, check_output_dir
from stok.core.records import refuse_other_record
from stok.core.ark import COMPRESSED, read_array, split_location
from stok.core.storage import load_codes, to_codes
from stok.core.tables import read_table
from stok.models.speechtokenizer.long_audio import decode_stream
from stok.models.speechtokenizer.model_args import STModelSettings

log = logging.getLogger("stok.decode")
RECORD = "decode_info.json"  # what made the audio of an output dir (model checksums, codes, layers)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    STModelSettings.add_arguments(p, "SpeechTokenizer model")
    p.add_argument("--codes_scp", required=True, help="st_codes.scp from stok-dump-codes ([T, n_q] records)")
    p.add_argument("--output_dir", required=True, help="where wav/<utt>.wav and wav.scp go")
    p.add_argument("--first_layer", type=int, default=0, help="0-based RVQ layer to decode from (0: all layers)")
    p.add_argument("--n_q", type=int, default=0, help="layers to use from --first_layer on (0: all that are there)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch_seconds", type=float, default=60.0, help="max padded audio seconds per decode batch")
    p.add_argument("--chunk_seconds", type=float, default=60.0,
                   help="utterances longer than this are decoded as a stream of chunks of this length, written as "
                        "they come, so that an hour takes the memory of a minute (whole, the decoder needs ~20 MB "
                        "per second of audio at the released size); 0: every utterance whole")
    p.add_argument("--limit", type=int, default=0, help="decode only the first N utterances")
    p.add_argument("--overwrite", action="store_true",
                   help="remove the audio already in --output_dir (after every check passed) and decode everything")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    return p


def _write_wav(path: str, wav: np.ndarray, sample_rate: int) -> None:
    with atomic_open(path) as f:
        sf.write(f, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")


def _write_wav_stream(path: str, blocks: Iterator[torch.Tensor], sample_rate: int) -> int:
    """Write consecutive waveform blocks as one WAV file (atomically); returns the samples written."""
    n = 0
    with atomic_open(path) as f, sf.SoundFile(f, "w", sample_rate, 1, subtype="PCM_16", format="WAV") as out:
        for block in blocks:
            out.write(np.clip(block.float().cpu().numpy(), -1.0, 1.0))
            n += block.numel()
    return n


def check_args(args) -> None:
    if args.first_layer < 0 or args.n_q < 0 or args.limit < 0:
        raise UserError("--first_layer, --n_q and --limit must be >= 0")
    if not args.batch_seconds > 0:
        raise UserError(f"--batch_seconds must be > 0, got {args.batch_seconds}")
    if not args.chunk_seconds >= 0:
        raise UserError(f"--chunk_seconds must be >= 0 (0: whole utterances), got {args.chunk_seconds}")
    if not os.path.isfile(args.codes_scp):
        raise UserError(f"--codes_scp {args.codes_scp} not found (stage 4 writes dump/st_codes/<split>/st_codes.scp)")
    check_output_dir(args.output_dir)


def _scp_lines(path: str) -> List[Tuple[str, str]]:
    """``(key, location)`` of a codes scp; a line that is not ``utt location``, a repeated key, a binary file or a
    missing archive is named with ``path:line``."""
    table = read_table(path, scp=True, what="--codes_scp")
    for n, (key, loc) in enumerate(table.items(), 1):
        ark = loc.rpartition(":")[0] if loc.rpartition(":")[2].isdigit() else None
        if ark is not None and not loc.endswith("|") and not os.path.isfile(ark):
            raise UserError(f"{path}:{n}: {key}: archive {ark} not found")
    if not table:
        raise UserError(f"--codes_scp {path} is empty")
    return list(table.items())


class CodeRecords:
    """The records of a codes scp, read back one at a time by location (open archives kept): what the decoding
    holds is one batch of codes, not the whole scp's."""

    def __init__(self, path: str, first: int, last: int):
        self.path, self.first, self.last = path, first, last
        self.handles: Dict[str, BinaryIO] = {}

    def read(self, key: str, location: str) -> np.ndarray:
        ark, offset = split_location(location)
        if ark not in self.handles:
            self.handles[ark] = open(ark, "rb")
        array, kind = read_array(self.handles[ark], offset, f"{self.path}:{key}")
        return to_codes(array, f"{self.path}:{key}", compressed=kind in COMPRESSED)[:, self.first:self.last]

    def __enter__(self) -> "CodeRecords":
        return self

    def __exit__(self, *exc) -> None:
        for fd in self.handles.values():
            fd.close()


def read_codes(path: str, first: int, last: int, limit: int, codebook_size: int) -> List[Tuple[str, int, str]]:
    """``(key, frames, location)`` of every record (the first ``limit``), each read once and checked to be
    SpeechTokenizer codes of layers ``first..last-1`` within the codebooks; only these three are kept."""
    lines = _scp_lines(path)[: limit or None]
    items: List[Tuple[str, int, str]] = []
    it = load_codes(path)
    for key, location in lines:
        try:
            got, codes = next(it)
            if got != key:
                raise UserError(f"{path}: expected {key}, the archive gave {got}; dump the codes again")
        except UserError:
            raise
        except StopIteration:
            raise UserError(f"{path}: {key} could not be read (the scp and its archive disagree)") from None
        except Exception as e:  # noqa: BLE001 - what a damaged archive or a features scp makes the reader raise
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "not exact integers" in text:
                raise UserError(f"--codes_scp {path}: {key} holds non-integer values: a features scp, not "
                                "SpeechTokenizer codes (stage 4 writes dump/st_codes/<split>/st_codes.scp)") from e
            raise UserError(f"{path}: {key} cannot be read ({type(e).__name__}: {text}); dump the codes again") from e
        if codes.ndim != 2:
            raise UserError(f"{path}:{key} holds 1-D tokens, not SpeechTokenizer codes [T, n_q]")
        if codes.shape[1] < last:
            raise UserError(f"{path}:{key} has {codes.shape[1]} codebooks; layers up to {last - 1} "
                            "asked for (lower --n_q or dump more codebooks)")
        c = codes[:, first:last]
        if c.size and (c.min() < 0 or c.max() >= codebook_size):
            raise UserError(f"{path}:{key} has codes {int(c.min())}..{int(c.max())}, the model's codebooks have "
                            f"{codebook_size} entries: these codes come from another model")
        items.append((key, len(c), location))
    return items


def decode_record(args, files: List[str], first: int, last: int) -> dict:
    """What made the audio of an output dir: the model files' checksums, the codes and the layers."""
    return {"tool": "stok-decode", "model": {os.path.basename(p): file_sha256(p) for p in files},
            "codes_scp": os.path.abspath(args.codes_scp), "layers": [first, last - 1]}


def _old_outputs(out_dir: str) -> List[str]:
    wav_dir = os.path.join(out_dir, "wav")
    wavs = sorted(glob.glob(os.path.join(glob.escape(wav_dir), "*.wav")))
    scp = os.path.join(out_dir, "wav.scp")
    return wavs + ([scp] if os.path.isfile(scp) else [])


def check_output(out_dir: str, record: dict, overwrite: bool) -> None:
    """Refuse (nothing written) to add audio to a dir holding another model's or other codes' audio."""
    if not overwrite and _old_outputs(out_dir):
        refuse_other_record(os.path.join(out_dir, RECORD), record, f"--output_dir {out_dir} holds decoded audio")


def start_output(out_dir: str, record: dict, overwrite: bool) -> str:
    """After every check: create the dirs, remove old audio (``--overwrite``), record what decodes into it."""
    wav_dir = os.path.join(out_dir, "wav")
    os.makedirs(wav_dir, exist_ok=True)
    if overwrite:
        for p in _old_outputs(out_dir):
            os.remove(p)
    atomic_write_text(json.dumps(record, indent=1) + "\n", os.path.join(out_dir, RECORD))
    return wav_dir


@entry_point
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_parser().parse_args(argv)
    model_settings = STModelSettings.from_args(args)
    check_args(args)
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    model = model_settings.load(device)
    cfg = model.cfg
    last = cfg.n_q if not args.n_q else args.first_layer + args.n_q
    if args.first_layer >= cfg.n_q:
        raise UserError(f"--first_layer {args.first_layer} is out of range: the model has {cfg.n_q} RVQ layers "
                        f"(0..{cfg.n_q - 1})")
    if last > cfg.n_q:
        raise UserError(f"layers {args.first_layer}..{last - 1} asked for, the model has {cfg.n_q} (0..{cfg.n_q - 1}): "
                        "lower --n_q")
    items = read_codes(args.codes_scp, args.first_layer, last, args.limit, cfg.codebook_size)
    record = decode_record(args, model_settings.files(), args.first_layer, last)
    check_output(args.output_dir, record, args.overwrite)

    wav_dir = start_output(args.output_dir, record, args.overwrite)
    todo = [it for it in items if args.overwrite or not os.path.exists(os.path.join(wav_dir, it[0] + ".wav"))]
    chunk = int(round(args.chunk_seconds * cfg.sample_rate / cfg.hop))
    streamed = [it for it in todo if chunk and it[1] > chunk]
    whole = [it for it in todo if not (chunk and it[1] > chunk)]
    frames_budget = int(args.batch_seconds * cfg.sample_rate / cfg.hop)
    batches = make_batches([n for _, n, _ in whole], frames_budget, 0, bucketing=True)
    start, seconds = time.time(), 0.0
    with CodeRecords(args.codes_scp, args.first_layer, last) as records, torch.inference_mode(), \
            tqdm(total=len(todo), desc="decode", unit="utt") as bar:
        for key, _, location in streamed:
            c = records.read(key, location)
            blocks = decode_stream(model, torch.from_numpy(c.T).to(device), args.first_layer, chunk)
            seconds += _write_wav_stream(os.path.join(wav_dir, key + ".wav"), blocks, cfg.sample_rate) / cfg.sample_rate
            bar.update(1)
        for idx in batches:
            group = [(whole[i][0], records.read(whole[i][0], whole[i][2])) for i in idx]
            lengths = torch.tensor([len(c) for _, c in group], device=device)
            padded = torch.zeros(last - args.first_layer, len(group), int(lengths.max()), dtype=torch.long, device=device)
            for b, (_, c) in enumerate(group):
                padded[:, b, : len(c)] = torch.from_numpy(c.T).to(device)
            wav = model.decode(padded, first_layer=args.first_layer, lengths=lengths).float().cpu().numpy()
            for b, (key, c) in enumerate(group):
                n = len(c) * cfg.hop
                _write_wav(os.path.join(wav_dir, key + ".wav"), wav[b, 0, :n], cfg.sample_rate)
                seconds += n / cfg.sample_rate
            bar.update(len(group))
    with atomic_open(os.path.join(args.output_dir, "wav.scp"), "w") as f:
        for key, _, _ in sorted(items):
            f.write(f"{key} {os.path.abspath(os.path.join(wav_dir, key + '.wav'))}\n")
    summary = {"utterances": len(items), "decoded_now": len(todo), "audio_seconds_now": seconds,
               "wall_seconds": time.time() - start, "layers": [args.first_layer, last - 1],
               "codes_scp": os.path.abspath(args.codes_scp)}
    log.info("decoded %d utterances (%.1f s of audio) from layers %d..%d into %s in %.1f s", len(todo), seconds,
             args.first_layer, last - 1, args.output_dir, summary["wall_seconds"])
    return summary


if __name__ == "__main__":
    main()
