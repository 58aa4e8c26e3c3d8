#!/usr/bin/env python3
"""Make the demo corpus: English sentences written for stok, spoken by espeak-ng, in LibriSpeech layout.

    python recipes/demo/local/make_corpus.py [--output_dir recipes/demo/corpus] [--espeak espeak-ng]

Deterministic: the sentences, voices and settings are fixed below; espeak-ng (checked with 1.51) writes the
same samples for the same input, its 22.05 kHz output is resampled to 16 kHz with torchaudio's
``functional.resample`` (no dither) and stored as 16-bit mono FLAC with soundfile. The layout is
LibriSpeech's (``<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` + ``<spk>-<chapter>.trans.txt``, upper-case
transcripts without punctuation but apostrophes), so ``lhotse.recipes.prepare_librispeech`` reads it when
given the split names ``train-clean-demo`` and ``dev-clean-demo``.

Eight speakers (an espeak-ng voice + variant, each with its own rate and pitch): six in the training
split, two others in the dev split, so dev speakers are unseen in training as in LibriSpeech.
The text is original, written for this corpus and dedicated to the public domain (CC0).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

RATE = 16000

# speaker id -> (split, chapter id, espeak-ng voice+variant, words per minute, pitch 0-99)
SPEAKERS = {
    "1201": ("train-clean-demo", "4010", "en-us+m3", 160, 45),
    "1202": ("train-clean-demo", "4020", "en+f3", 170, 62),
    "1203": ("train-clean-demo", "4030", "en-gb-x-rp+m1", 150, 38),
    "1204": ("train-clean-demo", "4040", "en-us+f2", 176, 56),
    "1205": ("train-clean-demo", "4050", "en-gb-scotland+m5", 165, 50),
    "1206": ("train-clean-demo", "4060", "en-029+f4", 155, 68),
    "1307": ("dev-clean-demo", "5070", "en-us-nyc+m2", 168, 47),
    "1308": ("dev-clean-demo", "5080", "en+f5", 158, 58),
}
UTTS_PER_SPEAKER = {"train-clean-demo": 9, "dev-clean-demo": 5}

# 64 sentences (6 x 9 for training, 2 x 5 for dev), short to long so utterances last about 1 to 15 s.
SENTENCES = [
    # speaker 1201
    "Good morning.",
    "The quiet river carried small boats toward the old mill every morning.",
    "She opened the window and listened to the rain falling on the garden.",
    "When the baker finally arrived, the whole street already smelled of warm bread, and the children "
    "who had waited by the door since dawn cheered loudly and pressed their noses against the glass.",
    "Please close the gate behind you.",
    "Our neighbour keeps three grey cats and a very patient dog.",
    "The map was old, and half of the roads it showed had vanished long ago.",
    "After a long winter, the first green leaves appeared on the hedges, and the farmers began to talk "
    "about the weather, the price of seed, and whether the bridge would be repaired before the spring fair.",
    "It is nearly time.",
    # speaker 1202
    "Every lamp in the harbour was lit before the fishing boats returned.",
    "Turn left at the church and walk on until you see the blue door.",
    "Yes, of course.",
    "The teacher wrote seven long words on the board and asked the class to guess what they had in common.",
    "A small bell rang somewhere in the house, but nobody went to answer it.",
    "Late in the afternoon the wind changed direction, the clouds broke apart over the hills, and a narrow "
    "band of golden light swept slowly across the fields, the roofs, and the quiet market square.",
    "He counted the coins twice and still found one missing.",
    "The library closes at six on weekdays.",
    "Bring a warm coat.",
    # speaker 1203
    "I have never seen the sea so calm.",
    "The old clock in the hall stopped at a quarter past nine and was never wound again.",
    "Thank you very much.",
    "They built a small wooden bridge over the stream so that the sheep could cross without getting wet.",
    "Before the concert began, the musicians tuned their instruments one by one, and the audience slowly "
    "fell silent as the lights above the stage grew dim and a single violin played a long, soft note "
    "that seemed to hang in the air.",
    "Her brother collects stamps from countries he has never visited.",
    "Where did you leave the key?",
    "The path through the forest was covered in wet leaves and fallen branches.",
    "Rain again.",
    # speaker 1204
    "Most travellers stop at the inn for a bowl of soup and a little rest.",
    "Nobody knew who had planted the apple tree at the end of the lane.",
    "The train was late, so we sat on the platform and shared an orange.",
    "Once a year the whole village gathers in the meadow for a picnic, and everyone brings something to share: "
    "bread, cheese, cold chicken, pies, fresh berries, and jugs of lemonade kept cool in the stream.",
    "Not today, thank you.",
    "The painter mixed the colours carefully until the sky on his canvas looked exactly like the evening outside.",
    "Hold the ladder steady.",
    "Four ducks swam in a line across the pond.",
    "He spent the whole evening fixing an old radio that nobody else in the family wanted to keep.",
    # speaker 1205
    "The snow began to fall just after midnight.",
    "Could you speak a little more slowly, please?",
    "At the top of the hill there is a stone tower from which, on a clear day, you can see three rivers, "
    "two lakes, a long line of distant mountains, and the smoke rising from the chimneys of the town.",
    "That is a wonderful idea.",
    "The captain studied the clouds and decided to stay in port for another day.",
    "We walked home along the beach, collecting shells and pieces of smooth green glass.",
    "Stop right there.",
    "The museum keeps a collection of clocks, maps, and letters written by sailors who crossed the ocean "
    "more than two hundred years ago, and visitors may read some of them in a small room upstairs.",
    "Her garden was full of tall sunflowers and humming bees.",
    # speaker 1206
    "The kettle whistled, and the whole kitchen filled with steam.",
    "Is this the road to the station?",
    "In the middle of the night a fox crept into the yard, looked around carefully, and then disappeared "
    "again under the fence without waking the chickens or the old dog asleep by the barn.",
    "Let us begin.",
    "The gardener planted a row of young trees along the edge of the field.",
    "My grandmother told the same story every winter, and we never grew tired of it.",
    "Come back soon.",
    "The students carried their books across the square to the new library, where every table had a lamp "
    "and every window looked out over the river, the bridge, and the green roofs of the old town.",
    "A thin line of smoke rose from the cottage chimney.",
    # speaker 1307 (dev)
    "The bus stopped at the corner and three tired workers climbed aboard.",
    "Hello again.",
    "When the storm finally passed, the neighbours came out of their houses to look at the fallen branches, "
    "the flooded cellars, and the broken fence that had once surrounded the school playground.",
    "Put the letters on the table by the door.",
    "A cold wind blew across the empty market.",
    # speaker 1308 (dev)
    "The orchestra played until long after the sun had set.",
    "See you tomorrow.",
    "Somebody had left a basket of fresh eggs and a note on the doorstep, but the note was not signed.",
    "The little boat drifted slowly past the lighthouse, its sail barely moving in the warm evening air, "
    "while gulls circled overhead and a fisherman on the pier waved his hat at the children on board.",
    "The bread is still warm.",
]


def transcript(sentence: str) -> str:
    """LibriSpeech style: upper case, words separated by single spaces, only apostrophes kept."""
    text = re.sub(r"[^A-Za-z' ]+", " ", sentence.replace("-", " "))
    return " ".join(text.upper().split())


def synthesize(espeak: str, voice: str, wpm: int, pitch: int, text: str, tmpdir: str) -> np.ndarray:
    wav = os.path.join(tmpdir, "tts.wav")
    subprocess.run([espeak, "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", wav, text], check=True)
    data, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    out = AF.resample(mono, rate, RATE).numpy()
    peak = float(np.abs(out).max())
    if peak > 0.99:  # keep clear of clipping after resampling
        out = out * (0.99 / peak)
    return out


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=os.path.join(os.path.dirname(here), "corpus"))
    p.add_argument("--espeak", default=shutil.which("espeak-ng") or "espeak-ng")
    args = p.parse_args(argv)
    need = sum(UTTS_PER_SPEAKER[split] for split, *_ in SPEAKERS.values())
    assert len(SENTENCES) == need, f"{len(SENTENCES)} sentences for {need} utterances"
    version = subprocess.run([args.espeak, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    print(f"using {version}", file=sys.stderr)
    for split in UTTS_PER_SPEAKER:
        shutil.rmtree(os.path.join(args.output_dir, split), ignore_errors=True)
    sentences = iter(SENTENCES)
    total, count = 0.0, 0
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmpdir:
        for spk, (split, chapter, voice, wpm, pitch) in SPEAKERS.items():
            chapter_dir = os.path.join(args.output_dir, split, spk, chapter)
            os.makedirs(chapter_dir)
            lines = []
            for i in range(UTTS_PER_SPEAKER[split]):
                sentence = next(sentences)
                utt = f"{spk}-{chapter}-{i:04d}"
                audio = synthesize(args.espeak, voice, wpm, pitch, sentence, tmpdir)
                soundfile.write(os.path.join(chapter_dir, utt + ".flac"), audio, RATE, format="FLAC", subtype="PCM_16")
                lines.append(f"{utt} {transcript(sentence)}\n")
                total += len(audio) / RATE
                count += 1
            with open(os.path.join(chapter_dir, f"{spk}-{chapter}.trans.txt"), "w", encoding="utf-8") as f:
                f.writelines(lines)
    print(f"wrote {count} utterances, {total:.1f} s, to {args.output_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
