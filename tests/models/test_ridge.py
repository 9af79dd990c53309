"""The ridge encoder (lib.models.ridge) against scikit-learn: the chosen alpha, leave-one-out, k-fold and
leave-one-group-out errors, float32 on hard spectra, save and load, and bad parameters."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV

from lib.models.ridge import EncoderError, RidgeEncoder


def _data(n, p, t, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) + rng.normal(size=p)  # non-zero column means exercise the intercept
    w = rng.normal(size=(p, t)) / np.sqrt(p)
    y = x @ w + noise * rng.normal(size=(n, t)) + 3.0
    return x, y


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("n,p", [(80, 30), (40, 90)])  # primal (more trials) and dual (more voxels)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ridge_matches_sklearn_ridge_at_chosen_alpha(n, p, dtype):
    x, y = _data(n, p, 5)
    alphas = np.logspace(-2, 4, 13)
    enc = RidgeEncoder(alphas=alphas, dtype=dtype, device="cpu").fit(x, y)
    ref = Ridge(alpha=enc.alpha_).fit(x, y)
    xt, _ = _data(20, p, 5, seed=1)
    assert _rel(enc.predict(xt), ref.predict(xt)) < (1e-8 if dtype == "float64" else 1e-4)
    assert _rel(enc.coef_, ref.coef_) < (1e-8 if dtype == "float64" else 1e-4)


@pytest.mark.parametrize("n,p", [(80, 30), (40, 90)])
@pytest.mark.parametrize("per_target", [False, True])
def test_ridge_loo_picks_sklearn_ridgecv_alpha(n, p, per_target):
    x, y = _data(n, p, 4, noise=2.0)
    alphas = np.logspace(-2, 4, 25)
    enc = RidgeEncoder(alphas=alphas, alpha_per_target=per_target, dtype="float64", device="cpu").fit(x, y)
    ref = RidgeCV(alphas=alphas, alpha_per_target=per_target).fit(x, y)  # sklearn's efficient LOO
    np.testing.assert_allclose(enc.alpha_, ref.alpha_)
    assert _rel(enc.predict(x), ref.predict(x)) < 1e-8


def test_ridge_loo_errors_equal_explicit_leave_one_out():
    x, y = _data(25, 8, 2)
    alphas = [0.3, 30.0]
    enc = RidgeEncoder(alphas=alphas, dtype="float64", device="cpu").fit(x, y)
    for a, alpha in enumerate(alphas):
        res = [y[i] - Ridge(alpha=alpha).fit(np.delete(x, i, 0), np.delete(y, i, 0)).predict(x[i : i + 1])[0]
               for i in range(len(x))]  # fmt: skip
        np.testing.assert_allclose(enc.cv_mse_[a], (np.array(res) ** 2).mean(0), rtol=1e-9)


@pytest.mark.parametrize("p", [12, 50, 90])  # primal folds, dual folds with a primal refit, dual
def test_ridge_kfold_with_groups_equals_explicit_folds(p):
    x, y = _data(60, p, 3)
    groups = np.repeat(np.arange(20), 3)  # three repeats of each "image" stay in one fold
    alphas = [0.1, 10.0, 1000.0]
    enc = RidgeEncoder(alphas=alphas, cv=4, dtype="float64", device="cpu").fit(x, y, groups=groups)
    from sklearn.model_selection import GroupKFold

    want = np.zeros((3, 3))
    for tr, te in GroupKFold(4).split(x, groups=groups):
        for a, alpha in enumerate(alphas):
            want[a] += ((y[te] - Ridge(alpha=alpha).fit(x[tr], y[tr]).predict(x[te])) ** 2).sum(0)
    np.testing.assert_allclose(enc.cv_mse_, want / len(x), rtol=1e-9)
    assert enc.alpha_ == alphas[int(np.argmin(want.mean(1)))]


def test_ridge_one_target_no_intercept_and_chunks():
    x, y = _data(50, 10, 1)
    enc = RidgeEncoder(alphas=[5.0], fit_intercept=False, dtype="float64", device="cpu", chunk_size=7)
    enc.fit(x, y[:, 0])
    ref = Ridge(alpha=5.0, fit_intercept=False).fit(x, y[:, 0])
    assert enc.predict(x).shape == (50,) and _rel(enc.predict(x), ref.predict(x)) < 1e-10
    assert enc.intercept_ == 0


def test_ridge_save_load_roundtrip(tmp_path):
    x, y = _data(40, 10, 3)
    enc = RidgeEncoder(alphas=np.array([1.0, 100.0]), alpha_per_target=True, cv=np.int64(3), device="cpu")
    enc.fit(x, y)
    back = RidgeEncoder.load(enc.save(tmp_path / "r.npz"))
    np.testing.assert_array_equal(back.predict(x), enc.predict(x))
    np.testing.assert_array_equal(back.alpha_, enc.alpha_)
    assert back.get_params() == enc.get_params() | {"alphas": (1.0, 100.0), "cv": 3}
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(EncoderError, match="bad.npz"):
        RidgeEncoder.load(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"alphas": [-1.0]}, "alphas"),
        ({"alphas": "abc"}, "alphas"),
        ({"cv": 1}, "cv=1"),
        ({"dtype": "float16"}, "dtype"),
        ({"chunk_size": 0}, "chunk_size=0"),
        ({"chunk_size": -5}, "chunk_size=-5"),
    ],
)
def test_ridge_bad_parameters(kwargs, match):
    x, y = _data(20, 4, 2)
    with pytest.raises(EncoderError, match=match):
        RidgeEncoder(device="cpu", **kwargs).fit(x, y)
    with pytest.raises(EncoderError, match="expected"):
        RidgeEncoder(device="cpu").fit(x, y[:5])


def _fmri_like(n, p, t, seed=0):
    """Low-rank signal plus noise with a clustered spectrum, z-scored: where float32 eigenvectors go wrong."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 50))
    x = z @ rng.normal(size=(50, p)) + 3 * rng.normal(size=(n, p))
    x = (x - x.mean(0)) / x.std(0)
    y = z @ rng.normal(size=(50, t)) + rng.normal(size=(n, t))
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("n,p", [(900, 400), (300, 700)])
def test_ridge_float32_on_a_clustered_spectrum_matches_sklearn(n, p):
    x, y = _fmri_like(n, p, 6)
    enc = RidgeEncoder(alphas=np.logspace(0, 5, 11), dtype="float32", device="cpu").fit(x, y)
    ref = Ridge(alpha=enc.alpha_).fit(x.astype(np.float64), y.astype(np.float64))
    xt, _ = _fmri_like(50, p, 6, seed=1)
    assert _rel(enc.predict(xt), ref.predict(xt.astype(np.float64))) < 1e-4


