"""The stage hand-offs (lib.artifacts), the notebook setup call (lib.stage) and the wiring that moved out of the
notebooks into lib, on small arrays, tiny models and the tiny mini-NSD."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lib import artifacts, paths, stage
from lib.analysis import decoding, loo, metrics
from lib.data import prep, simulate
from lib.models import dino, embedding, gan, lowlevel
from lib.models.ridge import RidgeEncoder
from lib.report import document


@pytest.fixture()
def store(tmp_path):
    return artifacts.Store("quick", tmp_path / "results")


@pytest.fixture(scope="module")
def emb():
    return embedding.create("mini-rn16", image_size=32, device="cpu", seed=0)


def _tiny_g(f_dim: int, seed: int = 0):
    cfg = gan.GANConfig(z_dim=8, w_dim=16, mapping_layers=2, channel_base=64, channel_max=16, fts_hidden=16,
                        batch_size=8, seed=seed)  # fmt: skip
    torch.manual_seed(seed)
    G, _ = gan.build(cfg, 32, f_dim)
    return G.eval()


def test_every_artifact_belongs_to_a_stage_and_paths_are_distinct(store):
    assert {a.stage for a in artifacts.ARTIFACTS.values()} <= set(artifacts.STAGES)
    files = [store.path(n) for n in artifacts.ARTIFACTS]
    assert len(set(files)) == len(files)
    assert store.path("predictions") == store.root / "02_fmri_encoder" / "predictions.npz"
    assert artifacts.Store("mini").root == paths.results_dir("mini")
    with pytest.raises(artifacts.ArtifactError, match="artifact 'nope'"):
        store.path("nope")


def test_a_missing_artifact_names_the_notebook_to_rerun(store):
    with pytest.raises(artifacts.ArtifactError) as e:
        store.load_predictions()
    msg = str(e.value)
    assert (
        "missing" in msg and "notebooks/02_fmri_encoder.ipynb" in msg and "--profile quick --only 02" in msg
    )
    assert "\n" not in msg


def test_encoder_and_predictions_round_trip_and_refuse_a_mismatch(store):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)).astype(np.float32), rng.standard_normal((40, 3)).astype(np.float32)
    enc = RidgeEncoder(alphas=[1.0]).fit(x, y)
    store.save_encoder("ridge_image", enc, "key-a", "nsdgeneral", 1)
    back = store.load_encoder("ridge_image", model_key="key-a", roi="nsdgeneral", subject=1)
    np.testing.assert_array_equal(back.predict(x), enc.predict(x))
    assert back.meta == {"model_key": "key-a", "roi": "nsdgeneral", "subject": 1}
    with pytest.raises(
        artifacts.ArtifactError, match=r"made with model_key='key-a', expected 'key-b'.*only 02"
    ):
        store.load_encoder("ridge_image", model_key="key-b")
    with pytest.raises(artifacts.ArtifactError, match="made with roi='nsdgeneral', expected 'V1-hV4'"):
        store.load_encoder("ridge_image", roi="V1-hV4")
    with pytest.raises(artifacts.ArtifactError, match="encoder 'ridge'"):
        store.save_encoder("ridge", enc, "k", "r", 1)
    ids = np.arange(5)
    store.save_predictions(ids, "key-a", "nsdgeneral", 1, pred_ridge_image=y[:5], true_image=y[:5])
    pred = store.load_predictions(model_key="key-a", roi="nsdgeneral", subject=1)
    np.testing.assert_array_equal(pred["pred_ridge_image"], y[:5])
    with pytest.raises(artifacts.ArtifactError, match="subject=1, expected 2"):
        store.load_predictions(subject=2)
    store.path("predictions").write_bytes(b"not a zip")
    with pytest.raises(artifacts.ArtifactError, match="unreadable"):
        store.load_predictions()


def test_generator_and_reconstructions_round_trip_with_provenance(store):
    G = _tiny_g(4)
    store.save_generator("generator", G, "key-a", source="here")
    back = store.load_generator("generator", model_key="key-a")
    z, f = torch.zeros(2, 8), torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    torch.testing.assert_close(back(z, fts=f, noise_mode="const"), G(z, fts=f, noise_mode="const"))
    with pytest.raises(artifacts.ArtifactError, match="expected 'key-b'.*only 03"):
        store.load_generator("generator", model_key="key-b")
    variants = {"oracle": np.zeros((3, 8, 8, 3), np.uint8), "predicted": np.ones((3, 8, 8, 3), np.uint8)}
    settings = dict.fromkeys(artifacts.GENERATION_SETTINGS, 1) | {"encoder": "ridge_image"}
    with pytest.raises(artifacts.ArtifactError, match="provenance names"):
        store.save_reconstructions(np.arange(3), variants, {"oracle": "x"}, "key-a", settings)
    with pytest.raises(artifacts.ArtifactError, match="missing opt_lr"):
        store.save_reconstructions(np.arange(3), variants, dict.fromkeys(variants, "x"), "key-a",
                                   {k: v for k, v in settings.items() if k != "opt_lr"})  # fmt: skip
    store.save_reconstructions(np.arange(3), variants, {"oracle": "o", "predicted": "p"}, "key-a", settings)
    rec = store.load_reconstructions(model_key="key-a")
    assert list(rec.variants) == ["oracle", "predicted"] and rec.provenance["predicted"] == "p"
    np.testing.assert_array_equal(rec.variants["predicted"], variants["predicted"])
    assert store.generation_settings() == settings == rec.settings
    with pytest.raises(artifacts.ArtifactError, match="expected 'other'"):
        store.load_reconstructions(model_key="other")


def test_embedder_and_embeddings_round_trip(store, emb):
    store.save_embedder(emb, {"origin": "test"})
    back = store.load_embedder("cpu")
    assert back.key == embedding.load(checkpoint=store.path("embedder"), device="cpu").key
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(back.embed_images(imgs), emb.embed_images(imgs), atol=1e-6)
    vec = np.eye(3, 4, dtype=np.float32)
    store.save_embeddings(np.arange(3), vec, vec, back.key)
    assert store.load_embeddings(model_key=back.key)["model_key"] == back.key
    with pytest.raises(artifacts.ArtifactError, match="only 01"):
        store.load_embeddings(model_key="another")


def test_setup_opens_the_dataset_and_writes_through_the_stage(tiny_root, tmp_path, capsys):
    st = stage.setup("02_fmri_encoder", "tinyprofile", str(tiny_root), seed=3, device="cpu")
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
        stage.setup("07_x", "tinyprofile", str(tiny_root))


def test_figures_are_published_with_the_metrics_only_after_the_checks(tiny_root, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(paths, "BUILD_DIR", tmp_path / "build")
    st = stage.setup("00_data_prep", "tinyprofile", str(tiny_root), seed=3, device="cpu")
    st.out_dir, st.metrics_path = tmp_path / "figs", tmp_path / "figs" / "00_data_prep.json"
    fig = plt.figure(figsize=(1, 1))
    where = st.figure(fig, "00_a.png")
    assert where == st.out_dir / "00_a.png" and not where.exists()  # waits until the checks have passed
    st.save_metrics({"run": 1})
    first = where.read_bytes()
    assert json.loads(st.metrics_path.read_text())["run"] == 1 and not st.pending.exists()
    # a second run draws a different figure, then fails a check before save_metrics
    again = stage.setup("00_data_prep", "tinyprofile", str(tiny_root), seed=3, device="cpu")
    again.out_dir, again.metrics_path = st.out_dir, st.metrics_path
    fig.set_facecolor("red")
    again.figure(fig, "00_a.png")
    assert (
        where.read_bytes() == first and json.loads(st.metrics_path.read_text())["run"] == 1
    )  # still one run
    stage.setup("00_data_prep", "tinyprofile", str(tiny_root), seed=3, device="cpu")
    assert not again.pending.exists()  # the failed run's figure is never published later
    plt.close(fig)


def test_a_data_root_given_must_exist(tmp_path):
    missing = tmp_path / "typo"
    with pytest.raises(ValueError) as e:
        stage.setup("00_data_prep", "quick", str(missing))
    assert str(e.value) == (f"data_root {missing}: no such folder; expected an NSD copy, or an empty folder to "
                            f"simulate mini-NSD profile 'quick' in (mkdir -p {missing})")  # fmt: skip
    assert not missing.exists()
    with pytest.raises(ValueError, match=r"no such folder; expected an NSD copy$"):
        paths.check_data_root("nsd", missing)
    missing.mkdir()  # asked for: an empty folder is where a simulated profile may write mini-NSD
    assert paths.check_data_root("quick", missing) == missing


# ------------------------------------------------------------------------------------------------ the wiring
def test_voxel_truth_joins_the_ground_truth_to_prepared_voxels(tiny):
    data = prep.prepare(tiny, 1, "V1-hV4", progress=False)
    truth = simulate.voxel_truth(tiny, 1, data.voxel_ijk)
    gt = simulate.load_ground_truth(tiny.ground_truth_path(1))
    for k, vox in enumerate(data.voxel_ijk[:5]):
        col = int(np.flatnonzero((gt["ijk"] == vox).all(1))[0])
        assert truth["area"][k] == gt["area"][col] and truth["ncsnr"][k] == gt["ncsnr"][col]
        assert tuple(truth["prf_xy"][k]) == (gt["prf_x"][col], gt["prf_y"][col])
        np.testing.assert_array_equal(truth["signal"][:, k], gt["signal"][:, col])


def test_example_and_prf_voxels_by_hand():
    importance = np.array([0.9, 0.1, 0.8, 0.7, 0.3, 0.5])
    early = np.array([1, 2, 4])
    np.testing.assert_array_equal(loo.example_voxels(importance, early, 4), [2, 4, 0, 3])
    prf = np.array(
        [[1, 1], [2, 2], [40, 1], [3, 3], [5, 5], [6, 6]], float
    )  # voxel 2's centre is off a 32 px image
    np.testing.assert_array_equal(loo.prf_voxels(importance, early, prf, 32, 5), [4, 1])
    checks = {"through the generator": {"median_error": 3.0, "chance_median_error": 9.0, "p_value": 0.01}}
    assert loo.prf_summary(checks, 2) == {"prf_voxels": 2, "prf_median_error_px": 3.0,
                                          "prf_chance_error_px": 9.0, "prf_p_value": 0.01}  # fmt: skip


def test_roi_only_predictions_of_a_linear_encoder():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 6)).astype(np.float32)
    enc = RidgeEncoder(alphas=[1.0]).fit(x, x[:, :2] @ np.ones((2, 3), np.float32))
    rep = np.zeros_like(x)
    only = loo.roi_only_predictions(enc, x, rep, {"a": np.array([0, 1]), "b": np.array([], int)})
    assert list(only) == ["a"]  # a group without voxels is left out
    np.testing.assert_allclose(only["a"], x[:, :2] @ enc.coef_[:, :2].T + enc.intercept_, atol=1e-5)


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


def test_dino_probe_table_reads_a_coded_attribute():
    attrs = pd.DataFrame({"colour": ["red", "blue"] * 30, "shape": ["a"] * 45 + ["b"] * 15})
    coded = np.stack([(attrs["colour"] == "red").to_numpy(), np.zeros(60)], 1).astype(np.float32)
    coded += np.random.default_rng(0).normal(0, 0.01, coded.shape).astype(np.float32)
    test = np.arange(60) % 3 == 0
    out = dino.probe_table({"coded": coded}, test, attrs, k=5)
    assert out["knn"]["coded"]["colour"] == 1.0 and out["linear"]["coded"]["colour"] == 1.0
    assert out["majority"] == {a: float(attrs[test][a].value_counts(normalize=True).iloc[0]) for a in attrs}
    with pytest.raises(ValueError, match="test mask"):
        dino.probe_table({"coded": coded}, test[:10], attrs)


def test_evaluation_variants_reuse_03s_and_make_the_other_encoder_alike(emb):
    G, G_tuned = _tiny_g(emb.dim, 0), _tiny_g(emb.dim, 1)
    rng = np.random.default_rng(3)
    ids = np.arange(10, 16)
    f = rng.standard_normal((6, emb.dim)).astype(np.float32)
    settings = {"feature_ratio": 1.0, "encoder": "ridge_image", "opt_steps": 1, "opt_lr": 0.01, "opt_anchor": 0.0,
                "opt_noise_maps": False, "combine": "impose", "opt_lowlevel": 1.0, "impose_strength": 0.5}  # fmt: skip
    made = {k: gan.generate(G, f, 1.0) for k in ("oracle", "predicted", "tuned", "optimised", "combined")}
    low = rng.uniform(0, 1, (6, 4, 4, 3)).astype(np.float32)
    made[gan.SPATIAL] = lowlevel.upsample(low, 32)
    provenance = gan.variant_provenance("the test generator", "ridge_image", 3, 1, "impose")
    rec = artifacts.Reconstructions(ids, made, provenance, settings, {})
    pred = {"test_ids": ids, "pred_ridge_image": f, "head_mlp_image": f[::-1].copy(), "lowlevel": low}
    variants, prov = gan.evaluation_variants(rec, pred, ids[::-1], G, G_tuned, emb, seed=0)
    np.testing.assert_array_equal(
        variants["ridge · plain"], made["predicted"][::-1]
    )  # 03's, in the order asked
    np.testing.assert_array_equal(
        variants["MLP · plain"], gan.generate(G, f, 1.0)
    )  # the head, reordered twice
    np.testing.assert_array_equal(variants["MLP · fMRI-tuned"], gan.generate(G_tuned, f, 1.0))
    # the MLP's combined reconstruction: the tuned generator's with the spatial pathway's layout imposed
    np.testing.assert_array_equal(
        variants["MLP · combined"], lowlevel.impose(gan.generate(G_tuned, f, 1.0), low[::-1], 0.5)
    )
    np.testing.assert_array_equal(variants[gan.SPATIAL_ONLY], made[gan.SPATIAL][::-1])
    assert (
        set(variants) == set(prov)
        and "mlp_image" in prov["MLP · optimised"]
        and "made in 05" in prov["MLP · plain"]
    )
    assert prov["ridge · fMRI-tuned"] == provenance["tuned"]


def test_obtain_generator_refuses_an_unknown_source(emb):
    with pytest.raises(gan.GANError, match="generator='nope'"):
        gan.obtain_generator(
            "nope", emb, np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, emb.dim)), gan.GANConfig()
        )


def test_the_report_writes_the_goals_from_the_metrics(tmp_path, monkeypatch):
    mets = tmp_path / "metrics"
    mets.mkdir()
    monkeypatch.setattr(document.paths, "metrics_dir", lambda profile: mets)
    monkeypatch.setattr(document.paths, "output_dir", lambda profile: tmp_path / "figs")
    assert document.goals("t") is None
    m01 = {"embedding_probes": {"this embedding": {"linear_probe": {"shape": 0.8}, "img2txt_top1": 0.9}}}
    m04 = {"prf_median_error_px": 5.0, "prf_chance_error_px": 10.0}
    table = {"oracle (true embedding)": {"PixCorr": 0.8}, "ridge · plain": {"PixCorr": 0.5}}
    m05 = {"table": table, "readback": {"oracle (true embedding)": {"colour": 0.9}}}
    for stem, m in (("01_joint_embedding", m01), ("04_leave_one_out", m04), ("05_evaluation", m05)):
        (mets / f"{stem}.json").write_text(json.dumps(m))
    g = document.goals("t")
    assert g["oracle PixCorr"] == {"value": 0.8, "threshold": 0.75, "met": True}
    assert g["pRF check: median error / chance (at most 0.6)"]["value"] == 0.5
    assert g["embedding probe: shape"]["met"] and not g["embedding img->txt top-1"]["met"]
    document.build("t", tmp_path / "r.html")
    assert json.loads((mets / "goals.json").read_text()) == g


def test_the_spatial_pathway_goals_read_04s_and_05s_metrics_by_their_names():
    m04 = {"lowlevel_prf": {"ratio": 0.3}, "combined_prf": {"ratio": 0.55},
           "lowlevel_prf_files": {"distance_ratio": 0.2, "hemifield_agreement": 0.95},
           "localisation": {"diff": 0.2, "low": 0.1, "high": 0.3, "p": 0.001}}  # fmt: skip
    table = {"ridge · combined": {"PixCorr": 0.81, "EffNet-Lite0 2-way": 0.9},
             "nearest training image · ridge": {"EffNet-Lite0 2-way": 0.8}}  # fmt: skip
    rb = {"ridge · combined": {"position": 0.6, "background": 1.0, "bg_colour": 0.9, "colour": 0.8, "shape (judge)": 0.5},
          "ridge · plain": {"background": 1.0, "bg_colour": 0.9, "colour": 0.9, "shape": 0.2, "position": 0.5},
        "nearest training image · ridge": {"colour": 0.7, "shape": 0.2, "position": 0.4},
          "stimuli (the judge's ceiling)": {"shape (judge)": 0.9}}  # fmt: skip
    g = document.reconstruction_goals({}, m04, table, rb)
    met = {k: v["met"] for k, v in g.items()}
    assert met["early voxels, spatial pathway: median pRF error / chance (at most 0.35)"]
    assert not met["early voxels, combined reconstruction: median pRF error / chance (at most 0.5)"]
    assert met["NSD-format pRF files: hemifield agreement of early voxels"]
    assert met["localisation: early voxels above higher-area voxels (combined reconstruction)"]
    assert g["localisation: early voxels above higher-area voxels (combined reconstruction)"]["interval"] == [
        0.1,
        0.3,
    ]
    assert met["ridge · combined PixCorr"] and not met["ridge · combined position read-back"]
    assert met["ridge · combined EffNet-Lite0 2-way above the nearest training image (ridge)"]
    assert not met["ridge · combined colour read-back not below ridge · plain"]  # the bare difference, -0.1
    assert met["shape judge reads the stimuli"] and not met["ridge · combined shape (judge) / the stimuli's"]
    assert g["ridge · combined shape (judge) / the stimuli's"]["value"] == pytest.approx(0.5 / 0.9)


def test_reconstructions_of_an_older_03_name_the_missing_setting_and_notebook(store, monkeypatch):
    variants = {"oracle": np.zeros((2, 8, 8, 3), np.uint8)}
    older = tuple(k for k in artifacts.GENERATION_SETTINGS if k != "impose_strength")
    with monkeypatch.context() as m:  # what 03 wrote before impose_strength existed
        m.setattr(artifacts, "GENERATION_SETTINGS", older)
        store.save_reconstructions(np.arange(2), variants, {"oracle": "o"}, "key-a", dict.fromkeys(older, 1))
    for load in (store.generation_settings, store.load_reconstructions):
        with pytest.raises(
            artifacts.ArtifactError, match=r"without the setting\(s\) impose_strength.*rerun .*03"
        ):
            load()
