"""SpeechTokenizer RVQ: pooled k-means init, EMA, dead codes, masking, and codebooks in sync across 2 ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stok.models.speechtokenizer import SpeechTokenizerConfig
from stok.models.speechtokenizer.rvq import ResidualVectorQuantizer, kmeans

D, K = 8, 16


def rvq(n_q: int = 3, **kw) -> ResidualVectorQuantizer:
    cfg = SpeechTokenizerConfig(dimension=D, semantic_dimension=D, codebook_size=K, n_q=n_q, **kw)
    return ResidualVectorQuantizer(cfg)


def step_input(n_frames: int, seed: int, pad: int = 2, pad_value: float = 1000.0):
    """One item with ``n_frames`` valid frames and ``pad`` padded frames full of ``pad_value``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((1, D, n_frames + pad), pad_value)
    x[0, :, :n_frames] = torch.randn(D, n_frames, generator=g)
    mask = torch.arange(n_frames + pad)[None] < n_frames
    return x.requires_grad_(), mask


def inited(q: ResidualVectorQuantizer):
    return [float(layer._codebook.inited) for layer in q.layers]


def test_kmeans_init_waits_for_enough_frames():
    torch.manual_seed(0)
    q = rvq().train()
    for step in range(3):  # 5 valid frames per step: 15 < 16 codes
        x, mask = step_input(5, seed=step)
        out = q(x, mask)
        assert inited(q) == [0.0, 0.0, 0.0]
        assert out.quantized is x and out.first is x  # bypassed until the codebooks exist
        assert float(out.commit_loss) == 0.0 and out.codes.shape == (3, 1, 7)
    x, mask = step_input(5, seed=3)
    out = q(x, mask)  # 20 pooled frames >= 16: every layer initialised by k-means
    assert inited(q) == [1.0, 1.0, 1.0] and not q._pool
    assert out.quantized is not x and float(out.commit_loss.detach()) > 0
    for layer in q.layers:  # padded frames (1000) never reached k-means or the EMA
        assert float(layer._codebook.embed.abs().max()) < 50
    layer0 = q.layers[0]._codebook
    assert layer0.cluster_size.sum() > 0


def test_init_does_not_happen_in_eval_or_without_grad():
    q = rvq()
    x, mask = step_input(40, seed=0)
    q.eval()(x, mask)
    q.train()
    with torch.no_grad():
        q(x, mask)
    q.encode(x.detach(), mask)
    assert inited(q) == [0.0, 0.0, 0.0] and not q._pool


def test_kmeans_converges_to_cluster_means():
    torch.manual_seed(0)
    centres = 10 * torch.randn(6, D)
    data = (centres[:, None] + 0.1 * torch.randn(6, 50, D)).reshape(-1, D)
    means, counts = kmeans(data, 4, 30)
    assert means.shape == (4, D) and int(counts.sum()) == 300
    idx = torch.cdist(data, means).argmin(1)
    assert torch.equal(torch.bincount(idx, minlength=4).float(), counts)
    for k in range(4):  # a Lloyd fixed point: every centre is the mean of its frames
        torch.testing.assert_close(means[k], data[idx == k].mean(0), atol=1e-4, rtol=1e-4)
    inertia = (data - means[idx]).pow(2).sum(1).mean()
    assert float(inertia) < 0.5 * float((data - data.mean(0)).pow(2).sum(1).mean())


