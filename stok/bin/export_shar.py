"""``stok-export-shar`` / ``python -m stok.bin.export_shar``: a dump's cut set as Lhotse Shar shards.

    python -m stok.bin.export_shar --cuts dump/s3_v2_25hz/train/cuts.jsonl.gz \\
        --output_dir dump/s3_v2_25hz/train/shar --shard_size 1000

Shar is lhotse's format for sequential reading at scale: every ``--shard_size`` cuts make one shard,
``cuts.NNNNNN.jsonl.gz`` (cuts with their supervisions: text, speaker), ``recording.NNNNNN.tar`` (each cut's
own audio: the segment of a recording, not the whole file; ``--audio`` flac by default) and one
``<field>.NNNNNN.tar`` per dump field (``s3_tokens``, ``st_codes``, ``km_labels``, ``feats``: one ``.npy``
per cut, dtype kept). Read back with plain lhotse, no stok import needed::

    cuts = CutSet.from_shar(in_dir="dump/s3_v2_25hz/train/shar")
    tokens = next(iter(cuts)).load_s3_tokens()     # exactly the dumped array (int32)

As in the dump's cut set, a dump field is a whole lhotse ``Array`` with its frame shift in the custom value
``<field>_frame_shift`` (a ``TemporalArray`` would be cut at ``round(duration / frame_shift)`` frames and lose
the last token of about half the cuts; those of cut sets written by earlier stok versions are converted).
The output dir must hold nothing else: ``from_shar(in_dir=...)`` reads every file there as a field.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Dict, List

from stok.bin.entry import entry_point
from stok.core.errors import UserError

log = logging.getLogger("stok.shar")
AUDIO_FORMATS = ("flac", "wav", "original", "none")
_SHARD_FILE = re.compile(r"^[^.]+\.\d{6}\.(tar|jsonl\.gz)$")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuts", required=True, help="a dump's cut set (cuts.jsonl.gz beside its scp)")
    p.add_argument("--output_dir", required=True, help="directory for the shards (created; must hold nothing else)")
    p.add_argument("--shard_size", type=int, default=1000, help="cuts per shard (default: %(default)s)")
    p.add_argument("--audio", choices=AUDIO_FORMATS, default="flac",
                   help="audio in the shards: flac (lossless), wav, original (the source's own format) or none")
    p.add_argument("--fields", default="",
                   help="comma-separated dump fields to export (default: every array field of the cuts)")
    p.add_argument("--overwrite", action="store_true", help="replace the shards an earlier export left")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too (or STOK_DEBUG=1)")
    return p


def array_fields(cut) -> List[str]:
    from lhotse.array import Array, TemporalArray

    return sorted(k for k, v in (cut.custom or {}).items() if isinstance(v, (Array, TemporalArray)))


def for_shar(cut, fields: List[str], audio: bool = True):
    """The cut with each temporal dump field (cut sets of earlier stok versions) as a whole-array ``Array``
    (+ ``<field>_frame_shift``), and the audio of a command source (``cmd |``) decoded into memory when the
    audio is exported."""
    from lhotse.array import TemporalArray
    from lhotse.utils import fastcopy

    custom = dict(cut.custom or {})
    for name in fields:
        value = custom.get(name)
        if isinstance(value, TemporalArray):
            custom[name] = value.array
            custom[f"{name}_frame_shift"] = value.frame_shift
    cut = fastcopy(cut, custom=custom)
    if audio and cut.has_recording and any(s.type == "command" for s in cut.recording.sources):
        # lhotse's Shar writer asks the source for its format, which a 'cmd |' source cannot tell: run it once here
        cut = cut.move_to_memory(audio_format="flac", load_features=False, load_custom=False)
    return cut


def prepare_output(out: str, overwrite: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--output_dir {out} is a file; give a directory for the shards")
    entries = sorted(os.listdir(out)) if os.path.isdir(out) else []
    others = [e for e in entries if not _SHARD_FILE.match(e)]
    if others:
        raise UserError(f"--output_dir {out} holds other files ({others[0]} ...), which CutSet.from_shar(in_dir=...) "
                        "would read as fields; choose an empty or new directory")
    if entries and not overwrite:
        raise UserError(f"--output_dir {out} already holds {len(entries)} shard files; add --overwrite to replace them")
    for e in entries:
        os.remove(os.path.join(out, e))
    os.makedirs(out, exist_ok=True)


@entry_point
def main(argv=None) -> Dict[str, object]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_parser().parse_args(argv)
    if args.shard_size < 1:
        raise UserError(f"--shard_size {args.shard_size}: give a number of cuts >= 1")
    if not os.path.isfile(args.cuts):
        raise UserError(f"--cuts {args.cuts} not found; a dump writes cuts.jsonl.gz beside its scp")
    from functools import partial

    from lhotse import CutSet

    import stok.dump.lhotse_storage  # noqa: F401 - reads the fields of earlier stok versions' cut sets

    cuts = CutSet.from_jsonl_lazy(args.cuts)
    first = next(iter(cuts), None)
    if first is None:
        raise UserError(f"--cuts {args.cuts} holds no cuts")
    have = array_fields(first)
    fields = [f for f in args.fields.split(",") if f] or have
    missing = [f for f in fields if f not in have]
    if missing:
        raise UserError(f"--fields {args.fields}: the cuts of {args.cuts} have no field {missing[0]!r} "
                        f"(they have: {', '.join(have) or 'none'})")
    prepare_output(args.output_dir, args.overwrite)
    spec = {name: "numpy" for name in fields}
    if args.audio != "none":
        spec["recording"] = args.audio
    paths = cuts.map(partial(for_shar, fields=fields, audio=args.audio != "none")).to_shar(
        args.output_dir, fields=spec, shard_size=args.shard_size, warn_unused_fields=False)
    n = sum(1 for _ in CutSet.from_jsonl_lazy(args.cuts))
    result = {"output_dir": os.path.abspath(args.output_dir), "cuts": n, "shards": len(paths["cuts"]),
              "fields": sorted(spec), "paths": paths}
    print(f"Shar: {n} cuts in {len(paths['cuts'])} shards of up to {args.shard_size} "
          f"({', '.join(sorted(spec))}) -> {args.output_dir}")
    return result


if __name__ == "__main__":
    main()
