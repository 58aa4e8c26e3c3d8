"""End of a dump (rank 0, or a ``--merge_only`` run): merge the shards' scps, failure lists and summaries.

``<name>.scp`` is sorted by key and holds exactly one entry per written utterance; ``failed.list``
holds ``utt<TAB>reason`` for what failed in the latest run and is still not written. Shards are the ranks of
one ``torchrun`` run or the independent ``--shard i/N`` jobs: the same files either way, so the merged outputs
are the same. :func:`unfinished_shards` tells which shards of N have not finished their part.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Optional

from stok.core.failed import read_failed, write_failed
from stok.core.fileio import atomic_open
from stok.core.storage import load_codes, read_scp_entries
from stok.core.tables import sort_keys
from stok.dump.outputs import shard_scps


def write_text(scp_path: str, txt_path: str) -> None:
    """``utt tok tok ...`` lines (Kaldi text form, no brackets); [T, n_q] codes flattened frame by frame."""
    with atomic_open(txt_path, "w") as f:
        for key, codes in load_codes(scp_path):
            f.write(key + " " + " ".join(map(str, codes.reshape(-1).tolist())) + "\n")


def merge(out_dir: str, name: str, world: int, text_output: bool, meta: dict) -> dict:
    entries = read_scp_entries(shard_scps(out_dir, name))
    scp_path = os.path.join(out_dir, f"{name}.scp")
    with atomic_open(scp_path, "w") as f:
        for key in sort_keys(entries):
            f.write(f"{key} {entries[key]}\n")

    failures: Dict[str, str] = {}
    for path in glob.glob(os.path.join(glob.escape(out_dir), "failed.*.list")):
        rank = int(path.rsplit(".", 2)[-2])
        if rank >= world:  # left by an earlier run with more ranks: its utterances were retried now
            os.remove(path)
            continue
        failures.update(read_failed(path))
    failures = {k: v for k, v in failures.items() if k not in entries}
    write_failed(os.path.join(out_dir, "failed.list"), failures)

    ranks = [s for s in (read_shard_summary(out_dir, name, r) for r in range(world)) if s is not None]
    total = lambda k: sum(s[k] for s in ranks)  # noqa: E731
    wall = max((s["wall_seconds"] for s in ranks), default=0.0)
    audio = total("audio_seconds")
    padded, real = total("padded_frames"), total("real_frames")
    summary = {
        **meta,
        "utterances_total": total("utterances"),
        "written_now": total("written"),
        "already_done": total("already_done"),
        "entries_in_scp": len(entries),
        "failed": len(failures),
        "audio_hours_now": audio / 3600.0,
        "wall_seconds": wall,
        "real_time_factor": wall / audio if audio else None,
        "audio_seconds_per_second": audio / wall if wall else None,
        "padding_ratio": (padded - real) / padded if padded else 0.0,
        "batches": total("batches"),
        "world_size": world,
        "ranks": ranks,
    }
    with atomic_open(os.path.join(out_dir, f"{name}.summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if text_output:
        write_text(scp_path, os.path.join(out_dir, f"{name}.txt"))
    return summary



def shard_summary_path(out_dir: str, name: str, rank: int) -> str:
    return os.path.join(out_dir, f"{name}.summary.{rank}.json")


def read_shard_summary(out_dir: str, name: str, rank: int) -> Optional[dict]:
    try:
        with open(shard_summary_path(out_dir, name, rank)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def shards_world(out_dir: str, name: str, fingerprint_id: str) -> Optional[int]:
    """N of the newest finished shard summary made by this fingerprint, or None."""
    found = []
    for p in glob.glob(os.path.join(glob.escape(out_dir), f"{glob.escape(name)}.summary.*.json")):
        try:
            with open(p) as f:
                s = json.load(f)
        except (OSError, ValueError):
            continue
        if s.get("fingerprint_id") == fingerprint_id and isinstance(s.get("world"), int):
            found.append((os.path.getmtime(p), s["world"]))
    return max(found)[1] if found else None


def unfinished_shards(out_dir: str, name: str, world: int, fingerprint_id: str) -> List[int]:
    """Shards of ``world`` with no finished summary made by this fingerprint (``fingerprint_id``)."""
    out = []
    for r in range(world):
        s = read_shard_summary(out_dir, name, r)
        if s is None or s.get("world") != world or s.get("fingerprint_id") != fingerprint_id:
            out.append(r)
    return out
