"""The spatial pathway (lib.models.lowlevel) and its leave-one-out maps (lib.analysis.loo): targets against
scikit-image, the decoder against a known linear world, closed-form maps against explicit refits of the input."""

import numpy as np
import pytest
from skimage.measure import block_reduce

from lib.analysis import loo
from lib.models import lowlevel
from lib.models.mlp import MLPConfig
from lib.models.ridge import RidgeEncoder


@pytest.fixture(scope="module")
def world():
    """Images whose 4 x 4 area means each drive one voxel (plus noise), and 20 voxels that see nothing."""
    rng = np.random.default_rng(0)
    n, size, s = 400, 16, 4
    low = rng.uniform(0.1, 0.9, (n, s, s, 3)).astype(np.float32)
    images = np.repeat(np.repeat(low, size // s, 1), size // s, 2)
    images = np.clip(images * 255 + rng.normal(0, 3, images.shape), 0, 255).round().astype(np.uint8)
    target = block_reduce(images.astype(np.float64) / 255, (1, size // s, size // s, 1), np.mean)
    signal = target.reshape(n, -1)  # one voxel per (row, column, channel) of the target
    x = np.concatenate([signal + rng.normal(0, 0.05, signal.shape), rng.normal(0, 1, (n, 20))], 1)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    return x, images, target


def test_downsample_equals_block_means_and_upsample_keeps_flat_images(world):
    _, images, target = world
    np.testing.assert_allclose(lowlevel.downsample(images, 4), target, atol=1e-6)
    flat = np.full((2, 4, 4, 3), 0.5, np.float32)
    assert (lowlevel.upsample(flat, 16) == 128).all()
    with pytest.raises(lowlevel.LowLevelError, match="size=17"):
        lowlevel.downsample(images, 17)
    with pytest.raises(lowlevel.LowLevelError, match="expected uint8"):
        lowlevel.downsample(images.astype(np.float32), 4)


def test_ridge_decoder_recovers_the_layout_and_ignores_blind_voxels(world, tmp_path):
    x, images, target = world
    columns = np.arange(x.shape[1])
    dec = lowlevel.fit(x[:300], images[:300], columns, size=4, alphas=[0.1, 1, 10, 100], device="cpu")
    pred = dec.predict(x[300:])
    r = np.corrcoef(pred.ravel(), target[300:].ravel())[0, 1]
    assert r > 0.95 and dec.blurry(x[300:302], 16).shape == (2, 16, 16, 3)
    back = lowlevel.LowLevelDecoder.load(dec.save(tmp_path / "low.npz", {"roi": "x"}))
    assert back.size == 4 and back.meta == {"roi": "x"} and np.array_equal(back.columns, columns)
    np.testing.assert_allclose(back.predict(x[300:]), pred, atol=1e-6)
    with pytest.raises(lowlevel.LowLevelError, match="model='svm'"):
        lowlevel.fit(x, images, columns, model="svm")
    with pytest.raises(lowlevel.LowLevelError, match="columns"):
        lowlevel.fit(x, images, np.array([x.shape[1]]))


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


def test_impose_replaces_the_area_means_and_keeps_detail(world):
    _, images, target = world
    same = lowlevel.impose(images[:5], target[:5])  # the image's own means: nothing to change
    assert np.abs(same.astype(int) - images[:5]).max() <= 1
    out = lowlevel.impose(images[:5], np.full((5, 16, 16, 3), 0.25, np.float32))  # at full size: the target
    assert (out == 64).all()
    grey = np.full((5, 16, 16, 3), 0.5, np.float32)
    assert np.array_equal(lowlevel.impose(images[:5], grey, 0.0), images[:5])
    half = lowlevel.impose(images[:5].astype(np.float32), grey, 0.5)  # float in, float out: halfway to 127.5
    np.testing.assert_allclose(half, (images[:5] + 127.5) / 2, atol=1e-3)
    with pytest.raises(lowlevel.LowLevelError, match="strength=1.5"):
        lowlevel.impose(images[:5], grey, 1.5)
    with pytest.raises(lowlevel.LowLevelError, match=r"low \(4, 4, 4, 3\)"):
        lowlevel.impose(images[:5], target[:4])


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


def test_the_mlp_option_decodes_the_layout_and_its_maps_equal_explicit_perturbation(world, tmp_path):
    x, images, target = world
    cfg = MLPConfig(width=64, depth=1, epochs=25, batch_size=32, lr=5e-3, patience=0, seed=0)
    dec = lowlevel.fit(x[:300], images[:300], np.arange(48), size=4, model="mlp", mlp=cfg, device="cpu")
    assert dec.model == "mlp" and np.corrcoef(dec.predict(x[300:]).ravel(), target[300:].ravel())[0, 1] > 0.6
    back = lowlevel.LowLevelDecoder.load(dec.save(tmp_path / "low.pt"), device="cpu")
    np.testing.assert_allclose(back.predict(x[300:]), dec.predict(x[300:]), atol=1e-6)
    xs, rep = x[300:310], loo.replacement(x[:300], "mean", 10)
    maps = loo.lowlevel_effect_maps(dec, xs, rep, [7, 60])
    xv = xs.copy()
    xv[:, 7] = rep[:, 7]
    np.testing.assert_allclose(maps[0], np.abs(dec.predict(xv) - dec.predict(xs)).mean((0, 3)), atol=1e-5)
    assert (maps[1] == 0).all()