def test_ema_update_matches_the_formula():
    q = rvq(n_q=1, ema_decay=0.9, ema_eps=1e-5, dead_code_threshold=0.0).train()
    cb = q.layers[0]._codebook
    torch.manual_seed(1)
    cb.embed.copy_(torch.randn(K, D))
    cb.embed_avg.copy_(2 * cb.embed)
    cb.cluster_size.fill_(2.0)
    cb.inited.fill_(1.0)
    embed0, avg0, size0 = cb.embed.clone(), cb.embed_avg.clone(), cb.cluster_size.clone()
    x, mask = step_input(30, seed=5)
    out = q(x, mask)
    frames = x.detach()[0].t()[:30]
    idx = out.codes[0, 0, :30]
    assert torch.equal(idx, torch.cdist(frames, embed0).argmin(1))
    counts = torch.bincount(idx, minlength=K).float()
    sums = torch.zeros(K, D).index_add_(0, idx, frames)
    size = 0.9 * size0 + 0.1 * counts
    avg = 0.9 * avg0 + 0.1 * sums
    smoothed = (size + 1e-5) / (size.sum() + K * 1e-5) * size.sum()
    torch.testing.assert_close(cb.cluster_size, size)
    torch.testing.assert_close(cb.embed_avg, avg)
    torch.testing.assert_close(cb.embed, avg / smoothed[:, None])
    torch.testing.assert_close(out.quantized.detach()[0, :, :30].t(), embed0[idx])  # codes before the update


def test_dead_codes_are_replaced_with_valid_frames():
    q = rvq(n_q=1, dead_code_threshold=2.0).train()
    cb = q.layers[0]._codebook
    cb.embed.zero_()
    cb.embed[0] = 0.1
    cb.embed_avg.copy_(cb.embed * 100)
    cb.cluster_size.fill_(0.0)
    cb.cluster_size[0] = 100.0
    cb.inited.fill_(1.0)
    x, mask = step_input(5, seed=7)  # fewer frames (5) than dead codes (15)
    q(x, mask)
    frames = x.detach()[0].t()[:5]
    for k in range(1, K):
        dist = (frames - cb.embed[k]).norm(dim=1)
        assert float(dist.min()) < 1e-6, f"code {k} is not one of the valid frames"
    assert torch.all(cb.cluster_size[1:] == 2.0)
    torch.testing.assert_close(cb.embed_avg[1:], 2.0 * cb.embed[1:])
    assert float(cb.cluster_size[0]) > 2.0  # the live code was kept


def test_model_forward_inits_over_several_steps():
    from stok.models.speechtokenizer import SpeechTokenizer

    cfg = SpeechTokenizerConfig(n_filters=4, dimension=16, semantic_dimension=8, codebook_size=32, n_q=2,
                                lstm_layers=1)
    torch.manual_seed(0)
    m = SpeechTokenizer(cfg).train()
    wav = 0.1 * torch.randn(2, 1, 8 * 320)
    lengths = torch.tensor([8 * 320, 3 * 320])  # 11 valid frames per step
    for step in range(3):
        out = m(wav, lengths=lengths)
        out.recon.abs().mean().backward()
        done = [float(layer._codebook.inited) for layer in m.quantizer.layers]
        assert done == ([1.0, 1.0] if step == 2 else [0.0, 0.0]), step


# ---------------------------------------------------------------------------------------------- 2 ranks
def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(1234 + rank)  # the ranks' own RNGs differ, as in a real run
        torch.set_num_threads(1)
        q = ResidualVectorQuantizer(SpeechTokenizerConfig(dimension=D, semantic_dimension=D, codebook_size=K,
                                                          n_q=2, dead_code_threshold=1.0)).train()
        state = []
        for step in range(6):
            # different data on each rank, different numbers of valid frames (3+2 or 4+2 per step)
            x, mask = step_input(3 + rank, seed=100 * rank + step)
            q(x, mask)
            state.append(float(q.layers[0]._codebook.inited))
        torch.save({"inited_per_step": state, "buffers": {k: v.clone() for k, v in q.state_dict().items()}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_end_with_identical_codebooks(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # 7 frames per step over both ranks: 14 after step 2 < 16 codes, 21 after step 3 -> init at step 3
    assert r0["inited_per_step"] == r1["inited_per_step"] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    for k, v in r0["buffers"].items():
        assert torch.equal(v, r1["buffers"][k]), k
    assert float(r0["buffers"]["vq.layers.1._codebook.inited"]) == 1.0
    assert float(r0["buffers"]["vq.layers.0._codebook.embed"].abs().max()) < 50  # no padded frame got in
