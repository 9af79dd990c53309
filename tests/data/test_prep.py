"""Per-session z-scoring, repeat averaging, the split, reliability, noise ceiling and the input-keyed cache."""

import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lib.data import prep
from lib.data.nsd import NSDError, noise_ceiling


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_zscore_sessions_matches_scipy_per_session():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (30, 5)).astype(np.float32)
    x[10:20, 2] = 7.0  # constant within session 2: becomes 0 there
    sess = np.repeat([1, 2, 3], 10)
    expected = np.concatenate([stats.zscore(x[sess == s], axis=0) for s in (1, 2, 3)])
    expected[10:20, 2] = 0
    got = prep.zscore_sessions(x.copy(), sess)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_average_repeats_matches_pandas_groupby():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 6, 40)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    means, uniq, counts = prep.average_repeats(x, ids)
    ref = pd.DataFrame(x).groupby(ids).mean()
    np.testing.assert_array_equal(uniq, ref.index.to_numpy())
    np.testing.assert_allclose(means, ref.to_numpy(), rtol=1e-5)
    np.testing.assert_array_equal(counts, np.bincount(ids)[uniq])


def test_split_half_reliability_matches_corrcoef():
    rng = np.random.default_rng(2)
    ids = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 4])
    x = rng.normal(size=(10, 4))
    got = prep.split_half_reliability(x, ids)
    a, b = x[[0, 1, 2, 3]], x[[4, 5, 6, 7]]  # first and second showing of images 0..3
    expected = [np.corrcoef(a[:, v], b[:, v])[0, 1] for v in range(4)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_noise_ceiling_closed_form():
    assert noise_ceiling(1.0, 3) == pytest.approx(75.0)
    assert noise_ceiling(0.0, 1) == 0.0
    # NSD's mix of 3-, 2- and 1-trial images: 1/n becomes (A/3 + B/2 + C/1) / (A + B + C)
    reps = np.array([3, 3, 2, 1])
    mix = (2 / 3 + 1 / 2 + 1) / 4
    assert noise_ceiling(0.5, reps) == pytest.approx(100 * 0.25 / (0.25 + mix))


def test_stimulus_split_is_the_split_of_prepare(tiny):
    train, test = prep.stimulus_split(tiny, 1)
    assert set(test) == set(tiny.shared_ids()) and not set(train) & set(test)
    assert set(train) | set(test) == set(np.unique(tiny.trial_images(1)))
    data = prep.prepare(tiny, 1, "V1-hV4", progress=False)
    np.testing.assert_array_equal(np.unique(data.train_ids), train)
    np.testing.assert_array_equal(data.test_ids, test)
    # a subset of sessions sees a subset of the images
    train1, test1 = prep.stimulus_split(tiny, 1, sessions=[1])
    assert set(train1) < set(train) and set(test1) <= set(test)


def test_check_prepared_catches_each_broken_split(tiny):
    data = prep.prepare(tiny, 1, "V1-hV4", progress=False)
    assert prep.describe(data)["n_test_images"] == len(tiny.shared_ids())
    prep.check_prepared(tiny, 1, data)  # the real split passes
    broken = [
        ("leaked", dict(train_ids=np.r_[data.test_ids[:1], data.train_ids[1:]])),
        (
            "non-finite",
            dict(x_train=np.where(np.arange(data.n_voxels) == 0, np.nan, data.x_train).astype(np.float32)),
        ),
        ("float32", dict(x_test=data.x_test.astype(np.float64))),
        ("3 times", dict(test_reps=np.r_[2, data.test_reps[1:]])),
        ("voxels", dict(x_test=data.x_test[:, :-1])),
    ]
    for match, change in broken:
        bad = prep.Prepared(**{**vars(data), **change})
        with pytest.raises(prep.PrepError, match=match):
            prep.check_prepared(tiny, 1, bad)
    not_shared = np.setdiff1d(np.unique(data.train_ids), data.test_ids)[:1]
    bad = prep.Prepared(**{**vars(data), "test_ids": np.r_[not_shared, data.test_ids[1:]]})
    with pytest.raises(prep.PrepError, match="leaked|not one of the shared"):
        prep.check_prepared(tiny, 1, bad)


def test_prepare_splits_on_shared_images(tiny):
    data = prep.prepare(tiny, 1, "V1-hV4", progress=False)
    shared = tiny.shared_ids()
    np.testing.assert_array_equal(data.test_ids, shared)
    assert (data.test_reps == 3).all()
    assert not np.isin(data.train_ids, shared).any()
    ids = tiny.trial_images(1)
    assert len(data.train_ids) == (~np.isin(ids, shared)).sum()
    # the test rows are the mean of the z-scored single trials, computed here independently
    raw = tiny.betas(1, "V1-hV4").astype(np.float64)
    sess = np.repeat(tiny.sessions(1), tiny.trials_per_session)
    for s in np.unique(sess):
        raw[sess == s] = stats.zscore(raw[sess == s], axis=0)
    i = shared[0]
    np.testing.assert_allclose(data.x_test[0], raw[ids == i].mean(0), atol=1e-5)
    avg = prep.prepare(tiny, 1, "V1-hV4", average_train=True, progress=False)
    assert len(avg.train_ids) == len(np.unique(data.train_ids))


def test_cache_is_keyed_by_every_input(tiny, tmp_path):
    d1, p1, hit1 = prep.prepare_cached(tiny, 1, "V1", cache_dir=tmp_path, progress=False)
    d2, p2, hit2 = prep.prepare_cached(tiny, 1, "V1", cache_dir=tmp_path, progress=False)
    assert (hit1, hit2) == (False, True) and p1 == p2
    np.testing.assert_array_equal(d1.x_train, d2.x_train)
    assert d2.meta["roi"] == "V1" and d2.meta["sessions"] == [1, 2, 3]
    _, p3, hit3 = prep.prepare_cached(tiny, 1, "V1", sessions=[1, 2], cache_dir=tmp_path, progress=False)
    _, p4, hit4 = prep.prepare_cached(tiny, 1, "V1", average_train=True, cache_dir=tmp_path, progress=False)
    assert not hit3 and not hit4 and len({p1, p3, p4}) == 3
    # changed label names (the ctab) and changed input files (new modification time) are new keys
    ctab = tiny.root / "nsddata/freesurfer/subj01/label/prf-visualrois.mgz.ctab"
    text = ctab.read_text()
    try:
        ctab.write_text(text.replace("V1v", "Vxx").replace("V2v", "V1v").replace("Vxx", "V2v"))
        tiny._roi_files.cache_clear()
        d6, p6, hit6 = prep.prepare_cached(tiny, 1, "V1", cache_dir=tmp_path, progress=False)
        assert not hit6 and p6 != p1 and d6.n_voxels == tiny.roi_mask(1, "V1").sum()
    finally:
        ctab.write_text(text)
        tiny._roi_files.cache_clear()
    session = tiny.session_path(1, 1)
    st = session.stat()
    os.utime(session, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        _, p5, hit5 = prep.prepare_cached(tiny, 1, "V1", cache_dir=tmp_path, progress=False)
        assert not hit5 and p5 != p1
    finally:
        os.utime(session, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_interrupted_cache_write_leaves_nothing(tiny, tmp_path, monkeypatch):
    def broken_savez(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_cached(tiny, 1, "V2", cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_prepared_round_trip_and_damaged_file(tiny, tmp_path):
    data = prep.prepare(tiny, 2, "hV4", progress=False)
    path = data.save(tmp_path / "p.npz")
    back = prep.Prepared.load(path)
    np.testing.assert_array_equal(back.x_test, data.x_test)
    assert back.meta == data.meta
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(NSDError, match="p.npz: not a prepared-data file"):
        prep.Prepared.load(path)


def test_missing_upstream_result_names_the_notebook(tmp_path, monkeypatch, tiny):
    from lib import paths

    monkeypatch.setattr(paths, "BUILD_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"made by notebooks/02_x.ipynb .*--profile quick --only 02"):
        paths.require(paths.results_dir("quick") / "encoder.pt", "02_x", "quick")
    with pytest.raises(FileNotFoundError, match=r"sessions \[1\].* made by notebooks/00_data_prep.ipynb"):
        prep.prepare_cached(tiny, 1, "V1", sessions=[1], cache_dir=tmp_path, compute=False)
    prep.prepare_cached(tiny, 1, "V1", sessions=[1], cache_dir=tmp_path, progress=False)
    assert prep.prepare_cached(tiny, 1, "V1", sessions=[1], cache_dir=tmp_path, compute=False)[2]


def test_single_trial_test_set_and_first_repeat(tiny):
    single = prep.prepare(tiny, 1, "nsdgeneral", average_test=False, progress=False)
    avg = prep.prepare(tiny, 1, "nsdgeneral", progress=False)
    assert (single.test_reps == 1).all() and len(single.test_ids) == avg.test_reps.sum()
    m, ids, _ = prep.average_repeats(single.x_test, single.test_ids)
    np.testing.assert_array_equal(ids, avg.test_ids)
    np.testing.assert_allclose(m, avg.x_test, atol=1e-6)
    x1, ids1 = prep.first_repeat(single.x_test, single.test_ids)
    np.testing.assert_array_equal(ids1, avg.test_ids)
    for k, i in enumerate(ids1):  # the earliest trial of that image
        np.testing.assert_array_equal(x1[k], single.x_test[np.flatnonzero(single.test_ids == i)[0]])


def test_group_columns_select_the_group_voxels(tiny):
    data = prep.prepare(tiny, 1, "nsdgeneral", progress=False)
    cols = prep.group_columns(tiny, 1, data.voxel_ijk, ["V1", "higher", "nsdgeneral", "floc-words"])
    assert len(cols["nsdgeneral"]) == data.n_voxels
    v1 = tiny.roi_mask(1, "V1")
    want = [k for k, (i, j, kk) in enumerate(data.voxel_ijk) if v1[i, j, kk]]
    np.testing.assert_array_equal(cols["V1"], want)
    assert not set(cols["V1"]) & set(cols["higher"])


def test_cache_key_treats_explicit_defaults_as_omitted(tiny):
    k = prep.cache_key(tiny, 1, "V1", None)
    assert prep.cache_key(tiny, 1, "V1", None, average_train=False, average_test=True) == k
    assert prep.cache_key(tiny, 1, "V1", None, average_test=False) != k
    with pytest.raises(ValueError, match="average_tset"):
        prep.cache_key(tiny, 1, "V1", None, average_tset=False)


def test_standardise_uses_training_statistics():
    rng = np.random.default_rng(0)
    tr, te = rng.normal(3, 2, (50, 4)), rng.normal(3, 2, (10, 4))
    tr[:, 2] = 7.0  # constant column
    a, b = prep.standardise(tr, te)
    np.testing.assert_allclose(a[:, :2], stats.zscore(tr[:, :2]), atol=1e-5)
    np.testing.assert_allclose(b[:, 0], (te[:, 0] - tr[:, 0].mean()) / tr[:, 0].std(), atol=1e-5)
    assert (a[:, 2] == 0).all() and (b[:, 2] == 0).all()


def test_example_and_held_out_draws_check_their_counts():
    # 5 test images, 3 distinct training images
    test_ids, train_ids = np.arange(5), np.repeat(np.arange(100, 103), 3)
    got = prep.example_ids(test_ids, train_ids, 6, np.random.default_rng(0))
    assert np.isin(got[:3], test_ids).all() and sorted(got[3:]) == [100, 101, 102]
    r = np.random.default_rng(1)  # the same draws as rng.choice on each pool
    want = np.concatenate(
        [r.choice(test_ids, 3, replace=False), r.choice(np.unique(train_ids), 3, replace=False)]
    )
    np.testing.assert_array_equal(prep.example_ids(test_ids, train_ids, 6, np.random.default_rng(1)), want)
    for n in (0, 7, 1000, -1, 2.5, True):  # 7 asks for 4 of the 3 training images
        with pytest.raises(
            prep.PrepError, match=rf"^n_example_images={n!r}: expected a whole number from 1 to 6 "
        ):
            prep.example_ids(test_ids, train_ids, n, np.random.default_rng(0))
    pool = np.unique(train_ids)
    assert set(prep.draw_ids(pool, 2, np.random.default_rng(0), "val_images", "held out", keep=1)) <= set(
        pool
    )
    with pytest.raises(
        prep.PrepError, match=r"^val_images=3: expected a whole number from 1 to 2 \(held out\)$"
    ):
        prep.draw_ids(pool, 3, np.random.default_rng(0), "val_images", "held out", keep=1)
