"""The spatial pathway (lib.models.lowlevel): targets against scikit-image, the ridge and MLP decoders against a
known linear world (the MLP's effect maps against explicit perturbation), and imposing a layout."""

import numpy as np
import pytest

from lib.analysis import loo
from lib.models import lowlevel
from lib.models.mlp import MLPConfig


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
