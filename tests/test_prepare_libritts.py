"""Stage 0 for LibriTTS via lhotse's recipe, on a tiny corpus in LibriTTS's real layout (24 kHz WAV)."""

from __future__ import annotations

import os

import soundfile as sf

from stok.bin.prepare import main
from tests.conftest import speechlike
from tests.prepare_helpers import chapter_dirs, check_kaldi_dir, check_manifests, lhotse_round_trip

# split -> speaker -> chapter -> [(duration, original text, normalized text)]
LAYOUT = {
    "dev-clean": {"84": {"121123": [(0.5, "Maximilian.", "Maximilian."),
                                    (0.7, "Villefort rose, half ashamed.", "Villefort rose, half ashamed.")]}},
    "train-clean-100": {"103": {"1241": [(0.6, "It was 1 o'clock.", "It was one o'clock."),
                                         (0.4, "Mr. Smith left.", "Mister Smith left.")]},
                        "1034": {"121119": [(0.55, "Good-bye!", "Good-bye!")]}},
}


def make_libritts(root, rate=24000):
    durs, texts = {}, {}
    seed = 0
    for split, spk, chapter, d, utts in chapter_dirs(root, LAYOUT):
        trans, book = [], []
        for i, (dur, orig, norm) in enumerate(utts):
            utt = f"{spk}_{chapter}_{i:06d}_000000"
            seed += 1
            sf.write(os.path.join(d, utt + ".wav"), speechlike(dur, rate, seed=seed), rate)
            with open(os.path.join(d, utt + ".original.txt"), "w") as f:
                f.write(orig)
            with open(os.path.join(d, utt + ".normalized.txt"), "w") as f:
                f.write(norm)
            trans.append(f"{utt}\t{orig}\t{norm}\n")
            book.append(f"{utt}\t{orig}\t{norm}\t{i}\t{i + 1}\t{20.5 + i}\n")
            durs.setdefault(split, {})[utt] = dur
            texts[utt] = norm
        with open(os.path.join(d, f"{spk}_{chapter}.trans.tsv"), "w") as f:
            f.writelines(trans)
        with open(os.path.join(d, f"{spk}_{chapter}.book.tsv"), "w") as f:
            f.writelines(book)
    with open(os.path.join(root, "SPEAKERS.txt"), "w") as f:
        f.write(";ID  |SEX| SUBSET           |MINUTES| NAME\n84   | F | dev-clean        | 8.02 | Christie\n"
                "103  | F | train-clean-100  | 23.5 | Karen\n1034 | M | train-clean-100  | 25.1 | Kevin\n")
    return durs, texts


def test_libritts_layout(tmp_path):
    corpus = tmp_path / "LibriTTS"
    durs, texts = make_libritts(str(corpus))
    out = tmp_path / "data"
    assert main(["libritts", "--corpus_dir", str(corpus), "--output_dir", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["dev-clean", "manifests", "train-clean-100"]
    for split, want in durs.items():
        kd = check_kaldi_dir(out / split, segments=False, text=True, durations=want)
        _, sups, _ = check_manifests(out / "manifests", "libritts", split, len(want))
        for utt in want:
            assert kd.text[utt] == texts[utt] and kd.utt2spk[utt] == utt.split("_")[0]
            assert sf.info(kd.wav_scp[utt]).samplerate == 24000
        lhotse_round_trip(out / split, 24000, kd)
    sup = {s.id: s for s in sups}["103_1241_000000_000000"]
    assert sup.custom["orig_text"] == "It was 1 o'clock." and sup.gender == "F"


def test_libritts_one_split(tmp_path):
    corpus = tmp_path / "LibriTTS"
    durs, _ = make_libritts(str(corpus))
    out = tmp_path / "data"
    assert main(["libritts", "--corpus_dir", str(corpus), "--output_dir", str(out), "--splits", "dev-clean"]) == 0
    assert sorted(os.listdir(out)) == ["dev-clean", "manifests"]
    check_kaldi_dir(out / "dev-clean", segments=False, text=True, durations=durs["dev-clean"])
