"""SpeechTokenizer model: module layout, shapes, length-aware batching, decode semantics, buffer discipline."""

from __future__ import annotations

import pytest
import torch

from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig, STOutput
from stok.models.speechtokenizer.conv import SConv1d, reflect_pad, reflect_pad_per_item

HOP = 320
# multiples of the hop, non-multiples, and items shorter than the reflect padding of the k7 convs
LENGTHS = [7 * HOP, 1000, 5, HOP + 1, HOP - 1, 4000, 2 * HOP, 1]


def tiny_cfg(**kw) -> SpeechTokenizerConfig:
    base = dict(n_filters=4, dimension=32, semantic_dimension=8, codebook_size=16, n_q=3, lstm_layers=2)
    return SpeechTokenizerConfig(**{**base, **kw})


def filled_model(cfg: SpeechTokenizerConfig, seed: int = 0) -> SpeechTokenizer:
    """Random weights; each codebook filled with residual frames of random audio, so codes are spread."""
    torch.manual_seed(seed)
    model = SpeechTokenizer(cfg).eval()
    with torch.no_grad():
        z, _ = model.encoder(0.1 * torch.randn(1, 1, HOP * 8 * cfg.codebook_size))
        r = z[0].t()
        for layer in model.quantizer.layers:
            cb = layer._codebook
            cb.embed.copy_(r[torch.randperm(r.shape[0])[: cfg.codebook_size]])
            cb.embed_avg.copy_(cb.embed)
            cb.cluster_size.fill_(1.0)
            cb.inited.fill_(1.0)
            r = r - cb.lookup(cb.nearest(r))
    return model


