"""``python -m stok.bin.make_demo_s3``: a small random-weights S3Tokenizer as an official-layout ONNX file.

The demo recipe has no official weights. This writes a small model (fixed seed) in the layout of the
official ``speech_tokenizer_v*.onnx`` files, marked as a demo in the ONNX metadata; ``stok.bin.dump_s3``
loads it through the same strict importer as the real files and warns that its tokens are for
smoke-testing only. For real use point ``--model`` at an official file or name.

    python -m stok.bin.make_demo_s3 --version v2_25hz --output exp/s3/demo_v2_25hz.onnx
"""

from __future__ import annotations

import argparse
import os

from stok.models.s3.config import VERSIONS, tiny_config
from stok.models.s3.model import build_model
from stok.models.s3.onnx_export_official import DEMO_WARNING, demo_metadata, export_official


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", choices=VERSIONS, required=True)
    p.add_argument("--output", required=True, help="ONNX file to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--n_heads", type=int, default=2)
    p.add_argument("--n_layers", type=int, default=2)
    return p


def main(argv=None) -> str:
    args = get_parser().parse_args(argv)
    cfg = tiny_config(args.version, d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers)
    model = build_model(cfg, seed=args.seed)
    export_official(model, args.output, metadata=demo_metadata(model, args.seed))
    size = os.path.getsize(args.output) / 1e6
    print(f"wrote {args.output} ({size:.1f} MB): S3Tokenizer {args.version}, d_model {cfg.d_model}, "
          f"{cfg.n_layers} blocks, seed {args.seed}; {DEMO_WARNING}")
    return args.output


if __name__ == "__main__":
    main()
