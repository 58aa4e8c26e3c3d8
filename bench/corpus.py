"""A LibriSpeech-shaped corpus that costs almost no disk: ``make_corpus(root, n_utts)`` for the scale benches.

LibriSpeech 960 h has 281,241 training utterances of 1-16 s (mean ~12.3 s). This builds a Kaldi data dir of that
shape from a few real audio files:

- ``audio/src<i>.flac``: ``n_sources`` files of 20-30 s, each the demo corpus's speech (``recipes/demo/corpus``,
  espeak-ng) concatenated in a seeded order;
- ``data/train/``: ``wav.scp`` with one recording per utterance (``<utt>-rec`` -> one of the source files, by its
  absolute path, as a real dir names one flac per utterance), ``segments`` cutting each utterance (1-16 s, mean
  ~12 s, in 0.1 s steps) out of its recording, ``utt2dur``, ``utt2spk`` and ``text`` (~33 words a line);
  utterance ids ``<spk>-<chapter>-<nnnn>`` in C-locale order, as LibriSpeech's;
- ``data/dev/``: ``n_dev`` utterances of the same kind (another speaker range);
- ``teacher/feats.scp`` (train) and ``teacher/dev_feats.scp``: one entry per utterance pointing at one of a few
  shared records in ``teacher/feats.ark`` (one record per distinct frame count, ``teacher_dim`` wide, float32;
  ``teacher="labels"``: int32 k-means labels), so every entry has exactly the codec frames of its utterance.

The corpus is rebuilt only when ``root/corpus.json`` does not record the same arguments. Disk: the audio (~5 MB
for 20 sources), the tables (~70 MB at 281,241 utterances) and the teacher records (~200 MB at 768 dims).

    python bench/corpus.py /work/scratch/corpus --n_utts 281241
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRISPEECH_960_UTTS = 281241
RATE = 16000
HOP = 320
WORDS = ("THE", "AND", "OF", "TO", "A", "IN", "HE", "THAT", "WAS", "IT", "HIS", "HAD", "WITH", "AS", "FOR", "SHE",
         "YOU", "HER", "BUT", "NOT", "BE", "AT", "ON", "HIM", "THEY", "BY", "ALL", "THIS", "SAID", "WERE", "FROM",
         "WHICH", "SO", "THERE", "ONE", "HAVE", "WOULD", "WHEN", "BEEN", "NO", "OUT", "INTO", "COULD", "UPON", "THEM")


@dataclass
class Corpus:
    root: str
    data_dir: str
    teacher_scp: str
    dev_dir: str
    dev_teacher_scp: str
    sources: List[str]
    n_utts: int
    hours: float


def _sources(audio_dir: str, n_sources: int, seed: int) -> List[str]:
    """``n_sources`` flac files of 20-30 s of the demo corpus's speech."""
    import soundfile as sf

    demo = sorted(glob.glob(os.path.join(REPO, "recipes", "demo", "corpus", "train-clean-demo", "*", "*", "*.flac")))
    if not demo:
        raise SystemExit("recipes/demo/corpus/train-clean-demo holds no flac files")
    clips = [sf.read(p, dtype="float32")[0] for p in demo]
    rng = np.random.default_rng(seed)
    os.makedirs(audio_dir, exist_ok=True)
    out = []
    for i in range(n_sources):
        target = int(rng.uniform(20.0, 30.0) * RATE)
        parts, n = [], 0
        while n < target:
            clip = clips[int(rng.integers(len(clips)))]
            parts.append(clip)
            n += len(clip)
        path = os.path.join(audio_dir, f"src{i:02d}.flac")
        sf.write(path, np.concatenate(parts)[:target], RATE, subtype="PCM_16")
        out.append(os.path.abspath(path))
    return out


def _durations(n: int, rng: np.random.Generator) -> np.ndarray:
    """1-16 s, mean ~12 s (skewed to the long end, as LibriSpeech's segmentation), in 0.1 s steps."""
    return np.round(1.0 + 15.0 * rng.beta(2.2, 0.8, size=n), 1)


def _utt_ids(n: int, first_speaker: int) -> List[str]:
    """``<spk>-<chapter>-<nnnn>``: ~100 utterances a chapter, 3 chapters a speaker, in C-locale order."""
    ids = [f"{first_speaker + i // 300}-{10000 + (i // 100) % 3 * 7}-{i % 100:04d}" for i in range(n)]
    return sorted(ids, key=lambda k: k.encode())


