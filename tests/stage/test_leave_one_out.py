"""Notebook 04's steps (lib.stage.leave_one_out) against the computations they wrap, done by hand on tiny data; the
results object against the type the report reads; the analysis sizes (profile section ``loo``) and bad arguments."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
from scipy import stats

from lib.analysis import loo
from lib.data import prep, simulate
from lib.models.ridge import RidgeEncoder
from lib.report import results
from lib.stage import leave_one_out as steps
from lib.stage import profile as profiles

CPU = types.SimpleNamespace(device="cpu", seed=0)


@pytest.fixture(scope="module")
def inputs(tiny) -> steps.Inputs:
    """The tiny mini-NSD's prepared voxels read by a ridge encoder of a random 6-d target, with the truth."""
    data, _, _ = prep.prepare_cached(tiny, 1, "nsdgeneral", progress=False)
    rng = np.random.default_rng(0)
    y = (data.x_train @ rng.standard_normal((data.x_train.shape[1], 6))).astype(np.float32)
    enc = RidgeEncoder(alphas=[1.0], device="cpu").fit(data.x_train, y)
    n = len(data.x_test)
    truth = simulate.voxel_truth(tiny, 1, data.voxel_ijk)
    ids = np.unique(np.r_[data.train_ids, data.test_ids])
    vec = {"ids": ids, "image": rng.standard_normal((len(ids), 6)).astype(np.float32)}
    size = tiny.images(data.test_ids[:1]).shape[1]
    return steps.Inputs(
        1,
        "nsdgeneral",
        "ridge_image",
        "generator_tuned",
        "noise",
        data,
        enc,
        None,
        0.25,
        vec,
        n,
        data.x_test,
        loo.replacement(data.x_train, "noise", n, seed=1),
        data.test_ids,
        size,
        truth,
        None,
        truth["prf_xy"],
        truth["area"],
    )


