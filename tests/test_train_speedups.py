"""The trainer's speed-ups keep its numbers: the generator's discriminator pass (fake half with gradients, real
half without) gives the losses and gradients of one pass over the whole batch; ``disc.start_step`` trains the
generator alone until that step and resumes step for step across the switch; stok's losses equal the released
trainer's loss functions on a fixed batch."""

from __future__ import annotations

import copy
import pytest
import torch

from stok.train import losses as L
from tests.conftest import require_peer
from tests.test_train_loop import data, make_trainer, one_thread, read_log  # noqa: F401 (fixtures)


def _one_call_reference(disc, wav, recon):
    """The generator's discriminator pass as one call on ``cat([real, fake])`` (the trainer before the split)."""
    for p in disc.parameters():
        p.requires_grad_(False)
    try:
        logits, fmaps = disc(torch.cat([wav, recon], 0))
    finally:
        for p in disc.parameters():
            p.requires_grad_(True)
    B = wav.shape[0]
    return [x[B:] for x in logits], [[f[:B] for f in fm] for fm in fmaps], [[f[B:] for f in fm] for fm in fmaps]


def test_split_generator_pass_equals_one_call(data, tmp_path):  # noqa: F811
    t = make_trainer(data, tmp_path / "exp", disc=dict(msd_scales=2))  # MSD scale 0 has spectral norm
    t.disc.train()
    g = torch.Generator().manual_seed(3)
    wav = 0.1 * torch.randn(3, 1, 8000, generator=g)
    base = 0.1 * torch.randn(3, 1, 8000, generator=g)
    results = {}
    for name in ("split", "one_call"):
        disc = copy.deepcopy(t.disc)
        recon = base.clone().requires_grad_(True)
        if name == "split":
            t.gan.disc, saved = disc, t.gan.disc
            try:
                fake, fm_real, fm_fake = t.gan.disc_for_generator(wav, recon)
            finally:
                t.gan.disc = saved
        else:
            fake, fm_real, fm_fake = _one_call_reference(disc, wav, recon)
        adv = L.generator_adv_loss(fake, "lsgan")
        feat = L.feature_matching(fm_real, fm_fake)
        (adv + 2 * feat).backward()
        assert disc.training and all(p.requires_grad and p.grad is None for p in disc.parameters())
        results[name] = (adv.detach(), feat.detach(), recon.grad.clone(),
                         {k: v.clone() for k, v in disc.state_dict().items()})
    (a1, f1, g1, s1), (a2, f2, g2, s2) = results["split"], results["one_call"]
    assert torch.allclose(a1, a2, rtol=1e-5, atol=1e-7), (a1, a2)
    assert torch.allclose(f1, f2, rtol=1e-5, atol=1e-7), (f1, f2)
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-9), (g1 - g2).abs().max()
    assert s1.keys() == s2.keys()
    for k in s1:  # one spectral-norm power iteration in both, the same vectors
        assert torch.allclose(s1[k], s2[k], rtol=1e-5, atol=1e-7), k
    changed = [k for k in s1 if not torch.equal(s1[k], t.disc.state_dict()[k])]
    assert changed and all("parametrizations" in k for k in changed), changed  # only the power-iteration vectors
    t.close()


def test_generator_alone_until_start_step_and_resume_across_it(data, tmp_path):  # noqa: F811
    disc = dict(start_step=3)
    full = make_trainer(data, tmp_path / "full", disc=disc)
    d0 = {k: v.clone() for k, v in full.disc.state_dict().items()}
    full.train()
    full.close()
    log = read_log(str(tmp_path / "full"))
    for step in (1, 2, 3):  # steps 1-3 run at step counters 0-2, before the start
        assert log[step]["loss/discriminator"] == 0 and log[step]["loss/adversarial"] == 0, log[step]
        assert log[step]["loss/feature_matching"] == 0
    for step in (4, 5, 6):
        assert log[step]["loss/discriminator"] > 0 and log[step]["loss/adversarial"] > 0, log[step]
    part = make_trainer(data, tmp_path / "part", disc=disc)
    part.train(stop_after=2)
    for k, v in part.disc.state_dict().items():
        assert torch.equal(v, d0[k]), k  # same initialisation as the full run, and not trained before the start
    part.close()
    resumed = make_trainer(data, tmp_path / "part", resume=True, disc=disc)
    assert resumed.step == 2
    resumed.train()
    resumed.close()
    a, b = read_log(str(tmp_path / "full")), read_log(str(tmp_path / "part"))
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in range(1, 7):
        for k in (k for k in a[step] if k.startswith("loss")):
            assert a[step][k] == b[step][k], (step, k, a[step][k], b[step][k])


def test_start_step_must_not_be_negative():
    from stok.train.config import ConfigError, from_dict
    from tests.train_helpers import tiny_config

    with pytest.raises(ConfigError, match="disc.start_step"):
        from_dict(tiny_config(disc=dict(start_step=-1)))