def padded_batch(lengths, seed: int = 1, pad_value: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    wav = torch.full((len(lengths), 1, max(lengths)), pad_value)
    for i, n in enumerate(lengths):
        wav[i, 0, :n] = 0.1 * torch.randn(n, generator=g)
    return wav, torch.tensor(lengths)


def frames(n: int) -> int:
    return -(-n // HOP)


@pytest.fixture(scope="module")
def model():
    return filled_model(tiny_cfg())


def test_structure_follows_the_released_indices():
    m = SpeechTokenizer(tiny_cfg())
    keys = set(m.state_dict())
    enc = {int(k.split(".")[2]) for k in keys if k.startswith("encoder.model.")}
    dec = {int(k.split(".")[2]) for k in keys if k.startswith("decoder.model.")}
    assert enc == {0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15}
    assert dec == {0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15}
    assert "encoder.model.13.lstm.weight_hh_l1_reverse" in keys
    assert "decoder.model.1.lstm.weight_hh_l1" in keys and "decoder.model.1.lstm.weight_hh_l0_reverse" not in keys
    assert {"encoder.model.4.block.1.conv.conv.weight_g", "encoder.model.4.block.3.conv.conv.bias",
            "encoder.model.4.shortcut.conv.conv.weight_v", "decoder.model.9.convtr.convtr.weight_g",
            "decoder.model.10.block.1.conv.conv.weight_v", "transform.weight"} <= keys
    assert m.encoder.model[15].conv.conv.weight_v.shape == (32, 2 * 64, 7)  # BiLSTM output: 2 x 64 channels
    assert m.decoder.model[3].convtr.convtr.weight_g.shape == (64, 1, 1)
    assert isinstance(m.encoder.model[2], torch.nn.ELU) and isinstance(m.decoder.model[14], torch.nn.ELU)


def test_indices_follow_the_config():
    m = SpeechTokenizer(tiny_cfg(n_residual_layers=2, lstm_layers=1, bidirectional=False,
                                 semantic_dimension=32))
    keys = set(m.state_dict())
    assert {int(k.split(".")[2]) for k in keys if ".convtr." in k} == {3, 7, 11, 15}
    assert "encoder.model.17.lstm.weight_ih_l0" in keys and "encoder.model.19.conv.conv.bias" in keys
    assert "encoder.model.17.lstm.weight_ih_l0_reverse" not in keys
    assert m.encoder.model[2].block[1].conv.conv.dilation == 2  # second residual block: dilation_base ** 1
    assert isinstance(m.transform, torch.nn.Identity) and not any(k.startswith("transform") for k in keys)
    assert "quantizer.vq.layers.2._codebook.embed" in keys


def test_forward_shapes(model):
    wav, lengths = padded_batch([HOP * 3, 700])
    out = model(wav, lengths=lengths)
    assert isinstance(out, STOutput)
    assert out.recon.shape == (2, 1, 3 * HOP)
    assert out.semantic.shape == (2, 3, 8)
    assert out.codes.shape == (3, 2, 3) and out.codes.dtype == torch.int64
    assert out.commit_loss.dim() == 0
    assert torch.equal(model.frames(lengths), torch.tensor([3, 3]))
    assert model.frames(321) == 2
    assert model.encode(wav[:, 0]).shape == (3, 2, 3)  # [B, T] is accepted too
    assert model.encode(wav, n_q=1).shape == (1, 2, 3)


@pytest.fixture(params=["one_by_one", "padded_batch"])
def mode_model(request, model):
    """The model with ``exact_batches`` on (CPU default: items one at a time) and off (the padded batch)."""
    model.exact_batches = request.param == "one_by_one"
    yield model
    model.exact_batches = True


def test_batched_encode_equals_single(mode_model):
    model = mode_model
    wav, lengths = padded_batch(LENGTHS)
    codes = model.encode(wav, lengths)
    assert codes.shape == (3, len(LENGTHS), frames(max(LENGTHS)))
    for i, n in enumerate(LENGTHS):
        alone = model.encode(wav[i:i + 1, :, :n])
        assert alone.shape[-1] == frames(n)
        assert int((alone[:, 0] != codes[:, i, :frames(n)]).sum()) == 0, f"item {i} ({n} samples)"
        assert int(codes[:, i, frames(n):].abs().sum()) == 0


def test_padding_content_is_never_read(model):
    model.exact_batches = False  # the padded batch itself (encode on GPU, forward everywhere)
    try:
        wav, lengths = padded_batch(LENGTHS)
        junk, _ = padded_batch(LENGTHS, pad_value=3.0)
        assert torch.equal(model.encode(wav, lengths), model.encode(junk, lengths))
        a, b = model(wav, lengths=lengths), model(junk, lengths=lengths)
        assert torch.equal(a.recon, b.recon) and torch.equal(a.codes, b.codes)
        assert torch.allclose(a.commit_loss, b.commit_loss)
    finally:
        model.exact_batches = True


def test_batched_decode_equals_single(mode_model):
    model = mode_model
    wav, lengths = padded_batch(LENGTHS)
    codes = model.encode(wav, lengths)
    nf = model.frames(lengths)
    out = model.decode(codes, lengths=nf)
    assert out.shape == (len(LENGTHS), 1, codes.shape[-1] * HOP)
    for i, f in enumerate(nf.tolist()):
        alone = model.decode(codes[:, i:i + 1, :f])
        assert alone.shape == (1, 1, f * HOP)
        if model.exact_batches:
            assert torch.equal(out[i:i + 1, :, : f * HOP], alone)
        else:
            torch.testing.assert_close(out[i:i + 1, :, : f * HOP], alone, atol=1e-5, rtol=1e-4)
        assert int(out[i, :, f * HOP:].abs().sum()) == 0


def test_forward_matches_encode_and_decode(model):
    """forward always runs the padded batch; encode/decode run items one by one on CPU: the same up to rounding."""
    wav, lengths = padded_batch([4000, 1500, 90])
    out = model(wav, lengths=lengths)
    nf = model.frames(lengths)
    mask = torch.arange(out.codes.shape[-1]) < nf[:, None]
    assert torch.equal(out.codes * mask, model.encode(wav, lengths))
    torch.testing.assert_close(out.recon, model.decode(out.codes, lengths=nf), atol=1e-5, rtol=1e-4)


def test_decode_first_layer_sums_the_later_codebooks(model):
    wav, lengths = padded_batch([3000, 2000])
    codes = model.encode(wav, lengths)
    nf = model.frames(lengths)
    layers = model.quantizer.layers
    for first in range(3):
        latent = sum(layers[j]._codebook.embed[codes[j]] for j in range(first, 3))  # [B, F, D]
        with torch.no_grad():
            ref, _ = model.decoder(latent.transpose(1, 2), nf)
        got = model.decode(codes[first:], first_layer=first, lengths=nf)
        mask = torch.arange(got.shape[-1]) < (nf * HOP)[:, None]
        torch.testing.assert_close(got, ref * mask[:, None], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="layers 2..3"):
        model.decode(codes[:2], first_layer=2)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.decode(codes + 16)


def _buffers(m):
    return {k: v.clone() for k, v in m.state_dict().items() if "_codebook" in k}


def test_eval_forward_and_encode_never_change_buffers():
    m = filled_model(tiny_cfg(), seed=3)
    before = _buffers(m)
    wav, lengths = padded_batch([5000, 3000])
    m(wav, lengths=lengths)  # eval, with gradients enabled
    m.encode(wav, lengths)
    m.train()
    with torch.no_grad():
        m(wav, lengths=lengths)  # training mode without gradients: no statistics either
    m.encode(wav, lengths)
    after = _buffers(m)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not m.quantizer._pool


def test_training_forward_changes_buffers_and_trains():
    m = filled_model(tiny_cfg(), seed=4).train()
    before = _buffers(m)
    wav, lengths = padded_batch([5000, 3000])
    out = m(wav, lengths=lengths)
    loss = out.recon.abs().mean() + out.commit_loss + out.semantic.pow(2).mean()
    loss.backward()
    after = _buffers(m)
    assert not torch.equal(before["quantizer.vq.layers.0._codebook.cluster_size"],
                           after["quantizer.vq.layers.0._codebook.cluster_size"])
    assert not torch.equal(before["quantizer.vq.layers.2._codebook.embed"],
                           after["quantizer.vq.layers.2._codebook.embed"])
    assert m.encoder.model[0].conv.conv.weight_v.grad is not None
    assert m.decoder.model[15].conv.conv.weight_g.grad is not None
    assert float(out.commit_loss.detach()) > 0


def test_commit_loss_ignores_padded_frames():
    m = filled_model(tiny_cfg(), seed=5)
    lens = [6 * HOP, 2 * HOP + 7]
    wav, lengths = padded_batch(lens, pad_value=5.0)
    batched = m(wav, lengths=lengths).commit_loss
    singles = [m(wav[i:i + 1, :, :n]).commit_loss for i, n in enumerate(lens)]
    nf = [frames(n) for n in lens]
    expected = sum(c * f for c, f in zip(singles, nf)) / sum(nf)  # every layer: mean over the valid frames
    torch.testing.assert_close(batched, expected, atol=1e-6, rtol=1e-4)
    unmasked = m(wav).commit_loss  # the same batch read as full-length items differs
    assert not torch.allclose(unmasked, batched)


def test_lengths_are_checked(model):
    wav, _ = padded_batch([1000, 500])
    with pytest.raises(ValueError, match=r"lengths \(samples\) must lie in \[1, 1000\]"):
        model.encode(wav, torch.tensor([1001, 500]))
    with pytest.raises(ValueError, match="lengths must be"):
        model.encode(wav, torch.tensor([1000]))
    with pytest.raises(ValueError, match="mono"):
        model.encode(torch.zeros(1, 2, 100))


@pytest.mark.parametrize("kernel,stride,dilation", [(7, 1, 1), (3, 1, 2), (4, 2, 1), (10, 5, 1), (16, 8, 1)])
def test_conv_per_item_padding_matches_single(kernel, stride, dilation):
    torch.manual_seed(0)
    conv = SConv1d(3, 5, kernel, stride=stride, dilation=dilation)
    lens = [1, 2, 3, 4, 6, 9, 17, 40]
    x = torch.randn(len(lens), 3, max(lens))
    y, out_lens = conv(x, torch.tensor(lens))
    for i, n in enumerate(lens):
        alone, _ = conv(x[i:i + 1, :, :n])
        assert int(out_lens[i]) == alone.shape[-1] == -(-n // stride)
        torch.testing.assert_close(y[i:i + 1, :, : alone.shape[-1]], alone, atol=1e-6, rtol=1e-5)


def test_reflect_pad_per_item_is_reflect_pad():
    x = torch.arange(1.0, 11.0).view(1, 1, 10).repeat(4, 2, 1)
    lens = torch.tensor([10, 4, 2, 1])
    right = torch.tensor([3, 5, 1, 2])
    y = reflect_pad_per_item(x, lens, 3, right, 20)
    for i in range(4):
        n, r = int(lens[i]), int(right[i])
        ref = reflect_pad(x[i:i + 1, :, :n], 3, r)
        assert torch.equal(y[i:i + 1, :, : ref.shape[-1]], ref)
