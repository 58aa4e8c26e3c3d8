"""Dumps as lhotse cut sets (``cuts.jsonl.gz``), Shar export and lhotse sampling, through the real tools.

One small corpus goes through stage 0 (``stok-prepare folder`` with segments, text and speakers), then every
kind of dump: MFCC features, k-means labels (from the features and from audio), S3 tokens (a small demo
model), SpeechTokenizer codes (a small model in the released layout). The released code ranges go through
the engine itself with a model that writes chosen values. Every cut set is also read in a Python that has
lhotse and no stok (``tests/plain_lhotse_reader.py``), and compared with the arks read by kaldiio.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re

import kaldi_native_io
import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet
from lhotse.array import Array

from stok.bin import dump_codes, dump_features, dump_s3, export_shar, kmeans, make_demo_s3, prepare
from stok.data.audio import read_raw, to_mono
from stok.dump.engine import run_dump
from stok.core.model_api import DumpModel
from stok.dump.settings import DumpSettings, add_dump_arguments
from stok.core.storage import load_codes
from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, save_released
from tests.conftest import REPO, speechlike
from tests.plain_lhotse_reader import read_without_stok

# utt: (recording, start, end, text, speaker); recB is stereo at 8 kHz, recC a 'cat ... |' pipe,
# recD's file is broken after stage 0, so its utterance fails in every dump and has no cut
SEGMENTS = {
    "recA-1": ("recA", 0.0, 1.23, "HELLO", "s1"),
    "recA-2": ("recA", 1.1, 2.905, "THERE WORLD", "s1"),
    "recA-3": ("recA", 3.0, 4.37, "A B C", "s1"),
    "recB-1": ("recB", 0.0, 2.33, "STEREO ONE", "s2"),
    "recC-1": ("recC", 0.2, 1.5, "PIPED", "s3"),
    "recD-1": ("recD", 0.0, 1.0, "BROKEN", "s4"),
}
DUMP_OPTS = ["--device", "cpu", "--num_workers", "0"]
pytestmark = pytest.mark.filterwarnings("ignore:You requested a subset of a recording:UserWarning")  # the pipe


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuts")
    audio = root / "audio"
    audio.mkdir()
    sf.write(audio / "recA.flac", speechlike(4.37, seed=1), 16000)
    x = speechlike(2.33, 8000, seed=2)
    sf.write(audio / "recB.wav", np.stack([x, 0.5 * x], 1), 8000)
    sf.write(audio / "recC.wav", speechlike(1.5, seed=3), 16000)
    sf.write(audio / "recD.wav", speechlike(1.0, seed=4), 16000)
    specs = {"recA": str(audio / "recA.flac"), "recB": str(audio / "recB.wav"),
             "recC": f"cat {audio / 'recC.wav'} |", "recD": str(audio / "recD.wav")}
    src = root / "src"
    src.mkdir()
    (src / "wav.scp").write_text("".join(f"{r} {s}\n" for r, s in sorted(specs.items())))
    (src / "segments").write_text("".join(f"{u} {r} {b} {e}\n" for u, (r, b, e, _, _) in SEGMENTS.items()))
    (src / "text").write_text("".join(f"{u} {t}\n" for u, (_, _, _, t, _) in SEGMENTS.items()))
    (src / "utt2spk").write_text("".join(f"{u} {s}\n" for u, (*_, s) in SEGMENTS.items()))
    prepare.main(["folder", "--wav_scp", str(src / "wav.scp"), "--segments", str(src / "segments"),
                  "--text", str(src / "text"), "--utt2spk", str(src / "utt2spk"), "--output_dir", str(root / "data")])
    (audio / "recD.wav").write_bytes(b"RIFF\x00\x00")  # broken after stage 0: fails in the dumps
    return {"root": root, "data": str(root / "data" / "train"), "specs": specs}


@pytest.fixture(scope="module")
def dumps(corpus):
    """Every kind of dump of the corpus, through the tools' entry points: name -> (output dir, summary)."""
    root, data = corpus["root"], corpus["data"]
    d = lambda *p: str(root.joinpath("dump", *p))  # noqa: E731
    out = {}
    out["feats"] = d("mfcc", "train"), dump_features.main(
        ["--teacher", "mfcc", "--data_dir", data, "--output_dir", d("mfcc", "train"), *DUMP_OPTS])
    km = str(root / "exp" / "km8.npz")
    kmeans.main(["learn", "--feats_scp", d("mfcc", "train", "feats.scp"), "--n_clusters", "8", "--output", km])
    out["km_labels"] = d("km8", "train"), kmeans.main(
        ["dump", "--km_model", km, "--feats_scp", d("mfcc", "train", "feats.scp"), "--output_dir", d("km8", "train")])
    out["km_labels_audio"] = d("km8_audio", "train"), kmeans.main(
        ["dump", "--from_audio", "--km_model", km, "--teacher", "mfcc", "--data_dir", data,
         "--output_dir", d("km8_audio", "train"), *DUMP_OPTS])
    s3_model = str(root / "exp" / "demo_v2_25hz.onnx")
    make_demo_s3.main(["--version", "v2_25hz", "--output", s3_model])
    out["s3_tokens"] = d("s3_v2_25hz", "train"), dump_s3.main(
        ["--model", s3_model, "--version", "v2_25hz", "--data_dir", data, "--output_dir", d("s3_v2_25hz", "train"),
         *DUMP_OPTS])
    torch.manual_seed(0)
    st = SpeechTokenizer(SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=8, codebook_size=16,
                                               n_q=3, lstm_layers=1))
    save_released(st, str(root / "exp" / "st"))
    out["st_codes"] = d("st_codes", "train"), dump_codes.main(
        ["--model_dir", str(root / "exp" / "st"), "--data_dir", data, "--output_dir", d("st_codes", "train"),
         *DUMP_OPTS])
    return out


