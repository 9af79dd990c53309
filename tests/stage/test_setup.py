"""The notebook setup call (lib.stage.setup): it resolves the common parameters and hyperparameters from the
profile and the overrides, opens the dataset, seeds, writes the results through the stage, publishes figures only
after the checks, and refuses a data root that does not exist; on the tiny mini-NSD."""

import json

import numpy as np
import pytest

from lib import paths, stage
from lib.models.mlp import MLPConfig
from lib.report import results


@pytest.fixture(autouse=True)
def tiny_profile(tmp_path, monkeypatch):
    """params/tinyprofile.yaml: a profile of the tests' own, beside copies of the shipped ones."""
    params = tmp_path / "params"
    params.mkdir()
    for shipped in paths.PARAMS_DIR.glob("*.yaml"):
        (params / shipped.name).write_text(shipped.read_text())
    (params / "tinyprofile.yaml").write_text("defaults:\n  seed: 5\nhyperparameters:\n  mlp: {epochs: 2}\n")
    monkeypatch.setattr(paths, "PARAMS_DIR", params)


def tiny(root, **more) -> dict:
    return {"data_root": str(root), "seed": 3, "device": "cpu", **more}


def test_setup_opens_the_dataset_and_writes_through_the_stage(tiny_root, tmp_path, capsys):
    st = stage.setup("02_fmri_encoder", "tinyprofile", tiny(tiny_root))
    assert st.ds.root == tiny_root and st.device == "cpu" and st.simulate_seconds is None
    assert st.store.root == paths.results_dir("tinyprofile") and "02_fmri_encoder" in capsys.readouterr().out
    np.testing.assert_array_equal(
        st.rng.integers(0, 10**6, 3), np.random.default_rng(3).integers(0, 10**6, 3)
    )
    st.metrics_path = tmp_path / "m.json"
    st.save_metrics({"x": 1})
    assert json.loads(st.metrics_path.read_text()) == {
        "device": "cpu",
        "profile": "tinyprofile",
        "seed": 3,
        "x": 1,
    }
    with pytest.raises(ValueError, match="a figure of 02_fmri_encoder is named 02_"):
        st.figure(None, "03_x.png")
    with pytest.raises(ValueError, match="stage '07_x'"):
        stage.setup("07_x", "tinyprofile", tiny(tiny_root))


def test_figures_are_published_with_the_metrics_only_after_the_checks(tiny_root, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(paths, "BUILD_DIR", tmp_path / "build")
    st = stage.setup("00_data_prep", "tinyprofile", tiny(tiny_root))
    st.out_dir, st.metrics_path = tmp_path / "figs", tmp_path / "figs" / "00_data_prep.json"
    fig = plt.figure(figsize=(1, 1))
    where = st.figure(fig, "00_a.png")
    assert where == st.out_dir / "00_a.png" and not where.exists()  # waits until the checks have passed
    st.save_metrics({"run": 1})
    first = where.read_bytes()
    assert json.loads(st.metrics_path.read_text())["run"] == 1 and not st.pending.exists()
    # a second run draws a different figure, then fails a check before save_metrics
    again = stage.setup("00_data_prep", "tinyprofile", tiny(tiny_root))
    again.out_dir, again.metrics_path = st.out_dir, st.metrics_path
    fig.set_facecolor("red")
    again.figure(fig, "00_a.png")
    assert (
        where.read_bytes() == first and json.loads(st.metrics_path.read_text())["run"] == 1
    )  # still one run
    stage.setup("00_data_prep", "tinyprofile", tiny(tiny_root))
    assert not again.pending.exists()  # the failed run's figure is never published later
    plt.close(fig)


def test_a_data_root_given_must_exist(tmp_path):
    missing = tmp_path / "typo"
    with pytest.raises(ValueError) as e:
        stage.setup("00_data_prep", "quick", {"data_root": str(missing)})
    assert str(e.value) == (f"data_root {missing}: no such folder; expected an NSD copy, or an empty folder to "
                            f"simulate mini-NSD profile 'quick' in (mkdir -p {missing})")  # fmt: skip
    assert not missing.exists()
    with pytest.raises(ValueError, match=r"no such folder; expected an NSD copy$"):
        paths.check_data_root("nsd", missing)
    missing.mkdir()  # asked for: an empty folder is where a simulated profile may write mini-NSD
    assert paths.check_data_root("quick", missing) == missing


def test_setup_resolves_the_common_parameters_and_hyperparameters(tiny_root):
    st = stage.setup("02_fmri_encoder", "tinyprofile", {"data_root": str(tiny_root), "mlp.lr": 0.01})
    assert (st.seed, st.subject, st.roi, st.sessions, st.nonfinite) == (5, 1, "nsdgeneral", None, "error")
    cfg = st.config("mlp", seed=st.seed)
    assert (cfg.epochs, cfg.lr, cfg.seed, cfg.width) == (
        2,
        0.01,
        5,
        MLPConfig().width,
    )  # profile, override, fixed
    with pytest.raises(ValueError, match="'subjekt' is not a common parameter"):
        stage.setup("02_fmri_encoder", "tinyprofile", tiny(tiny_root, subjekt=2))
    with pytest.raises(ValueError, match=r"overrides: 'mlp.epoch': MLPConfig has no field 'epoch'"):
        stage.setup("02_fmri_encoder", "tinyprofile", tiny(tiny_root, **{"mlp.epoch": 2}))
    with pytest.raises(ValueError, match="nonfinite='keep': expected 'error' or 'drop'"):
        stage.setup("02_fmri_encoder", "tinyprofile", tiny(tiny_root, nonfinite="keep"))


def test_results_are_saved_only_as_the_type_of_their_stage(tiny_root, tmp_path):
    st = stage.setup("00_data_prep", "tinyprofile", tiny(tiny_root))
    st.out_dir, st.metrics_path = tmp_path / "figs", tmp_path / "figs" / "00_data_prep.json"
    counts = dict(n_test_images=2, n_test_trials=6, n_train_images=4, n_train_trials=4, n_voxels=9)
    r = results.DataPrep(**counts, n_voxels_dropped_nonfinite=0, ncsnr_median=0.5, noise_ceiling_test_median_pct=40.0,
                         roi="nsdgeneral", simulate_seconds=None, split_half_reliability_median={}, subject=1,
                         voxels_per_roi={})  # fmt: skip
    st.save_results(r)
    assert results.load(st.metrics_path.parent, "00_data_prep") == r
    assert json.loads(st.metrics_path.read_text())["seed"] == 3
    other = stage.setup("02_fmri_encoder", "tinyprofile", tiny(tiny_root))
    with pytest.raises(ValueError, match="DataPrep: the results of 00_data_prep, not 02_fmri_encoder"):
        other.save_results(r)
