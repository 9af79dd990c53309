"""The reconstruction variants (lib.analysis.variants): 05's variants reuse 03's reconstructions and make the
other encoder's alike, and the tuning seed spread; on tiny generators (32 px) and a tiny embedding model."""

from __future__ import annotations

import numpy as np
import torch

from lib import artifacts
from lib.analysis import variants
from lib.analysis import variants as vocab
from lib.models import gan, lowlevel

#: a tiny generator's architecture (the GAN tests' configuration)
TINY_G = dict(
    z_dim=8, w_dim=16, mapping_layers=2, channel_base=64, channel_max=16, fts_hidden=16, batch_size=8
)


def _tiny_g(f_dim: int, seed: int | None = None):
    """A tiny 32 px generator in eval mode; ``seed`` seeds torch first, else its weights follow torch's global state."""
    if seed is not None:
        torch.manual_seed(seed)
    G, _ = gan.build(gan.GANConfig(**TINY_G), 32, f_dim)
    return G.eval()


def test_evaluation_variants_reuse_03s_and_make_the_other_encoder_alike(emb):
    G, G_tuned = _tiny_g(emb.dim, 0), _tiny_g(emb.dim, 1)
    rng = np.random.default_rng(3)
    ids = np.arange(10, 16)
    f = rng.standard_normal((6, emb.dim)).astype(np.float32)
    settings = {"feature_ratio": 1.0, "encoder": "ridge_image", "opt_steps": 1, "opt_lr": 0.01, "opt_anchor": 0.0,
                "opt_noise_maps": False, "combine": "impose", "opt_lowlevel": 1.0, "impose_strength": 0.5}  # fmt: skip
    made = {k: gan.generate(G, f, 1.0) for k in ("oracle", "predicted", "tuned", "optimised", "combined")}
    low = rng.uniform(0, 1, (6, 4, 4, 3)).astype(np.float32)
    made[vocab.SPATIAL] = lowlevel.upsample(low, 32)
    provenance = vocab.variant_provenance("the test generator", "ridge_image", 3, 1, "impose")
    rec = artifacts.Reconstructions(ids, made, provenance, settings, {})
    pred = {"test_ids": ids, "pred_ridge_image": f, "head_mlp_image": f[::-1].copy(), "lowlevel": low}
    variants, prov = vocab.evaluation_variants(rec, pred, ids[::-1], G, G_tuned, emb, seed=0)
    np.testing.assert_array_equal(
        variants["ridge · plain"], made["predicted"][::-1]
    )  # 03's, in the order asked
    np.testing.assert_array_equal(
        variants["MLP · plain"], gan.generate(G, f, 1.0)
    )  # the head, reordered twice
    np.testing.assert_array_equal(variants["MLP · fMRI-tuned"], gan.generate(G_tuned, f, 1.0))
    # the MLP's combined reconstruction: the tuned generator's with the spatial pathway's layout imposed
    np.testing.assert_array_equal(
        variants["MLP · combined"], lowlevel.impose(gan.generate(G_tuned, f, 1.0), low[::-1], 0.5)
    )
    np.testing.assert_array_equal(variants[vocab.SPATIAL_ONLY], made[vocab.SPATIAL][::-1])
    assert (
        set(variants) == set(prov)
        and "mlp_image" in prov["MLP · optimised"]
        and "made in 05" in prov["MLP · plain"]
    )
    assert prov["ridge · fMRI-tuned"] == provenance["tuned"]


def test_the_tuning_seed_spread_reruns_the_first_seed_exactly_and_spreads_over_others(emb, data):
    images, feats = data
    G = _tiny_g(feats.shape[1])
    view = gan.EmbeddingView(emb)
    pred = feats + 0.3 * np.random.default_rng(1).normal(size=feats.shape).astype(np.float32)
    kw = dict(steps=2, batch_size=8)
    tuned, _ = gan.tune_conditioning(G, pred, feats, emb, ratio=1.0, seed=4, **kw)
    first = variants.variant_scores(
        {"tuned": gan.generate(tuned, pred[:8], 1.0, seed=4)}, view, feats[:8], images[:8]
    )[0]
    out = variants.tuning_seed_spread(
        [4, 5], G, pred, feats, emb, view, pred[:8], feats[:8], images[:8], 1.0, **kw
    )
    spread = out["spread"]["tuned"]
    assert out["seeds"] == [4, 5] and set(spread) == {"two_way", "pixcorr", "ssim"}
    assert spread["pixcorr"]["values"][0] == first["tuned"]["pixcorr"]  # seed 4 recomputed: bit-identical
    assert spread["pixcorr"]["values"][1] != spread["pixcorr"]["values"][0]  # another seed: another tuning
    again = variants.tuning_seed_spread([4], G, pred, feats, emb, view, pred[:8], feats[:8], images[:8], 1.0,
                                   first=first, **kw)  # fmt: skip
    assert again["spread"]["tuned"]["pixcorr"]["sd"] == 0.0 and again["seeds"] == [4]
