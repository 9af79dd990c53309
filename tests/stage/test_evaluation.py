"""The steps of notebook 05 (lib.stage.evaluation) against direct computations on tiny data, its results against the
metrics file the report reads, its checks' messages, and the read-back judge's configuration section."""

import dataclasses
import inspect
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lib import metrics
from lib.analysis import readback
from lib.analysis.variants import MEAN_IMAGE, NEAREST, ORACLE
from lib.report import labels, results
from lib.stage import configs, evaluation
from lib.stage import profile as profiles

RIDGE, MLP = "ridge · plain", "MLP · optimised"


def _scores(
    table: dict, per_image: dict | None = None, unavailable: dict | None = None, **kw
) -> evaluation.Scores:
    fields = {"retrieval": {}, "uncertainty": {"intervals": {}}, "seconds": 1.0} | kw
    return evaluation.Scores(table, unavailable or {}, per_image or {}, **fields)


def test_baselines_are_the_nearest_training_images_and_the_mean_image():
    rng = np.random.default_rng(0)
    f_train, f_test, p_ridge = rng.normal(size=(6, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    images = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    out = evaluation.baselines(
        test_embeddings=f_test, ridge_predictions=p_ridge, train_embeddings=f_train, train_images=images
    )
    assert list(out) == [NEAREST.format("true emb."), NEAREST.format("ridge"), MEAN_IMAGE]

    def nearest(q):  # the training image of largest cosine similarity, one query at a time
        cos = [[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in f_train] for a in q]
        return images[np.argmax(cos, axis=1)]

    np.testing.assert_array_equal(out[NEAREST.format("true emb.")], nearest(f_test))
    np.testing.assert_array_equal(out[NEAREST.format("ridge")], nearest(p_ridge))
    mean = np.round(images.astype(float).mean(0)).astype(np.uint8)
    assert out[MEAN_IMAGE].shape == (3, 5, 5, 3) and (out[MEAN_IMAGE] == mean).all()


def test_retrieval_goes_to_the_rows_of_its_encoder_only():
    rows = (RIDGE, MLP, ORACLE, NEAREST.format("ridge"))
    table, per_image = {v: {"PixCorr": 0.5} for v in rows}, {v: {"PixCorr": np.ones(2)} for v in rows}
    retrieval = {"ridge_image": {"image": 0.4, "brain": 0.3}, "mlp_image": {"image": 0.2, "brain": 0.1}}
    hits = {
        "ridge_image": {"image": np.array([1, 0]), "brain": np.array([0, 0])},
        "mlp_image": {"image": np.array([0, 1]), "brain": np.array([1, 1])},
    }
    evaluation.add_retrieval(table, per_image, retrieval, hits)
    assert table[RIDGE] == {"PixCorr": 0.5, "image ret.": 0.4, "brain ret.": 0.3}
    assert table[MLP] == {"PixCorr": 0.5, "image ret.": 0.2, "brain ret.": 0.1}
    for v in (ORACLE, NEAREST.format("ridge")):  # the nearest image "· ridge" is no variant of ridge's
        assert table[v]["image ret."] is None and per_image[v]["brain ret."] is None
    assert per_image[MLP]["brain ret."] is hits["mlp_image"]["brain"]


def test_chance_is_the_oracle_against_the_wrong_images():
    rng = np.random.default_rng(1)
    test = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    oracle = np.clip(test.astype(int) + rng.integers(-30, 30, test.shape), 0, 255).astype(np.uint8)
    inputs = SimpleNamespace(test_ids=np.arange(4), test_images=test)
    scores = _scores({}, retrieval={"ridge_image": {"chance": 0.25}})
    st = SimpleNamespace(device="cpu")
    chance = evaluation.chance_levels(
        st, inputs=inputs, variants=SimpleNamespace(images={ORACLE: oracle}), scores=scores
    )
    wrong = oracle[[3, 0, 1, 2]]  # test image i against the reconstruction of image i - 1
    assert chance["PixCorr"] == pytest.approx(metrics.pixcorr(wrong, test))
    assert chance["SSIM"] == pytest.approx(metrics.ssim(wrong, test))
    assert {k: chance[k] for k in labels.TWO_WAY} == dict.fromkeys(labels.TWO_WAY, 0.5)
    assert chance["image ret."] == chance["brain ret."] == 0.25


def test_roi_rows_put_all_voxels_first_with_the_read_back_columns():
    ref, every = labels.ROI_VARIANT, labels.ALL_VOXELS
    main = {ref: {k: 0.9 for k in labels.ROI_LABELS} | {"SwAV": 0.1}}
    main_per = {ref: {k: np.ones(2) for k in labels.ROI_LABELS} | {"SwAV": np.zeros(2)}}
    group_table = {"V1-hV4": {k: 0.6 for k in labels.ROI_LABELS}}
    group_scores = {"V1-hV4": {k: np.zeros(2) for k in labels.ROI_LABELS}}
    reading = evaluation.Reading({ref: {"colour": 0.8}}, {}, {}, {ref: {"colour": np.array([1.0, 1.0])}})
    judged = ({"V1-hV4": {"colour": 0.5}}, {"V1-hV4": {"colour": np.array([1.0, 0.0])}})
    table, per = evaluation.roi_rows(
        group_table, group_scores, scores=_scores(main, main_per), reading=reading, judged=judged
    )
    assert list(table) == [every, "V1-hV4"]
    assert table[every] == {k: 0.9 for k in labels.ROI_LABELS} | {"read-back colour": 0.8}
    assert table["V1-hV4"]["read-back colour"] == 0.5
    np.testing.assert_array_equal(per["V1-hV4"]["read-back colour"], [1.0, 0.0])
    assert "read-back colour" not in main[ref] and "SwAV" not in table[every]  # the main table is left alone
    table, _ = evaluation.roi_rows(
        {"higher": {"PixCorr": 0.1}},
        {"higher": {}},
        scores=_scores(main, main_per),
        reading=evaluation.Reading({}, {}, {}, {}),
    )
    assert list(table) == [every, "higher"] and not any(k.startswith("read-back") for k in table[every])


def _passing():
    table = {
        RIDGE: {"CLIP": 0.95, "EffNet-Lite0 2-way": 0.8, "EffNet-Lite0 dist": float("nan"), "Incep": None}
    }
    reading = evaluation.Reading({labels.STIMULI: {"background": 0.9}}, {"background": 0.5}, {}, {})
    return table, reading


def test_check_passes_and_names_what_failed():
    table, reading = _passing()
    thresholds = dict(min_clip_two_way=0.9, min_effnet_two_way=0.7, min_readback_lift=0.3)
    evaluation.check(scores=_scores(table, unavailable={"Incep": "no file"}), reading=reading, **thresholds)
    bad = {RIDGE: table[RIDGE] | {"CLIP": 0.85}}
    with pytest.raises(evaluation.CheckFailed, match=r"ridge · plain CLIP 0\.850, not above 0\.9"):
        evaluation.check(scores=_scores(bad), reading=reading, **thresholds)
    bad = {RIDGE: table[RIDGE] | {"EffNet-Lite0 2-way": 0.7}}
    with pytest.raises(evaluation.CheckFailed, match=r"EffNet-Lite0 2-way 0\.700, not above 0\.7"):
        evaluation.check(scores=_scores(bad), reading=reading, **thresholds)
    with pytest.raises(evaluation.CheckFailed, match="not finite"):
        evaluation.check(
            scores=_scores({RIDGE: table[RIDGE] | {"SSIM": float("inf")}}), reading=reading, **thresholds
        )
    with pytest.raises(evaluation.CheckFailed, match="unavailable metric has a value"):
        evaluation.check(scores=_scores(table, unavailable={"CLIP": "x"}), reading=reading, **thresholds)
    with pytest.raises(evaluation.CheckFailed, match=r"background 0\.900, not 0\.5 above chance 0\.500"):
        evaluation.check(scores=_scores(table), reading=reading, **thresholds | {"min_readback_lift": 0.5})
    no_judge = evaluation.Reading({}, {}, {}, {})  # real data: no read-back, no read-back check
    evaluation.check(scores=_scores(table), reading=no_judge, **thresholds | {"min_readback_lift": 0.9})


def test_results_hold_every_field_of_the_metrics_file_from_its_step():
    st = SimpleNamespace(roi="nsdgeneral", subject=1)
    scores = _scores(
        {RIDGE: {"CLIP": 0.9}},
        unavailable={"SwAV": "no file"},
        uncertainty={"intervals": {"a": 1}},
        seconds=3.5,
    )
    variants = evaluation.Variants(
        {}, {ORACLE: "the generator"}, [NEAREST.format("ridge"), MEAN_IMAGE], np.arange(3), np.zeros(3), 2.5
    )
    reading = evaluation.Reading({"x": {"colour": 1.0}}, {"colour": 0.3}, {"intervals": {"b": 2}}, {})
    groups = evaluation.RoiGroups({"nsdgeneral (all voxels)": {}}, {}, {"comparisons": {}})
    inputs = SimpleNamespace(
        reconstructions=SimpleNamespace(settings={"encoder": "ridge_image"}), test_ids=np.arange(7)
    )
    r = evaluation.results(
        st,
        inputs=inputs,
        variants=variants,
        scores=scores,
        chance={"CLIP": 0.5},
        reading=reading,
        groups=groups,
    )
    assert results.stage_of(r) == "05_evaluation"
    expected = {
        "baselines": [MEAN_IMAGE, NEAREST.format("ridge")],
        "chance": {"CLIP": 0.5},
        "n_test": 7,
        "generation_seconds": 2.5,
        "generation_settings": {"encoder": "ridge_image"},
        "provenance": {ORACLE: "the generator"},
        "readback": reading.table,
        "readback_chance": {"colour": 0.3},
        "readback_uncertainty": reading.uncertainty,
        "roi": "nsdgeneral",
        "roi_table": groups.table,
        "roi_uncertainty": groups.uncertainty,
        "score_seconds": 3.5,
        "subject": 1,
        "table": scores.table,
        "unavailable": {"SwAV": "no file"},
        "uncertainty": scores.uncertainty,
    }
    assert dataclasses.asdict(r) == expected  # every field of lib.report.results.Evaluation, none left over
    assert isinstance(r.n_test, int) and sorted(r.baselines) == r.baselines
    record = results.as_record(r, {"profile": "quick", "seed": 0, "device": "cpu"})
    assert results.from_record("05_evaluation", record) == r  # what the report reads back


def test_bad_arguments_are_one_line_errors_naming_them():
    with pytest.raises(evaluation.EvaluationError, match=r"n_test=-1"):
        evaluation.load_inputs(None, n_test=-1)
    with pytest.raises(evaluation.EvaluationError, match=r"n_test=2\.5"):
        evaluation.load_inputs(None, n_test=2.5)
    with pytest.raises(evaluation.EvaluationError, match="no read-back table"):
        evaluation.readback_figure(reading=evaluation.Reading({}, {}, {}, {}), n_test=3)
    with pytest.raises(ValueError, match="05_nope.png"):
        labels.family_title("05_nope.png", 30)


def test_report_labels():
    assert labels.family_title("05_retrieval.png", 30) == "retrieval top-1 among 30 (02 encoders)"
    assert [labels.FAMILIES[f][2] for f in labels.FAMILIES] == [False, False, True, False]  # distances: lower
    pub = pd.DataFrame(
        {
            "method": ["MindEye 1", "MindEye 1", "Brain-Diffuser", "MindEye 2"],
            "set": ["test", "third subject", "test", "test"],
        }
    )
    assert labels.published_reference(pub).index.tolist() == [0, 2]


def test_readback_section_mirrors_train_and_reads_the_profile():
    assert configs.SECTIONS["readback"] is readback.ReadbackConfig
    defaults = inspect.signature(readback.train).parameters
    for f in dataclasses.fields(readback.ReadbackConfig):  # the section's defaults are train()'s
        assert f.default == defaults[f.name].default, f.name
    quick = profiles.load("quick")
    assert profiles.resolve_config(quick, "readback").epochs == 15
    assert "readback_epochs" not in quick["notebooks"].get("05", {})
    assert profiles.resolve_config(quick, "readback", {"readback.epochs": 3}).epochs == 3
    assert profiles.resolve_config(profiles.load("mini"), "readback").epochs == 30  # the notebook's default
    with pytest.raises(profiles.ProfileError, match="epochs=0"):
        profiles.resolve_config(quick, "readback", {"readback.epochs": 0})
