"""Stage 0: prepare a corpus -> lhotse manifests + one Kaldi data dir per split.

    python -m stok.bin.prepare CORPUS [options]          (or: stok-prepare CORPUS [options])
    python -m stok.bin.prepare CORPUS --help             (the options and the expected layout of CORPUS)

CORPUS is one of:
  demo         the espeak-ng demo corpus shipped in recipes/demo/corpus (LibriSpeech layout)
  librispeech  LibriSpeech / Mini LibriSpeech, via lhotse.recipes.prepare_librispeech
  aishell      AISHELL-1, via lhotse.recipes.prepare_aishell
  libritts     LibriTTS / LibriTTS-R, via lhotse.recipes.prepare_libritts
  folder       any directory of audio files, an existing wav.scp (+ segments, utt2spk, text) or Kaldi dir

Outputs (OUTPUT_DIR defaults to ./data):
  OUTPUT_DIR/manifests/<prefix>_{recordings,supervisions,cuts}_<split>.jsonl.gz   lhotse manifests, sorted by id
  OUTPUT_DIR/<split>/{wav.scp,utt2spk,spk2utt,utt2dur[,text][,segments]}        Kaldi data dir, sorted (C locale)
wav.scp holds plain paths (FLAC included; no ffmpeg pipes); segments only when utterances are parts of
recordings. The corpus recipes never download unless --download is given. Examples:

  python -m stok.bin.prepare demo --output_dir data
  python -m stok.bin.prepare librispeech --corpus_dir /corpora/LibriSpeech --splits train-clean-100 dev-clean \\
      --combine train_960=train-clean-100,train-clean-360,train-other-500
  python -m stok.bin.prepare folder --audio_dir /my/wavs --dev_fraction 0.05
  python -m stok.bin.prepare folder --wav_scp old/wav.scp --segments old/segments --text old/text
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from stok.bin.entry import entry_point
from stok.core.errors import UserError
from stok.core.fileio import check_output_dir
from stok.data.prepare import CORPORA, recipe_of
from stok.data.prepare.settings import add_prepare_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stok-prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="corpus", metavar="CORPUS")
    sub.required = True
    for name in CORPORA:
        recipe = recipe_of(name)
        p = sub.add_parser(name, help=recipe.summary, description=recipe.about,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_prepare_arguments(p, recipe.settings_class, recipe.options)
        p.add_argument("--summary_json", default=None, help="also write the per-split summary as JSON here")
        p.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
        p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    return parser


def check_summary_json(path: str) -> None:
    if os.path.isdir(path):
        raise UserError(f"--summary_json {path} is a directory; give a file name")
    check_output_dir(os.path.dirname(os.path.abspath(path)), f"--summary_json {path}: its directory")


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from stok.data.prepare.manifests import format_summary

    recipe = recipe_of(args.corpus)
    settings = recipe.settings_class.from_args(args)  # option values, before any corpus is read or file written
    if args.summary_json:
        check_summary_json(args.summary_json)
    t0 = time.time()
    summaries = recipe.run(settings)  # checks the output dirs and the corpus before it writes
    wall = time.time() - t0
    print(format_summary(summaries))
    print(f"stok-prepare {args.corpus}: {len(summaries)} splits in {wall:.1f} s")
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump({"corpus": args.corpus, "wall_s": wall,
                       "splits": [dict(vars(s), hours=s.hours) for s in summaries]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
