"""Leave-one-out analysis (lib.analysis.loo): batched against one-voxel-at-a-time loops, closed forms, ROI groups,
saliency, the spatial pathway's effect maps and their localisation, the example and pRF voxels, and the
validation helpers on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from lib import metrics
from lib.analysis import loo
from lib.models import gan, lowlevel
from lib.models.mlp import MLPConfig, MLPEncoder, ResidualMLP
from lib.models.ridge import RidgeEncoder


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 40)).astype(np.float32)
    y = (x[:, :8] @ rng.standard_normal((8, 6)) + 0.3 * rng.standard_normal((60, 6))).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def ridge(xy):
    return RidgeEncoder(alphas=[1.0]).fit(*xy)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    cfg = MLPConfig(width=32, depth=2, proj_width=16, dropout=0.1)
    model = ResidualMLP(40, 6, cfg.width, cfg.depth, cfg.dropout, cfg.projector, cfg.proj_width)
    return MLPEncoder(model.eval(), cfg, 40, 6, "cpu")


def _cos_change(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p, q = p.astype(np.float64), q.astype(np.float64)
    return 1 - (p * q).sum(-1) / np.linalg.norm(p, axis=-1) / np.linalg.norm(q, axis=-1)


def test_replacement_modes(xy):
    x, _ = xy
    np.testing.assert_allclose(loo.replacement(x, "mean", 3), np.tile(x.mean(0), (3, 1)), atol=1e-6)
    assert not loo.replacement(x, "zero", 2).any()
    big = np.random.default_rng(1).normal(2.0, 3.0, (4000, 3)).astype(np.float32)
    noise = loo.replacement(big, "noise", 20000, seed=2)
    np.testing.assert_allclose(noise.mean(0), big.mean(0), atol=0.1)
    np.testing.assert_allclose(noise.std(0), big.std(0), rtol=0.03)
    with pytest.raises(loo.LOOError, match="replace='median'"):
        loo.replacement(x, "median", 2)


@pytest.mark.parametrize("mode", ["mean", "noise"])
def test_ridge_closed_form_equals_the_naive_loop_and_a_direct_computation(xy, ridge, mode):
    x, _ = xy
    r = loo.replacement(x, mode, len(x), seed=3)
    fast = loo.voxel_effects(ridge, x, r)
    slow = loo.voxel_effects(ridge, x, r, method="naive")
    np.testing.assert_allclose(fast.cos_change, slow.cos_change, atol=1e-5)
    np.testing.assert_allclose(fast.rel_change, slow.rel_change, rtol=1e-4, atol=1e-6)
    # independent: numpy predictions of the encoder on explicitly edited copies
    for v in (0, 7, 39):
        xv = x.copy()
        xv[:, v] = r[:, v]
        want = _cos_change(ridge.predict(x), ridge.predict(xv))
        np.testing.assert_allclose(fast.cos_change[:, v], want, atol=1e-5)


@pytest.mark.parametrize("output", ["head", "retrieval"])
def test_mlp_batched_equals_the_naive_loop(xy, mlp, output):
    x, _ = xy
    r = loo.replacement(x, "noise", len(x), seed=4)
    vox = [0, 3, 17, 39]
    fast = loo.voxel_effects(mlp, x, r, voxels=vox, output=output, chunk_elems=500)  # several chunks
    slow = loo.voxel_effects(mlp, x, r, voxels=vox, output=output, method="naive")
    np.testing.assert_allclose(fast.cos_change, slow.cos_change, atol=1e-5)
    np.testing.assert_allclose(fast.rel_change, slow.rel_change, atol=1e-5)
    head = mlp.predict if output == "head" else mlp.project
    xv = x.copy()
    xv[:, 17] = r[:, 17]
    np.testing.assert_allclose(fast.cos_change[:, 2], _cos_change(head(x), head(xv)), atol=1e-5)
    p, q = loo.perturbed_predictions(mlp, x, r, vox, output=output)
    np.testing.assert_allclose(q[:, 2], head(xv), atol=1e-5)
    np.testing.assert_allclose(p, head(x), atol=1e-6)


def test_group_leave_out_equals_zeroing_its_voxels(xy, ridge, mlp):
    x, _ = xy
    groups = {"a": np.arange(0, 8), "b": np.array([8, 20, 33])}
    for enc in (ridge, mlp):
        out = loo.group_effects(enc, x, loo.replacement(x, "zero", len(x)), groups)
        for name, cols in groups.items():
            xz = x.copy()
            xz[:, cols] = 0
            np.testing.assert_allclose(out[name]["cos_change"], _cos_change(enc.predict(x), enc.predict(xz)),
                                       atol=1e-5)  # fmt: skip


def test_only_group_keeps_its_voxels_and_replaces_the_rest(xy):
    x, _ = xy
    r = loo.replacement(x, "mean", len(x))
    o = loo.only_group(x, r, [2, 5])
    assert np.array_equal(o[:, [2, 5]], x[:, [2, 5]])
    rest = np.setdiff1d(np.arange(40), [2, 5])
    assert np.array_equal(o[:, rest], r[:, rest])


def test_saliency_is_exact_for_ridge_and_first_order_for_the_mlp(xy, ridge, mlp):
    x, _ = xy
    r = loo.replacement(x, "mean", len(x))
    np.testing.assert_allclose(
        loo.saliency(ridge, x, r), loo.voxel_effects(ridge, x, r).rel_change, rtol=1e-4
    )
    small = x + 1e-3 * np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    sal = loo.saliency(mlp, x, small, batch=25)
    exact = loo.voxel_effects(mlp, x, small).rel_change
    assert stats.spearmanr(sal.ravel(), exact.ravel())[0] > 0.99
    np.testing.assert_allclose(sal.mean(), exact.mean(), rtol=0.02)


def test_effect_centres_and_prf_errors_on_known_cases():
    maps = np.zeros((3, 8, 8))
    maps[0, 2, 5] = 1.0  # row 2, column 5: centre (5.5, 2.5)
    maps[1, 4:6, 0:2] = 1.0  # a 2 x 2 square: centre (1, 5)
    c = loo.effect_centres(maps)
    np.testing.assert_allclose(c, [[5.5, 2.5], [1.0, 5.0], [4.0, 4.0]])
    rng = np.random.default_rng(0)
    prf = rng.uniform(0, 64, (200, 2))
    exact = loo.prf_errors(prf + rng.normal(0, 1, prf.shape), prf, shuffles=200)
    assert exact["median_error"] < 2 and exact["chance_median_error"] > 15 and exact["p_value"] < 0.01
    unrelated = loo.prf_errors(rng.uniform(0, 64, (200, 2)), prf, shuffles=200)
    assert unrelated["median_error"] == pytest.approx(unrelated["chance_median_error"], rel=0.15)
    assert unrelated["p_value"] > 0.01


def test_bad_input_is_named(xy, ridge):
    x, _ = xy
    with pytest.raises(loo.LOOError, match="x_replace"):
        loo.voxel_effects(ridge, x, x[:, :5])
    with pytest.raises(loo.LOOError, match=r"x \(60, 5\)"):
        loo.voxel_effects(ridge, x[:, :5], x[:, :5])
    with pytest.raises(loo.LOOError, match="voxels"):
        loo.voxel_effects(ridge, x, x, voxels=[40])
    with pytest.raises(loo.LOOError, match="output='proj'"):
        loo.voxel_effects(ridge, x, x, output="proj")
    with pytest.raises(loo.LOOError, match="encoder dict"):
        loo.voxel_effects({}, x, x)


def test_image_effect_maps_equal_the_generated_differences():
    G, _ = gan.build(gan.GANConfig(z_dim=8, w_dim=16, channel_base=64, channel_max=16, fts_hidden=16), 16, 6)
    G = G.eval()
    rng = np.random.default_rng(0)
    p = rng.standard_normal((3, 6)).astype(np.float32)
    q = np.stack([p, p + 0.5 * rng.standard_normal((3, 6)).astype(np.float32)], 1)  # no change, a change
    maps = loo.image_effect_maps(G, p, q)
    assert maps.shape == (2, 16, 16) and not maps[0].any() and maps[1].mean() > 0
    want = np.abs(gan.generate(G, q[:, 1], 1.0, exact=True) - gan.generate(G, p, 1.0, exact=True)).mean(
        axis=(0, 3)
    )
    np.testing.assert_allclose(maps[1], want, rtol=1e-6)


def test_ideal_readout_is_the_least_squares_fit_to_many_noisy_draws():
    """The closed form from the truth against scikit-learn's regression on 4,000 noisy repeats of each image."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(4)
    n, v, d, reps = 30, 6, 3, 4000
    signal = rng.standard_normal((n, v))
    signal[:, 1] = 0.8 * signal[:, 0] + 0.2 * signal[:, 1]  # correlated voxels share the weight
    targets = signal[:, :3] @ rng.standard_normal((3, d)) + 0.5 * rng.standard_normal((n, d))
    noise_var = np.array([0.5, 1.0, 2.0, 0.2, 4.0, 1.0])
    x = np.tile(signal, (reps, 1)) + rng.standard_normal((n * reps, v)) * np.sqrt(noise_var)
    fit = LinearRegression().fit(x / x.std(0), np.tile(targets, (reps, 1)))
    ideal = loo.ideal_readout(signal, noise_var, targets)
    np.testing.assert_allclose(ideal, fit.coef_.T, atol=0.03)
    assert np.abs(ideal).max() > 0.3
    with pytest.raises(loo.LOOError, match="noise_var"):
        loo.ideal_readout(signal, noise_var[:3], targets)