def stored(out_dir: str, name: str) -> dict:
    scp = os.path.join(out_dir, f"{name}.scp")
    if name == "feats":
        return {k: np.asarray(v) for k, v in kaldiio.load_scp(scp).items()}
    return dict(load_codes(scp))


def assert_plain_lhotse_reads(tmp_path, out_dirs_fields, exact=True) -> None:
    """Every cut of each (dump dir, field) read without stok: the field is the ark's record as kaldiio reads it
    (``exact``; else as Kaldi decodes it, see test_compressed_features...), dtype and every frame; the cut
    itself is the one lhotse reads here."""
    paths = [os.path.join(d, "cuts.jsonl.gz") for d, _ in out_dirs_fields]
    arrays, cuts = read_without_stok(tmp_path, paths)
    for i, (out_dir, field) in enumerate(out_dirs_fields):
        ref = {k: np.asarray(v) for k, v in kaldiio.load_scp(os.path.join(out_dir, f"{field}.scp")).items()}
        here = CutSet.from_file(paths[i])
        assert sorted(k for k in cuts if k.startswith(f"{i}/")) == sorted(f"{i}/{k}" for k in ref)
        for cut in here:
            x = arrays[f"{i}/{cut.id}/{field}"]
            assert set(k for k in arrays if k.startswith(f"{i}/{cut.id}/")) == {f"{i}/{cut.id}/{field}"}
            if exact:
                assert x.dtype == ref[cut.id].dtype and np.array_equal(x, ref[cut.id]), (out_dir, cut.id)
            else:
                kaldi = kaldi_native_io.FloatMatrix.read(cut.custom[field].storage_path).numpy()
                assert x.dtype == np.float32 and np.array_equal(x, kaldi), (out_dir, cut.id)
            assert cuts[f"{i}/{cut.id}"] == cut.to_dict()


KINDS = [  # dump, field, dtype, frame shift, frames of one row (codes: exact integers in float32 matrices)
    ("feats", "feats", np.float32, 0.02, (39,)),
    ("km_labels", "km_labels", np.int32, 0.02, ()),
    ("km_labels_audio", "km_labels", np.int32, 0.02, ()),
    ("s3_tokens", "s3_tokens", np.int32, 0.04, ()),
    ("st_codes", "st_codes", np.float32, 0.02, (3,)),
]
MATRICES = ("feats", "st_codes")  # in the ark itself (lhotse's kaldiio type); int32 vectors in <name>.h5


def check_storage(value, out_dir: str, field: str, key: str) -> None:
    """The field is in lhotse's own storage: the ark record of the scp (matrices) or the dump's h5 copy."""
    assert isinstance(value, Array)
    if field in MATRICES:
        scp = dict(line.split() for line in open(os.path.join(out_dir, f"{field}.scp")))
        assert (value.storage_type, value.storage_path) == ("kaldiio", scp[key])  # the dump's ark, not a copy
        assert scp[key].startswith(os.path.join(out_dir, f"{field}.0.ark:"))
    else:
        assert (value.storage_type, value.storage_path, value.storage_key) == (
            "numpy_hdf5", os.path.join(out_dir, f"{field}.h5"), key)


