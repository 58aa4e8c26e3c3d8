"""Online teacher: targets computed in the step, aligned to codec frames, padded frames zero."""

from __future__ import annotations

import math

import torch

from stok.train import online_teacher
from stok.train.config import TeacherConfig, from_dict
from stok.train.trainer import Paths, Trainer
from tests.train_helpers import TEACHER_DIM, tiny_config, tiny_data


class FrameEnergy(torch.nn.Module):
    """A stand-in teacher at hop 320 giving one frame fewer than the codec (as HuBERT does)."""

    def __init__(self, dim=TEACHER_DIM):
        super().__init__()
        self.proj = torch.nn.Linear(1, dim)
        self.calls = []

    def extract(self, wav, lengths):
        self.calls.append(wav.shape)
        feats, lens = [], []
        for w, n in zip(wav, lengths):
            n = int(n)
            frames = max(1, (n - 400) // 320 + 1)  # HuBERT: 49 frames for 1 s
            e = w[: frames * 320].reshape(frames, 320).pow(2).mean(1, keepdim=True)
            feats.append(self.proj(torch.log(e + 1e-4)))
            lens.append(frames)
        out = torch.zeros(len(feats), max(lens), feats[0].shape[-1])
        for i, f in enumerate(feats):
            out[i, : f.shape[0]] = f
        return out, torch.tensor(lens)


def test_alignment_and_padding():
    t = online_teacher.OnlineTeacher(TeacherConfig(source="online"), 16000, 320, torch.device("cpu"),
                                     teacher=FrameEnergy())
    wav = torch.randn(2, 1, 16000)
    lengths = torch.tensor([16000, 6500])
    out = t(wav, lengths)
    assert out.shape == (2, 50, TEACHER_DIM)
    n1 = math.ceil(6500 / 320)  # 21 codec frames, the teacher gave 20: the last row is repeated
    assert torch.equal(out[1, n1 - 1], out[1, n1 - 2]) and out[1, n1:].abs().sum() == 0
    assert torch.equal(out[0, 49], out[0, 48])
    assert not any(p.requires_grad for p in t.teacher.parameters())


def test_trainer_with_online_teacher(tmp_path, monkeypatch):
    data = tiny_data(str(tmp_path))
    teacher = FrameEnergy()
    monkeypatch.setattr(online_teacher, "_build", lambda cfg, device: teacher)
    torch.set_num_threads(1)
    cfg = from_dict(tiny_config(teacher=dict(source="online"), sched=dict(max_steps=2, valid_every=2)))
    # no teacher scp at all
    tr = Trainer(cfg, Paths(str(tmp_path / "exp"), data["train"][0], data["dev"][0]), show_progress=False)
    res = tr.train()
    tr.close()
    assert res["step"] == 2 and math.isfinite(res["last"]["loss/distill"])
    assert len(teacher.calls) >= 3  # two steps and the dev pass
    assert res["dev_history"][-1]["dev/distill"] > 0


def test_online_mfcc_teacher_equals_stage1_features(tmp_path):
    from stok.models.teacher import build_teacher

    cfg = TeacherConfig(source="online", online_kind="mfcc")
    t = online_teacher.OnlineTeacher(cfg, 16000, 320, torch.device("cpu"))
    torch.manual_seed(0)
    wav = 0.1 * torch.randn(2, 1, 16000)
    lengths = torch.tensor([16000, 9000])
    out = t(wav, lengths)
    assert out.shape == (2, 50, 39)
    ref = build_teacher("mfcc").extract_waves([wav[1, 0, :9000]])[0]
    assert torch.allclose(out[1, : ref.shape[0]], ref) and out[1, ref.shape[0]:].abs().sum() == 0
