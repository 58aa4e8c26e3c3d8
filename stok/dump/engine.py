"""The one dump engine: wav.scp in, ``<name>.scp``/``.ark`` out, for every model.

``run_dump(args, build_model, name)`` checks everything before it creates or removes any output: the
options, the utterance list (Kaldi dir or wav.scp + segments), the output location, the model (built by
``build_model``), and that the output dir holds no dump made by another model or settings (the fingerprint,
``stok.dump.fingerprint``). Only then it creates the dir (``--overwrite``: removes the old outputs) and
records the fingerprint. It shards the list over ``torchrun`` ranks, skips what earlier runs wrote, batches
the rest by length, loads audio in DataLoader workers (worker threads on CPU: ``stok.dump.dataset.ThreadLoader``),
calls ``model.encode`` per padded batch, writes each
result crash-safely to the rank's ark/scp, lists failures, and (rank 0) merges everything at the end.
A model only says how a padded batch becomes codes (``stok.dump.model_api.DumpModel``). User mistakes
raise :class:`stok.cli.UserError`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional

import torch
from tqdm import tqdm

from stok.cli import UserError, check_output_dir
from stok.data.audio import AudioError, duration_seconds
from stok.data.kaldi_dir import Utterance, read_kaldi_dir, utterances_from_scp
from stok.dump import distributed
from stok.dump.bucketing import make_batches, padding_stats, shard
from stok.dump.dataset import Batch, Collate, ThreadLoader, UtteranceDataset
from stok.dump.fingerprint import check_fingerprint, start_output
from stok.dump.merge import done_keys, merge
from stok.dump.model_api import DumpModel
from stok.dump.options import check_dump_args
from stok.dump.storage import ShardWriter
from stok.fileio import atomic_open

log = logging.getLogger("stok.dump")


def read_utterances(args) -> List[Utterance]:
    if args.data_dir:
        utts = read_kaldi_dir(args.data_dir).utterances()
    else:
        utts = utterances_from_scp(args.wav_scp, args.segments)
    if args.limit:
        utts = utts[: args.limit]
    if not utts:
        raise UserError(f"no utterances in {args.data_dir or args.wav_scp}; give a non-empty list")
    return utts


def fill_durations(utts: List[Utterance], failures: Dict[str, str], show: bool) -> List[Utterance]:
    """Durations from file headers where utt2dur/segments gave none; unreadable files fail here."""
    missing = [u for u in utts if u.duration is None]
    if not missing:
        return utts
    if show:
        log.warning("%d utterances have no duration (no utt2dur): reading headers; "
                    "stage 0 writes utt2dur and saves this pass", len(missing))

    def probe(u: Utterance):
        try:
            d = duration_seconds(u.spec)
            if u.start is not None:
                d = (u.end if u.end is not None and u.end >= 0 else d) - u.start
            return d, None
        except AudioError as e:
            return None, f"AudioError: {e}"

    with ThreadPoolExecutor(8) as pool:
        results = list(tqdm(pool.map(probe, missing), total=len(missing), desc="durations", disable=not show))
    known = {u.utt_id: r for u, r in zip(missing, results)}
    out = []
    for u in utts:
        if u.duration is None:
            dur, err = known[u.utt_id]
            if err:
                failures[u.utt_id] = err
                continue
            u = Utterance(u.utt_id, u.spec, u.start, u.end, dur)
        out.append(u)
    return out


def encode_batch(model: DumpModel, batch: Batch, device: torch.device):
    """``model.encode`` on one batch; on GPU out-of-memory the batch is split in halves and retried."""
    padded, lengths = batch.padded.to(device, non_blocking=True), batch.lengths.to(device)
    try:
        return model.encode(padded, lengths)
    except torch.OutOfMemoryError:
        if len(batch.keys) == 1:
            raise
        torch.cuda.empty_cache()
        h = len(batch.keys) // 2
        outs = []
        for sl in (slice(0, h), slice(h, None)):
            sub_len = batch.lengths[sl]
            sub = Batch(batch.keys[sl], batch.padded[sl][..., : int(sub_len.max())], sub_len, batch.num_samples[sl])
            outs.extend(encode_batch(model, sub, device))
        return outs


def dump_fingerprint(model: DumpModel, args, name: str) -> dict:
    """The model's fingerprint plus the engine settings that change what is stored."""
    fp = {"name": name, "model": model.fingerprint()}
    if model.float_output:
        fp["feature_storage"] = args.feature_storage
    return fp


