"""Metrics (lib.metrics) on cases with known answers, and the k-NN and linear probes against scikit-learn."""

import numpy as np
import pytest

from lib import metrics


def test_retrieval_identity_is_perfect_and_shuffled_is_chance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 32))
    r = metrics.retrieval(x, x, n=300, draws=30)
    assert r["image"] == r["brain"] == 1.0 and r["chance"] == 1 / 300
    shuffled = metrics.retrieval(x[rng.permutation(400)], x, n=300, draws=30)
    assert shuffled["image"] < 0.02 and shuffled["brain"] < 0.02  # 1/300 expected, a few hits allowed


def test_retrieval_by_hand_and_directions():
    # brain 0 and 1 both point at image 0: image retrieval 1 of 2 right; image 0 finds brain 0 (closer),
    # image 1 finds brain 1 only if it is the most similar to it
    brain = np.array([[1.0, 0.0], [0.9, 0.1]])
    image = np.array([[1.0, 0.0], [0.0, 1.0]])
    r = metrics.retrieval(brain, image, n=300)
    assert r["n"] == 2 and r["image"] == 0.5 and r["brain"] == 1.0


def test_two_way_identification_by_hand():
    true = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert metrics.two_way_identification(true, true) == 1.0
    pred = true[[1, 0, 2]]  # first two swapped: each scores 0 of 2 against... (r with own < r with other)
    # pred 0 = true 1: r(pred0, true0) = -0.5 < r(pred0, true1) = 1, = r(pred0, true2) = -0.5 -> 0 of 2 below
    # pred 2 = true 2: both others below -> 1
    assert metrics.two_way_identification(pred, true) == pytest.approx((0 + 0 + 1) / 3)
    rng = np.random.default_rng(1)  # unrelated features: 0.5 on average over draws
    draws = [
        metrics.two_way_identification(rng.normal(size=(200, 50)), rng.normal(size=(200, 50)))
        for _ in range(8)
    ]
    assert abs(np.mean(draws) - 0.5) < 0.03


def test_per_sample_and_per_column_scores_match_numpy():
    rng = np.random.default_rng(2)
    p, t = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    cos = [p[i] @ t[i] / np.linalg.norm(p[i]) / np.linalg.norm(t[i]) for i in range(7)]
    np.testing.assert_allclose(metrics.cosine_per_sample(p, t), cos)
    np.testing.assert_allclose(
        metrics.pearson_per_sample(p, t), [np.corrcoef(p[i], t[i])[0, 1] for i in range(7)]
    )
    np.testing.assert_allclose(
        metrics.pearson_per_column(p, t), [np.corrcoef(p[:, j], t[:, j])[0, 1] for j in range(5)]
    )
    with pytest.raises(ValueError, match="must be equal"):
        metrics.cosine_per_sample(p, t[:3])


def test_pixcorr_equals_numpy_correlation_and_ssim_equals_scikit_image():
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    want = [np.corrcoef(a[i].ravel() / 255, b[i].ravel() / 255)[0, 1] for i in range(3)]
    np.testing.assert_allclose(metrics.pixcorr_per_image(a, b, size=40), want, rtol=1e-6)
    assert metrics.pixcorr(a, a, size=40) == pytest.approx(1.0)
    ref = [structural_similarity(rgb2gray(a[i] / 255), rgb2gray(b[i] / 255), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0) for i in range(3)]  # fmt: skip
    np.testing.assert_allclose(metrics.ssim_per_image(a, b, size=40), ref, rtol=1e-5)
    assert metrics.ssim(a, a, size=40) == pytest.approx(1.0)
    assert metrics.ssim(a[:2], b[:2]) < 1  # resized to 425 by default
    both = metrics.low_level_per_image({"b": b, "a": a}, a, size=40, chunk=2)  # chunks of 2, the last of 1
    np.testing.assert_allclose(both["b"]["SSIM"], ref, rtol=1e-5)
    np.testing.assert_allclose(both["b"]["PixCorr"], want, rtol=1e-6)
    np.testing.assert_allclose(both["a"]["SSIM"], 1, rtol=1e-6)
    with pytest.raises(ValueError, match=r"b \(2\) and targets \(3\): expected the same number"):
        metrics.low_level_per_image({"a": a, "b": b[:2]}, a)
    with pytest.raises(ValueError, match="uint8"):
        metrics.pixcorr(a.astype(float), b)