@pytest.mark.parametrize("n,p", [(60, 12), (45, 80)])  # primal and dual
def test_ridge_leave_one_group_out_equals_explicit_refits(n, p):
    x, y = _data(n, p, 3)
    groups = np.random.default_rng(5).integers(0, n // 2, n)  # groups of 1..several rows, in any order
    alphas = [0.5, 20.0, 800.0]
    enc = RidgeEncoder(alphas=alphas, dtype="float64", device="cpu", chunk_size=7).fit(x, y, groups=groups)
    want = np.zeros((3, 3))
    for g in np.unique(groups):
        out = groups == g
        for a, alpha in enumerate(alphas):
            want[a] += ((y[out] - Ridge(alpha=alpha).fit(x[~out], y[~out]).predict(x[out])) ** 2).sum(0)
    np.testing.assert_allclose(enc.cv_mse_, want / n, rtol=1e-8)


def test_ridge_dual_loo_equals_explicit_leave_one_out():
    x, y = _data(20, 35, 2)
    enc = RidgeEncoder(alphas=[3.0], dtype="float64", device="cpu", chunk_size=6).fit(x, y)
    res = [y[i] - Ridge(alpha=3.0).fit(np.delete(x, i, 0), np.delete(y, i, 0)).predict(x[i : i + 1])[0]
           for i in range(len(x))]  # fmt: skip
    np.testing.assert_allclose(enc.cv_mse_[0], (np.array(res) ** 2).mean(0), rtol=1e-9)


def test_ridge_float32_refines_an_ill_conditioned_solve():
    # alpha 1 on this spectrum: condition ~7.6e3, float32 round-off x condition ~5e-4 > 1e-4, so the fit gets a
    # step of iterative refinement; unrefined, this dual solve is ~2e-5 off a float64 solution, refined ~2e-6
    x, y = _fmri_like(300, 700, 6)
    enc = RidgeEncoder(alphas=[1.0], dtype="float32", device="cpu").fit(x, y)
    ref = Ridge(alpha=1.0).fit(x.astype(np.float64), y.astype(np.float64))
    xt, _ = _fmri_like(50, 700, 6, seed=1)
    assert _rel(enc.predict(xt), ref.predict(xt.astype(np.float64))) < 1e-5
