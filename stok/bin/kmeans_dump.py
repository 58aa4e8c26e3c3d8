"""``stok-kmeans dump``: unit labels of every utterance, through the one dump engine (resumable, shardable).

From a feature scp (stage 1's ``feats.scp``): each record is checked (dimension, finite values), batches of about
``--batch_frames`` frames are assigned in one product each, in key order. With ``--from_audio``: the teacher's
features are computed on the fly from ``--data_dir``/``--wav_scp`` and assigned in the same pass (torchrun for
several processes or GPUs). Output in ``--output_dir``: ``km_labels.scp`` -> ``km_labels.<rank>.ark`` (Kaldi int32
vectors), ``km_labels.txt`` (``utt 12 12 7 ...``), ``failed.list``, ``cuts.jsonl.gz`` and
``km_labels.summary.json`` with the cluster usage (clusters used, entropy, perplexity), which is also printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Optional, Tuple

from stok.core.errors import UserError
from stok.core.fileio import atomic_open
from stok.core.frames import HOP, SAMPLE_RATE
from stok.dump.engine import run_dump
from stok.dump.outputs import CUTS_FILE, read_fingerprint
from stok.dump.settings import DumpSettings, add_dump_arguments
from stok.models.kmeans.usage import NAME, finalize, format_usage

log = logging.getLogger("stok.kmeans")

#: engine settings the feature mode offers (its batches are bounded by --batch_frames, read in-process)
FEATURE_MODE_SETTINGS = ("output_dir", "overwrite", "strict", "device", "threads", "shard", "merge_only")


def add_feats_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--feats_scp", help="Kaldi float-matrix scp of teacher features (stage 1's feats.scp)")
    src.add_argument("--feats_dir", help="a directory holding feats.scp")


def feats_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stok-kmeans dump", description=(
        "Nearest-centroid labels for every utterance of a feature scp (streaming, resumable). "
        "With --from_audio, labels straight from audio instead: see 'stok-kmeans dump --from_audio --help'."))
    p.add_argument("--km_model", required=True, help="k-means model from 'stok-kmeans learn'")
    add_feats_args(p)
    p.add_argument("--from_audio", action="store_true",
                   help="compute the teacher features on the fly from --data_dir/--wav_scp (see --from_audio --help)")
    p.add_argument("--batch_frames", type=int, default=100_000, help="frames assigned per matrix product")
    p.add_argument("--no_text", action="store_true", help="do not write km_labels.txt")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too (or STOK_DEBUG=1)")
    DumpSettings.add_arguments(p, "output and execution (dump engine)", only=FEATURE_MODE_SETTINGS,
                               defaults={"device": "auto"})
    return p


def audio_parser() -> argparse.ArgumentParser:
    from stok.models.teacher import TeacherSettings

    p = argparse.ArgumentParser(prog="stok-kmeans dump --from_audio", description=(
        "Unit labels straight from audio: teacher features and nearest centroids in one pass through the dump "
        "engine (torchrun for several processes or GPUs); output as 'stok-kmeans dump'."))
    p.add_argument("--from_audio", action="store_true", required=True)
    p.add_argument("--km_model", required=True, help="k-means model from 'stok-kmeans learn'")
    p.add_argument("--no_text", action="store_true", help="do not write km_labels.txt")
    add_dump_arguments(p)
    TeacherSettings.add_arguments(p, "teacher")
    return p


def print_usage(summary: dict, out_dir: str) -> None:
    if "usage" not in summary:  # a --shard job's own summary: the usage comes with the --merge_only run
        return
    print(f"k-means labels -> {os.path.join(out_dir, 'km_labels.scp')}: {summary['entries_in_scp']} utterances, "
          f"{summary['failed']} failed (see {os.path.join(out_dir, 'failed.list')})")
    print("cluster usage: " + format_usage(summary["usage"]))
    brief = {k: v for k, v in summary["usage"].items() if k != "counts"}
    print(json.dumps({"km_labels_usage": brief}))


def _load_km(path: str):
    from stok.models.kmeans.model import KMeansModel, KMeansModelError

    try:
        return KMeansModel.load(path)
    except KMeansModelError as e:
        raise UserError(str(e)) from None


def _finisher(km, out_dir: str, text: bool, mode: str):
    def finish(summary: dict) -> None:  # after the merge (before --strict reports failures)
        summary["usage"] = finalize(out_dir, km.n_clusters, text)
        summary["mode"] = mode
        summary["km_fingerprint"] = km.fingerprint()
        with atomic_open(os.path.join(out_dir, f"{NAME}.summary.json"), "w") as f:
            json.dump(summary, f, indent=2)

    return finish


def feature_dump_meta(feats_scp: str) -> Tuple[Optional[dict], dict]:
    """(fingerprint, describe) of the feature dump beside ``feats_scp``: its fingerprint record, its model's
    description, and the labels' frame rate: from its cut set, its summary, or stok's frame rule."""
    out_dir = os.path.dirname(os.path.abspath(feats_scp))
    stem = os.path.splitext(os.path.basename(feats_scp))[0]
    teacher = None
    try:
        with open(os.path.join(out_dir, f"{stem}.summary.json")) as f:
            teacher = json.load(f).get("model")
    except (OSError, ValueError):
        pass
    rate, whence = None, None
    cuts = os.path.join(out_dir, CUTS_FILE)
    if os.path.isfile(cuts):
        from lhotse import CutSet
        from lhotse.array import TemporalArray

        for c in CutSet.from_jsonl_lazy(cuts):
            arrays = [v for v in (c.custom or {}).values() if isinstance(v, TemporalArray)]
            if arrays:
                rate, whence = 1.0 / arrays[0].frame_shift, cuts
            break
    if rate is None and isinstance(teacher, dict) and (teacher.get("frame_rate") or teacher.get("token_rate")):
        rate, whence = float(teacher.get("frame_rate") or teacher.get("token_rate")), f"{stem}.summary.json"
    if rate is None:
        rate, whence = SAMPLE_RATE / HOP, "stok's frame rule (stok.core.frames)"
    meta = {"teacher": teacher if isinstance(teacher, dict) else None, "frame_rate": rate,
            "frame_shift_from": whence, "feats_scp": os.path.abspath(feats_scp)}
    return read_fingerprint(out_dir, stem), meta


def dump_features(argv) -> dict:
    from stok.models.kmeans.labels_model import KMeansFeatureLabels

    args = feats_parser().parse_args(argv)
    if args.batch_frames < 1:
        raise UserError(f"--batch_frames {args.batch_frames}: give a number >= 1")
    scp = args.feats_scp or os.path.join(args.feats_dir, "feats.scp")
    if args.feats_dir and not os.path.isfile(scp):
        raise UserError(f"{scp} not found: --feats_dir must hold a feats.scp (stage 1 output)")
    km = _load_km(args.km_model)
    settings = DumpSettings.from_args(args, feats_scp=scp, max_frames=args.batch_frames, batch_size=0,
                                      no_bucketing=True, num_workers=0)
    features, meta = feature_dump_meta(scp)

    def build(device):
        return KMeansFeatureLabels(km, device, args.km_model, features, meta)

    summary = run_dump(settings, build, NAME, finish=_finisher(km, args.output_dir, not args.no_text, "features"))
    print_usage(summary, args.output_dir)
    return summary


_TEACHER_KEYS = ("model", "layer", "dim", "num_layers", "architecture", "normalize", "frame_rate")


def teacher_mismatch(fitted: dict, now: dict) -> list:
    """What differs between the teacher the features were dumped with and the one used now (not the weights'
    path or storage precision: only what changes the features' meaning)."""
    if not fitted or not now:
        return []
    return [f"{k}: fitted on {fitted[k]!r}, now {now[k]!r}" for k in _TEACHER_KEYS
            if k in fitted and k in now and fitted[k] != now[k]]


def dump_audio(argv) -> dict:
    from stok.models.kmeans.labels_model import KMeansLabels
    from stok.models.teacher import TeacherSettings, build_teacher

    args = audio_parser().parse_args(argv)
    km = _load_km(args.km_model)
    teacher_settings = TeacherSettings.from_args(args)
    # km_labels.txt comes from finish() (with the usage counts, one read of the labels)
    settings = DumpSettings.from_args(args, text_output=False)
    is_main = int(os.environ.get("RANK", 0)) == 0

    def build(device):  # called by the engine once the options, the list and the output dir are checked
        try:
            teacher = build_teacher(teacher_settings, device)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None
        dim = getattr(teacher, "dim", 0)
        if dim and dim != km.dim:
            raise UserError(f"the {getattr(teacher, 'name', 'teacher')} teacher gives {dim}-dim features, "
                            f"{args.km_model} was fitted on {km.dim}-dim ones: use the teacher (and layer) it was "
                            f"fitted on ({(km.meta.get('teacher') or {}).get('model', 'see its metadata')})")
        model = KMeansLabels(teacher, km, device, args.km_model)
        if is_main:
            for line in teacher_mismatch(km.meta.get("teacher") or {}, model.teacher.describe()):
                log.warning("teacher differs from the one the k-means model was fitted on: %s", line)
        return model

    summary = run_dump(settings, build, NAME, finish=_finisher(km, args.output_dir, not args.no_text, "audio"))
    if is_main:
        print_usage(summary, args.output_dir)
    return summary


def dump(argv) -> dict:
    return dump_audio(argv) if "--from_audio" in argv else dump_features(argv)