@pytest.mark.parametrize("dump, field, dtype, shift, row", KINDS, ids=[k[0] for k in KINDS])
def test_cut_set_round_trip_for_every_kind_of_dump(corpus, dumps, dump, field, dtype, shift, row):
    out_dir, summary = dumps[dump]
    cuts = CutSet.from_file(os.path.join(out_dir, "cuts.jsonl.gz"))
    ref = stored(out_dir, field)
    failed = dict(line.rstrip("\n").split("\t", 1) for line in open(os.path.join(out_dir, "failed.list")))
    # one cut per scp entry, in scp order; the failed utterance is absent; the summary counts the cuts
    assert set(failed) == ({"recD-1"} if dump != "km_labels" else set())  # labels of features: never had it
    assert list(cuts.ids) == list(ref) == sorted(set(SEGMENTS) - {"recD-1"})
    on_disk = json.load(open(os.path.join(out_dir, f"{field}.summary.json")))
    assert summary["cuts_written"] == on_disk["cuts_written"] == len(cuts) == 5
    manifest = os.path.join(corpus["root"], "data", "manifests", "folder_cuts_train.jsonl.gz")
    assert set(on_disk["cuts"]["sources"]) == {manifest if dump != "km_labels" else
                                               os.path.join(dumps["feats"][0], "cuts.jsonl.gz")}
    beyond_rounding = 0
    for cut in cuts:
        rec, start, end, text, speaker = SEGMENTS[cut.id]
        check_storage(cut.custom[field], out_dir, field, cut.id)
        assert cut.custom[f"{field}_frame_shift"] == pytest.approx(shift)
        x = getattr(cut, f"load_{field}")()
        assert x.dtype == dtype and x.shape[1:] == row and np.array_equal(x, ref[cut.id]), cut.id
        assert abs(len(x) * shift - cut.duration) < shift  # frames x frame shift covers the cut within one frame
        beyond_rounding += len(x) > round(cut.duration / shift)
        # the cut is the segment the dump read, with its recording and supervision from stage 0
        assert (cut.recording_id, cut.start, cut.end) == (rec, pytest.approx(start), pytest.approx(end))
        assert [(s.text, s.speaker) for s in cut.supervisions] == [(text, speaker)]
        wave, rate = read_raw(corpus["specs"][rec], start, end)
        audio = cut.load_audio()
        assert audio.shape[-1] == len(wave) and np.allclose(audio.mean(0), to_mono(wave), atol=1e-6)
    assert beyond_rounding > 0  # some cuts have a frame for a started hop (a TemporalArray would drop it)
    # stok writes its lines itself (no lhotse object per cut): they are exactly what lhotse writes for these cuts
    lines = gzip.open(os.path.join(out_dir, "cuts.jsonl.gz"), "rt", encoding="utf-8").read().splitlines()
    assert lines == [json.dumps(c.to_dict(), ensure_ascii=False) for c in cuts]


def test_every_cut_set_reads_exactly_in_plain_lhotse_without_stok(dumps, tmp_path):
    """lhotse alone (no stok on the path, no registered reader) reads every dump's cuts: each field exactly the
    ark's record as kaldiio reads it, dtype and every frame (tokens and labels from the h5 copy)."""
    assert_plain_lhotse_reads(tmp_path, [(dumps[dump][0], field) for dump, field, *_ in KINDS])


def test_label_cuts_keep_the_cuts_of_the_feature_dump(dumps):
    feats = CutSet.from_file(os.path.join(dumps["feats"][0], "cuts.jsonl.gz"))
    labels = CutSet.from_file(os.path.join(dumps["km_labels"][0], "cuts.jsonl.gz"))
    for f, k in zip(feats, labels):
        assert (f.id, f.start, f.duration, f.recording, f.supervisions) == (k.id, k.start, k.duration, k.recording,
                                                                             k.supervisions)
        assert set(k.custom) == {"km_labels", "km_labels_frame_shift"}  # the features' fields are not kept
        assert len(k.load_km_labels()) == len(f.load_feats())


