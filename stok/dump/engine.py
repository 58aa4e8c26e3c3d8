"""The one dump engine: an input list in, ``<name>.scp``/``.ark`` out, for every model.

``run_dump(settings, build_model, name)`` checks everything before it creates or removes any output: the
settings (:class:`~stok.dump.settings.DumpSettings`), the input (a Kaldi dir or wav.scp + segments, read once;
or another :mod:`~stok.dump.inputs` input such as a feature scp), the output location, the model (built by
``build_model(device)``), and that the output dir holds no dump made by another model or settings (the
fingerprint, :mod:`stok.dump.outputs`). A dump finished before with the same fingerprint and input, untouched
since, is not redone (:mod:`stok.dump.completion`). Otherwise it creates the dir (``--overwrite``: removes the
old outputs) and records the fingerprint, shards the items over ``torchrun`` ranks (or runs one ``--shard i/N``
job), skips what earlier runs wrote, batches the rest by length (the budget is the model's default for the device
unless given), loads them in DataLoader workers (threads for audio on CPU), calls ``model.encode`` per padded
batch, writes each result crash-safely to the shard's ark/scp under a lock (:mod:`stok.core.locks`: no second writer), lists failures, and
(rank 0, or a ``--merge_only`` run) merges everything at the end. A model only says how a padded batch becomes
codes (:class:`stok.core.model_api.DumpModel`). User mistakes raise :class:`stok.core.errors.UserError`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional

import torch
from tqdm import tqdm

from stok.core import distributed
from stok.core.bucketing import make_batches, padding_stats, shard
from stok.core.errors import UserError
from stok.core.failed import write_failed
from stok.core.fileio import atomic_open, check_output_dir
from stok.core.locks import FileLock, describe, live_holders
from stok.core.model_api import DumpModel
from stok.core.storage import ShardWriter
from stok.dump import completion
from stok.dump.dataset import Batch
from stok.dump.inputs import make_input
from stok.dump.merge import merge, shard_summary_path, shards_world, unfinished_shards
from stok.dump.outputs import check_fingerprint, done_keys, start_output
from stok.dump.settings import DumpSettings

log = logging.getLogger("stok.dump")


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


def dump_fingerprint(model: DumpModel, settings: DumpSettings, name: str) -> dict:
    """The model's fingerprint plus the engine settings that change what is stored."""
    fp = {"name": name, "model": model.fingerprint()}
    if model.float_output:
        fp["feature_storage"] = settings.feature_storage
    return fp


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _check_model(model: DumpModel, settings: DumpSettings, name: str) -> None:
    if settings.text_output and model.float_output:
        raise UserError(f"{settings.setting_name('text_output')} writes integer tokens as text; {name} holds float "
                        f"features: leave it out")
    if settings.feature_storage != "float32" and not model.float_output:
        raise UserError(f"{settings.setting_name('feature_storage')} {settings.feature_storage} is for float "
                        f"features; {name} holds integer tokens or codes (stored exactly): leave it out")


def _identity(inp, settings: DumpSettings) -> dict:
    return completion.input_identity(inp.identity_files(settings.manifest_dir),
                                     {"limit": settings.limit, "text_output": settings.text_output,
                                      "manifest_dir": os.path.abspath(settings.manifest_dir)
                                      if settings.manifest_dir else ""})


def _nothing_to_do(out: str, name: str, start: float) -> dict:
    """The stored summary of a finished dump, as this (no-op) run's result; nothing is read or written."""
    with open(os.path.join(out, f"{name}.summary.json")) as f:
        summary = json.load(f)
    wall = time.time() - start
    summary.update(written_now=0, already_done=summary["entries_in_scp"], audio_hours_now=0.0, wall_seconds=wall,
                   real_time_factor=None,
                   audio_seconds_per_second=None, nothing_to_do=True)
    log.info("%s: finished before with the same model, settings and input (%s); nothing to do (%.1f s)", name,
             completion.record_path(out, name), wall)
    return summary