def test_effect_centres_at_a_quantile_find_an_edge_peak_that_the_whole_map_centre_misses():
    maps = np.ones((1, 16, 16))
    maps[0, 1:4, 1:4] = 5.0  # 9 of 256 pixels: above the 0.9 quantile, which is the background
    np.testing.assert_allclose(loo.effect_centres(maps, quantile=0.9), [[2.5, 2.5]])
    whole = loo.effect_centres(maps, power=2.0)
    assert np.linalg.norm(whole - 2.5) > 3  # pulled towards the image centre (8, 8)
    with pytest.raises(loo.LOOError, match="quantile=1"):
        loo.effect_centres(maps, quantile=1.0)


def test_layout_is_the_block_mean():
    from skimage.transform import downscale_local_mean

    images = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = np.stack([downscale_local_mean(im / 255, (4, 4, 1)).ravel() for im in images])
    np.testing.assert_allclose(metrics.layout(images, 8), expected, atol=1e-6)
    grey = np.stack([downscale_local_mean(im.mean(-1) / 255, (4, 4)).ravel() for im in images])
    np.testing.assert_allclose(metrics.layout(images, 8, grey=True), grey, atol=1e-6)
    assert loo.in_stimulus(np.array([[1.0, 31.0], [-1.0, 5.0], [5.0, 32.0], [np.nan, 1.0]]), 32).tolist() == [
        True, False, False, False,
    ]  # fmt: skip


