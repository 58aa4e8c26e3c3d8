"""At LibriSpeech scale: every stage tool as ``run.sh`` calls it, on a LibriSpeech-shaped corpus (issue 20.6).

The corpus is ``bench/corpus.py``'s (281,241 utterances, ~940 h, Kaldi ``segments`` cutting a few real flac files;
``--n_utts``), with a teacher feature scp of ``--teacher_dim`` dims over shared records. Each row is one command
in a child process (``bench/scale_measure.py``): its wall time (start-up included), its CPU seconds (user +
system of it and the processes it waited for: the figure a shared machine's load does not change), utterances/s
and audio-s/s over that wall time, the peak
RSS of its largest process (``wait4``: the child and the descendants it waited for; DataLoader workers and
torchrun ranks are separate processes) and the peak of the whole tree's RSS summed (sampled every 0.2 s), and
how often the main process opened each table of the Kaldi dir (``bench/read_probe.py``; "reads": the most opens
of any one table, 1 = the dir read once). Parts (``--parts``, default all, in this order):

- ``index``: the engine's input read alone (``AudioInput(data_dir).load()``) at full size;
- ``energy``: ``stok-dump-energy`` (weight-free, the cheapest dump of audio) on ``--light_utts`` utterances;
- ``mfcc``: ``stok-dump-features --teacher mfcc`` on ``--light_utts`` utterances (the first N of the corpus,
  a data dir of their own);
- ``kmeans``: ``stok-kmeans learn --percent 0.1`` (100 clusters, the MFCC recipe's) on that MFCC dump, then
  ``stok-kmeans dump`` (labels) of it;
- ``labels_full``: ``stok-kmeans dump`` (labels; the model learned beforehand on 200,000 frames, not timed) of the
  corpus's own teacher scp (``--teacher_dim`` dims), its first N entries for each N of ``--label_sizes`` (default
  30,000 and the full size): the cheapest complete dumps of that many entries on 2 shared cores, the finished dumps
  for the rerun rows at those sizes;
- ``hubert``, ``s3``, ``codes``: random-weight models of the released sizes (HuBERT base as a torchaudio state
  dict, ``--layer avg``; S3Tokenizer v2_25hz as an official-layout ONNX file; SpeechTokenizer in the released
  ``config.json`` + ``SpeechTokenizer.pt`` layout) on ``--subset_utts`` utterances (CPU cannot do 960 h here);
  ``--hubert_checkpoint``, ``--s3_model``, ``--st_model_dir`` use given weights instead;
- ``rerun``: every finished dump above run again (the same command): wall time, peak RSS, whether any output's
  size or mtime changed, and the table reads; at full size the labels dump, on the subsets the others.
- ``kmeans_scale``: the k-means rows of ``bench/kmeans.py --scale`` (branch kmeans): read from ``--kmeans_json``
  (its ``--json_out``), or run when ``--kmeans_workdir`` is given and this checkout's bench/kmeans.py has --scale.

Results go to ``<workdir>/results.json`` (one entry per row, with its command line) and the table printed at the
end holds every row of that file, so parts can run in separate invocations (a dump's first-run row is measured
once per workdir; reruns every time). Timed rows need the machine to
themselves: run under ``flock -x /tmp/stok-cpu.lock`` or give ``--lock /tmp/stok-cpu.lock`` (each row then takes
the lock exclusively, preparation shared; do not combine the two).

    python bench/scale.py --workdir /work/scratch/scale/bench [--n_utts 281241] [--light_utts 30000]
        [--subset_utts 100] [--parts index,mfcc,...] [--nj 2] [--lock /tmp/stok-cpu.lock]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.corpus import LIBRISPEECH_960_UTTS, make_corpus  # noqa: E402
from bench.scale_measure import Lock, audio_seconds, cpu_isa, measure, output_stats, subset_dir  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(REPO, "bench", "read_probe.py")
TABLES = ("wav.scp", "segments", "utt2dur", "text", "utt2spk")
PARTS = ("index", "energy", "mfcc", "kmeans", "labels_full", "hubert", "s3", "codes", "rerun", "kmeans_scale")
GB = 1e9


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2g}" if x < 10 else f"{x:.1f}"


def _cpu(row: dict) -> str:
    return f"{row['cpu_s']:.1f}" if "cpu_s" in row else ""


class Bench:
    def __init__(self, args):
        self.a = args
        self.w = os.path.abspath(args.workdir)
        for d in ("logs", "models", "dump", "exp", "data"):
            os.makedirs(os.path.join(self.w, d), exist_ok=True)
        self.lock = Lock(args.lock)
        self.results_path = os.path.join(self.w, "results.json")
        self.results = json.load(open(self.results_path)) if os.path.isfile(self.results_path) else {}
        root = os.path.join(self.w, "corpus")
        with self.lock.hold(False):  # built in a child (this process stays small: see _models), then read back
            subprocess.run([sys.executable, os.path.join(REPO, "bench", "corpus.py"), root, "--n_utts",
                            str(args.n_utts), "--teacher_dim", str(args.teacher_dim)], check=True, cwd=REPO,
                           stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": REPO})
        self.corpus = make_corpus(root, args.n_utts, teacher_dim=args.teacher_dim)
        self.full = self.corpus.data_dir

    # ------------------------------------------------------------------ helpers
    def launch(self, module: str) -> List[str]:
        """How run.sh starts a dump: ``python -m`` for one process, torchrun for ``--nj`` > 1 (CPU processes)."""
        if self.a.nj > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.a.nj}",
                    PROBE, module]
        return [sys.executable, PROBE, module]

    def dump_opts(self) -> List[str]:
        return ["--device", "cpu", "--num_workers", str(self.a.num_workers)]

    def timed(self, key: str, label: str, cmd: List[str], data_dir: Optional[str] = None, utts: int = 0,
              audio_s: float = 0.0, note: str = "", out_dir: Optional[str] = None) -> dict:
        """One timed row: the command under the exclusive lock, its reads of ``data_dir``'s tables counted. A first
        run's row already in results.json is kept (its dump is finished: running it again would time a rerun)."""
        if key in self.results and not key.startswith("rerun_"):
            print(f"[{key}] measured before ({self.results[key]['date']}); kept", flush=True)
            return self.results[key]
        probe = os.path.join(self.w, "logs", f"{key}.opens.json")
        for p in [probe] + [f"{probe}.{r}" for r in range(8)]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
        env = {"STOK_PROBE_WATCH": data_dir or "", "STOK_PROBE_OUT": probe}
        before = output_stats(out_dir) if out_dir and os.path.isdir(out_dir) else None
        print(f"[{key}] {label}: running ({time.strftime('%H:%M:%S')})", flush=True)
        with self.lock.hold(True):
            row = measure(cmd, os.path.join(self.w, "logs", f"{key}.log"), env)
        reads = None
        if data_dir:
            counts = [json.load(open(p)) for p in [probe] + [f"{probe}.{r}" for r in range(8)] if os.path.isfile(p)]
            per_table = {t: max((c.get(os.path.join(os.path.abspath(data_dir), t), 0) for c in counts), default=0)
                         for t in TABLES}
            reads = max(per_table.values()) if counts else None
            row["table_opens"] = per_table
        if before is not None:
            after = output_stats(out_dir)
            row["outputs_changed"] = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
        row.update(label=label, utts=utts, audio_s=audio_s, reads=reads, note=note, isa=cpu_isa(),
                   date=time.strftime("%Y-%m-%d %H:%M:%S"), load_before=os.getloadavg()[0])
        self.results[key] = row
        with open(self.results_path, "w") as f:
            json.dump(self.results, f, indent=1)
        print(f"[{key}] {row['wall_s']:.1f} s, peak RSS {row['peak_rss'] / GB:.2f} GB", flush=True)
        return row

    def subset(self, n: int) -> str:
        with self.lock.hold(False):
            return subset_dir(self.full, os.path.join(self.w, "data", f"train_{n}"), n)

    # ------------------------------------------------------------------ parts
    def index(self):
        code = ("import sys; from stok.dump.inputs import AudioInput; "
                "print(len(AudioInput(sys.argv[1]).load().items), 'utterances')")
        self.timed("index", f"read the Kaldi dir (engine input), {self.a.n_utts:,} utt",
                   [sys.executable, "-c", code, self.full], utts=self.a.n_utts)

    def energy(self):
        n = self.a.light_utts
        d = self.subset(n)
        out = os.path.join(self.w, "dump", f"energy_{n}")
        self.timed("energy", f"stok-dump-energy, {n:,} utt",
                   self.launch("stok.bin.dump_energy") + [*self.dump_opts(), "--data_dir", d, "--output_dir", out],
                   d, n, audio_seconds(d))

    def mfcc(self):
        n = self.a.light_utts
        d = self.subset(n)
        out = os.path.join(self.w, "dump", f"mfcc_{n}")
        self.timed("mfcc", f"stok-dump-features --teacher mfcc, {n:,} utt",
                   self.launch("stok.bin.dump_features") + ["--teacher", "mfcc", *self.dump_opts(), "--data_dir", d,
                                                            "--output_dir", out], d, n, audio_seconds(d))

    def kmeans(self):
        n = self.a.light_utts
        feats = os.path.join(self.w, "dump", f"mfcc_{n}", "feats.scp")
        if not os.path.isfile(feats):
            raise SystemExit(f"part kmeans needs the MFCC dump {feats}: run part mfcc first")
        model = os.path.join(self.w, "exp", f"km100_mfcc_{n}.npz")
        audio = audio_seconds(self.subset(n))
        self.timed("kmeans_learn", f"stok-kmeans learn --percent 0.1, k=100, MFCC of {n:,} utt",
                   [sys.executable, "-m", "stok.bin.kmeans", "learn", "--feats_scp", feats, "--n_clusters", "100",
                    "--percent", "0.1", "--output", model, "--overwrite"], utts=n)
        self.timed("kmeans_labels", f"stok-kmeans dump (labels), MFCC of {n:,} utt",
                   [sys.executable, "-m", "stok.bin.kmeans", "dump", "--km_model", model, "--feats_scp", feats,
                    "--output_dir", os.path.join(self.w, "dump", f"km100_mfcc_{n}")], utts=n, audio_s=audio)

    def labels_full(self):
        """Labels of the corpus's teacher scp (its first N entries for each N of ``--label_sizes``)."""
        model = os.path.join(self.w, "exp", "km_teacher.npz")
        if not os.path.isfile(model):  # preparation, not a row: a small model is enough to label every frame
            with self.lock.hold(False):
                subprocess.run([sys.executable, "-m", "stok.bin.kmeans", "learn", "--feats_scp",
                                self.corpus.teacher_scp, "--n_clusters", "100", "--max_frames", "200000",
                                "--sample_by", "utterance", "--output", model],
                               check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n in sorted({min(int(x), self.a.n_utts) for x in self.a.label_sizes.split(",") if x}):
            scp = self.corpus.teacher_scp
            if n < self.a.n_utts:
                scp = os.path.join(self.w, "data", f"teacher_{n}.scp")
                with open(self.corpus.teacher_scp) as src, open(scp, "w") as dst:
                    dst.writelines(line for _, line in zip(range(n), src))
            key = "labels_full" if n == self.a.n_utts else f"labels_{n}"
            self.timed(key, f"stok-kmeans dump (labels), {n:,} utt", [
                sys.executable, "-m", "stok.bin.kmeans", "dump", "--km_model", model, "--feats_scp", scp,
                "--output_dir", os.path.join(self.w, "dump", f"km_teacher_{n}"), "--no_text"],
                utts=n, audio_s=audio_seconds(self.full) * n / self.a.n_utts,
                note=f"the corpus's teacher scp ({self.a.teacher_dim} dims, shared records), k = 100")

    def _models(self, which: str) -> str:
        """A random-weight model of the released size (made once, in a child process so that this process stays
        small: a child's peak RSS as ``wait4`` reports it includes what it inherited from here before its exec)."""
        given = {"hubert": self.a.hubert_checkpoint, "s3": self.a.s3_model, "codes": self.a.st_model_dir}[which]
        if given:
            return given
        path = os.path.join(self.w, "models", {"hubert": "hubert_base_random.pt", "s3": "s3_v2_25hz_random.onnx",
                                               "codes": "speechtokenizer_random"}[which])
        if os.path.exists(path):
            return path
        code = {
            "hubert": "import torch, torchaudio; torch.manual_seed(0); "
                      "torch.save(torchaudio.models.hubert_base().eval().state_dict(), sys.argv[1])",
            "s3": "from stok.models.s3.config import full_config; from stok.models.s3.model import build_model; "
                  "from stok.models.s3.onnx_export_official import export_official; "
                  "export_official(build_model(full_config('v2_25hz'), seed=0), sys.argv[1])",
            "codes": "import torch; torch.manual_seed(0); from stok.models.speechtokenizer import SpeechTokenizer, "
                     "SpeechTokenizerConfig, save_released; "
                     "save_released(SpeechTokenizer(SpeechTokenizerConfig()).eval(), sys.argv[1])",
        }[which]
        with self.lock.hold(False):
            subprocess.run([sys.executable, "-c", "import sys; " + code, path], check=True, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": REPO})
        return path

    def neural(self, which: str):
        n = self.a.subset_utts
        d = self.subset(n)
        model = self._models(which)
        out = os.path.join(self.w, "dump", f"{which}_{n}")
        tool = {"hubert": ("stok.bin.dump_features", ["--teacher", "hubert", "--checkpoint", model, "--layer", "avg"],
                           "stok-dump-features --teacher hubert (base, layer avg)"),
                "s3": ("stok.bin.dump_s3", ["--model", model, "--version", "v2_25hz"], "stok-dump-s3 v2_25hz"),
                "codes": ("stok.bin.dump_codes", ["--model_dir", model], "stok-dump-codes (SpeechTokenizer, n_q 8)")}
        module, opts, label = tool[which]
        note = "given weights" if model in (self.a.hubert_checkpoint, self.a.s3_model, self.a.st_model_dir) else \
            "random weights, released size"
        self.timed(which, f"{label}, {n:,} utt", self.launch(module) + [*opts, *self.dump_opts(), "--data_dir", d,
                                                                        "--output_dir", out], d, n, audio_seconds(d),
                   note=note)

    def rerun(self):
        """Every finished dump above, run again with the same command (nothing to do)."""
        for key in list(self.results):
            row = self.results.get(key)
            if key in ("index", "kmeans_scale") or key.endswith("_learn"):
                continue
            if not row or row.get("rerun_of"):
                continue
            cmd = row["command"].split()
            out = cmd[cmd.index("--output_dir") + 1]
            if not os.path.isfile(os.path.join(out, "cuts.jsonl.gz")):
                continue
            data = cmd[cmd.index("--data_dir") + 1] if "--data_dir" in cmd else None  # feature scps: no Kaldi dir
            r = self.timed(f"rerun_{key}", f"rerun of the finished {row['label'].split(',')[0]}, {row['utts']:,} utt",
                           cmd, data, row["utts"], 0.0, out_dir=out)
            r["rerun_of"] = key
            with open(self.results_path, "w") as f:
                json.dump(self.results, f, indent=1)

    def kmeans_scale(self):
        path = self.a.kmeans_json
        if not path and self.a.kmeans_workdir:
            has_scale = "--scale" in subprocess.run([sys.executable, os.path.join(REPO, "bench", "kmeans.py"),
                                                     "--help"], capture_output=True, text=True, cwd=REPO).stdout
            if not has_scale:
                print("kmeans_scale: this checkout's bench/kmeans.py has no --scale (branch kmeans not merged); "
                      "give --kmeans_json", flush=True)
                return
            path = os.path.join(self.w, "kmeans_scale.json")
            with self.lock.hold(True):
                subprocess.run([sys.executable, os.path.join(REPO, "bench", "kmeans.py"), "--scale", "--workdir",
                                self.a.kmeans_workdir, "--json_out", path], check=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": REPO})
        if not path:
            print("kmeans_scale: give --kmeans_json (bench/kmeans.py --scale --json_out) or --kmeans_workdir",
                  flush=True)
            return
        with open(path) as f:
            self.results["kmeans_scale"] = {"source": os.path.abspath(path), **json.load(f),
                                            "source_date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                         time.gmtime(os.path.getmtime(path)))}
        with open(self.results_path, "w") as f:
            json.dump(self.results, f, indent=1)

    # ------------------------------------------------------------------ table
    def table(self) -> str:
        lines = [f"At LibriSpeech scale: {self.a.n_utts:,} utterances ({self.corpus.hours:.1f} h) of "
                 f"bench/corpus.py; {cpu_isa()}; nj {self.a.nj}, {self.a.num_workers} DataLoader workers",
                 "", "| stage tool (as run.sh calls it) | utterances | wall s | CPU s | utt/s | audio-s/s | peak RSS, largest "
                 "process | RSS summed over its processes (sampled; shared pages in each) | Kaldi table reads | note |", "|---|---|---|---|---|---|---|---|---|---|"]
        for key, r in self.results.items():
            if key == "kmeans_scale" or r.get("rerun_of"):
                continue
            wall = r["wall_s"]
            audio = _rate(r["audio_s"] / wall) if r.get("audio_s") else ""
            lines.append(f"| {r['label']} | {r['utts']:,} | {wall:.1f} | {_cpu(r)} | "
                         f"{_rate(r['utts'] / wall)} | {audio} | "
                         f"{r['peak_rss'] / GB:.2f} GB | {r['tree_rss'] / GB:.2f} GB | "
                         f"{'' if r.get('reads') is None else r['reads']} | {r.get('note', '')} |")
        reruns = [(k, r) for k, r in self.results.items() if isinstance(r, dict) and r.get("rerun_of")]
        if reruns:
            lines += ["", "| rerun of a finished dump (same command) | utterances | wall s (start-up included) | "
                      "CPU s | peak RSS | outputs changed | Kaldi table reads |", "|---|---|---|---|---|---|---|"]
            for _, r in reruns:
                lines.append(f"| {r['label']} | {r['utts']:,} | {r['wall_s']:.1f} | {_cpu(r)} | "
                             f"{r['peak_rss'] / GB:.2f} GB | "
                             f"{', '.join(r.get('outputs_changed', [])) or 'none'} | "
                             f"{'' if r.get('reads') is None else r['reads']} |")
        km = self.results.get("kmeans_scale")
        if km:
            lines += ["", f"k-means beyond memory (bench/kmeans.py --scale, {km.get('source_date', '')}, "
                      f"{km.get('isa', '?')}; "
                      f"{km['n']:,} x {km['dim']}, k = {km['k']}; inertia on the same {km['n']:,} frames):",
                      "", "| fit | seed | seconds | peak RSS | inertia |", "|---|---|---|---|---|"]
            names = {"memory": "in memory (float32)", "disk16": "streamed from disk, float16",
                     "disk32": "streamed from disk, float32", "faiss": "faiss-cpu Kmeans, 20 it."}
            for r in km["rows"]:
                seed = r["seed"] if isinstance(r.get("seed"), int) else "-"  # older files: seeding seconds there
                lines.append(f"| {names.get(r['mode'], r['mode'])}, {km['n'] / 1e6:g} M | {seed} | "
                             f"{r['seconds']:.1f} | {r['peak_rss'] / 2**30:.2f} GiB | {r['inertia']:.4f} |")
            big = km.get("big")
            if big:
                lines.append(f"| streamed from disk, float16, {big.get('n', 10_000_000) / 1e6:g} M | - | "
                             f"{big['seconds']:.1f} | {big['peak_rss'] / 2**30:.2f} GiB | {big['inertia_2m']:.4f} |")
        return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="corpus, models, dumps, logs and results.json go here")
    p.add_argument("--n_utts", type=int, default=LIBRISPEECH_960_UTTS, help="corpus size (LibriSpeech 960 h)")
    p.add_argument("--light_utts", type=int, default=30000, help="utterances of the energy and MFCC dumps")
    p.add_argument("--subset_utts", type=int, default=100, help="utterances of the neural dumps (HuBERT, S3, codes)")
    p.add_argument("--teacher_dim", type=int, default=4, help="dims of the corpus's teacher scp (labels_full)")
    p.add_argument("--label_sizes", default=f"30000,{LIBRISPEECH_960_UTTS}",
                   help="labels_full: label the first N entries of the teacher scp for each N (capped at --n_utts)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {','.join(PARTS)}")
    p.add_argument("--nj", type=int, default=2, help="dump processes (run.sh's nj; >1: torchrun on CPU)")
    p.add_argument("--num_workers", type=int, default=2, help="DataLoader workers per dump process (run.sh's)")
    p.add_argument("--lock", default="", help="take this lock file exclusively around each timed row")
    p.add_argument("--hubert_checkpoint", default="")
    p.add_argument("--s3_model", default="")
    p.add_argument("--st_model_dir", default="")
    p.add_argument("--kmeans_json", default="", help="bench/kmeans.py --scale --json_out file to take rows from")
    p.add_argument("--kmeans_workdir", default="", help="run bench/kmeans.py --scale with this --workdir")
    p.add_argument("--table_only", action="store_true", help="print the table of results.json and exit")
    a = p.parse_args(argv)
    parts = [x for x in a.parts.split(",") if x]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: unknown {', '.join(unknown)}; choose from {','.join(PARTS)}")
    if a.light_utts > a.n_utts or a.subset_utts > a.n_utts:
        p.error("--light_utts and --subset_utts must not exceed --n_utts")
    b = Bench(a)
    if not a.table_only:
        for part in (x for x in PARTS if x in parts):
            if part in ("hubert", "s3", "codes"):
                b.neural(part)
            else:
                getattr(b, part)()
    print("\n" + b.table())


if __name__ == "__main__":
    main()
