"""Bad input: one line naming what and where, and no partial cache left behind."""

import shutil

import pytest

from lib.data import prep
from lib.data.nsd import NSD, NSDError


@pytest.fixture
def damaged(tiny_root, tmp_path):
    """A copy of the tiny dataset whose session 2 of subject 1 is truncated."""
    root = tmp_path / "nsd"
    shutil.copytree(tiny_root, root)
    ds = NSD(root)
    path = ds.session_path(1, 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return ds, path


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_truncated_hdf5_names_the_file_and_leaves_no_cache(damaged, tmp_path):
    ds, path = damaged
    cache = tmp_path / "cache"
    with pytest.raises(NSDError) as e:
        prep.prepare_cached(ds, 1, "nsdgeneral", cache_dir=cache, progress=False)
    assert str(path) in one_line(e) and "HDF5" in str(e.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_request_errors_are_one_line(tiny, tmp_path):
    cases = [
        (lambda: NSD(tmp_path / "missing"), "missing: no such folder"),
        (lambda: tiny.betas(5), "subject 5: no betas_sessionNN files"),
        (lambda: tiny.betas(1, roi="V5"), "unknown ROI 'V5'"),
        (lambda: tiny.betas(1, sessions=[0, 4]), "sessions [0, 4] out of range (on disk: 1..3)"),
        (lambda: tiny.betas("subj10"), "subject='subj10'"),
        (lambda: tiny.images([10_000]), "image ids out of range"),
    ]
    for call, text in cases:
        with pytest.raises(NSDError) as e:
            call()
        assert text in one_line(e)


def test_non_finite_betas_name_the_session_file_and_the_voxel_count(tiny_root, tmp_path):
    import h5py
    import numpy as np

    root = tmp_path / "nsd"
    shutil.copytree(tiny_root, root)
    ds = NSD(root)
    path = ds.session_path(1, 2)
    with h5py.File(path, "r") as f:
        data = f["betas"][()].astype(np.float32)
    k, j, i = np.argwhere(ds.roi_mask(1, "nsdgeneral"))[[0, 5]].T[::-1]  # two nsdgeneral voxels (z, y, x)
    data[3, k[0], j[0], i[0]] = np.nan
    data[:, k[1], j[1], i[1]] = np.inf
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("betas", data=data)  # float betas, as some exports write them
    with pytest.raises(NSDError) as e:
        prep.prepare(ds, 1, progress=False)
    assert one_line(e) == (f"{path}: 2 of the {ds.roi_mask(1, 'nsdgeneral').sum()} voxels of 'nsdgeneral' hold NaN "
                           "or infinite betas; expected finite values")  # fmt: skip


def test_trainers_refuse_non_finite_inputs_and_a_one_step_warm_up_trains():
    import numpy as np

    from lib.models import gan
    from lib.models.mlp import MLPConfig, train_mlp
    from lib.models.ridge import EncoderError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 12)).astype(np.float32), rng.normal(size=(80, 4)).astype(np.float32)
    bad = x.copy()
    bad[3, 2], bad[7, 1] = np.nan, -np.inf
    cfg = MLPConfig(width=8, depth=1, proj_width=4, epochs=2, batch_size=16, pct_start=0.1, patience=0)
    with pytest.raises(EncoderError) as e:
        train_mlp(bad, y, cfg, device="cpu")
    assert one_line(e) == "x_train: 2 of 960 values are NaN or infinite; expected finite numbers"
    _, hist = train_mlp(x, y, cfg, device="cpu")  # 10 steps, a warm-up of one: OneCycleLR divided by zero
    assert hist["done"] and np.isfinite(hist["loss"]).all()
    feats = np.full((8, 4), np.nan, np.float32)
    with pytest.raises(gan.GANError, match=r"^features: 32 of 32 values are NaN or infinite"):
        gan.train_gan(np.zeros((8, 32, 32, 3), np.uint8), feats, gan.GANConfig(batch_size=4), None, "cpu")