def test_layout_readout_places_a_perturbation_at_its_block():
    """Embeddings that are an invertible linear image of the layout: the read-out recovers it, and a perturbation
    along one block's direction has its layout effect, and its centre, at that block."""
    rng = np.random.default_rng(6)
    grid = 8
    images = rng.integers(0, 256, (400, 32, 32, 3), dtype=np.uint8)
    mix = rng.standard_normal((grid * grid * 3, 256)).astype(np.float32)
    feats = metrics.layout(images, grid) @ mix
    readout = loo.fit_layout_readout(feats, images, grid, alphas=(1e-4,), device="cpu")
    row, col = 2, 6
    one = np.zeros(grid * grid * 3, np.float32)
    one[(row * grid + col) * 3] = 1.0  # red channel of block (row, col)
    p = feats[:5]
    q = p[:, None, :] + (one @ mix)[None, None, :]
    maps = loo.layout_effect_maps(readout, p, q, grid)
    assert maps.shape == (1, grid, grid)
    assert np.unravel_index(np.argmax(maps[0]), maps[0].shape) == (row, col)
    np.testing.assert_allclose(loo.effect_centres(maps, quantile=0.9), [[col + 0.5, row + 0.5]], atol=0.3)


def test_prf_check_composes_the_maps_centres_and_errors(xy, ridge):
    """prf_check against its pieces called by hand: maps over reference voxels, centres, errors."""
    x, y = xy
    G, _ = gan.build(gan.GANConfig(z_dim=8, w_dim=16, channel_base=64, channel_max=16, fts_hidden=16), 16, 6)
    G = G.eval()
    r = loo.replacement(x, "mean", 5)
    vox, ref = np.array([0, 1, 2]), np.array([10, 11, 12])
    prf = np.array([[3.0, 4.0], [20.0, 10.0], [30.0, 30.0]])
    images = np.random.default_rng(7).integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
    readout = loo.fit_layout_readout(y, images, 8, alphas=(1.0,), device="cpu")
    centres, checks = loo.prf_check(G, ridge, x[:5], r, vox, ref, prf, 32, readout, grid=8)
    p, q = loo.perturbed_predictions(ridge, x[:5], r, np.r_[vox, ref])
    m = loo.image_effect_maps(G, p, q)
    gen = loo.effect_centres(m[:3] / (m[3:].mean(0) + 1e-6), quantile=0.9) * 2  # 16-px maps, 32-px stimulus
    lay = loo.effect_centres(loo.layout_effect_maps(readout, p, q[:, :3], 8), quantile=0.9) * 4
    np.testing.assert_allclose(centres["through the generator"], gen)
    np.testing.assert_allclose(centres["embedding's layout read-out"], lay)
    assert checks["through the generator"] == loo.prf_errors(gen, prf)


