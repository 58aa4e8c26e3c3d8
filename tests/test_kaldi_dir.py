"""Kaldi data dirs: round trip, validation errors naming file and line, and lhotse compatibility."""

from __future__ import annotations

import pytest

from stok.data.kaldi_dir import KaldiDir, KaldiDirError, read_kaldi_dir, write_kaldi_dir


def test_round_trip_sorted_and_spk2utt(tmp_path):
    kd = KaldiDir(wav_scp={"r2": "/b.wav", "r1": "sox /a.sph -t wav - |"},
                  segments={"s-b": ("r2", 0.0, 1.5), "s-a": ("r1", 0.25, 2.0), "s-c": ("r2", 1.5, 3.0)},
                  utt2spk={"s-a": "A", "s-b": "B", "s-c": "B"}, text={"s-a": "hello there", "s-b": "x", "s-c": "y"},
                  utt2dur={"s-a": 1.75, "s-b": 1.5, "s-c": 1.5})
    write_kaldi_dir(str(tmp_path), kd)
    assert (tmp_path / "wav.scp").read_text().splitlines()[0].startswith("r1 sox")
    assert (tmp_path / "spk2utt").read_text() == "A s-a\nB s-b s-c\n"
    back = read_kaldi_dir(str(tmp_path))
    assert back.wav_scp == kd.wav_scp and back.segments == kd.segments and back.text == kd.text
    assert back.utt2dur == kd.utt2dur
    utts = back.utterances()
    assert [u.utt_id for u in utts] == ["s-a", "s-b", "s-c"]
    assert utts[0].spec.startswith("sox") and utts[0].start == 0.25 and utts[0].duration == 1.75


def test_lhotse_reads_our_dir(tmp_path):
    from lhotse.kaldi import load_kaldi_data_dir
    import soundfile as sf
    from tests.conftest import speechlike

    sf.write(tmp_path / "a.wav", speechlike(1.0), 16000)
    kd = KaldiDir(wav_scp={"a": str(tmp_path / "a.wav")}, utt2spk={"a": "spk"}, text={"a": "HELLO"},
                  utt2dur={"a": 1.0})
    write_kaldi_dir(str(tmp_path / "d"), kd)
    recs, sups, _ = load_kaldi_data_dir(str(tmp_path / "d"), sampling_rate=16000)
    assert recs["a"].duration == pytest.approx(1.0) and sups[0].text == "HELLO" and sups[0].speaker == "spk"


@pytest.mark.parametrize("name,content,match", [
    ("wav.scp", "a /a.wav\nb\n", r"wav.scp:2: expected at least 2 fields"),
    ("wav.scp", "a /a.wav\na /b.wav\n", r"wav.scp:2: duplicate key"),
    ("segments", "s a 0 1 extra\n", r"segments:1: expected 4 fields"),
    ("segments", "s zz 0 1\n", r"recording 'zz'"),
    ("segments", "s a 2 1\n", r"bad times"),
    ("utt2spk", "ghost A\n", r"utt2spk: 1 keys not among the utterances"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, content, match):
    (tmp_path / "wav.scp").write_text("a /a.wav\n")
    (tmp_path / name).write_text(content)
    with pytest.raises(KaldiDirError, match=match):
        read_kaldi_dir(str(tmp_path))
