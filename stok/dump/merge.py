"""End of a dump (rank 0): merge the ranks' scp shards, failure lists and summaries into one output.

``<name>.scp`` is sorted by key and holds exactly one entry per written utterance; ``failed.list``
holds ``utt<TAB>reason`` for what failed in the latest run and is still not written.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Dict, List

from stok.data.kaldi_dir import sort_keys
from stok.dump.storage import load_codes, read_scp_entries
from stok.fileio import atomic_open


def shard_scps(out_dir: str, name: str) -> List[str]:
    pat = re.compile(re.escape(name) + r"\.\d+\.scp$")
    return sorted(p for p in glob.glob(os.path.join(out_dir, f"{name}.*.scp")) if pat.search(p))


def done_keys(out_dir: str, name: str) -> set:
    return set(read_scp_entries(shard_scps(out_dir, name)))


def remove_outputs(out_dir: str, name: str) -> None:
    patterns = [f"{name}.*", "failed.*list", "cuts.jsonl.gz"]  # the cut set points into the arks removed here
    for pat in patterns:
        for p in glob.glob(os.path.join(out_dir, pat)):
            os.remove(p)


def read_failed(path: str) -> Dict[str, str]:
    out = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, _, reason = line.rstrip("\n").partition("\t")
                if key:
                    out[key] = reason
    return out


def write_failed(path: str, failures: Dict[str, str]) -> None:
    with atomic_open(path, "w") as f:
        for key in sort_keys(failures):
            f.write(f"{key}\t{failures[key]}\n")


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
    for path in glob.glob(os.path.join(out_dir, "failed.*.list")):
        rank = int(path.rsplit(".", 2)[-2])
        if rank >= world:  # left by an earlier run with more ranks: its utterances were retried now
            os.remove(path)
            continue
        failures.update(read_failed(path))
    failures = {k: v for k, v in failures.items() if k not in entries}
    write_failed(os.path.join(out_dir, "failed.list"), failures)

    ranks = []
    for r in range(world):
        p = os.path.join(out_dir, f"{name}.summary.{r}.json")
        if os.path.exists(p):
            with open(p) as f:
                ranks.append(json.load(f))
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