def test_closed_form_effect_maps_equal_explicit_perturbation_and_are_local(world):
    x, images, _ = world
    cols = np.arange(10, x.shape[1])  # the decoder reads all but the first 10 voxels
    dec = lowlevel.fit(x[:300], images[:300], cols, size=4, alphas=[1.0], device="cpu")
    xs, rep = x[300:340], loo.replacement(x[:300], "mean", 40)
    voxels = np.array([0, 12, 30, 47, x.shape[1] - 1])
    maps = loo.lowlevel_effect_maps(dec, xs, rep, voxels)
    base = dec.predict(xs)
    for k, v in enumerate(voxels):
        xv = xs.copy()
        xv[:, v] = rep[:, v]
        explicit = np.abs(dec.predict(xv) - base).mean((0, 3))
        np.testing.assert_allclose(maps[k], explicit, rtol=1e-4, atol=1e-7)
    assert (maps[0] == 0).all()  # a voxel the decoder does not read
    # signal voxel v drives target cell v // 3 (row-major 4 x 4, three channels each): its map peaks there
    for v in (12, 30, 47):
        cell = v // 3
        assert np.unravel_index(maps[list(voxels).index(v)].argmax(), (4, 4)) == divmod(cell, 4)


def test_localisation_of_a_point_a_uniform_map_and_none():
    point = np.zeros((1, 8, 8))
    point[0, 3, 5] = 2.0
    uniform = np.ones((1, 8, 8))
    radius = 2.0
    loc = loo.localisation(np.concatenate([point, uniform, np.zeros((1, 8, 8))]), radius)
    yy, xx = np.mgrid[:8, :8] + 0.5
    share = (((xx - 4) ** 2 + (yy - 4) ** 2) <= radius**2).mean()  # pixel centres within r of the centre
    assert loc[0] == 1.0 and loc[1] == pytest.approx(share) and np.isnan(loc[2])
    with pytest.raises(loo.LOOError, match="radius=0"):
        loo.localisation(point, 0)
    floor = np.full((1, 8, 8), 1.0)
    floor[0, 3, 5] = 6.0  # a peak on a diffuse floor: local only once the floor is taken away
    assert loo.localisation(floor, 1.0)[0] < 0.5 and loo.localisation(floor, 1.0, quantile=0.9)[0] == 1.0


