"""``stok-kmeans``: k-means units (stage 2): learn a model on teacher features, dump unit labels.

    stok-kmeans learn --feats_scp dump/mfcc/train/feats.scp --n_clusters 100 --output exp/kmeans/km100.npz
    stok-kmeans dump --km_model exp/kmeans/km100.npz --feats_scp dump/mfcc/dev/feats.scp --output_dir dump/km100/dev
    stok-kmeans dump --from_audio --km_model exp/kmeans/km500.npz --teacher hubert --checkpoint hubert_base_ls960.pt \\
        --layer 9 --data_dir data/train --output_dir dump/km500/train    # no feature dump (torchrun works too)

learn: samples frames from the feature scp in two streaming passes (``--percent``, ``--max_frames``,
``--sample_by``) into memory or, when the fit would not fit ``--memory_gb``, into an on-disk sample that every
Lloyd pass streams (memory then grows by 12 bytes a frame only), seeds with greedy k-means++ on a subsample,
runs Lloyd passes (torch, CPU or GPU) and saves centroids + metadata as ``.npz``
(``numpy.load(path, allow_pickle=False)``; no pickle anywhere).
dump: nearest-centroid labels for every utterance -> ``km_labels.scp`` (int32 vectors), ``km_labels.txt``
(``utt 12 12 7 ...``), ``failed.list`` and the cluster usage (clusters used, entropy, perplexity) printed and in
``km_labels.summary.json``. Run ``stok-kmeans <command> --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from stok.cli import UserError, entry_point
from stok.fileio import atomic_open

log = logging.getLogger("stok.kmeans")


def _resolve_device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {spec} asked for CUDA, but torch sees no GPU; use --device cpu")
    return spec


def add_feats_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--feats_scp", help="Kaldi float-matrix scp of teacher features (stage 1's feats.scp)")
    src.add_argument("--feats_dir", help="a directory holding feats.scp")


def dump_feats_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stok-kmeans dump", description=(
        "Nearest-centroid labels for every utterance of a feature scp (streaming, resumable). "
        "With --from_audio, labels straight from audio through the dump engine instead: "
        "see 'stok-kmeans dump --from_audio --help'."))
    p.add_argument("--km_model", required=True, help="k-means model from 'stok-kmeans learn'")
    add_feats_args(p)
    p.add_argument("--output_dir", required=True,
                   help="where km_labels.{scp,0.ark,txt,summary.json} and failed.list go")
    p.add_argument("--from_audio", action="store_true",
                   help="compute the teacher features on the fly from --data_dir/--wav_scp (see --from_audio --help)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--batch_frames", type=int, default=100_000, help="frames assigned per matrix product")
    p.add_argument("--no_text", action="store_true", help="do not write km_labels.txt")
    p.add_argument("--overwrite", action="store_true", help="delete earlier output instead of resuming")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any entry failed")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too (or STOK_DEBUG=1)")
    return p


def dump_audio_parser() -> argparse.ArgumentParser:
    from stok.dump.options import add_dump_args
    from stok.models.teacher import add_teacher_args

    p = argparse.ArgumentParser(prog="stok-kmeans dump --from_audio", description=(
        "Unit labels straight from audio: teacher features and nearest centroids in one pass through the dump "
        "engine (torchrun for several processes or GPUs); output as 'stok-kmeans dump'."))
    p.add_argument("--from_audio", action="store_true", required=True)
    p.add_argument("--km_model", required=True, help="k-means model from 'stok-kmeans learn'")
    p.add_argument("--no_text", action="store_true", help="do not write km_labels.txt")
    add_dump_args(p)
    add_teacher_args(p)
    return p


def _print_usage(summary: dict, out_dir: str) -> None:
    from stok.models.kmeans.dump import format_usage

    print(f"k-means labels -> {os.path.join(out_dir, 'km_labels.scp')}: {summary['entries_in_scp']} utterances, "
          f"{summary['failed']} failed (see {os.path.join(out_dir, 'failed.list')})")
    print("cluster usage: " + format_usage(summary["usage"]))
    brief = {k: v for k, v in summary["usage"].items() if k != "counts"}
    print(json.dumps({"km_labels_usage": brief}))


def dump(argv) -> dict:
    from stok.models.kmeans.model import KMeansModel, KMeansModelError

    if "--from_audio" in argv:
        return dump_audio(argv)
    args = dump_feats_parser().parse_args(argv)
    from stok.models.kmeans.dump import dump_from_feats
    from stok.models.kmeans.sample import FeatsError, resolve_feats_scp

    if args.batch_frames < 1:
        raise UserError(f"--batch_frames {args.batch_frames}: give a number >= 1")
    if args.threads < 0:
        raise UserError(f"--threads {args.threads}: give a number >= 0")
    device = _resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        km = KMeansModel.load(args.km_model)
        scp = resolve_feats_scp(args.feats_scp, args.feats_dir)
        summary = dump_from_feats(km, args.km_model, scp, args.output_dir, device, args.batch_frames,
                                  args.overwrite, not args.no_text)
        from stok.dump.cuts import write_label_cuts  # cuts.jsonl.gz: the feature dump's cuts with the labels

        write_label_cuts(args.output_dir, "km_labels", scp, summary)
    except (KMeansModelError, FeatsError) as e:
        raise UserError(str(e)) from None
    _print_usage(summary, args.output_dir)
    if args.strict and summary["failed"]:
        raise UserError(f"{summary['failed']} entries failed (--strict); see {args.output_dir}/failed.list")
    return summary


_TEACHER_KEYS = ("model", "layer", "dim", "num_layers", "architecture", "normalize", "frame_rate")


def _teacher_mismatch(fitted: dict, now: dict) -> list:
    """What differs between the teacher the features were dumped with and the one used now (not the weights'
    path or storage precision: only what changes the features' meaning)."""
    if not fitted or not now:
        return []
    return [f"{k}: fitted on {fitted[k]!r}, now {now[k]!r}" for k in _TEACHER_KEYS
            if k in fitted and k in now and fitted[k] != now[k]]


def dump_audio(argv) -> dict:
    from stok.dump.engine import run_dump
    from stok.models.kmeans.dump import NAME, finalize
    from stok.models.kmeans.labels_model import KMeansLabels
    from stok.models.kmeans.model import KMeansModel, KMeansModelError
    from stok.models.teacher import build_teacher

    args = dump_audio_parser().parse_args(argv)
    try:
        km = KMeansModel.load(args.km_model)
    except KMeansModelError as e:
        raise UserError(str(e)) from None
    if args.teacher == "hubert" and not args.checkpoint:
        raise UserError("--teacher hubert needs --checkpoint (the HuBERT weights the k-means model's features "
                        "came from); --teacher mfcc needs no weights")
    is_main = int(os.environ.get("RANK", 0)) == 0

    def build(device):  # called by the engine once the options, the list and the output dir are checked
        try:
            teacher = build_teacher(args, device)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None
        dim = getattr(teacher, "dim", 0)
        if dim and dim != km.dim:
            raise UserError(f"the {getattr(teacher, 'name', 'teacher')} teacher gives {dim}-dim features, "
                            f"{args.km_model} was fitted on {km.dim}-dim ones: use the teacher (and layer) it was "
                            f"fitted on ({(km.meta.get('teacher') or {}).get('model', 'see its metadata')})")
        model = KMeansLabels(teacher, km, device, args.km_model)
        if is_main:
            for line in _teacher_mismatch(km.meta.get("teacher") or {}, model.teacher.describe()):
                log.warning("teacher differs from the one the k-means model was fitted on: %s", line)
        return model

    args.text_output = False  # km_labels.txt comes from finish() (with the usage counts, one read of the labels)

    def finish(summary: dict) -> None:  # rank 0, after the merge (before --strict reports failures)
        summary["usage"] = finalize(args.output_dir, km.n_clusters, not args.no_text)
        summary["mode"] = "audio"
        summary["km_fingerprint"] = km.fingerprint()
        with atomic_open(os.path.join(args.output_dir, f"{NAME}.summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        _print_usage(summary, args.output_dir)

    return run_dump(args, build, name=NAME, finish=finish)


def learn(argv) -> dict:
    from stok.bin.kmeans_learn import learn as learn_command

    return learn_command(argv)


COMMANDS = {"learn": learn, "dump": dump}


@entry_point
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"error: unknown command {argv[0]!r}; use 'learn' or 'dump'")
        if not argv:
            raise SystemExit(2)
        return None
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