def _write_split(data_dir: str, ids: List[str], durs: np.ndarray, sources: List[str], source_secs: List[float],
                 rng: np.random.Generator) -> Dict[str, int]:
    """The Kaldi tables of one split; returns ``utt -> frame count`` (codec frames of each utterance)."""
    os.makedirs(data_dir, exist_ok=True)
    src = rng.integers(len(sources), size=len(ids))
    starts = [round(float(rng.uniform(0.0, source_secs[s] - d)), 2) for s, d in zip(src, durs)]
    n_words = rng.integers(20, 47, size=len(ids))
    word_idx = rng.integers(len(WORDS), size=int(n_words.sum()))
    tables = {name: open(os.path.join(data_dir, name), "w") for name in ("wav.scp", "segments", "utt2dur",
                                                                           "utt2spk", "text")}
    frames, w = {}, 0
    # wav.scp is keyed by recording (<utt>-rec): sorted like the utterances, since "-rec" only extends each key
    for utt, s, start, d, k in zip(ids, src, starts, durs, n_words):
        rec = f"{utt}-rec"
        tables["wav.scp"].write(f"{rec} {sources[s]}\n")
        tables["segments"].write(f"{utt} {rec} {start:.2f} {start + d:.2f}\n")
        tables["utt2dur"].write(f"{utt} {d:.2f}\n")
        tables["utt2spk"].write(f"{utt} {utt.split('-')[0]}\n")
        tables["text"].write(f"{utt} {' '.join(WORDS[j] for j in word_idx[w:w + k])}\n")
        w += k
        frames[utt] = -(-int(round(d * RATE)) // HOP)
    for f in tables.values():
        f.close()
    with open(os.path.join(data_dir, "spk2utt"), "w") as f:
        by_spk: Dict[str, List[str]] = {}
        for utt in ids:
            by_spk.setdefault(utt.split("-")[0], []).append(utt)
        for spk in sorted(by_spk, key=lambda k: k.encode()):
            f.write(f"{spk} {' '.join(by_spk[spk])}\n")
    return frames


def _write_teacher(teacher_dir: str, splits: Dict[str, Dict[str, int]], dim: int, kind: str, seed: int) -> None:
    """One shared record per distinct frame count in ``feats.ark``; each split's scp points every utterance at the
    record of its frame count."""
    import kaldiio

    os.makedirs(teacher_dir, exist_ok=True)
    counts = sorted({n for frames in splits.values() for n in frames.values()})
    ark = os.path.join(teacher_dir, "feats.ark")
    rng = np.random.default_rng(seed)
    where = {}
    with kaldiio.WriteHelper(f"ark,scp:{ark},{teacher_dir}/records.scp") as w:
        for n in counts:
            if kind == "labels":
                w(f"frames{n}", rng.integers(0, 500, size=n).astype(np.int32))
            else:
                w(f"frames{n}", rng.standard_normal((n, dim)).astype(np.float32))
    with open(f"{teacher_dir}/records.scp") as f:
        for line in f:
            key, loc = line.split()
            where[int(key[len("frames"):])] = loc
    for name, frames in splits.items():
        with open(os.path.join(teacher_dir, f"{name}.scp"), "w") as f:
            for utt, n in frames.items():
                f.write(f"{utt} {where[n]}\n")


def make_corpus(root: str, n_utts: int = LIBRISPEECH_960_UTTS, n_dev: int = 20, n_sources: int = 20,
                teacher_dim: int = 768, teacher: str = "features", seed: int = 0) -> Corpus:
    """Build (or reuse) the corpus under ``root``; see the module docstring."""
    args = {"n_utts": n_utts, "n_dev": n_dev, "n_sources": n_sources, "teacher_dim": teacher_dim,
            "teacher": teacher, "seed": seed, "version": 1}
    stamp = os.path.join(root, "corpus.json")
    if os.path.isfile(stamp):
        with open(stamp) as f:
            saved = json.load(f)
        if saved.get("args") == args:
            return Corpus(**saved["corpus"])
        os.remove(stamp)
    import soundfile as sf

    os.makedirs(root, exist_ok=True)
    sources = _sources(os.path.join(root, "audio"), n_sources, seed)
    secs = [sf.info(p).frames / RATE for p in sources]
    rng = np.random.default_rng(seed + 1)
    durs = _durations(n_utts + n_dev, rng)
    frames = {
        "feats": _write_split(os.path.join(root, "data", "train"), _utt_ids(n_utts, 1000), durs[:n_utts], sources,
                              secs, rng),
        "dev_feats": _write_split(os.path.join(root, "data", "dev"), _utt_ids(n_dev, 9000), durs[n_utts:], sources,
                                  secs, rng),
    }
    _write_teacher(os.path.join(root, "teacher"), frames, teacher_dim, teacher, seed)
    corpus = Corpus(root=os.path.abspath(root), data_dir=os.path.abspath(os.path.join(root, "data", "train")),
                    teacher_scp=os.path.abspath(os.path.join(root, "teacher", "feats.scp")),
                    dev_dir=os.path.abspath(os.path.join(root, "data", "dev")),
                    dev_teacher_scp=os.path.abspath(os.path.join(root, "teacher", "dev_feats.scp")),
                    sources=sources, n_utts=n_utts, hours=float(durs[:n_utts].sum()) / 3600)
    with open(stamp, "w") as f:
        json.dump({"args": args, "corpus": asdict(corpus)}, f, indent=1)
    return corpus


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--n_utts", type=int, default=LIBRISPEECH_960_UTTS)
    p.add_argument("--n_dev", type=int, default=20)
    p.add_argument("--n_sources", type=int, default=20)
    p.add_argument("--teacher_dim", type=int, default=768)
    p.add_argument("--teacher", choices=("features", "labels"), default="features")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    c = make_corpus(a.root, a.n_utts, a.n_dev, a.n_sources, a.teacher_dim, a.teacher, a.seed)
    json.dump(asdict(c), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