def run_dump(args, build_model: Callable[[torch.device], DumpModel], name: str,
             finish: Optional[Callable[[dict], None]] = None) -> dict:
    """Run one dump (see module docstring); returns the merged summary (on every rank).

    ``finish(summary)`` runs on rank 0 after the merge (extra outputs such as exports), before ``--strict``
    reports failures."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.time()
    check_dump_args(args)
    utts = read_utterances(args)
    out = args.output_dir
    check_output_dir(out)
    info = distributed.setup(args.device, args.threads)
    show = info.is_main
    model = build_model(info.device)
    model.set_cpu_kernels(getattr(args, "cpu_kernels", "auto"))
    if args.text_output and model.float_output:
        raise UserError(f"--text_output writes integer tokens as text; {name} holds float features: leave it out")
    if args.feature_storage != "float32" and not model.float_output:
        raise UserError(f"--feature_storage {args.feature_storage} is for float features; {name} holds integer "
                        "tokens or codes (stored exactly): leave it out")
    fingerprint = dump_fingerprint(model, args, name)
    if not args.overwrite:
        check_fingerprint(out, name, fingerprint)
    distributed.barrier(info)  # every rank has checked before rank 0 creates or removes anything
    if info.is_main:
        start_output(out, name, fingerprint, args.overwrite)
    distributed.barrier(info)

    mine = [utts[i] for i in shard([u.duration for u in utts], info.rank, info.world)]
    writer = ShardWriter(os.path.join(out, f"{name}.{info.rank}"), args.feature_storage)
    done = done_keys(out, name) | writer.done
    distributed.barrier(info)  # every rank has read the state before any rank writes
    todo = [u for u in mine if u.utt_id not in done]
    already = len(mine) - len(todo)

    failures: Dict[str, str] = {}
    todo = fill_durations(todo, failures, show)
    sr = model.sample_rate
    costs = [model.num_frames(max(1, int(round(u.duration * sr)))) for u in todo]
    max_cost = args.max_frames or (model.num_frames(int(args.batch_seconds * sr)) if args.batch_seconds > 0 else 0)
    batches = make_batches(costs, max_cost, args.batch_size, bucketing=not args.no_bucketing)
    pad = padding_stats(batches, costs)
    if show:
        log.info("%s: %d utterances, %d on rank 0 (%d already done), %d batches, padding %.1f%%, world %d, device %s",
                 name, len(utts), len(mine), already, len(batches), 100 * pad["padding_ratio"],
                 info.world, info.device)

    if info.device.type == "cpu" and args.num_workers:  # threads: forked workers cost the model page faults
        loader = ThreadLoader(UtteranceDataset(todo, model), batches, Collate(model), args.num_workers, prefetch=4)
    else:
        loader = torch.utils.data.DataLoader(
            UtteranceDataset(todo, model), batch_sampler=batches, collate_fn=Collate(model),
            num_workers=args.num_workers, pin_memory=info.device.type == "cuda",
            prefetch_factor=4 if args.num_workers else None)
    written, audio_seconds = 0, 0.0
    bar = tqdm(total=len(todo), desc=f"{name} (rank 0 of {info.world})", unit="utt", disable=not show)
    for batch in loader:
        for key, reason in batch.failures:
            failures[key] = reason
            log.warning("%s failed: %s", key, reason)
        if batch.keys:
            outputs = encode_batch(model, batch, info.device)
            if len(outputs) != len(batch.keys):
                raise RuntimeError(f"{type(model).__name__}.encode returned {len(outputs)} results for {len(batch.keys)} inputs")
            for key, array in zip(batch.keys, outputs):
                writer.write(key, array)
            written += len(batch.keys)
            audio_seconds += sum(batch.num_samples) / sr
        bar.update(len(batch.keys) + len(batch.failures))
        bar.set_postfix(hours=f"{audio_seconds / 3600:.2f}", failed=len(failures))
    bar.close()
    writer.close()

    with atomic_open(os.path.join(out, f"failed.{info.rank}.list"), "w") as f:
        for key, reason in failures.items():
            f.write(f"{key}\t{reason}\n")
    stats = {"rank": info.rank, "utterances": len(mine), "already_done": already,
             "written": written, "failed": len(failures), "audio_seconds": audio_seconds,
             "wall_seconds": time.time() - start, "batches": len(batches), **pad}
    with atomic_open(os.path.join(out, f"{name}.summary.{info.rank}.json"), "w") as f:
        json.dump(stats, f)
    distributed.barrier(info)
    if info.is_main:
        meta = {"name": name, "model": model.describe(), "fingerprint": fingerprint,
                "feature_storage": args.feature_storage, "bucketing": not args.no_bucketing,
                "num_workers": args.num_workers}
        summary = merge(out, name, info.world, args.text_output, meta)
        from stok.dump.cuts import write_dump_cuts  # lhotse is imported only here

        write_dump_cuts(args, out, name, summary)  # cuts.jsonl.gz beside the scp; adds cuts_written to summary
        if finish is not None:
            finish(summary)
    distributed.barrier(info)
    with open(os.path.join(out, f"{name}.summary.json")) as f:
        summary = json.load(f)
    distributed.cleanup(info)
    if show:
        log.info("%s: %d entries in %s, %d failed (see %s), %.2f h of audio in %.1f s",
                 name, summary["entries_in_scp"], os.path.join(out, f"{name}.scp"), summary["failed"],
                 os.path.join(out, "failed.list"), summary["audio_hours_now"], summary["wall_seconds"])
    if args.strict and summary["failed"]:
        raise UserError(f"{summary['failed']} utterances failed (--strict); see {out}/failed.list")
    return summary