def _cos_change(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p, q = p.astype(np.float64), q.astype(np.float64)
    return 1 - (p * q).sum(-1) / np.linalg.norm(p, axis=-1) / np.linalg.norm(q, axis=-1)


def test_the_sweep_is_the_mean_cosine_change_of_each_voxel_left_out_by_hand(inputs):
    sweep = steps.voxel_sweep(inputs, device="cpu")
    x, r, enc = inputs.x, inputs.x_rep, inputs.encoder
    p = enc.predict(x)
    for v in (0, 3, x.shape[1] - 1):
        xv = x.copy()
        xv[:, v] = r[:, v]
        assert sweep.importance[v] == pytest.approx(
            _cos_change(p, enc.predict(xv)).mean(), rel=1e-3, abs=1e-7
        )
    assert sweep.seconds >= 0 and sweep.importance.shape == (x.shape[1],)


def test_saliency_agrees_exactly_with_leave_one_out_for_a_linear_encoder(inputs):
    sweep = steps.voxel_sweep(inputs, device="cpu")
    sal = steps.saliency_agreement(CPU, inputs, sweep=sweep, cfg=loo.LooConfig(saliency_samples=5))
    np.testing.assert_allclose(sal.saliency, sal.loo, rtol=1e-3, atol=1e-7)
    assert sal.rho == pytest.approx(1.0, abs=1e-6)


def test_roi_groups_replace_all_their_voxels_at_once_and_split_early_from_higher(tiny, inputs):
    st = types.SimpleNamespace(ds=tiny, subject=1, device="cpu")
    importance = np.arange(inputs.x.shape[1], dtype=np.float64)
    groups = steps.roi_group_effects(
        st, inputs, importance=importance, roi_groups=["V1", "ventral", "nowhere"]
    )
    assert set(groups.mean) == {"V1", "ventral"}  # a group the subject lacks is left out
    x, r, enc = inputs.x, inputs.x_rep, inputs.encoder
    for g, cols in groups.columns.items():
        xg = x.copy()
        xg[:, cols] = r[:, cols]
        assert groups.mean[g] == pytest.approx(_cos_change(enc.predict(x), enc.predict(xg)).mean(), rel=1e-3)
        assert groups.voxel_mean[g] == pytest.approx(importance[cols].mean())
        assert groups.n_voxels[g] == len(cols)
    np.testing.assert_array_equal(groups.early, np.flatnonzero(inputs.area == "early"))
    np.testing.assert_array_equal(groups.higher, np.flatnonzero(np.isin(inputs.area, steps.HIGHER_AREAS)))


def _peaked(inputs: steps.Inputs, voxels: np.ndarray, r: int) -> np.ndarray:
    """One map per voxel, zero but for the pixel holding its pRF centre (on an r-pixel raster)."""
    maps = np.zeros((inputs.x.shape[1], r, r), np.float32)
    px = np.clip((inputs.prf[voxels] * r / inputs.size).astype(int), 0, r - 1)
    maps[voxels, px[:, 1], px[:, 0]] = 1.0
    return maps


def test_the_spatial_prf_check_finds_maps_peaked_at_the_prf(inputs):
    inside = np.flatnonzero(loo.in_stimulus(inputs.prf, inputs.size))
    voxels = inside[:12]
    maps = _peaked(inputs, voxels, 8)
    spatial = steps.Spatial(None, maps, maps.mean((1, 2)), voxels, None)
    columns = {"V1": voxels[:6], "V2": voxels[6:], "ventral": voxels}
    cfg = loo.LooConfig(centre_quantile=0.0)
    out = steps.spatial_prf_check(inputs, spatial=spatial, columns=columns, cfg=cfg, seed=0)
    # a peak at the pRF's pixel: the centre lies within half a map pixel of the pRF centre in each direction
    half_pixel = np.hypot(0.5, 0.5) * inputs.size / 8
    assert out.check["median_error"] <= half_pixel < out.check["chance_median_error"]
    assert set(out.by_area) == {"V1", "V2"} and out.files is None  # visual areas only; no pRF files here
    direct = loo.pathway_prf_check(maps, voxels, inputs.prf, inputs.size, 0.0, 0)[1]
    assert out.check == direct
    assert "median pRF error" in out.describe()


def test_without_prf_centres_the_checks_are_skipped(inputs):
    blind = dataclasses.replace(inputs, prf=None)
    comb = steps.Combined(np.arange(4), 2, np.zeros((2, 4, 8, 8)), np.zeros((4, 8, 8)), {}, None)
    out = steps.combined_prf_check(blind, combined=comb, cfg=loo.LooConfig(), seed=0)
    assert out.check is None and out.centres is None and "no pRF centres" in out.describe()


def test_importance_equal_to_the_true_readout_weight_correlates_perfectly(inputs):
    assert steps.importance_vs_truth(dataclasses.replace(inputs, truth=None), importance=None) is None
    t = inputs.truth
    train = np.unique(inputs.data.train_ids)
    rows = np.searchsorted(inputs.embeddings["ids"], train)
    w = np.linalg.norm(
        loo.ideal_readout(t["signal"][train], 1 / t["ncsnr"] ** 2, inputs.embeddings["image"][rows]), axis=1
    )
    truth = steps.importance_vs_truth(inputs, importance=w)
    assert truth.rho == pytest.approx(1.0)
    assert truth.rho_ncsnr == pytest.approx(stats.spearmanr(w, t["ncsnr"])[0])
    assert set(truth.by_area) == set(np.unique(inputs.area))


def _fake_outputs(inputs: steps.Inputs, with_truth: bool) -> dict:
    check = {"ratio": 0.3, "median_error": 1.0}
    maps = steps.EffectMaps(np.array([5, 2]), np.zeros((2, 4, 4)), ["a", "b"], None, np.zeros((2, 2)))
    truth = steps.Truth(np.ones(3), 0.7, 0.2, {"early": 0.5}, np.arange(3), np.zeros((3, 2)))
    checks = {
        "through the generator": {"median_error": 2.0, "chance_median_error": 4.0, "p_value": 0.01},
        "embedding's layout read-out": {"median_error": 1.0, "chance_median_error": 4.0, "p_value": 0.001},
    }
    return dict(
        sweep=steps.Sweep(None, np.zeros(3), 1.5),
        groups=steps.Groups({}, {}, {"V1": 0.1}, {}, {}, {}, np.arange(2), np.arange(2)),
        saliency=steps.Saliency(np.zeros(3), np.zeros(3), 0.9),
        examples=maps,
        spatial=steps.Spatial(
            types.SimpleNamespace(
                model="ridge", columns=[1], group="early", size=4, encoder=types.SimpleNamespace(alpha_=1.0)
            ),
            None,
            None,
            np.arange(3),
            maps,
        ),
        spatial_prf=steps.PathwayCheck("spatial", None, check, {"V1": check}, None),
        combined=steps.Combined(np.array([7, 8, 9]), 2, None, None, {"diff": 0.2}, maps),
        combined_prf=steps.PathwayCheck("combined", None, check),
        roi_only=steps.RoiOnly({"V1": 0.6}, {}, None),
        truth=truth if with_truth else None,
        generator_prf=steps.GeneratorPrf(np.arange(4), {}, checks, loo.prf_summary(checks, 4))
        if with_truth
        else None,
        local_radius_deg=1.5,
    )


@pytest.mark.parametrize("with_truth", [True, False])
def test_the_results_are_the_type_the_report_reads_with_each_field_from_its_step(inputs, with_truth):
    res = steps.results(inputs, **_fake_outputs(inputs, with_truth))
    record = results.as_record(res, {"profile": "t", "seed": 0, "device": "cpu"})
    assert results.from_record("04_leave_one_out", record) == res
    assert {f.name for f in dataclasses.fields(res)} == set(record) - set(results.HEADER)
    assert (res.examples, res.combined_voxels, res.group_effects) == ([5, 2], [7, 8, 9], {"V1": 0.1})
    assert (res.n_voxels, res.n_samples, res.sweep_seconds) == (inputs.x.shape[1], inputs.n, 1.5)
    assert res.lowlevel == "ridge: 1 voxels of early -> 4 x 4 RGB, alpha 1"
    assert res.lowlevel_prf["ratio"] == 0.3 and res.localisation == {"diff": 0.2}
    if with_truth:
        assert (res.spearman_importance_vs_truth, res.prf_voxels, res.prf_median_error_px) == (0.7, 4, 2.0)
        assert res.prf_readout_chance_error_px == 4.0
    else:  # real data: no truth to check against
        assert res.spearman_importance_vs_truth is None and res.prf_median_error_px is None
    assert all(not isinstance(v, dict | list) for v in steps.key_numbers(res).values())
    assert steps.key_numbers(res)["encoder"] == "ridge_image"


def test_the_analysis_sizes_keep_the_notebooks_defaults_and_the_quick_profile_sets_its_own():
    assert dataclasses.asdict(loo.LooConfig()) == {
        "image_samples": 60,
        "n_prf_voxels": 60,
        "centre_quantile": 0.9,
        "layout_grid": 16,
        "saliency_samples": 100,
        "combined_voxels": [40, 20],
        "combined_samples": 60,
    }
    quick = profiles.resolve_config(profiles.load("quick"), "loo")
    assert (quick.image_samples, quick.n_prf_voxels, quick.combined_voxels) == (10, 12, [6, 3])
    assert profiles.resolve_config(profiles.load("mini"), "loo") == loo.LooConfig()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"loo.centre_quantile": 1.5}, "centre_quantile=1.5"),
        ({"loo.combined_voxels": [5]}, "combined_voxels=[5]"),
        ({"loo.image_samples": 0}, "image_samples=0"),
    ],
)
def test_a_bad_analysis_size_is_a_one_line_error_naming_it(override, named):
    with pytest.raises(profiles.ProfileError, match=named.replace("[", r"\[").replace(".", r"\.")) as e:
        profiles.resolve_config(profiles.load("quick"), "loo", override)
    assert "\n" not in str(e.value)


def test_a_bad_sample_count_is_named_before_anything_is_read():
    with pytest.raises(steps.LeaveOneOutError, match=r"n_samples=-1"):
        steps.load_inputs(None, encoder="ridge_image", generator="generator", replace="mean", n_samples=-1)
