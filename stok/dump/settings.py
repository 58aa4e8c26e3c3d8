"""What the dump engine takes: :class:`DumpSettings` (input, output, batching, execution, shards).

Every dump tool declares these options with :func:`add_dump_arguments` and builds the settings with
``DumpSettings.from_args``; code and recipes build them with ``DumpSettings(...)`` or ``from_dict``. Batch budgets
left at 0 are the model's own defaults for the device (``DumpModel.batch_seconds``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from stok.core.settings import Settings, SettingsError, setting
from stok.core.storage import FEATURE_STORAGES

CPU_KERNELS = ("auto", "fast", "reference")
_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass
class DumpSettings(Settings):
    # ---------------------------------------------------------------- input and output
    data_dir: Optional[str] = setting(
        None, exclusive="input", required=True,
        help="Kaldi data dir: wav.scp, optional segments and utt2dur (durations for bucketing)")
    wav_scp: Optional[str] = setting(
        None, exclusive="input", required=True, help="a bare wav.scp (paths, 'cmd |' pipes or ark:offset entries)")
    feats_scp: Optional[str] = setting(
        None, exclusive="input", cli=False,
        help="a feature scp (stage 1's feats.scp) as the input, for models of features (k-means labels)")
    segments: Optional[str] = setting(None, help="segments file to use with --wav_scp (utt rec start end)")
    output_dir: str = setting(
        "", required=True, help="where <name>.scp, <name>.<rank>.ark, failed.list and the summary go")
    text_output: bool = setting(
        False, help="also write <name>.txt: 'utt tok tok ...' (codes [T, n_q] flattened frame by frame)")
    feature_storage: str = setting(
        "float32", choices=FEATURE_STORAGES,
        help="float features: float32 matrices, or Kaldi two-byte compressed matrices (half the size, max error "
             "(max-min)/65535, read back as float32 by kaldiio)")
    overwrite: bool = setting(False, help="delete earlier output of this dump instead of resuming")
    strict: bool = setting(False, help="exit non-zero if any utterance failed (default: list and go on)")
    limit: int = setting(0, minimum=0, help="process only the first N utterances (by key), for trials")
    manifest_dir: str = setting(
        "", help="stage 0's lhotse manifests, whose ids, recordings and supervisions the dump's cut set "
                 "(cuts.jsonl.gz) takes; default: 'manifests' beside the data dir (data/manifests for "
                 "data/<split>), used when it holds *_cuts_<split>.jsonl.gz; else cuts come from the data dir")
    # ---------------------------------------------------------------- batching and execution
    device: str = setting("auto", help="auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N")
    batch_size: int = setting(64, minimum=0, help="max utterances per batch (0: no limit)")
    max_frames: int = setting(
        0, minimum=0, help="max padded model frames per batch (batch size x longest item, in the model's input "
                           "frames); overrides --batch_seconds")
    batch_seconds: float = setting(
        0.0, minimum=0, help="max padded audio seconds per batch (batch size x longest utterance); 0: the model's "
                             "default for the device (printed at the start)")
    no_bucketing: bool = setting(False, help="batch in key order instead of by length (more padding; for comparisons)")
    num_workers: int = setting(2, minimum=0, help="workers reading audio: DataLoader processes on GPU, threads "
                                                    "of the dumping process on CPU (0: in the main loop)")
    threads: int = setting(0, minimum=0, help="torch CPU threads per process (0: cores / processes)")
    cpu_kernels: str = setting(
        "auto", choices=CPU_KERNELS,
        help="on CPU in fp32: fast = stok's kernels (prepacked oneDNN matrix products, fused front ends, batched "
             "LSTMs: the same values to float32 rounding, so a token or code can differ from reference only where "
             "two choices are that close to a tie); reference = torch's plain modules, each utterance's result as "
             "computed alone; auto = fast for S3Tokenizer tokens and HuBERT features, reference for "
             "SpeechTokenizer codes (bitwise the released package's)")
    # ---------------------------------------------------------------- independent shard jobs
    shard: str = setting(
        "", metavar="I/N",
        help="run as shard I of N (0 <= I < N) with no process group: writes only this shard's ark/scp (resumable "
             "alone, e.g. as one task of a Slurm job array); then one --merge_only run writes the merged outputs. "
             "Every shard must be given the same options")
    merge_only: bool = setting(
        False, help="write <name>.scp, failed.list, cuts.jsonl.gz and the summary from finished shards (of "
                    "--shard runs) without computing anything; refuses while a shard is unfinished")

    def validate(self) -> None:
        given = [n for n in ("data_dir", "wav_scp", "feats_scp") if getattr(self, n)]
        if not given:
            raise SettingsError(f"give the input: {self.setting_name('data_dir')} or {self.setting_name('wav_scp')}")
        if len(given) > 1:
            raise SettingsError(f"give one input, not {' and '.join(self.setting_name(n) for n in given)}")
        if self.data_dir and not os.path.isfile(os.path.join(self.data_dir, "wav.scp")):
            raise SettingsError(f"{self.data_dir}/wav.scp not found; {self.setting_name('data_dir')} must be a Kaldi "
                                "data dir (run stage 0)")
        if self.wav_scp and not os.path.isfile(self.wav_scp):
            raise SettingsError(f"{self.setting_name('wav_scp')} {self.wav_scp} not found")
        if self.segments and not self.wav_scp:
            raise SettingsError(f"{self.setting_name('segments')} goes with {self.setting_name('wav_scp')} (a "
                                f"{self.setting_name('data_dir')}'s own segments file is used automatically)")
        if self.segments and not os.path.isfile(self.segments):
            raise SettingsError(f"{self.setting_name('segments')} {self.segments} not found")
        if not self.output_dir:
            raise SettingsError(f"{self.setting_name('output_dir')} is empty; give a directory for the output")
        if self.shard:
            self.shard_index()
        if self.merge_only and self.overwrite:
            raise SettingsError(f"{self.setting_name('merge_only')} writes from finished shards; "
                                f"{self.setting_name('overwrite')} would remove them: leave it out")

    def shard_index(self) -> Optional[Tuple[int, int]]:
        """``(i, n)`` of ``--shard i/n``, or None."""
        if not self.shard:
            return None
        m = _SHARD.match(self.shard.strip())
        if not m or not int(m.group(1)) < int(m.group(2)):
            raise SettingsError(f"{self.setting_name('shard')} {self.shard}: give I/N with 0 <= I < N, e.g. 0/8")
        return int(m.group(1)), int(m.group(2))

    @property
    def input_path(self) -> str:
        return self.data_dir or self.wav_scp or self.feats_scp or ""


def add_dump_arguments(parser, defaults: Optional[dict] = None) -> None:
    """The engine's options (two groups) and ``--debug`` on a tool's parser; ``defaults``: the tool's own."""
    io = ("data_dir", "wav_scp", "feats_scp", "segments", "output_dir", "text_output", "feature_storage", "overwrite", "strict",
          "limit", "manifest_dir")
    DumpSettings.add_arguments(parser, "input and output (dump engine)", only=io, defaults=defaults)
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too (or STOK_DEBUG=1)")
    DumpSettings.add_arguments(parser, "batching and execution (dump engine)",
                               only=[n for n in DumpSettings._fields() if n not in io], defaults=defaults)
