"""lib.stage.fmri_encoder, the steps of notebook 02: the results it assembles, the arguments it refuses, the encoder
fit it wraps, and the profiles' hyperparameters (the notebook's former defaults)."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from lib.analysis import decoding
from lib.data import prep
from lib.models.mlp import MLPConfig
from lib.report import results as report_results
from lib.stage import fmri_encoder as fe
from lib.stage import profile as profiles

#: the keys of 02's metrics JSON before it had a results type (the notebook's metrics dict), header aside
METRICS_KEYS = {
    "subject", "roi", "train_on", "test_on", "n_train", "n_test", "chance", "encoders", "roi_groups",
    "roi_groups_ceiling", "roi_chance", "ridge_alpha", "mlp_epochs", "mlp_train_seconds", "voxel_r_median",
    "ridge_learning_curve", "uncertainty", "roi_uncertainty", "seed_spread", "lowlevel", "best_fraction_of_ceiling",
    "dino_retrieval_ratio", "spatial_targets",  # with DINO's features as targets
}  # fmt: skip


def _steps(ceiling: bool = True):
    """Step outputs as the notebook hands them to :func:`fe.results`, with made-up numbers."""
    ridge = SimpleNamespace(alpha_=300.0)
    fitted = {
        "ridge_image": (ridge, None, None),
        "ridge_text": (SimpleNamespace(alpha_=10.0), None, None),
        "mlp_image": (object(), None, {"loss": [3.0, 2.0, 1.5], "seconds": 4.0}),
    }
    enc = fe.Encoders(
        fitted, {}, MLPConfig(), ["image"], np.zeros(4, bool), np.zeros((0, 2)), np.zeros(0), {}
    )
    rows = {"ridge_image": 0.2, "ridge_text": 0.1, "mlp_image": 0.3}
    table = {n: {"img_retrieval_top1": v} | ({"fraction_of_ceiling": v / 0.5} if ceiling else {})
             for n, v in rows.items()}  # fmt: skip
    inputs = fe.Inputs(None, {}, np.zeros((6, 2)), np.arange(6), np.zeros((3, 2)), np.arange(3), {}, {},
                       "trials", "averaged")  # fmt: skip
    roi = fe.RoiGroups(
        {}, None, None, None, {"V1": {"n_voxels": 3}}, {"intervals": {}}, None, {"layout_r": 0.0}
    )
    low = fe.Lowlevel(None, {16: {"PixCorr": 0.7}}, 5, "early", 16, "ridge", None, None)
    voxels = fe.VoxelAccuracy(np.array([0.1, 0.3, 0.5]), {"V1": np.array([0.1, 0.3]), "V2": np.array([0.5])})
    st = SimpleNamespace(subject=1, roi="nsdgeneral")
    return dict(st=st, inputs=inputs, encoders=enc, scores=fe.Scores(table, 1 / 3, ceiling), uncertainty={},
                roi=roi, lowlevel=low, curve={"ridge_image (test)": {"n": [3], "top1": [0.5]}}, voxels=voxels,
                spread={"seeds": [0]})  # fmt: skip


def test_results_hold_exactly_the_metrics_keys_and_read_back():
    steps = _steps()
    res = fe.results(steps.pop("st"), **steps)
    record = dataclasses.asdict(res)
    assert set(record) == METRICS_KEYS
    assert record["ridge_alpha"] == {"ridge_image": 300.0, "ridge_text": 10.0}
    assert record["mlp_epochs"] == {"mlp_image": 3} and record["mlp_train_seconds"] == {"mlp_image": 4.0}
    assert record["best_fraction_of_ceiling"] == pytest.approx(0.3 / 0.5)  # the MLP retrieves better here
    assert record["voxel_r_median"] == {"V1": pytest.approx(0.2), "V2": pytest.approx(0.5)}
    assert record["lowlevel"] == {"roi": "early", "size": 16, "model": "ridge", "n_voxels": 5,
                                  "target_choice": {16: {"PixCorr": 0.7}}}  # fmt: skip
    assert (record["n_train"], record["n_test"], record["chance"]) == (6, 3, 1 / 3)
    assert record["dino_retrieval_ratio"] is None and record["spatial_targets"] is None  # no DINO target here
    header = {"profile": "quick", "seed": 0, "device": "cpu"}
    assert report_results.from_record("02_fmri_encoder", header | record) == res


def test_results_without_a_ceiling_leave_its_fraction_empty():
    steps = _steps(ceiling=False)
    res = fe.results(steps.pop("st"), **steps)
    assert res.best_fraction_of_ceiling is None and res.roi_groups_ceiling is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fe.load_inputs(None, train_on="mean"), "train_on='mean': expected one of 'trials', 'averaged'"),
        (lambda: fe.load_inputs(None, test_on="all"), "test_on='all': expected one of 'averaged', 'trials'"),
        (lambda: fe.spatial_pathway(None, inputs=None, encoders=None, model="cnn"),
         "lowlevel_model='cnn': expected one of 'ridge', 'mlp'"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors_naming_them(call, message):
    with pytest.raises(fe.FmriEncoderError) as e:
        call()
    assert str(e.value) == message


def _tiny_inputs(n_img=30, reps=2, voxels=20, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_img), reps)
    emb = rng.normal(size=(n_img, dim)).astype(np.float32)
    x = (emb[ids] @ rng.normal(size=(dim, voxels)) + 0.5 * rng.normal(size=(len(ids), voxels))).astype(
        np.float32
    )
    test_ids = np.arange(n_img, n_img + 8)
    e_test = rng.normal(size=(8, dim)).astype(np.float32)
    x_test = (e_test @ rng.normal(size=(dim, voxels))).astype(np.float32)
    vec = {"ids": np.arange(n_img + 8), "image": np.vstack([emb, e_test])}
    return fe.Inputs(None, vec, x, ids, x_test, test_ids, {"image": emb[ids]}, {"image": e_test}, "trials",
                     "averaged")  # fmt: skip


def test_fit_encoders_equals_the_direct_fit_on_its_validation_draw(tmp_path):
    inputs = _tiny_inputs()
    cfg = MLPConfig(width=16, depth=1, proj_width=8, epochs=2, batch_size=16, patience=0)
    alphas = [1.0, 10.0, 100.0]
    st = SimpleNamespace(rng=np.random.default_rng(5), device="cpu", name="02_fmri_encoder",
                         store=SimpleNamespace(work_dir=lambda stage, where: tmp_path / stage / where))  # fmt: skip
    got = fe.fit_encoders(st, inputs=inputs, mlp=cfg, alphas=alphas, ridge_cv=3, val_images=5)

    held = prep.draw_ids(np.unique(inputs.train_ids), 5, np.random.default_rng(5), "v", "held out", keep=1)
    val = np.isin(inputs.train_ids, held)
    assert len(held) == 5 and np.array_equal(got.val, val) and np.array_equal(got.val_ids, np.sort(held))
    np.testing.assert_allclose(got.x_val, [inputs.x_train[inputs.train_ids == i].mean(0) for i in np.sort(held)],
                               rtol=1e-6)  # fmt: skip
    assert got.ridge == {"alphas": alphas, "cv": 3, "device": "cpu"} and got.mlp_kinds == ["image"]
    want = decoding.fit_encoders(inputs.x_train, inputs.y_train, inputs.x_test, got.ridge, cfg, val, got.x_val,
                                 {"image": inputs.vec["image"][np.sort(held)]}, ["image"], inputs.train_ids, "cpu")  # fmt: skip
    assert set(got.fitted) == set(want) == {"ridge_image", "mlp_image"}
    for name in want:
        np.testing.assert_array_equal(got.fitted[name][1], want[name][1])
    assert got.fitted["ridge_image"][0].alpha_ == want["ridge_image"][0].alpha_
    assert got.describe().splitlines()[0] == f"ridge_image: alpha {want['ridge_image'][0].alpha_:g}"


def test_scores_chance_best_encoder_and_no_ceiling_on_real_data():
    table = {"ridge_image": {"img_retrieval_top1": 0.4}, "mlp_image": {"img_retrieval_top1": 0.2}}
    assert fe.Scores(table, 1 / 300, False).best == "ridge_image"
    st = SimpleNamespace(ds=SimpleNamespace(is_simulated=False))
    assert fe.fit_ceiling(st, inputs=None, encoders=None) == fe.Ceiling({}, None, None)


#: the parameters cell of 02 before its hyperparameters moved to the profiles (mlp_*, val_images, ridge_alphas)
OLD_DEFAULTS = dict(width=512, depth=2, dropout=0.15, epochs=40, batch_size=128, lr=0.003, mse=1.0, softclip=1.0,
                    bimixco=1.0, patience=10)  # fmt: skip
OLD_PROFILES = {
    "mini": {},
    "quick": dict(width=128, depth=1, epochs=12, batch_size=64, lr=0.001, patience=0, val_images=30),
    "nsd": dict(width=4096, depth=4, epochs=240, batch_size=256, lr=0.0003, val_images=300),
}


@pytest.mark.parametrize("name", sorted(OLD_PROFILES))
def test_profiles_give_the_notebooks_former_hyperparameters(name):
    cfg = profiles.load(name)
    old = OLD_DEFAULTS | {"val_images": 200} | OLD_PROFILES[name]
    val_images = old.pop("val_images")
    assert profiles.resolve_config(cfg, "mlp", seed=7) == MLPConfig(**old, seed=7)
    enc = profiles.resolve_config(cfg, "encoder")
    assert enc.val_images == val_images
    assert enc.ridge_alphas == [
        1.0,
        10.0,
        100.0,
        300.0,
        1000.0,
        3000.0,
        10000.0,
        30000.0,
        100000.0,
        1000000.0,
    ]


def test_encoder_section_refuses_an_empty_alpha_grid_naming_it():
    cfg = profiles.load("quick")
    with pytest.raises(profiles.ProfileError, match=r"hyperparameters\.encoder.*ridge_alphas=\[\]"):
        profiles.resolve_config(cfg, "encoder", {"encoder.ridge_alphas": []})


def test_dino_ratio_is_the_better_dino_encoder_over_the_better_image_encoder():
    table = {"ridge_image": {"img_retrieval_top1": 0.2}, "mlp_image": {"img_retrieval_top1": 0.4},
             "ridge_dino": {"img_retrieval_top1": 0.3}, "mlp_dino": {"img_retrieval_top1": 0.1}}  # fmt: skip
    assert fe.dino_ratio(fe.Scores(table, 1 / 300, False)) == pytest.approx(0.3 / 0.4)
    no_dino = {k: v for k, v in table.items() if "dino" not in k}
    assert fe.dino_ratio(fe.Scores(no_dino, 1 / 300, False)) is None


def test_dino_targets_are_standardised_with_the_training_images():
    rng = np.random.default_rng(0)
    ids = np.arange(10, 30)
    values = rng.gamma(2.0, 1.0, (20, 4))  # non-negative, as DINO's features
    train_ids = np.repeat(ids[:12], 2)  # repeated rows: each training image counts once
    z = fe._standardised(values, ids, train_ids)
    assert np.allclose(z[:12].mean(0), 0, atol=1e-6) and np.allclose(z[:12].std(0), 1, atol=1e-5)
    assert np.allclose(z[12:], (values[12:] - values[:12].mean(0)) / values[:12].std(0), atol=1e-5)