def test_paired_top1_and_topk_against_a_loop():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 5)) * rng.uniform(0.5, 3, (30, 1))  # unequal norms: similarity is the cosine
    b = a + rng.normal(scale=1.2, size=a.shape)
    cos = lambda u, v: u @ v / np.linalg.norm(u) / np.linalg.norm(v)  # noqa: E731
    i2t = np.mean([np.argmax([cos(a[i], b[j]) for j in range(30)]) == i for i in range(30)])
    t2i = np.mean([np.argmax([cos(b[j], a[i]) for i in range(30)]) == j for j in range(30)])
    assert metrics.paired_top1(a, b) == pytest.approx((i2t, t2i))
    top5 = np.mean([i in np.argsort([-cos(a[i], b[j]) for j in range(30)])[:5] for i in range(30)])
    assert metrics.topk(a, b, np.arange(30), k=5) == pytest.approx(top5)
    # retrieval among all of them is the paired top-1
    r = metrics.retrieval(a, b, n=300)
    assert (r["image"], r["brain"]) == pytest.approx((i2t, t2i))
    with pytest.raises(ValueError, match="one truth per query"):
        metrics.topk(a, b, np.arange(5))


def test_per_sample_scores_average_to_the_metrics_and_match_a_loop():
    rng = np.random.default_rng(4)
    true = rng.normal(size=(40, 8))
    pred = true + rng.normal(scale=1.5, size=true.shape)
    per = metrics.summary_per_sample(pred, true)
    whole = metrics.summary(pred, true)
    for k in ("img_retrieval_top1", "brain_retrieval_top1", "two_way", "cosine", "pearson"):
        assert per[k].shape == (40,) and per[k].mean() == pytest.approx(whole[k], abs=1e-12)
    cos = (pred / np.linalg.norm(pred, axis=1, keepdims=True)) @ (
        true / np.linalg.norm(true, axis=1)[:, None]
    ).T
    np.testing.assert_array_equal(per["img_retrieval_top1"], cos.argmax(1) == np.arange(40))
    np.testing.assert_array_equal(per["brain_retrieval_top1"], cos.argmax(0) == np.arange(40))
    r = np.corrcoef(pred, true)[:40, 40:]
    loop = [np.mean([r[i, j] < r[i, i] for j in range(40) if j != i]) for i in range(40)]
    np.testing.assert_allclose(per["two_way"], loop)
    i2t, t2i = metrics.paired_top1_per_sample(pred, true)
    assert (i2t.mean(), t2i.mean()) == metrics.paired_top1(pred, true)


def test_retrieval_among_fewer_than_all_weights_each_row_by_its_draws():
    rng = np.random.default_rng(5)
    true = rng.normal(size=(50, 6))
    pred = true + rng.normal(scale=1.0, size=true.shape)
    per = metrics.retrieval_per_sample(pred, true, n=20, draws=40, seed=2)
    # the same draws by hand: which rows each draw held, and whether each was found
    draw = np.random.default_rng(2)
    hits, seen = np.zeros(50), np.zeros(50)
    for _ in range(40):
        idx = draw.choice(50, 20, replace=False)
        u = pred[idx] / np.linalg.norm(pred[idx], axis=1, keepdims=True)
        v = true[idx] / np.linalg.norm(true[idx], axis=1, keepdims=True)
        hits[idx] += (u @ v.T).argmax(1) == np.arange(20)
        seen[idx] += 1
    np.testing.assert_allclose(per["image"], hits / np.maximum(seen, 1))
    total = metrics.retrieval(pred, true, n=20, draws=40, seed=2)["image"]
    assert np.sum(per["image"] * seen) / (40 * 20) == pytest.approx(total)


def test_summary_scores_regression_output_when_given():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(20, 16))
    proj = true + 0.3 * rng.normal(size=true.shape)  # a retrieval space that only approximates the target
    s = metrics.summary(proj, true, regression=true)
    plain = metrics.summary(proj, true)
    assert s["img_retrieval_top1"] == plain["img_retrieval_top1"] and s["two_way"] == plain["two_way"]
    assert s["cosine"] == pytest.approx(1.0) and s["pearson"] == pytest.approx(1.0) and plain["cosine"] < 0.99


def test_knn_predict_matches_scikit_learn():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(3)
    train, test = rng.normal(size=(200, 6)), rng.normal(size=(50, 6))
    labels = np.array(list("abcd"))[rng.integers(4, size=200)]
    labels[train[:, 0] > 0.5] = "e"  # some structure
    T = 0.07
    ref = KNeighborsClassifier(n_neighbors=20, metric="cosine", weights=lambda d: np.exp((1 - d) / T))
    want = ref.fit(train, labels).predict(test)
    assert (metrics.knn_predict(train, labels, test, k=20, temperature=T) == want).all()


def test_probes_find_a_linearly_coded_attribute_and_not_a_random_one():
    import pandas as pd

    rng = np.random.default_rng(4)
    f = rng.normal(size=(400, 10))
    table = pd.DataFrame({"coded": np.where(f[:, 3] > 0, "yes", "no"), "random": rng.integers(3, size=400)})
    tr, te = slice(0, 300), slice(300, 400)
    lin = metrics.linear_probe_accuracy(f[tr], f[te], table[tr], table[te])
    assert lin["coded"] > 0.9 and lin["random"] < 0.55
    knn = metrics.knn_accuracy(f[tr], f[te], table[tr], table[te], k=10)
    assert knn["random"] < 0.55
