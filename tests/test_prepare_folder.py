"""Stage 0 for your own audio: a directory of mixed formats, an existing wav.scp (paths, pipes, ark entries,
segments) and an existing Kaldi data dir."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import soundfile as sf

from stok.bin.prepare import main
from tests.conftest import speechlike
from tests.prepare_helpers import check_kaldi_dir, check_manifests, lhotse_round_trip


def make_folder(root):
    """Mixed formats, rates, channels, nested dirs with spaces, a broken file, sidecar transcripts, a name clash."""
    files = {  # relative path -> (duration, rate, channels, format)
        "spk1/a.wav": (0.5, 16000, 1, "WAV"),
        "spk1/b.flac": (0.75, 16000, 1, "FLAC"),
        "spk2/sub dir/c d.ogg": (0.6, 22050, 1, "OGG"),
        "spk2/e.wav": (0.4, 44100, 2, "WAV"),
        "spk2/f.aiff": (0.3, 8000, 1, "AIFF"),
        "top.flac": (0.9, 24000, 1, "FLAC"),
        "dup/x.wav": (0.35, 16000, 1, "WAV"),
        "dup/x.flac": (0.45, 16000, 1, "FLAC"),
    }
    durs = {}
    for i, (rel, (dur, rate, ch, fmt)) in enumerate(sorted(files.items())):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        x = speechlike(dur, rate, seed=i)
        sf.write(path, np.stack([x] * ch, axis=1) if ch > 1 else x, rate, format=fmt)
        durs[rel] = len(x) / rate
    with open(os.path.join(root, "spk1", "a.txt"), "w") as f:
        f.write("hello\nthere  world\n")
    with open(os.path.join(root, "spk2", "e.lab"), "w") as f:
        f.write("LABELLED")
    with open(os.path.join(root, "spk2", "broken.wav"), "wb") as f:
        f.write(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not audio")
    return durs


IDS = {"spk1/a.wav": "spk1-a", "spk1/b.flac": "spk1-b", "spk2/sub dir/c d.ogg": "spk2-sub_dir-c_d",
       "spk2/e.wav": "spk2-e", "spk2/f.aiff": "spk2-f", "top.flac": "top", "dup/x.wav": "dup-x_wav",
       "dup/x.flac": "dup-x_flac"}


def test_folder_of_mixed_audio(tmp_path, caplog):
    root = tmp_path / "my audio"
    durs = make_folder(str(root))
    out = tmp_path / "data"
    assert main(["folder", "--audio_dir", str(root), "--output_dir", str(out), "--speaker_from", "parent"]) == 0
    want = {IDS[rel]: d for rel, d in durs.items()}
    kd = check_kaldi_dir(out / "train", segments=False, text=True, durations=want)
    assert "broken" in caplog.text  # skipped, with a warning
    assert kd.text == {"spk1-a": "hello there world", "spk2-e": "LABELLED"}
    assert kd.utt2spk["spk2-sub_dir-c_d"] == "sub_dir" and kd.utt2spk["spk1-b"] == "spk1" and kd.utt2spk["top"] == "top"
    assert kd.wav_scp["spk2-sub_dir-c_d"] == str(root / "spk2" / "sub dir" / "c d.ogg")
    recs, _, cuts = check_manifests(out / "manifests", "folder", "train", len(want))
    assert recs["spk2-e"].num_channels == 2 and recs["spk2-e"].sampling_rate == 44100
    audio = cuts["spk2-sub_dir-c_d"].load_audio()  # lhotse loads what we listed
    assert audio.shape[-1] == recs["spk2-sub_dir-c_d"].num_samples


def test_folder_dev_split_is_deterministic(tmp_path):
    root = tmp_path / "audio"
    make_folder(str(root))
    runs = []
    for n in range(2):
        out = tmp_path / f"data{n}"
        assert main(["folder", "--audio_dir", str(root), "--output_dir", str(out), "--dev_fraction", "0.25",
                     "--speaker_from", "first_dir"]) == 0
        train = check_kaldi_dir(out / "train", segments=False, text=True)
        dev = check_kaldi_dir(out / "dev", segments=False, text=False)
        assert len(dev.utt_ids()) == 2 and len(train.utt_ids()) == 6
        assert not set(train.utt_ids()) & set(dev.utt_ids())
        runs.append(dev.utt_ids())
    assert runs[0] == runs[1]
    out = tmp_path / "by_spk"
    assert main(["folder", "--audio_dir", str(root), "--output_dir", str(out), "--dev_count", "1",
                 "--dev_by", "speaker", "--speaker_from", "first_dir", "--train_name", "tr", "--dev_name", "cv"]) == 0
    tr = check_kaldi_dir(out / "tr", segments=False, text=os.path.exists(out / "tr" / "text"))
    cv = check_kaldi_dir(out / "cv", segments=False, text=os.path.exists(out / "cv" / "text"))
    assert len(set(cv.utt2spk.values())) == 1 and not set(cv.utt2spk.values()) & set(tr.utt2spk.values())


def make_scp_inputs(tmp_path):
    """A wav.scp mixing a plain FLAC, a 'cat x |' pipe and a Kaldi ark entry, with segments, utt2spk and text."""
    import kaldiio

    d = tmp_path / "in"
    os.makedirs(d)
    long = speechlike(3.0, 16000, seed=7)
    sf.write(d / "long.flac", long, 16000)
    sf.write(d / "piped.wav", speechlike(1.25, 8000, seed=8), 8000)
    pcm = (speechlike(0.8, 16000, seed=9) * 32767).astype(np.int16)
    with kaldiio.WriteHelper(f"ark,scp:{d / 'w.ark'},{d / 'w.scp'}") as w:
        w("arkrec", (16000, pcm))
    ark_spec = (d / "w.scp").read_text().split(maxsplit=1)[1].strip()
    wav_scp = {"rec-long": str(d / "long.flac"), "rec-pipe": f"cat {d / 'piped.wav'} |", "rec-ark": ark_spec}
    (d / "wav.scp").write_text("".join(f"{k} {v}\n" for k, v in sorted(wav_scp.items())))
    (d / "segments").write_text("A-long-1 rec-long 0.00 1.20\nA-long-2 rec-long 1.20 -1\n"
                                "B-pipe-1 rec-pipe 0.25 1.00\nC-ark-1 rec-ark 0 -1\n")
    (d / "utt2spk").write_text("A-long-1 A\nA-long-2 A\nB-pipe-1 B\nC-ark-1 C\n")
    (d / "text").write_text("A-long-1 first part\nA-long-2 second part\nC-ark-1 from an archive\n")
    durs = {"A-long-1": 1.2, "A-long-2": 1.8, "B-pipe-1": 0.75, "C-ark-1": 0.8}
    return d, wav_scp, durs


def test_folder_from_wav_scp_with_segments_pipes_and_ark(tmp_path):
    d, wav_scp, durs = make_scp_inputs(tmp_path)
    out = tmp_path / "data"
    assert main(["folder", "--wav_scp", str(d / "wav.scp"), "--segments", str(d / "segments"),
                 "--utt2spk", str(d / "utt2spk"), "--text", str(d / "text"), "--output_dir", str(out)]) == 0
    kd = check_kaldi_dir(out / "train", segments=True, text=True, durations=durs)
    assert kd.wav_scp == wav_scp  # entries kept exactly as given
    assert kd.segments["A-long-2"] == ("rec-long", 1.2, 3.0)  # end -1 resolved to the recording's end
    assert kd.utt2spk == {"A-long-1": "A", "A-long-2": "A", "B-pipe-1": "B", "C-ark-1": "C"}
    assert set(kd.text) == {"A-long-1", "A-long-2", "C-ark-1"}
    recs, sups, cuts = check_manifests(out / "manifests", "folder", "train", 4, n_recs=3)
    assert recs["rec-pipe"].sampling_rate == 8000 and recs["rec-pipe"].sources[0].type == "command"
    # lhotse loads every kind of entry, the ark one through python -m stok.data.prepare.wavcat
    for cut in cuts.trim_to_supervisions(keep_overlapping=False):
        audio = cut.load_audio()
        assert audio.shape[-1] == pytest.approx(cut.duration * cut.sampling_rate, abs=2)
    # and stok's own reader reads every utterance with the segment honoured
    from stok.data.audio import load_audio

    for utt in kd.utterances():
        assert load_audio(utt.spec, 16000, utt.start, utt.end).shape[0] == pytest.approx(durs[utt.utt_id] * 16000, abs=2)
    # lhotse reads our segments back (it knows neither ark entries nor, without kaldi_native_io, pipes: plain files only)
    plain = tmp_path / "plain_in"
    os.makedirs(plain)
    (plain / "wav.scp").write_text(f"rec-long {wav_scp['rec-long']}\n")
    (plain / "segments").write_text("A-long-1 rec-long 0.00 1.20\nA-long-2 rec-long 1.20 -1\n")
    (plain / "text").write_text("A-long-1 first part\nA-long-2 second part\n")
    (plain / "utt2spk").write_text("A-long-1 A\nA-long-2 A\n")
    assert main(["folder", "--data_dir", str(plain), "--output_dir", str(tmp_path / "plain")]) == 0
    kd = check_kaldi_dir(tmp_path / "plain" / "train", segments=True, text=True,
                         durations={"A-long-1": 1.2, "A-long-2": 1.8})
    lhotse_round_trip(tmp_path / "plain" / "train", 16000, kd)


def test_folder_from_kaldi_dir_and_bad_entries(tmp_path, caplog):
    d, wav_scp, durs = make_scp_inputs(tmp_path)
    with open(d / "wav.scp", "a") as f:
        f.write(f"rec-missing {d / 'missing.wav'}\n")
    out = tmp_path / "data"
    assert main(["folder", "--data_dir", str(d), "--output_dir", str(out)]) == 0
    assert "rec-missing" in caplog.text  # unreadable: skipped with a warning
    kd = check_kaldi_dir(out / "train", segments=True, text=True, durations=durs)
    assert kd.wav_scp == wav_scp
    # a wav.scp without segments: one utterance per recording, each its own speaker, no text
    (d / "wav.scp").write_text("".join(f"{k} {v}\n" for k, v in sorted(wav_scp.items())))
    out2 = tmp_path / "data2"
    assert main(["folder", "--wav_scp", str(d / "wav.scp"), "--output_dir", str(out2)]) == 0
    kd2 = check_kaldi_dir(out2 / "train", segments=False, text=False,
                          durations={"rec-long": 3.0, "rec-pipe": 1.25, "rec-ark": 0.8})
    assert kd2.utt2spk == {k: k for k in wav_scp}


def test_folder_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match=re.escape("exactly one of")):
        main(["folder", "--output_dir", str(tmp_path / "d")])
    os.makedirs(tmp_path / "empty")
    with pytest.raises(SystemExit, match=re.escape("no audio files")):
        main(["folder", "--audio_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "d")])
    (tmp_path / "bad.scp").write_text("a /x.wav\nb\n")
    with pytest.raises(SystemExit, match=re.escape("bad.scp:2")):
        main(["folder", "--wav_scp", str(tmp_path / "bad.scp"), "--output_dir", str(tmp_path / "d")])
    sf.write(tmp_path / "one.wav", speechlike(0.2), 16000)
    os.makedirs(tmp_path / "one")
    os.replace(tmp_path / "one.wav", tmp_path / "one" / "one.wav")
    with pytest.raises(SystemExit, match=re.escape("nothing to train on")):
        main(["folder", "--audio_dir", str(tmp_path / "one"), "--output_dir", str(tmp_path / "d"),
              "--dev_fraction", "0.5"])
