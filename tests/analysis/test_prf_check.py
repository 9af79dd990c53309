"""The pRF comparison statistics (lib.analysis.prf_check): a perfect match and a permuted one, hand
computations, and the voxels without a usable pRF or effect centre."""

import json

import numpy as np
import pytest
from scipy import stats

from lib.analysis import prf_check
from lib.data import prf


def _random_prfs(n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 360, n), rng.uniform(0.2, 4.0, n)


def test_a_perfect_match_and_a_permuted_one():
    angle, ecc = _random_prfs(200, 0)
    centres = prf.prf_to_pixels(angle, ecc, 64)
    out = prf_check.compare(centres, angle, ecc, 64, n_perm=500, seed=1)
    assert out["angle_error_deg"] == pytest.approx(0, abs=1e-9)
    assert out["distance_deg"] == pytest.approx(0, abs=1e-9) and out["distance_ratio"] == pytest.approx(
        0, abs=1e-9
    )
    assert out["hemifield_agreement"] == 1 and out["ecc_r"] == pytest.approx(1)
    for stem in ("angle_error", "ecc_r", "distance", "hemifield_agreement"):
        assert out[f"{stem}_p"] == pytest.approx(1 / 501)
    assert out["n_used"] == 200 and out["n_nan_prf"] == 0 and out["n_perm"] == 500
    # a random pairing: the null of the same data; ratios near 1, p not small
    perm = np.random.default_rng(2).permutation(200)
    shuf = prf_check.compare(centres, angle[perm], ecc[perm], 64, n_perm=500, seed=1)
    assert 0.8 < shuf["distance_ratio"] < 1.2 and 0.8 < shuf["angle_error_ratio"] < 1.2
    assert 0.35 < shuf["hemifield_agreement"] < 0.65 and abs(shuf["ecc_r"]) < 0.2
    assert min(shuf[f"{s}_p"] for s in ("angle_error", "distance", "ecc_r", "hemifield_agreement")) > 0.01
    # independent of the implementation: random angles give a median wrapped error near 90 degrees
    assert shuf["angle_error_null_median"] == pytest.approx(90, abs=12)
    assert shuf == prf_check.compare(centres, angle[perm], ecc[perm], 64, n_perm=500, seed=1)  # seeded


def test_statistics_equal_hand_computations_and_nan_voxels_are_counted():
    rng = np.random.default_rng(3)
    angle, ecc = _random_prfs(60, 4)
    w = 80
    centres = prf.prf_to_pixels(angle, ecc, w) + rng.normal(0, 6, (60, 2))  # noisy effect centres
    angle[:3], ecc[3] = np.nan, np.nan  # no usable pRF
    ecc[4], angle[4] = 0.0, np.nan  # eccentricity 0: a valid centre without an angle
    centres[5] = np.nan
    out = prf_check.compare(centres, angle, ecc, w, n_perm=200, seed=0)
    use = np.ones(60, bool)
    use[[0, 1, 2, 3, 5]] = False
    assert (out["n_voxels"], out["n_used"], out["n_nan_prf"], out["n_nan_effect"]) == (60, 55, 4, 1)
    c = centres[use]
    ex = (c[:, 0] / w - 0.5) * 8.4
    ey = (0.5 - c[:, 1] / w) * 8.4
    px = np.nan_to_num(ecc[use] * np.cos(np.deg2rad(angle[use])))
    py = np.nan_to_num(ecc[use] * np.sin(np.deg2rad(angle[use])))
    assert out["distance_deg"] == pytest.approx(np.median(np.hypot(ex - px, ey - py)))
    assert out["ecc_r"] == pytest.approx(stats.pearsonr(np.hypot(ex, ey), ecc[use]).statistic)
    assert out["hemifield_agreement"] == pytest.approx(np.mean(np.sign(ex) == np.sign(px)))
    d = np.abs(np.degrees(np.arctan2(ey, ex)) - angle[use]) % 360
    d = np.minimum(d, 360 - d)
    assert out["angle_error_deg"] == pytest.approx(np.nanmedian(d)) and out["n_angle"] == 54
    assert out["distance_ratio"] == pytest.approx(out["distance_deg"] / out["distance_null_median"])
    assert out["distance_p"] < 0.05 and out["distance_ratio"] < 0.6
    assert json.loads(json.dumps(out)) == out  # plain numbers