class ReleasedRange(DumpModel):
    """Writes chosen values at the released ranges: S3 v2 tokens up to 6560 (v1: 4095), SpeechTokenizer codes
    [T, 8] up to 1023, with 128 (mod 256) values (the ones two-byte compression decoded wrongly)."""

    def __init__(self, codes: bool):
        self.codes = codes

    def num_frames(self, n: int) -> int:
        return -(-n // (320 if self.codes else 640))

    def encode(self, padded, lengths):
        out = []
        for n in lengths.tolist():
            t = self.num_frames(n)
            if self.codes:
                x = (np.arange(t)[:, None] * 131 + np.arange(8)[None] * 37 + n) % 1024
                x[: 4] = np.array([1023, 640, 128, 384])[:, None]
            else:
                x = (np.arange(t) * 977 + n) % 6561
                x[:5] = [6560, 4095, 1023, 640, 128]
            out.append(x.astype(np.int32))
        return out

    def describe(self) -> dict:
        return {"model": "released_range", "frame_rate" if self.codes else "token_rate": 50.0 if self.codes else 25.0}


def test_released_code_ranges_through_the_engine_from_a_bare_wav_scp(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a.flac", speechlike(1.01, seed=5), 16000)
    sf.write(audio / "b.wav", speechlike(2.5, seed=6), 16000)
    (tmp_path / "wav.scp").write_text(f"a {audio / 'a.flac'}\nb cat {audio / 'b.wav'} |\n")
    parser = argparse.ArgumentParser()
    add_dump_arguments(parser)
    for name, codes in (("st_codes", True), ("s3_tokens", False)):
        out = str(tmp_path / name)
        args = parser.parse_args(["--wav_scp", str(tmp_path / "wav.scp"), "--output_dir", out, *DUMP_OPTS])
        summary = run_dump(DumpSettings.from_args(args), lambda device, codes=codes: ReleasedRange(codes), name=name)
        assert summary["cuts_written"] == 2
        assert summary["cuts"]["sources"] == {os.path.abspath(tmp_path / "wav.scp"): 2}  # no manifests: from wav.scp
        ref = stored(out, name)
        cuts = CutSet.from_file(os.path.join(out, "cuts.jsonl.gz"))
        assert [c.recording.sources[0].type for c in cuts] == ["file", "command"]
        for cut in cuts:
            x = getattr(cut, f"load_{name}")()
            assert x.dtype == (np.float32 if codes else np.int32) and np.array_equal(x, ref[cut.id])
            assert abs(len(x) * (0.02 if codes else 0.04) - cut.duration) < (0.02 if codes else 0.04)
            top = {1023, 640, 128, 384} if codes else {6560, 4095, 1023, 640, 128}
            assert top <= set(x.reshape(-1).tolist()) and x.max() == max(top)
    assert_plain_lhotse_reads(tmp_path, [(str(tmp_path / "st_codes"), "st_codes"),
                                         (str(tmp_path / "s3_tokens"), "s3_tokens")])


def test_shar_export_round_trip(dumps, tmp_path):
    out_dir = dumps["s3_tokens"][0]
    cuts = CutSet.from_file(os.path.join(out_dir, "cuts.jsonl.gz"))
    shar = str(tmp_path / "shar")
    result = export_shar.main(["--cuts", os.path.join(out_dir, "cuts.jsonl.gz"), "--output_dir", shar,
                               "--shard_size", "2"])
    assert result["cuts"] == 5 and result["shards"] == 3
    assert sorted(os.listdir(shar)) == [f"{f}.{i:06d}.{ext}" for f, ext in
                                        (("cuts", "jsonl.gz"), ("recording", "tar"), ("s3_tokens", "tar"))
                                        for i in range(3)]
    back = list(CutSet.from_shar(in_dir=shar))
    ref = stored(out_dir, "s3_tokens")
    assert [c.id for c in back] == list(cuts.ids)
    for orig, c in zip(cuts, back):
        x = c.load_s3_tokens()
        assert x.dtype == np.int32 and np.array_equal(x, ref[c.id])
        assert c.s3_tokens_frame_shift == pytest.approx(0.04) and c.duration == pytest.approx(orig.duration)
        assert np.array_equal(c.load_audio(), orig.load_audio())  # the segment's own audio, lossless
        assert [(s.text, s.speaker) for s in c.supervisions] == [(s.text, s.speaker) for s in orig.supervisions]
    with pytest.raises(SystemExit, match="already holds 9 shard files; add --overwrite"):
        export_shar.main(["--cuts", os.path.join(out_dir, "cuts.jsonl.gz"), "--output_dir", shar])
    # codes with no audio, one shard, over the old export
    result = export_shar.main(["--cuts", os.path.join(dumps["st_codes"][0], "cuts.jsonl.gz"), "--output_dir", shar,
                               "--audio", "none", "--overwrite"])
    assert result["shards"] == 1 and sorted(os.listdir(shar)) == ["cuts.000000.jsonl.gz", "st_codes.000000.tar"]
    codes = stored(dumps["st_codes"][0], "st_codes")
    back = list(CutSet.from_shar(in_dir=shar))
    assert len(back) == 5 and all(np.array_equal(c.load_st_codes(), codes[c.id]) for c in back)


def readme_example() -> str:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text.split("## Dumps as lhotse cuts", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_batches_tokens_with_a_dynamic_bucketing_sampler(corpus, dumps, tmp_path, monkeypatch, capsys):
    from lhotse.dataset import DynamicBucketingSampler

    monkeypatch.chdir(corpus["root"])  # the example reads dump/s3_v2_25hz/train/cuts.jsonl.gz
    scope = {"__name__": "readme_example"}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    printed = capsys.readouterr().out.splitlines()
    ref = stored(dumps["s3_tokens"][0], "s3_tokens")
    lengths = [json.loads(line[line.rindex(" [") + 1:]) for line in printed]  # "torch.Size([B, T]) [n1, n2, ...]"
    assert sorted(n for batch in lengths for n in batch) == sorted(len(v) for v in ref.values())  # every cut once
    # the example's dataset over a bucketing sampler, from the cut set and from its Shar export
    shar = str(tmp_path / "shar")
    export_shar.main(["--cuts", os.path.join(dumps["s3_tokens"][0], "cuts.jsonl.gz"), "--output_dir", shar,
                      "--shard_size", "2", "--audio", "none"])
    for cuts in (scope["cuts"], CutSet.from_shar(in_dir=shar)):
        sampler = DynamicBucketingSampler(cuts, max_duration=4.0, num_buckets=2, shuffle=True, seed=1)
        seen, batches = [], 0
        for batch_cuts in sampler:
            batch = scope["TokenBatches"]()[batch_cuts]
            batches += 1
            for i, cut in enumerate(batch_cuts):
                n = int(batch["lengths"][i])
                assert np.array_equal(batch["tokens"][i, :n].numpy(), ref[cut.id])
                assert (batch["tokens"][i, n:] == -1).all()
                assert batch["text"][i] == SEGMENTS[cut.id][3]
            seen += [c.id for c in batch_cuts]
        assert sorted(seen) == sorted(ref) and len(seen) == len(set(seen)) and batches >= 2  # 8.7 s in batches of ~4 s


def test_compressed_features_with_cuts_from_the_data_dir(corpus, tmp_path, caplog):
    """Two-byte compressed feature records, and cuts built from the Kaldi dir when --manifest_dir has none."""
    out = str(tmp_path / "c16")
    summary = dump_features.main(["--teacher", "mfcc", "--data_dir", corpus["data"], "--output_dir", out,
                                  "--feature_storage", "compressed16", "--manifest_dir", str(tmp_path / "nowhere"),
                                  *DUMP_OPTS])
    assert "--manifest_dir" in caplog.text and summary["cuts"]["sources"] == {corpus["data"]: 5}
    ref = stored(out, "feats")
    cuts = CutSet.from_file(os.path.join(out, "cuts.jsonl.gz"))
    assert list(cuts.ids) == list(ref)
    for cut in cuts:
        x = cut.load_feats()
        # the two-byte records as Kaldi decodes them (kaldi_native_io, lhotse's reader); kaldiio's own decoder
        # orders the float32 operations differently: a few float32 ulps apart, far below the step (max-min)/65535
        kaldi = kaldi_native_io.FloatMatrix.read(cut.custom["feats"].storage_path).numpy()
        assert x.dtype == np.float32 and np.array_equal(x, kaldi)
        step = (ref[cut.id].max() - ref[cut.id].min()) / 65535
        assert x.shape == ref[cut.id].shape and np.abs(x - ref[cut.id]).max() <= min(step / 64, 4 * np.spacing(
            np.abs(ref[cut.id]).max()))
        rec, start, end, text, speaker = SEGMENTS[cut.id]
        assert (cut.recording_id, cut.start, cut.end) == (rec, pytest.approx(start), pytest.approx(end))
        assert [(s.text, s.speaker) for s in cut.supervisions] == [(text, speaker)]
    assert_plain_lhotse_reads(tmp_path, [(out, "feats")], exact=False)
