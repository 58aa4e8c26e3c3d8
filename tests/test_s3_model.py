"""S3Tokenizer model: batch == one at a time, long audio windows, online (frozen) use, half-precision path."""

from __future__ import annotations

import pytest
import torch

from stok.models.s3.config import VERSIONS, full_config, tiny_config
from stok.models.s3.frontend import batch_log_mel, log_mel
from stok.models.s3.long_audio import plan_windows
from stok.models.s3.model import build_model
from tests.conftest import speechlike


def pad_batch(feats):
    lens = torch.tensor([f.shape[1] for f in feats])
    out = torch.zeros(len(feats), 128, int(lens.max()))
    for i, f in enumerate(feats):
        out[i, :, : f.shape[1]] = f
    return out, lens


@pytest.fixture(scope="module")
def feats():
    durations = [0.02, 0.5, 1.0, 2.3, 4.9, 7.77, 12.0, 3.3, 0.9, 31.4, 6.0, 1.7]
    return [log_mel(torch.from_numpy(speechlike(d, seed=i))) for i, d in enumerate(durations)]


@pytest.mark.parametrize("version", VERSIONS)
def test_batched_equals_one_at_a_time(version, feats):
    model = build_model(tiny_config(version), seed=3)
    mels, lens = pad_batch(feats)
    codes, code_lens = model.quantize(mels, lens)
    assert codes.dtype == torch.int64 and code_lens.dtype == torch.int64
    differing, total = 0, 0
    for i, f in enumerate(feats):
        one, one_len = model.quantize(f[None], torch.tensor([f.shape[1]]))
        n = int(one_len)
        assert n == int(code_lens[i]) == model.cfg.token_count(f.shape[1])
        differing += int((one[0, :n] != codes[i, :n]).sum())
        total += n
        assert int(codes[i, n:].abs().sum()) == 0  # padding positions are 0
    assert differing == 0, f"{differing} of {total} tokens differ between batched and one-at-a-time"
    assert len(set(codes[lens > 300].flatten().tolist())) > 5  # the model is not degenerate
    # shuffled batch order and a different padding length: still the same tokens
    perm = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
    mels2, lens2 = pad_batch([feats[int(j)] for j in perm])
    mels2 = torch.cat([mels2, torch.randn(len(feats), 128, 7)], dim=2)  # garbage past every length
    codes2, lens2_out = model.quantize(mels2, lens2)
    for k, j in enumerate(perm.tolist()):
        n = int(code_lens[j])
        assert torch.equal(codes2[k, :n], codes[j, :n])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("seconds", [30, 35, 52.4, 56, 60, 95])
