"""Stage 0 for AISHELL-1 via lhotse's recipe, on a tiny corpus in AISHELL's real layout."""

from __future__ import annotations

import os
import re

import pytest
import soundfile as sf

from stok.bin.prepare import main
from tests.conftest import speechlike
from tests.prepare_helpers import check_kaldi_dir, check_manifests, lhotse_round_trip

# part -> speaker -> [(utt, duration)]
LAYOUT = {
    "train": {"S0002": [("BAC009S0002W0122", 0.6), ("BAC009S0002W0123", 0.4)],
              "S0003": [("BAC009S0003W0121", 0.5)]},
    "dev": {"S0724": [("BAC009S0724W0121", 0.45), ("BAC009S0724W0122", 0.7)]},
    "test": {"S0764": [("BAC009S0764W0121", 0.55)]},
}
TRANSCRIPTS = {
    "BAC009S0002W0122": "而 对 楼市 成交 抑制 作用 最 大 的 限 购",
    "BAC009S0002W0123": "也 成为 地方 政府 的 眼中 钉",
    "BAC009S0003W0121": "自 六月 底 呼和浩特 市 率先 宣布 取消 限 购 后",
    "BAC009S0724W0121": "广州 市 房地产 中介 协会 分析",
    "BAC009S0724W0122": "一些 城市 的 房价 也 开始 上涨",
    "BAC009S0764W0121": "甚至 出现 交易 几乎 停滞 的 情况",
}  # BAC009S0002W0124 (below) has audio but no transcript: lhotse skips it


def make_aishell(root):
    durs = {}
    seed = 0
    for part, spks in LAYOUT.items():
        for spk, utts in spks.items():
            d = os.path.join(root, "data_aishell", "wav", part, spk)
            os.makedirs(d)
            for utt, dur in utts:
                seed += 1
                sf.write(os.path.join(d, utt + ".wav"), speechlike(dur, 16000, seed=seed), 16000)
                durs.setdefault(part, {})[utt] = dur
    sf.write(os.path.join(root, "data_aishell/wav/train/S0002/BAC009S0002W0124.wav"), speechlike(0.3), 16000)
    os.makedirs(os.path.join(root, "data_aishell", "transcript"))
    with open(os.path.join(root, "data_aishell/transcript/aishell_transcript_v0.8.txt"), "w", encoding="utf-8") as f:
        for utt, text in sorted(TRANSCRIPTS.items()):
            f.write(f"{utt} {text}\n")
    return durs


def test_aishell_layout(tmp_path):
    corpus = tmp_path / "aishell"
    durs = make_aishell(str(corpus))
    out = tmp_path / "data"
    assert main(["aishell", "--corpus_dir", str(corpus), "--output_dir", str(out)]) == 0
    for part, want in durs.items():
        kd = check_kaldi_dir(out / part, segments=False, text=True, durations=want)
        check_manifests(out / "manifests", "aishell", part, len(want))
        for utt in want:
            assert kd.text[utt] == TRANSCRIPTS[utt].replace(" ", "")  # lhotse removes the spaces
            assert kd.utt2spk[utt] == utt[6:11]
        lhotse_round_trip(out / part, 16000, kd)
    assert "BAC009S0002W0124" not in check_kaldi_dir(out / "train", segments=False, text=True).wav_scp


def test_aishell_split_subset_and_errors(tmp_path, capsys):
    corpus = tmp_path / "aishell"
    make_aishell(str(corpus))
    out = tmp_path / "data"
    assert main(["aishell", "--corpus_dir", str(corpus), "--output_dir", str(out), "--splits", "dev", "test"]) == 0
    assert sorted(os.listdir(out)) == ["dev", "manifests", "test"]
    with pytest.raises(SystemExit, match=re.escape("unknown splits")):
        main(["aishell", "--corpus_dir", str(corpus), "--output_dir", str(out), "--splits", "eval"])
    os.remove(corpus / "data_aishell/transcript/aishell_transcript_v0.8.txt")
    with pytest.raises(SystemExit, match=re.escape("aishell_transcript_v0.8.txt not found")):
        main(["aishell", "--corpus_dir", str(corpus), "--output_dir", str(out)])