def test_losses_equal_the_released_trainer_functions():
    """On a fixed batch: mel (4 resolutions, weights 45/1/1/1), time L1, LSGAN D and G losses, feature matching
    (the package's x2 is stok's feat_lambda 2) and D-axis distillation, against ``speechtokenizer.trainer.loss``."""
    require_peer("speechtokenizer")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from speechtokenizer.trainer import loss as RL
    from stok.train.config import LossConfig

    lc = LossConfig()
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(2, 1, 16000, generator=g)
    x_hat = x + 0.05 * torch.randn(2, 1, 16000, generator=g)
    mel = L.MelLoss(lc, 16000)
    total, _ = mel(x.squeeze(1), x_hat.squeeze(1))
    kwargs = [dict(n_fft=1024 >> i, num_mels=80, sample_rate=16000, hop_size=240 >> i, win_size=1024 >> i,
                   fmin=0, fmax=None) for i in range(4)]
    ref = sum(lam * RL.mel_loss(x, x_hat, **kw) for lam, kw in zip(lc.mel_lambdas, kwargs))
    assert torch.allclose(total, ref, rtol=1e-5), (total, ref)
    assert torch.allclose(L.recon_l1(x.squeeze(1), x_hat.squeeze(1)), RL.recon_loss(x, x_hat), rtol=1e-6)
    real = [torch.randn(2, 50, generator=g) for _ in range(3)]
    fake = [torch.randn(2, 50, generator=g) for _ in range(3)]
    d_loss, _ = L.discriminator_loss(real, fake, "lsgan")
    assert torch.allclose(d_loss, RL.discriminator_loss(real, fake), rtol=1e-6)
    assert torch.allclose(L.generator_adv_loss(fake, "lsgan"), RL.adversarial_loss(fake), rtol=1e-6)
    fm_r = [[torch.randn(2, 4, 30, generator=g) for _ in range(3)] for _ in range(2)]
    fm_g = [[torch.randn(2, 4, 30, generator=g) for _ in range(3)] for _ in range(2)]
    assert torch.allclose(lc.feat_lambda * L.feature_matching(fm_r, fm_g), RL.feature_loss(fm_r, fm_g), rtol=1e-6)
    feat, teacher = torch.randn(2, 50, 39, generator=g), torch.randn(2, 49, 39, generator=g)
    assert torch.allclose(L.d_axis_distill(feat, teacher), RL.d_axis_distill_loss(feat, teacher), rtol=1e-6)


def test_full_length_batch_takes_the_plain_path_with_the_same_values():
    """``train_step`` drops ``lengths`` when every item is a whole crop: the length-aware model gives the same."""
    from stok.models.speechtokenizer import SpeechTokenizer, SpeechTokenizerConfig

    torch.manual_seed(0)
    m = SpeechTokenizer(SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=8, codebook_size=16,
                                              n_q=2, lstm_layers=2)).eval()
    wav = 0.1 * torch.randn(3, 1, 8000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = m(wav, lengths=torch.full((3,), 8000))
        b = m(wav)
    assert torch.allclose(a.recon, b.recon, rtol=1e-5, atol=1e-6)
    assert torch.allclose(a.semantic, b.semantic, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.codes, b.codes)


@pytest.mark.parametrize("filters", [8, 32])  # the demo's width and the released width
def test_mstft_channels_last_keeps_values_and_gradients(filters):
    from stok.train.discriminators import MultiScaleSTFTDiscriminator, STFTDiscriminator

    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(filters, (1024, 512, 256, 128))
    wav = 0.1 * torch.randn(2, 1, 6000)
    results = {}
    for layout in (False, True):
        STFTDiscriminator.channels_last = layout
        try:
            d = copy.deepcopy(disc)
            x = wav.clone().requires_grad_(True)
            logits, fmaps = d(x)
            # smooth in every activation (an L1 term's sign could flip at a float-rounding zero)
            loss = sum(lg.pow(2).mean() for lg in logits) + sum(f.pow(2).mean() for fm in fmaps for f in fm)
            loss.backward()
            assert all(f.is_contiguous(memory_format=torch.channels_last) == layout
                       for fm in fmaps for f in fm[1:])
            results[layout] = (logits, fmaps, x.grad, {n: p.grad for n, p in d.named_parameters()})
        finally:
            STFTDiscriminator.channels_last = True
    (l0, f0, g0, p0), (l1, f1, g1, p1) = results[False], results[True]
    for a, b in zip(l0, l1):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
    for fa, fb in zip(f0, f1):
        for a, b in zip(fa, fb):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
    def close(a, b):  # float rounding of a different summation order, relative to the tensor's size
        return float((a - b).norm()) <= 1e-5 * float(a.norm())

    assert close(g0, g1), (g0 - g1).abs().max()
    assert p0.keys() == p1.keys()
    for n in p0:
        assert close(p0[n], p1[n]), (n, (p0[n] - p1[n]).abs().max())


def test_pointwise_conv_in_training_keeps_values_and_gradients():
    """Kernel-1 convs in training run as a matmul on CPU: same outputs and gradients as F.conv1d (float rounding);
    in eval mode the conv itself runs (bitwise the released package's inference)."""
    from stok.models.speechtokenizer.conv import WNConv1d

    torch.manual_seed(0)
    for cin, cout, T in ((8, 4, 16000), (64, 32, 400)):
        conv = WNConv1d(cin, cout, 1)
        x = torch.randn(3, cin, T, requires_grad=True)
        ref_conv = copy.deepcopy(conv)
        x_ref = x.detach().clone().requires_grad_(True)
        y = conv.train()(x)
        y_ref = torch.nn.functional.conv1d(x_ref, ref_conv.weight, ref_conv.bias)
        assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5), (y - y_ref).abs().max()
        g = torch.randn_like(y)
        y.backward(g)
        y_ref.backward(g)
        for a, b in ((x.grad, x_ref.grad), (conv.weight_v.grad, ref_conv.weight_v.grad),
                     (conv.weight_g.grad, ref_conv.weight_g.grad), (conv.bias.grad, ref_conv.bias.grad)):
            assert float((a - b).norm()) <= 1e-5 * float(b.norm())
        with torch.no_grad():
            assert torch.equal(conv.eval()(x), torch.nn.functional.conv1d(x, conv.weight, conv.bias))
