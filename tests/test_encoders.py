"""Ridge encoder against scikit-learn; residual MLP training, resume and losses."""

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


# ---------------------------------------------------------------------------------------------------------------
# residual MLP

import torch  # noqa: E402

from lib.analysis import metrics  # noqa: E402
from lib.models.mlp import MLPConfig, MLPEncoder, ResidualMLP, mlp_loss, train_mlp  # noqa: E402


def _brain(n_img=120, reps=2, v=60, d=16, seed=0):
    """Images with latent features; voxels a noisy linear mix of them; targets a normalised projection."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_img, 8))
    y = z @ rng.normal(size=(8, d))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    mix = rng.normal(size=(8, v))
    ids = np.repeat(np.arange(n_img), reps)
    x = z[ids] @ mix + 0.5 * rng.normal(size=(len(ids), v))
    return x.astype(np.float32), y[ids].astype(np.float32), (z @ mix).astype(np.float32), y.astype(np.float32)


def test_mlp_shapes_and_bad_arguments():
    m = ResidualMLP(30, 8, width=16, depth=3, dropout=0.0, projector=True, proj_width=12)
    e, p = m(torch.zeros(5, 30))
    assert e.shape == p.shape == (5, 8)
    n_lin = sum(isinstance(x, torch.nn.Linear) for x in m.modules())
    assert n_lin == 1 + 3 + 1 + 2  # stem, blocks, head, projector
    with pytest.raises(EncoderError, match="dropout=1.5"):
        ResidualMLP(30, 8, dropout=1.5)
    with pytest.raises(EncoderError, match="loss weights"):
        MLPConfig(mse=0, softclip=0, bimixco=0).check()


def test_mlp_loss_regression_terms_by_hand():
    torch.manual_seed(0)
    m = ResidualMLP(6, 3, width=8, depth=1, dropout=0.0, projector=False)
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    cfg = MLPConfig(mse=2.0, cosine=0.5, softclip=0.0, bimixco=0.0, clip=0.0)
    loss, terms = mlp_loss(m, x, y, cfg, mix=False, rng=np.random.default_rng(0))
    e = m(x)[0].detach().numpy().astype(np.float64)
    yy = y.numpy().astype(np.float64)
    mse = np.mean([np.sum((e[i] - yy[i]) ** 2) for i in range(4)])
    cos = np.mean([1 - e[i] @ yy[i] / np.linalg.norm(e[i]) / np.linalg.norm(yy[i]) for i in range(4)])
    assert set(terms) == {"mse", "cosine"}
    np.testing.assert_allclose([terms["mse"], terms["cosine"]], [mse, cos], rtol=1e-5)
    np.testing.assert_allclose(float(loss.detach()), 2 * mse + 0.5 * cos, rtol=1e-5)


def test_mlp_learns_and_beats_chance():
    x, y, x_img, y_img = _brain()
    cfg = MLPConfig(width=64, depth=1, proj_width=32, epochs=30, batch_size=32, lr=3e-3, patience=0)
    enc, hist = train_mlp(x, y, cfg, x_img, y_img, device="cpu")
    ret = metrics.retrieval(enc.retrieval_space(x_img), y_img)
    assert ret["image"] > 10 * ret["chance"], ret
    terms = hist["terms"]
    assert "bimixco" in terms[0] and "softclip" not in terms[0]  # BiMixCo first, then SoftCLIP (MindEye)
    assert "softclip" in terms[-1] and "bimixco" not in terms[-1]
    assert sum("bimixco" in t for t in terms) == 10
    assert hist["loss"][-1] < hist["loss"][0]


def test_mlp_resume_equals_uninterrupted_and_save_load(tmp_path):
    x, y, x_img, y_img = _brain(n_img=60)
    cfg = MLPConfig(width=32, depth=1, proj_width=16, epochs=6, batch_size=20, lr=1e-3, patience=0)
    full, h_full = train_mlp(x, y, cfg, x_img, y_img, device="cpu")
    part, h_part = train_mlp(x, y, cfg, x_img, y_img, device="cpu", state_dir=tmp_path, stop_after=2)
    assert not h_part["done"] and len(h_part["loss"]) == 2
    again, h_again = train_mlp(x, y, cfg, x_img, y_img, device="cpu", state_dir=tmp_path)
    assert h_again["done"] and h_again["loss"] == h_full["loss"]
    np.testing.assert_array_equal(again.predict(x_img), full.predict(x_img))
    back = MLPEncoder.load(full.save(tmp_path / "mlp.pt"), device="cpu")
    np.testing.assert_array_equal(back.project(x_img), full.project(x_img))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(EncoderError, match="junk.pt"):
        MLPEncoder.load(tmp_path / "junk.pt")


def test_mlp_early_stopping_returns_best_epoch():
    x, y, x_img, y_img = _brain(n_img=60)
    cfg = MLPConfig(width=32, depth=1, proj_width=16, epochs=40, batch_size=20, lr=1e-2, patience=3)
    enc, hist = train_mlp(x, y, cfg, x_img, y_img, device="cpu")
    scores = hist["val_img_retrieval_top1"]
    best = int(np.argmax(scores))
    if hist["stopped_early"]:
        assert len(scores) == best + 1 + 3
    got = metrics.retrieval(enc.retrieval_space(x_img), y_img, draws=5, seed=cfg.seed)["image"]
    assert got == pytest.approx(scores[best])


# ---------------------------------------------------------------------------------------------------------------
# analyses: targets by id, layout, ROI comparison, forward model, ceiling data, predictions file

from lib.analysis import decoding  # noqa: E402
from lib.data import simulate  # noqa: E402


def test_rows_of_follows_ids_and_refuses_unknown():
    table = np.array([7, 3, 9])
    vals = np.array([[70.0], [30.0], [90.0]])
    np.testing.assert_array_equal(
        decoding.rows_of(table, vals, np.array([9, 3, 3, 7]))[:, 0], [90, 30, 30, 70]
    )
    with pytest.raises(EncoderError, match=r"\[5\]"):
        decoding.rows_of(table, vals, np.array([3, 5]))


def test_grey_layout_and_one_hot_by_hand():
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[0, :2, 2:] = 255  # top-right quarter white
    np.testing.assert_allclose(metrics.layout(img, 2, grey=True), [[0, 1, 0, 0]])
    oh, classes = decoding.one_hot(np.array(["b", "a", "b"]))
    assert classes == ["a", "b"] and oh.tolist() == [[0, 1], [1, 0], [0, 1]]
    with pytest.raises(ValueError, match="grid=5"):
        metrics.layout(img, 5)


def test_roi_comparison_finds_the_informative_group():
    rng = np.random.default_rng(0)
    n_tr, n_te, d = 300, 60, 8
    emb = rng.normal(size=(n_tr + n_te, d))
    labels = np.array(["p", "q", "r"])[rng.integers(0, 3, n_tr + n_te)]
    layout = rng.normal(size=(n_tr + n_te, 4))
    code = np.hstack([emb, decoding.one_hot(labels)[0] * 3, layout])  # what group "a" encodes
    x = np.hstack([code @ rng.normal(size=(code.shape[1], 40)), rng.normal(size=(n_tr + n_te, 40))])
    x += 0.3 * rng.normal(size=x.shape)
    cols = {"a": np.arange(40), "b": np.arange(40, 80)}
    res = decoding.roi_comparison(x[:n_tr], x[n_tr:], cols, (emb[:n_tr], emb[n_tr:]),
                                  (labels[:n_tr], labels[n_tr:]), (layout[:n_tr], layout[n_tr:]), device="cpu")  # fmt: skip
    assert res["a"]["img_retrieval_top1"] > 0.8 and res["b"]["img_retrieval_top1"] < 0.1
    assert res["a"]["category_accuracy"] > 0.9 and res["b"]["category_accuracy"] < 0.6
    assert res["a"]["layout_r"] > 0.8 and abs(res["b"]["layout_r"]) < 0.3
    assert res["a"]["n_voxels"] == 40
    again, per = decoding.roi_comparison(x[:n_tr], x[n_tr:], cols, (emb[:n_tr], emb[n_tr:]),
                                         (labels[:n_tr], labels[n_tr:]), (layout[:n_tr], layout[n_tr:]),
                                         device="cpu", per_image=True)  # fmt: skip
    assert again == res
    for g in cols:
        for m, v in per[g].items():
            assert v.shape == (n_te,) and v.mean() == pytest.approx(res[g][m], abs=1e-12)
    unc = decoding.uncertainty(per, [("a", "b")], resamples=500)
    iv, diff = unc["intervals"]["a"]["img_retrieval_top1"], unc["comparisons"]["a − b"]["img_retrieval_top1"]
    assert iv[0] <= res["a"]["img_retrieval_top1"] <= iv[1] and diff["low"] > 0 and diff["p"] < 0.01
    assert diff["diff"] == pytest.approx(res["a"]["img_retrieval_top1"] - res["b"]["img_retrieval_top1"])


def test_voxel_encoding_accuracy_equals_sklearn_per_voxel():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(1)
    f = rng.normal(size=(80, 5))
    x = f @ rng.normal(size=(5, 6)) + rng.normal(size=(80, 6)) * np.linspace(0.1, 5, 6)
    r = decoding.voxel_encoding_accuracy(f[:60], x[:60], f[60:], x[60:], alphas=[1.0], device="cpu")
    want = [np.corrcoef(Ridge(1.0).fit(f[:60], x[:60, j]).predict(f[60:]), x[60:, j])[0, 1] for j in range(6)]
    np.testing.assert_allclose(r, want, atol=1e-5)
    assert r[0] > r[-1]  # the least noisy voxel is encoded best


def test_noise_free_for_reads_the_ground_truth(tiny):
    from lib.data import prep

    data = prep.prepare(tiny, 1, "V1", progress=False)
    ids = data.test_ids[:4]
    got = simulate.noise_free_for(tiny, 1, data.voxel_ijk, ids)
    gt = simulate.load_ground_truth(tiny.ground_truth_path(1))
    for c, v in enumerate(data.voxel_ijk[:5]):
        k = int(np.flatnonzero((gt["ijk"] == v).all(1))[0])
        np.testing.assert_array_equal(got[:, c], gt["signal"][ids, k])


def test_fit_encoders_and_learning_curve():
    x, y, x_img, y_img = _brain(n_img=80, reps=2)
    ids = np.repeat(np.arange(80), 2)
    val = ids >= 70
    cfg = MLPConfig(width=16, depth=1, proj_width=8, epochs=2, batch_size=20, patience=0)
    ridge = {"alphas": [1.0, 10.0], "device": "cpu"}
    out = decoding.fit_encoders(x, {"image": y, "text": -y}, x_img, ridge, cfg, val, x_img[70:],
                                {"image": y_img[70:], "text": -y_img[70:]}, ("image",), device="cpu")  # fmt: skip
    assert set(out) == {"ridge_image", "ridge_text", "mlp_image"}
    direct = RidgeEncoder(**ridge).fit(x, -y)
    np.testing.assert_array_equal(out["ridge_text"][1], direct.predict(x_img))
    assert out["mlp_image"][2]["loss"] and out["ridge_image"][2] is None
    curve = decoding.ridge_learning_curve(x, y, ids, x_img, y_img, (0.1, 0.5, 1.0), ridge, seed=0)
    assert curve["n"] == [8, 40, 80] and curve["top1"][-1] >= curve["top1"][0]


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


def test_mlp_bad_validation_and_config_are_refused_before_training():
    x, y, x_img, y_img = _brain(n_img=30)
    cfg = MLPConfig(width=8, depth=1, proj_width=8, epochs=1, batch_size=10)
    with pytest.raises(EncoderError, match="x_val and y_val"):
        train_mlp(x, y, cfg, x_img, None, device="cpu")
    with pytest.raises(EncoderError, match=r"x_val \(30, 59\)"):
        train_mlp(x, y, cfg, x_img[:, :-1], y_img, device="cpu")
    for bad in ({"val_every": 0}, {"patience": -1}, {"pct_start": 0.0}, {"lr": -1.0}):
        with pytest.raises(EncoderError, match=next(iter(bad))):
            MLPConfig(**bad).check()


def test_summary_scores_regression_output_when_given():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(20, 16))
    proj = true + 0.3 * rng.normal(size=true.shape)  # a retrieval space that only approximates the target
    s = metrics.summary(proj, true, regression=true)
    plain = metrics.summary(proj, true)
    assert s["img_retrieval_top1"] == plain["img_retrieval_top1"] and s["two_way"] == plain["two_way"]
    assert s["cosine"] == pytest.approx(1.0) and s["pearson"] == pytest.approx(1.0) and plain["cosine"] < 0.99


def test_ridge_float32_refines_an_ill_conditioned_solve():
    # alpha 1 on this spectrum: condition ~7.6e3, float32 round-off x condition ~5e-4 > 1e-4, so the fit gets a
    # step of iterative refinement; unrefined, this dual solve is ~2e-5 off a float64 solution, refined ~2e-6
    x, y = _fmri_like(300, 700, 6)
    enc = RidgeEncoder(alphas=[1.0], dtype="float32", device="cpu").fit(x, y)
    ref = Ridge(alpha=1.0).fit(x.astype(np.float64), y.astype(np.float64))
    xt, _ = _fmri_like(50, 700, 6, seed=1)
    assert _rel(enc.predict(xt), ref.predict(xt.astype(np.float64))) < 1e-5


def test_cross_fitted_equals_explicit_fold_fits():
    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(30), 2)
    x = rng.normal(size=(60, 12))
    y = x @ rng.normal(size=(12, 4)) + 0.3 * rng.normal(size=(60, 4))
    got_ids, got = decoding.cross_fitted(
        x, y, ids, folds=3, seed=1, alphas=[2.0], dtype="float64", device="cpu"
    )
    np.testing.assert_array_equal(got_ids, np.arange(30))
    fold = np.random.default_rng(1).permutation(30) % 3
    for k in range(3):
        train = ~np.isin(ids, np.flatnonzero(fold == k))
        ref = Ridge(alpha=2.0).fit(x[train], y[train])
        for i in np.flatnonzero(fold == k):  # the held-out image's repeats, averaged
            want = ref.predict(x[ids == i].mean(0, keepdims=True))[0]
            np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-8)
