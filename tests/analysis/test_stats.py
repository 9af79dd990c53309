"""Bootstrap intervals and paired tests against closed forms and scipy, and the seed spread."""

import numpy as np
import pytest
from scipy import stats as sps

from lib.analysis import stats


@pytest.fixture(scope="module")
def normal():
    return np.random.default_rng(0).normal(0.6, 0.2, 400)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_the_interval_of_a_normal_mean_is_the_textbook_one(normal, method):
    iv = stats.bootstrap(normal, resamples=8000, method=method, seed=1)
    half = 1.959964 * normal.std(ddof=1) / np.sqrt(len(normal))  # mean +- z * s / sqrt(n)
    assert iv.estimate == pytest.approx(normal.mean())
    assert iv.low == pytest.approx(normal.mean() - half, abs=0.08 * half)
    assert iv.high == pytest.approx(normal.mean() + half, abs=0.08 * half)
    assert (iv.n, iv.resamples, iv.method, iv.level) == (400, 8000, method, 0.95)


@pytest.mark.parametrize(("method", "scipy_method"), [("percentile", "percentile"), ("bca", "BCa")])
def test_bounds_match_scipys_bootstrap_on_a_skewed_sample(method, scipy_method):
    x = np.random.default_rng(2).exponential(1.0, 120) ** 2  # skewed: BCa and percentile differ
    ours = stats.bootstrap(x, resamples=20_000, method=method, seed=3)
    ref = sps.bootstrap(
        (x,), np.mean, n_resamples=20_000, method=scipy_method, random_state=4
    ).confidence_interval
    width = ref.high - ref.low
    assert ours.low == pytest.approx(ref.low, abs=0.04 * width)
    assert ours.high == pytest.approx(ref.high, abs=0.04 * width)


def test_bca_of_another_statistic_uses_the_jackknife_as_scipy_does():
    x = np.random.default_rng(5).lognormal(0, 0.8, 60)
    ours = stats.bootstrap(x, resamples=3000, method="bca", seed=6, statistic=np.median)
    ref = sps.bootstrap((x,), np.median, n_resamples=3000, method="BCa", random_state=7).confidence_interval
    width = ref.high - ref.low
    assert ours.low == pytest.approx(ref.low, abs=0.15 * width)
    assert ours.high == pytest.approx(ref.high, abs=0.15 * width)


def test_percentile_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(8)
    found = [stats.bootstrap(rng.normal(1.0, 1.0, 60), resamples=500, seed=k) for k in range(200)]
    rate = np.mean([iv.low <= 1.0 <= iv.high for iv in found])
    assert 0.88 <= rate <= 0.99, rate  # 200 samples: 0.95 +- 0.03 (two standard errors)


def test_paired_difference_and_p_match_scipys_permutation_test():
    rng = np.random.default_rng(9)
    a = rng.normal(0.5, 0.2, 80)
    b = a - 0.04 + rng.normal(0, 0.15, 80)  # the same images, a small real difference
    out = stats.paired(a, b, resamples=5000, permutations=20_000, seed=10)
    ref = sps.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples", n_resamples=20_000,
                               vectorized=False, random_state=11)  # fmt: skip
    assert out["diff"] == pytest.approx(np.mean(a - b))
    assert out["p"] == pytest.approx(ref.pvalue, abs=0.01)
    half = 1.959964 * np.std(a - b, ddof=1) / np.sqrt(80)
    assert out["low"] == pytest.approx(out["diff"] - half, abs=0.1 * half)
    assert out["high"] == pytest.approx(out["diff"] + half, abs=0.1 * half)
    assert stats.differs(out) == (out["p"] < 0.05)  # with this sample the two views agree
    same = stats.paired(a, a.copy(), resamples=200)
    assert same["diff"] == 0 and same["p"] == 1.0 and not stats.differs(same)


def test_tables_of_per_image_scores_get_intervals_and_paired_comparisons():
    rng = np.random.default_rng(12)
    per = {"ridge": {"hit": rng.random(50) < 0.7, "r": rng.random(50)},
           "mlp": {"hit": rng.random(50) < 0.7, "r": rng.random(50)}, "x": {"hit": None}}  # fmt: skip
    iv = stats.intervals(per, resamples=300)
    assert (
        iv["x"]["hit"] is None and iv["ridge"]["hit"][0] < per["ridge"]["hit"].mean() < iv["ridge"]["hit"][1]
    )
    comp = stats.comparisons(per, [("mlp", "ridge"), ("mlp", "absent"), ("x", "ridge")], resamples=300)
    assert sorted(comp) == ["mlp − ridge", "x − ridge"] and comp["x − ridge"] == {}
    assert comp["mlp − ridge"]["r"]["diff"] == pytest.approx(
        per["mlp"]["r"].mean() - per["ridge"]["r"].mean()
    )


def test_seed_spread_is_the_sample_standard_deviation():
    tables = [{"mlp": {"top1": v, "name": "x"}} for v in (0.70, 0.75, 0.72)]
    s = stats.seed_spread(tables)["mlp"]
    assert "name" not in s and s["top1"]["sd"] == pytest.approx(np.std([0.70, 0.75, 0.72], ddof=1))
    assert s["top1"]["values"] == [0.70, 0.75, 0.72] and (s["top1"]["min"], s["top1"]["max"]) == (0.70, 0.75)
    assert stats.spread([0.5])["sd"] == 0.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.bootstrap([1.0, np.nan, 2.0]), "scores: 1 of 3 scores are NaN or infinite"),
        (lambda: stats.bootstrap([1.0]), "scores: shape (1,), expected per-image scores (N,) with N >= 2"),
        (lambda: stats.bootstrap([1.0, 2.0], resamples=10), "resamples=10: expected 100 or more"),
        (lambda: stats.bootstrap([1.0, 2.0], method="bc"), "method='bc': expected one of"),
        (lambda: stats.paired([1.0, 2.0], [1.0, 2.0, 3.0]), "paired scores of 2 and 3 images"),
    ],
)
def test_bad_scores_are_one_line_errors(call, message):
    with pytest.raises(stats.StatsError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_across_seeds_uses_the_first_table_given_and_describes_the_spread():
    calls = []

    def table_of(seed):
        calls.append(seed)
        return {"mlp": {"top1": 0.5 + seed / 100, "chance": 0.01}}

    out = stats.across_seeds(range(3, 6), table_of, first={"mlp": {"top1": 0.53, "chance": 0.01}})
    assert calls == [4, 5] and out["seeds"] == [3, 4, 5]
    assert (
        out["spread"]["mlp"]["top1"]["values"] == [0.53, 0.54, 0.55] and "chance" not in out["spread"]["mlp"]
    )
    assert "mlp: top1 0.540 ± 0.010" in stats.describe_spread(out)
    comp = {"a − b": {"x": {"diff": 0.1, "low": 0.02, "high": 0.2, "p": 0.01}}}
    assert stats.describe_comparisons(comp) == "a − b: x +0.100 [+0.020, +0.200] p=0.01 *"
    with pytest.raises(stats.StatsError, match="at least one seed"):
        stats.across_seeds([], table_of)