def test_combined_effect_maps_follow_both_pathways_and_the_local_one_is_more_local(world):
    x, images, _ = world
    rng = np.random.default_rng(1)
    dec = lowlevel.fit(x[:300], images[:300], np.arange(48), size=4, alphas=[1.0], device="cpu")
    emb = rng.normal(size=(300, 5)).astype(np.float32)
    emb[:, 0] += x[:300, 60]  # voxel 60 (blind to the layout) drives the "semantic" prediction
    enc = RidgeEncoder(alphas=[1.0], device="cpu").fit(x[:300], emb)

    def reconstruct(p, low):  # layout from the spatial pathway, a global brightness from the semantic one
        return np.repeat(np.repeat(low, 4, 1), 4, 2) * 255 + 40 * p[:, :1, None, None]

    xs, rep = x[300:320], loo.replacement(x[:300], "mean", 20)
    voxels = np.array([5, 60])
    maps = loo.combined_effect_maps(reconstruct, enc, dec, xs, rep, voxels)
    assert maps.shape == (20, 2, 16, 16)
    xv = xs.copy()
    xv[:, 5] = rep[:, 5]
    explicit = np.abs(
        reconstruct(enc.predict(xv), dec.predict(xv)) - reconstruct(enc.predict(xs), dec.predict(xs))
    )
    np.testing.assert_allclose(maps[:, 0], explicit.mean(-1), rtol=1e-4, atol=1e-4)
    c = loo.localisation_contrast(maps, [0], [1], radius=3.0, resamples=200)
    assert c["first_mean"] > 0.5 > c["second_mean"] and c["low"] > 0 and c["p"] < 0.01 and c["n"] == 20


def test_localisation_contrast_tells_a_fixed_spot_from_one_that_follows_the_object():
    rng = np.random.default_rng(0)
    maps = np.zeros((30, 2, 16, 16))
    maps[:, 0, 4, 4] = 1.0  # a retinotopic voxel: the same spot in every image
    where = rng.integers(0, 16, (30, 2))
    maps[np.arange(30), 1, where[:, 0], where[:, 1]] = 1.0  # an attribute voxel: wherever the object is
    c = loo.localisation_contrast(maps, [0], [1], radius=2.0, resamples=300)
    assert c["first_mean"] == 1.0 and c["second_mean"] < 0.3 and c["low"] > 0.5 and c["p"] < 0.01
    with pytest.raises(loo.LOOError, match="first"):
        loo.localisation_contrast(maps, [], [1], radius=2.0)


def test_example_and_prf_voxels_by_hand():
    importance = np.array([0.9, 0.1, 0.8, 0.7, 0.3, 0.5])
    early = np.array([1, 2, 4])
    np.testing.assert_array_equal(loo.example_voxels(importance, early, 4), [2, 4, 0, 3])
    prf = np.array(
        [[1, 1], [2, 2], [40, 1], [3, 3], [5, 5], [6, 6]], float
    )  # voxel 2's centre is off a 32 px image
    np.testing.assert_array_equal(loo.prf_voxels(importance, early, prf, 32, 5), [4, 1])
    checks = {"through the generator": {"median_error": 3.0, "chance_median_error": 9.0, "p_value": 0.01}}
    assert loo.prf_summary(checks, 2) == {"prf_voxels": 2, "prf_median_error_px": 3.0,
                                          "prf_chance_error_px": 9.0, "prf_p_value": 0.01}  # fmt: skip


def test_roi_only_predictions_of_a_linear_encoder():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 6)).astype(np.float32)
    enc = RidgeEncoder(alphas=[1.0]).fit(x, x[:, :2] @ np.ones((2, 3), np.float32))
    rep = np.zeros_like(x)
    only = loo.roi_only_predictions(enc, x, rep, {"a": np.array([0, 1]), "b": np.array([], int)})
    assert list(only) == ["a"]  # a group without voxels is left out
    np.testing.assert_allclose(only["a"], x[:, :2] @ enc.coef_[:, :2].T + enc.intercept_, atol=1e-5)