def run_dump(settings: DumpSettings, build_model: Callable[[torch.device], DumpModel], name: str,
             finish: Optional[Callable[[dict], None]] = None, on_start: Optional[Callable] = None) -> dict:
    """Run one dump (see module docstring); returns the merged summary (on every rank; a ``--shard`` job returns
    its shard's summary).

    ``on_start(inp, model)`` runs on rank 0 once there is work to do, after every check and before any output is
    touched (e.g. a disk estimate). ``finish(summary)`` runs on rank 0 after the merge (extra outputs such as
    exports), before ``--strict`` reports failures; it may add to ``summary`` and must write
    ``<name>.summary.json`` if it does."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.time()
    settings.check()
    inp = make_input(settings)  # read when first needed: never by a finished dump's rerun
    out = settings.output_dir
    check_output_dir(out, settings.setting_name("output_dir"))
    info = distributed.setup(settings.device, settings.threads, settings.shard_index())
    show = info.is_main or not info.group  # rank 0 of a torchrun run, or a shard job of its own
    model = build_model(info.device)
    model.set_cpu_kernels(settings.cpu_kernels)
    _check_model(model, settings, name)
    fingerprint = dump_fingerprint(model, settings, name)
    identity = _identity(inp, settings)
    if not settings.overwrite and completion.finished(out, name, fingerprint, identity):
        return _nothing_to_do(out, name, start)
    inp.load()  # a malformed list fails here, before any output is touched
    if not settings.overwrite:
        check_fingerprint(out, name, fingerprint)
    if on_start is not None and info.is_main:
        on_start(inp, model)
    distributed.barrier(info)  # every rank has checked before rank 0 creates or removes anything
    if settings.merge_only:
        return _merge_only(settings, inp, model, name, fingerprint, identity, finish, start)
    layout = {"world": info.world, "fingerprint_id": fingerprint_id(fingerprint)}
    shard_lock = FileLock(os.path.join(out, f"{name}.{info.rank}.lock"), f"{out} (shard {info.rank} of {name})",
                          info=layout)
    with shard_lock:
        _refuse_other_writers(out, name, shard_lock, layout)
        if info.is_main and info.group:
            start_output(out, name, fingerprint, settings.overwrite)
        elif not info.group:  # a shard job: its own outputs only, never the other shards'
            start_output(out, name, fingerprint, settings.overwrite, shard=info.rank)
        completion.forget(out, name)
        distributed.barrier(info)
        stats = _write_shard(settings, inp, model, name, info, fingerprint_id(fingerprint), show, start)
    distributed.barrier(info)
    if not info.group:
        log.info("%s: shard %d of %d done (%d written, %d failed); once all %d shards are done, run the same command "
                 "with --merge_only instead of --shard", name, info.rank, info.world, stats["written"],
                 stats["failed"], info.world)
        return stats
    if info.is_main:
        with FileLock(os.path.join(out, f"{name}.lock"), f"{out} ({name} merge)"):
            _finish(settings, inp, model, name, info.world, fingerprint, identity, finish)
    distributed.barrier(info)
    with open(os.path.join(out, f"{name}.summary.json")) as f:
        summary = json.load(f)
    distributed.cleanup(info)
    return _report(settings, inp, name, summary, show)


def _refuse_other_writers(out: str, name: str, mine: FileLock, layout: dict) -> None:
    """Another live writer of dump ``name`` in ``out`` with another shard layout or fingerprint (a run with another
    ``--nj``/world size or another model started at the same time) would mix its records with this run's."""
    for path, holder in live_holders(os.path.join(glob.escape(out), f"{glob.escape(name)}.*.lock"), out,
                                     exclude=mine.path):
        theirs = holder.get("info") or {}
        if theirs and theirs != layout:
            what = ("another model or settings" if theirs.get("fingerprint_id") != layout["fingerprint_id"] else
                    f"{theirs.get('world')} shards, this run {layout['world']}")
            raise UserError(f"{out} is being written by another {name} run with {what}: {describe(holder)} (lock "
                            f"{path}); wait for it to finish or stop it, or write to another --output_dir")


def _write_shard(settings: DumpSettings, inp, model: DumpModel, name: str, info, fp_id: str, show: bool,
                 start: float) -> dict:
    """This rank's (or shard job's) part: what is not written yet, batched, encoded, written; its summary."""
    out = settings.output_dir
    mine = shard(inp.durations(), info.rank, info.world)
    writer = ShardWriter(os.path.join(out, f"{name}.{info.rank}"), settings.feature_storage)
    keys = inp.keys()
    done = done_keys(out, name) | writer.done
    distributed.barrier(info)  # every rank has read the state before any rank writes
    todo = [i for i in mine if keys[i] not in done]
    already = len(mine) - len(todo)

    failures: Dict[str, str] = {}
    costs = inp.costs(model, todo, failures, show)
    todo = [i for i in todo if i in costs]
    sr = model.sample_rate
    batch_seconds = settings.batch_seconds or model.default_batch_seconds(info.device)
    max_cost = settings.max_frames or (model.num_frames(int(batch_seconds * sr)) if batch_seconds > 0 else 0)
    batches = make_batches([costs[i] for i in todo], max_cost, settings.batch_size,
                           bucketing=not settings.no_bucketing)
    pad = padding_stats(batches, [costs[i] for i in todo])
    if show:
        budget = (f"{settings.max_frames} frames" if settings.max_frames else
                  f"{batch_seconds:g} s{'' if settings.batch_seconds else ' (the model default on ' + info.device.type + ')'}")
        log.info("%s: %d %s, %d in shard %d of %d (%d already done), %d batches of at most %s and %s items, "
                 "padding %.1f%%, device %s", name, len(keys), inp.noun, len(mine), info.rank, info.world, already,
                 len(batches), budget, settings.batch_size or "any number of", 100 * pad["padding_ratio"], info.device)
        if info.device.type == "cpu":
            from stok import mkl_on_amd
            from stok.models.cpu_isa import cpu_isa

            log.info("%s: CPU %s, %d threads; MKL's AVX-512 kernels on AMD (stok.mkl_on_amd): %s", name,
                     cpu_isa().label, torch.get_num_threads(), mkl_on_amd.status())

    loader = inp.loader(model, todo, batches, settings.num_workers, info.device.type == "cuda")
    written, audio_seconds = 0, 0.0
    what = f"shard {info.rank} of {info.world}" if not info.group else f"rank 0 of {info.world}"
    bar = tqdm(total=len(todo), desc=f"{name} ({what})", unit="utt", disable=not show)
    try:
        for batch in loader:
            for key, reason in batch.failures:
                failures[key] = reason
                log.warning("%s failed: %s", key, reason)
            if batch.keys:
                outputs = encode_batch(model, batch, info.device)
                if len(outputs) != len(batch.keys):
                    raise RuntimeError(f"{type(model).__name__}.encode returned {len(outputs)} results for "
                                       f"{len(batch.keys)} inputs")
                for key, array in zip(batch.keys, outputs):
                    writer.write(key, array)
                written += len(batch.keys)
                audio_seconds += sum(batch.num_samples) / sr
            bar.update(len(batch.keys) + len(batch.failures))
            bar.set_postfix(hours=f"{audio_seconds / 3600:.2f}", failed=len(failures))
    finally:
        bar.close()
        writer.close()

    write_failed(os.path.join(out, f"failed.{info.rank}.list"), failures)
    stats = {"rank": info.rank, "world": info.world, "fingerprint_id": fp_id, "utterances": len(mine),
             "already_done": already, "written": written, "failed": len(failures), "audio_seconds": audio_seconds,
             "wall_seconds": time.time() - start, "batches": len(batches), **pad}
    with atomic_open(shard_summary_path(out, name, info.rank), "w") as f:
        json.dump(stats, f)
    return stats


