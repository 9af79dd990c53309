"""The decoding analyses (lib.analysis.decoding): rows by id, one-hot labels, the ROI comparison and its
uncertainty, per-voxel encoding accuracy, fitting the encoders, the learning curve, cross-fitting, the encoder
scores and retrieval, and the ROI targets on the tiny mini-NSD."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge

from lib import metrics
from lib.analysis import decoding
from lib.data import prep
from lib.models.mlp import MLPConfig
from lib.models.ridge import EncoderError, RidgeEncoder
from tests.conftest import _brain


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


def test_encoder_scores_and_retrieval_follow_the_metrics():
    rng = np.random.default_rng(2)
    y = {"image": rng.standard_normal((50, 8)).astype(np.float32)}
    x = np.hstack([y["image"], rng.standard_normal((50, 4))]).astype(np.float32)
    enc = RidgeEncoder(alphas=[1.0]).fit(x, y["image"])
    fitted = {"ridge_image": (enc, enc.predict(x), None)}
    ceiling = {"ridge_image": (enc, enc.predict(x) + 0.0, None)}
    table = decoding.encoder_scores(fitted, x, y, seed=0, ceiling=ceiling, x_clean=x)
    expected = metrics.summary(enc.predict(x), y["image"], seed=0)
    row = table["ridge_image"]
    assert row["img_retrieval_top1"] == expected["img_retrieval_top1"] and row["fraction_of_ceiling"] == 1.0
    pred = {"test_ids": np.arange(100, 150), "pred_ridge_image": enc.predict(x), "true_image": y["image"]}
    subset = np.array([140, 101, 120])
    ret = decoding.encoder_retrieval(pred, subset, ["ridge_image"], seed=0)["ridge_image"]
    assert ret == metrics.retrieval(enc.predict(x)[[40, 1, 20]], y["image"][[40, 1, 20]], seed=0)


def test_roi_targets_on_the_tiny_dataset(tiny):
    train, test = prep.stimulus_split(tiny, 1)
    vec = {
        "ids": np.r_[train, test],
        "image": np.random.default_rng(0).standard_normal((len(train) + len(test), 4)),
    }
    e, cat, lay, chance = decoding.roi_targets(tiny, train[:20], test, vec, 4)
    np.testing.assert_array_equal(e[1], vec["image"][len(train) :])
    assert lay[0].shape == (20, 16) and cat[1].shape == (len(test),)
    shapes = pd.Series(cat[1]).value_counts(normalize=True)
    assert chance["category_accuracy"] == pytest.approx(shapes.iloc[0]) and chance["layout_r"] == 0.0
    assert chance["img_retrieval_top1"] == 1 / min(300, len(test))


def test_roi_comparison_decodes_further_spaces_in_the_same_fit_without_changing_the_rest():
    rng = np.random.default_rng(1)
    n_tr, n_te, d = 300, 60, 8
    emb, other = rng.normal(size=(n_tr + n_te, d)), rng.normal(size=(n_tr + n_te, 5))
    labels = np.array(["p", "q"])[rng.integers(0, 2, n_tr + n_te)]
    layout = rng.normal(size=(n_tr + n_te, 4))
    # group "a" carries the embedding, group "b" the other space
    x = np.hstack([emb @ rng.normal(size=(d, 30)), other @ rng.normal(size=(5, 30))]) + 0.3 * rng.normal(
        size=(n_tr + n_te, 60)
    )
    cols = {"a": np.arange(30), "b": np.arange(30, 60)}
    args = (x[:n_tr], x[n_tr:], cols, (emb[:n_tr], emb[n_tr:]), (labels[:n_tr], labels[n_tr:]),
            (layout[:n_tr], layout[n_tr:]))  # fmt: skip
    plain = decoding.roi_comparison(*args, device="cpu")
    more = decoding.roi_comparison(*args, device="cpu", spaces={"other": (other[:n_tr], other[n_tr:])})
    for g in cols:  # alphas per target column: the other numbers are unchanged
        assert {k: v for k, v in more[g].items() if k != "other_retrieval_top1"} == pytest.approx(plain[g])
    assert more["b"]["other_retrieval_top1"] > 0.8 and more["a"]["other_retrieval_top1"] < 0.1


def test_spatial_targets_reads_position_from_the_space_that_holds_it():
    """Voxels carry a one-hot position code through noise; a target space that holds the position (its code, with
    a random projection) gives the probe the position back, a space of pure noise does not."""
    rng = np.random.default_rng(2)
    n_img, reps, n_te = 240, 2, 60
    pos = rng.integers(0, 9, n_img + n_te)
    onehot = np.eye(9)[pos]
    holds = onehot @ rng.normal(size=(9, 12)) + 0.1 * rng.normal(size=(n_img + n_te, 12))
    noise = rng.normal(size=(n_img + n_te, 12))
    x_all = onehot @ rng.normal(size=(9, 50)) + 0.5 * rng.normal(size=(n_img + n_te, 50))
    ids = np.repeat(np.arange(n_img), reps)
    x_train = x_all[ids] + 0.3 * rng.normal(size=(len(ids), 50))
    x_test = x_all[n_img:]
    targets = {"holds": (holds[ids], holds[n_img:]), "noise": (noise[ids], noise[n_img:])}
    out = decoding.spatial_targets(x_train, x_test, np.arange(50), targets, (pos[ids], pos[n_img:]), ids,
                                   device="cpu")  # fmt: skip
    assert out["holds"]["position_true"] > 0.9 and out["holds"]["position_accuracy"] > 0.7
    assert out["noise"]["position_true"] < 0.35 and out["holds"]["two_way"] > out["noise"]["two_way"]
    assert out["holds"]["dims"] == 12
    given = decoding.spatial_targets(x_train, x_test, np.arange(50), {"holds": targets["holds"]},
                                     (pos[ids], pos[n_img:]), ids, device="cpu",
                                     decoded={"holds": holds[n_img:]})  # fmt: skip
    assert given["holds"]["two_way"] == 1.0  # a prediction equal to its target identifies every image