def test_long_audio_token_count_is_exact(version, seconds):
    cfg = tiny_config(version, d_model=32, n_heads=2, n_layers=1)
    model = build_model(cfg, seed=0, window_batch=2)
    frames = int(round(seconds * 16000)) // 160
    calls = []
    real = model.single_pass

    def spy(m, l):
        calls.append(tuple(m.shape))
        return real(m, l)

    model.single_pass = spy
    mel = torch.randn(1, 128, frames)
    codes, code_lens = model.quantize(mel, torch.tensor([frames]))
    expected = -(-frames // cfg.stride) if cfg.stride == 2 else -(-(-(-frames // 2)) // 2)
    assert int(code_lens[0]) == codes.shape[1] == expected == cfg.token_count(frames)
    # windows: bounded mini-batches of at most window_batch windows of at most 30 s each
    assert all(b <= 2 and t <= cfg.window_frames for b, _, t in calls)
    windows = plan_windows(frames, cfg)
    assert len(calls) == -(-len(windows) // 2)
    kept = sum(w.keep_to - w.keep_from for w in windows)
    assert kept == expected
    # the kept ranges tile [0, N) in order with no gap or overlap
    pos = 0
    for w in windows:
        assert w.offset == pos
        pos += w.keep_to - w.keep_from
    if seconds > 30:
        assert len(windows) > 1 and all(w.keep_to > w.keep_from for w in windows)


def test_long_audio_in_a_mixed_batch_equals_alone():
    model = build_model(tiny_config("v2_25hz", d_model=32, n_layers=1), seed=1, window_batch=3)
    lens = [5240, 120, 9500, 2999, 3000, 3001]
    mels = torch.randn(len(lens), 128, max(lens))
    codes, code_lens = model.quantize(mels, torch.tensor(lens))
    for i, n in enumerate(lens):
        one, one_len = model.quantize(mels[i: i + 1, :, :n], torch.tensor([n]))
        assert int(one_len) == int(code_lens[i]) == model.cfg.token_count(n)
        assert torch.equal(one[0], codes[i, : int(one_len)])


def test_windows_keep_the_middle_of_each_overlap():
    cfg = full_config("v2_25hz")
    ws = plan_windows(5240, cfg)  # 52.4 s: the peer loses 50 tokens here
    assert [(w.start, w.end) for w in ws] == [(0, 3000), (2600, 5240)]
    assert ws[0].keep_to == (2600 + 200) // 4 and ws[1].offset == 700 and ws[1].keep_from == 50
    assert sum(w.keep_to - w.keep_from for w in ws) == 1310
    assert plan_windows(3000, cfg) == [plan_windows(3000, cfg)[0]] and len(plan_windows(3001, cfg)) == 2


def test_freeze_and_online_quantize_inside_a_training_step():
    tok = build_model(tiny_config("v2_25hz"), seed=0)
    tok.freeze()
    assert not any(p.requires_grad for p in tok.parameters()) and not tok.training
    waves = torch.zeros(3, 24000)
    lens = torch.tensor([24000, 9000, 16000])
    for i, n in enumerate(lens.tolist()):
        waves[i, :n] = torch.from_numpy(speechlike(n / 16000, seed=i))
    student = torch.nn.Embedding(tok.cfg.vocab_size, 8)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    mels, mel_lens = batch_log_mel(waves, lens)
    assert torch.is_grad_enabled()
    codes, code_lens = tok.quantize(mels, mel_lens)
    assert codes.dtype == torch.int64 and code_lens.dtype == torch.int64 and codes.device == tok.device
    assert not codes.requires_grad and code_lens.tolist() == [tok.cfg.token_count(int(n) // 160) for n in lens]
    loss = student(codes).pow(2).mean()
    loss.backward()
    opt.step()
    assert student.weight.grad is not None
    # online tokens equal the dump path (per-utterance log-mel, one at a time)
    for i, n in enumerate(lens.tolist()):
        f = log_mel(waves[i, :n])
        one, k = tok.quantize(f[None], torch.tensor([f.shape[1]]))
        assert torch.equal(one[0], codes[i, : int(k)])


@pytest.mark.parametrize("version", ["v1_25hz", "v2_25hz"])
def test_half_precision_path_keeps_the_quantizer_in_fp32(version):
    model = build_model(tiny_config(version), seed=0)
    mels = torch.randn(2, 128, 400)
    lens = torch.tensor([400, 250])
    ref, ref_lens = model.quantize(mels, lens)
    model.set_dtype(torch.bfloat16)
    assert model.encoder.blocks[0].attn.query.weight.dtype == torch.bfloat16
    assert model.encoder.blocks[0].attn_ln.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.quantizer.parameters())
    seen = {}
    model.quantizer.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0].dtype, out=out.dtype))
    codes, code_lens = model.quantize(mels, lens)
    assert seen == {"inp": torch.bfloat16, "out": torch.int32}
    assert torch.equal(code_lens, ref_lens) and codes.dtype == torch.int64
    assert int(codes.max()) < model.cfg.vocab_size and int(codes.min()) >= 0
    # a model-wide .to(bfloat16) must not corrupt FSQ's powers of 3 (3^7 = 2187 is not a bfloat16 value)
    if version == "v2_25hz":
        q = model.quantizer.to(torch.bfloat16)
        h = torch.full((1, 1, model.cfg.d_model), 1.0)
        q.project_in.weight.data.zero_()
        q.project_in.bias.data.fill_(5.0)
        assert int(q(h)) == 3 ** 8 - 1
