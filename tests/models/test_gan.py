"""GAN training, fMRI tuning and latent optimisation (lib.models.gan) on tiny generators (32 px) and a tiny
embedding model; an unknown generator source is refused."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib import metrics
from lib.models import gan, lowlevel
from lib.models import stylegan2 as sg

TINY = dict(z_dim=8, w_dim=16, mapping_layers=2, channel_base=64, channel_max=16, fts_hidden=16, batch_size=8,
            save_every=2, itd=1.0, rec=1.0, beta1=0.9, crop_min=0.5)  # fmt: skip


def test_perturb_is_unit_and_keeps_the_expected_share_of_the_feature():
    f = F.normalize(torch.randn(200, 512), dim=-1)
    p = gan.perturb(f, 0.25, torch.Generator().manual_seed(0))
    torch.testing.assert_close(p.norm(dim=1), torch.ones(200))
    # n is a random direction, nearly orthogonal to f in 512-d: cos(p, f) ~ 0.25 / sqrt(0.25^2 + 0.75^2)
    assert float((p * f).sum(1).mean()) == pytest.approx(0.25 / np.hypot(0.25, 0.75), abs=0.02)
    torch.testing.assert_close(gan.perturb(f, 1.0), f)


def test_embedding_view_equals_the_embedder_at_its_size(emb, data):
    images, feats = data
    view = gan.EmbeddingView(emb)
    np.testing.assert_allclose(gan.embed_generated(view, images), feats, atol=1e-5)
    # one preprocessing: at another size too (a 256 px LAFITE generator seen by a 224 px CLIP, here 48 -> 32)
    small = np.random.default_rng(1).uniform(
        20, 235, (6, 6, 6, 3)
    )  # smooth: no overshoot for the clamp to cut
    big = np.kron(small, np.ones((1, 8, 8, 1))).astype(np.uint8)
    np.testing.assert_allclose(gan.embed_generated(view, big), emb.embed_images(big), atol=1e-5)


def test_train_gan_resume_equals_uninterrupted(emb, data, tmp_path):
    images, feats = data
    cfg = gan.GANConfig(steps=4, **TINY)
    G1, _, h1 = gan.train_gan(images, feats, cfg, emb, "cpu")
    gan.train_gan(images, feats, cfg, emb, "cpu", state_dir=tmp_path, stop_after=2)
    G2, _, h2 = gan.train_gan(images, feats, cfg, emb, "cpu", state_dir=tmp_path)
    for (k, a), b in zip(G1.state_dict().items(), G2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert h1["loss_g"] == h2["loss_g"] and h2["done"] and len(list(tmp_path.glob("gan-state-*.pt"))) == 1
    assert all(np.isfinite(h1[k]).all() for k in ("loss_g", "loss_d", "itc"))


def test_gan_config_and_inputs_are_checked(emb, data):
    images, feats = data
    with pytest.raises(gan.GANError, match="batch_size=6"):
        gan.train_gan(images, feats, gan.GANConfig(**(TINY | {"batch_size": 6})), emb, "cpu")
    with pytest.raises(gan.GANError, match="beta1=1"):
        gan.train_gan(images, feats, gan.GANConfig(**(TINY | {"beta1": 1})), emb, "cpu")
    with pytest.raises(gan.GANError, match="features"):
        gan.train_gan(images, feats[:5], gan.GANConfig(**TINY), emb, "cpu")
    with pytest.raises(gan.GANError, match="uint8"):
        gan.train_gan(images.astype(np.float32), feats, gan.GANConfig(**TINY), emb, "cpu")


def _tiny_g(f_dim: int) -> sg.Generator:
    G, _ = gan.build(gan.GANConfig(**TINY), 32, f_dim)
    return G.eval()


def test_tuning_changes_only_the_conditioning_path(emb, data):
    images, feats = data
    G = _tiny_g(feats.shape[1])
    pred = feats + 0.3 * np.random.default_rng(1).normal(size=feats.shape).astype(np.float32)
    tuned, hist = gan.tune_conditioning(G, pred, feats, emb, steps=3, batch_size=8)
    cond = {n for n, _ in G.named_parameters() if any(f".{k}." in n for k in ("pre_0", "pre_1", "affine_0"))}
    assert cond and len(hist["loss"]) == 3 and np.isfinite(hist["loss"]).all()
    before, after = dict(G.named_parameters()), dict(tuned.named_parameters())
    for n in set(before) - cond:
        assert torch.equal(before[n], after[n]), n
    assert not any(torch.equal(before[n], after[n]) for n in cond if n.endswith("affine_0.weight"))


def _pooled_embedder(dim: int = 16):
    """A stand-in embedder whose image tower sees colour layout (4 x 4 average pool, then linear): unlike a tiny
    untrained network it gives different images clearly different embeddings."""
    torch.manual_seed(0)
    visual = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, dim, bias=False)
    )
    mean_std = (torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5))
    return SimpleNamespace(model=SimpleNamespace(visual=visual), image_size=32, mean_std=mean_std)


def test_alignment_raises_the_cosine_of_generated_images_to_their_condition(data):
    emb = _pooled_embedder()
    view = gan.EmbeddingView(emb)
    feats = gan.embed_generated(view, data[0])  # conditions: embeddings of the random images
    G = _tiny_g(feats.shape[1])

    def cos(g):
        return metrics.cosine_per_sample(gan.embed_generated(view, gan.generate(g, feats, 1.0)), feats).mean()

    aligned, hist = gan.align_conditioning(G, feats, emb, steps=40, lr=0.01, batch_size=8)
    assert len(hist["loss"]) == 40 and cos(aligned) > cos(G) + 0.1
    # with the pixel term the generated images also move towards the stimuli themselves
    pix, _ = gan.align_conditioning(G, feats, emb, steps=40, lr=0.01, batch_size=8, pixel=5.0, images=data[0])

    def err(g):
        return np.mean((gan.generate(g, feats, 1.0).astype(float) - data[0].astype(float)) ** 2)

    assert err(pix) < 0.9 * min(err(G), err(aligned))


def test_noise_regulariser_closed_form():
    # a constant map: autocorrelation 1 at both shifts and on both pyramid levels (16 and 8 px): 2 x 2 x 1^2
    assert float(gan._noise_reg([torch.ones(1, 1, 16, 16)])) == pytest.approx(4.0)
    white = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    assert float(gan._noise_reg([white])) < 0.01


def test_latent_optimisation_raises_the_cosine_to_the_target(emb, data):
    _, feats = data
    G = _tiny_g(feats.shape[1])
    images, hist = gan.optimise_latents(G, feats[:4], emb, steps=25, lr=0.1, batch=2)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert hist["cosine"][-1] > hist["cosine"][1]
    # the default start is the plain reconstruction: no steps give generate()'s image
    start, _ = gan.optimise_latents(G, feats[:3], emb, steps=0, ratio=1.0)
    assert np.array_equal(start, gan.generate(G, feats[:3], 1.0))
    with pytest.raises(gan.GANError, match="start='z'"):
        gan.optimise_latents(G, feats[:3], emb, start="z")
    for bad in (-1, float("nan")):
        with pytest.raises(gan.GANError, match=f"anchor={bad}"):
            gan.optimise_latents(G, feats[:3], emb, anchor=bad)


def test_latent_optimisation_anchor_keeps_the_starting_layout(emb, data):
    _, feats = data
    G = _tiny_g(feats.shape[1])
    start = gan.generate(G, feats[:4], 1.0).astype(np.float32)
    low = lambda x: x.reshape(4, 8, 4, 8, 4, 3).mean((2, 4))  # noqa: E731  (32 px -> 8 px, as the anchor sees it)
    drift = {}
    for a in (0.0, 1e4):
        images, hist = gan.optimise_latents(G, feats[:4], emb, steps=20, lr=0.1, ratio=1.0, noise_maps=False,
                                            anchor=a)  # fmt: skip
        drift[a] = np.abs(low(images.astype(np.float32)) - low(start)).mean()
        assert hist["noise_maps"] is False and hist["anchor"] == a
        if a == 0:
            assert hist["cosine"][-1] > hist["cosine"][1] and drift[a] > 1.0  # unanchored, the image moves
    assert drift[1e4] < 0.25 * drift[0.0]


def test_latent_optimisation_low_level_term_moves_the_layout_to_the_target(emb, data):
    _, feats = data
    G = _tiny_g(feats.shape[1])
    start = gan.generate(G, feats[:4], 1.0).astype(np.float32)
    pool = lambda x: x.reshape(4, 4, 8, 4, 8, 3).mean((2, 4)) / 255  # noqa: E731  (32 px -> 4 x 4 area means)
    target = 1 - pool(start)  # the opposite layout and colours: far from where the search starts
    err = {}
    for w in (0.0, 300.0):
        images, hist = gan.optimise_latents(G, feats[:4], emb, steps=20, lr=0.1, ratio=1.0, noise_maps=False,
                                            low_target=target if w else None, low_weight=w)  # fmt: skip
        err[w] = np.square(pool(images.astype(np.float32)) - target).mean()
        assert hist["low_weight"] == w
    assert err[300.0] < 0.8 * err[0.0]
    with pytest.raises(gan.GANError, match="low_weight=1.0 needs low_target"):
        gan.optimise_latents(G, feats[:4], emb, low_weight=1.0)
    with pytest.raises(gan.GANError, match=r"low_target \(3, 4, 4, 3\)"):
        gan.optimise_latents(G, feats[:4], emb, low_target=target[:3], low_weight=1.0)


def test_generate_is_deterministic_and_resize_keeps_shape(data):
    _, feats = data
    G = _tiny_g(feats.shape[1])
    a = gan.generate(G, feats[:5], 0.25, seed=3)
    assert np.array_equal(a, gan.generate(G, feats[:5], 0.25, seed=3)) and a.shape == (5, 32, 32, 3)
    assert not np.array_equal(a, gan.generate(G, feats[:5], 0.25, seed=4))
    exact = gan.generate(G, feats[:5], 0.25, seed=3, exact=True)  # the same images before the rounding
    assert exact.dtype == np.float32 and np.array_equal(np.floor(exact).astype(np.uint8), a)
    assert gan.resize_images(a, 8).shape == (5, 8, 8, 3)


def test_combine_optimises_toward_the_layout_or_imposes_it(emb, data):
    _, feats = data
    G = _tiny_g(feats.shape[1])
    low = np.random.default_rng(2).uniform(0, 1, (3, 4, 4, 3)).astype(np.float32)
    kw = dict(steps=4, lr=0.1, ratio=1.0, noise_maps=False, seed=1)
    images, hist = gan.combine(G, feats[:3], low, emb, "optimise", 5.0, **kw)
    ref, _ = gan.optimise_latents(G, feats[:3], emb, low_target=low, low_weight=5.0, low_loss="corr", **kw)
    assert np.array_equal(images, ref) and hist["low_weight"] == 5.0
    imposed, none = gan.combine(G, feats[:3], low, emb, "impose", **kw)
    assert none is None and np.array_equal(
        imposed, lowlevel.impose(gan.generate(G, feats[:3], 1.0, seed=1), low)
    )
    both, _ = gan.combine(G, feats[:3], low, emb, "both", 5.0, **kw)
    assert np.array_equal(both, lowlevel.impose(ref, low))
    exact, _ = gan.combine(G, feats[:3], low, emb, "optimise", 5.0, exact=True, **kw)
    assert exact.dtype == np.float32 and np.array_equal(np.floor(exact).astype(np.uint8), ref)
    # the search's latents redraw its image exactly; held, they redraw the combined image of the same inputs
    assert np.array_equal(gan.synthesise(G, hist["w"], feats[:3], 1.0, seed=1), ref)
    settings = {"combine": "both", "opt_lowlevel": 5.0, "impose_strength": 0.5, "opt_steps": 4, "opt_lr": 0.1,
                "feature_ratio": 1.0, "opt_noise_maps": False}  # fmt: skip
    held = gan.held_combiner(G, emb, settings, feats[:3], low, seed=1)
    full, _ = gan.combine(G, feats[:3], low, emb, "both", 5.0, exact=True, strength=0.5, **kw)
    np.testing.assert_allclose(held(feats[:3], low), full, atol=1e-3)
    with pytest.raises(gan.GANError, match="how='blend'"):
        gan.combine(G, feats[:3], low, emb, "blend")
    with pytest.raises(gan.GANError, match="low_loss='l1'"):
        gan.optimise_latents(G, feats[:3], emb, low_target=low, low_weight=1.0, low_loss="l1")


def test_obtain_generator_refuses_an_unknown_source(emb):
    with pytest.raises(gan.GANError, match="generator='nope'"):
        gan.obtain_generator(
            "nope", emb, np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, emb.dim)), gan.GANConfig()
        )
