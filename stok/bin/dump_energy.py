"""``python -m stok.bin.dump_energy``: dump weight-free log-energy tokens through the dump engine.

Use it to check a corpus end to end before a long dump (every file reads, durations, failures
listed) and to measure the engine itself; see ``stok.models.energy``.
"""

from __future__ import annotations

import argparse

from stok.bin.entry import entry_point
from stok.core.errors import UserError
from stok.dump.engine import run_dump
from stok.dump.settings import DumpSettings, add_dump_arguments
from stok.models.energy import EnergyTokens


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dump_arguments(p)
    p.add_argument("--hop", type=int, default=320, help="samples per frame (320: 50 Hz at 16 kHz)")
    p.add_argument("--sample_rate", type=int, default=16000, help="rate audio is resampled to")
    p.add_argument("--min_samples", type=int, default=1, help="shorter utterances are listed as too short")
    return p


@entry_point
def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    for name, low in (("hop", 1), ("sample_rate", 1), ("min_samples", 0)):
        if getattr(args, name) < low:
            raise UserError(f"--{name} {getattr(args, name)}: give a number >= {low}")
    return run_dump(DumpSettings.from_args(args), lambda device: EnergyTokens(args.hop, args.sample_rate,
                                                                               args.min_samples), name="energy")


if __name__ == "__main__":
    main()