def _finish(settings: DumpSettings, inp, model: DumpModel, name: str, world: int, fingerprint: dict, identity: dict,
            finish: Optional[Callable[[dict], None]]) -> None:
    """Rank 0 (or ``--merge_only``): merged scp, failure list, summary, cut set, the tool's extras; then, when
    nothing failed, the completion record."""
    out = settings.output_dir
    meta = {"name": name, "model": model.describe(), "fingerprint": fingerprint,
            "feature_storage": settings.feature_storage, "bucketing": not settings.no_bucketing,
            "num_workers": settings.num_workers}
    summary = merge(out, name, world, settings.text_output, meta)
    from stok.dump.cuts import write_dump_cuts  # lhotse is imported only here

    write_dump_cuts(out, name, summary, inp.cut_source(settings.manifest_dir))  # adds cuts_written to the summary
    if finish is not None:
        finish(summary)
    if not summary["failed"]:
        completion.record(out, name, fingerprint, identity)


def _merge_only(settings: DumpSettings, inp, model: DumpModel, name: str, fingerprint: dict, identity: dict,
                finish, start: float) -> dict:
    """``--merge_only``: the merged outputs of finished ``--shard`` jobs, refused while one is unfinished."""
    out = settings.output_dir
    fp_id = fingerprint_id(fingerprint)
    world = shards_world(out, name, fp_id)
    if world is None:
        raise UserError(f"{settings.setting_name('merge_only')}: {out} holds no finished shard of {name} made with "
                        "these settings; run the --shard I/N jobs first")
    missing = unfinished_shards(out, name, world, fp_id)
    if missing:
        shown = ", ".join(f"{r}/{world}" for r in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise UserError(f"{settings.setting_name('merge_only')}: {len(missing)} of {world} shards of {name} in {out} "
                        f"are not finished with these settings ({shown}); run them (the same command with --shard "
                        "I/N instead of --merge_only) and merge again")
    locks = [FileLock(os.path.join(out, f"{name}.{r}.lock"), f"{out} (shard {r} of {name})") for r in range(world)]
    held = []
    try:
        for lock in locks:  # no shard may be written while the merge reads them
            held.append(lock.acquire())
        with FileLock(os.path.join(out, f"{name}.lock"), f"{out} ({name} merge)"):
            _finish(settings, inp, model, name, world, fingerprint, identity, finish)
    finally:
        for lock in held:
            lock.release()
    with open(os.path.join(out, f"{name}.summary.json")) as f:
        summary = json.load(f)
    missing_keys = len(inp.items) - summary["entries_in_scp"] - summary["failed"]
    if missing_keys > 0:
        log.warning("%s: %d %s have neither an entry nor a failure: were the shards run with other options?", name,
                    missing_keys, inp.noun)
    return _report(settings, inp, name, summary, True)


def _report(settings: DumpSettings, inp, name: str, summary: dict, show: bool) -> dict:
    out = settings.output_dir
    if show:
        log.info("%s: %d entries in %s, %d failed (see %s), %.2f h of audio in %.1f s",
                 name, summary["entries_in_scp"], os.path.join(out, f"{name}.scp"), summary["failed"],
                 os.path.join(out, "failed.list"), summary["audio_hours_now"], summary["wall_seconds"])
    if settings.strict and summary["failed"]:
        raise UserError(f"{summary['failed']} {inp.noun} failed (--strict); see {out}/failed.list")
    return summary

