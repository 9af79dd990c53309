"""The steps of notebook 05 (evaluation): every reconstruction variant of 03 and the baselines scored with the
field's metrics (:mod:`lib.analysis.perceptual`), the 02 encoders' retrieval, the attribute read-back judges
(:mod:`lib.analysis.readback`, :mod:`lib.models.shape_judge`), the ROI-only reconstructions per ROI group, the
checks, and the results (:class:`lib.report.results.Evaluation`). What the report shows of them (labels, figure
titles, published rows) is in :mod:`lib.report.labels`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from lib.analysis import decoding, loo, perceptual, readback
from lib.analysis.variants import (
    ENCODER_NAMES,
    MEAN_IMAGE,
    NEAREST,
    ORACLE,
    comparison_pairs,
    evaluation_variants,
)
from lib.data import prep, scenes
from lib.models import gan, pretrained, shape_judge
from lib.report import figures, labels
from lib.report.results import Evaluation

#: the variant the checks hold to their thresholds
CHECKED = "ridge · plain"
#: metrics left out of the finiteness check
NOT_CHECKED_FINITE = ("EffNet-Lite0 dist",)


class EvaluationError(ValueError):
    """A bad argument of a step of 05; the message names it."""


class CheckFailed(AssertionError):
    """A check of 05 that the run did not pass; the message names the number and its threshold."""


@dataclasses.dataclass
class Inputs:
    """What 05 reads from the earlier notebooks (through :class:`lib.artifacts.Store`) and the test images."""

    embedder: object  # 01's joint embedding
    predictions: dict  # 02's test predictions
    reconstructions: object  # 03's reconstructions and settings (lib.artifacts.Reconstructions)
    generator: object  # 03's generator
    tuned_generator: object  # 03's fMRI-tuned generator
    test_ids: np.ndarray  # the test images scored
    test_images: np.ndarray  # uint8 (N, H, W, 3)


@dataclasses.dataclass
class Variants:
    """The image sets scored: the reconstruction variants, then the baselines (name -> uint8 images, one per test
    image), what produced each variant, and the training images the baselines and the judge come from."""

    images: dict
    provenance: dict
    baselines: list  # names of the baselines among ``images``
    train_ids: np.ndarray
    train_images: np.ndarray
    seconds: float  # generating the variants and baselines


@dataclasses.dataclass
class Scores:
    """Every image set's metrics: the table ({set: {metric: value or None}}), why a metric is unavailable, the
    per-image scores behind each value, the 02 encoders' retrieval, intervals and paired comparisons."""

    table: dict
    unavailable: dict
    per_image: dict
    retrieval: dict
    uncertainty: dict
    seconds: float  # the metrics of lib.analysis.perceptual alone


@dataclasses.dataclass
class Reading:
    """The attribute read-back (a simulated dataset only; empty otherwise): accuracy per image set and attribute,
    chance (the majority class), intervals and comparisons, per-image hits, and the judge and attributes behind
    them."""

    table: dict
    chance: dict
    uncertainty: dict
    hits: dict
    judge: readback.Readback | None = None
    attributes: object = None  # the test stimuli's attribute table


@dataclasses.dataclass
class RoiGroups:
    """The ROI-only reconstructions scored per group beside all voxels, with intervals and comparisons."""

    table: dict
    per_image: dict
    uncertainty: dict


def load_inputs(st, *, n_test: int = 0) -> Inputs:
    """The hand-offs of 01-03 for the profile of ``st`` (:class:`lib.stage.Stage`), and the first ``n_test`` of
    03's test images (0: all)."""
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
        raise EvaluationError(f"n_test={n_test!r}: expected 0 (every test image) or a positive count")
    dev, store = st.device, st.store
    emb = store.load_embedder(dev)
    pred = store.load_predictions(model_key=emb.key, roi=st.roi, subject=st.subject)
    rec = store.load_reconstructions(model_key=emb.key)
    G = store.load_generator("generator", dev, model_key=emb.key)
    G_tuned = store.load_generator("generator_tuned", dev, model_key=emb.key)
    test_ids = rec.test_ids[: n_test or len(rec.test_ids)]
    return Inputs(emb, pred, rec, G, G_tuned, test_ids, st.ds.images(test_ids))


def baselines(
    *,
    test_embeddings: np.ndarray,
    ridge_predictions: np.ndarray,
    train_embeddings: np.ndarray,
    train_images: np.ndarray,
) -> dict[str, np.ndarray]:
    """The baselines a reconstruction should beat, named as :mod:`lib.analysis.variants` names them: the nearest
    training image by the true and by ridge's predicted embedding (retrieval), and the mean training image."""
    return {
        NEAREST.format("true emb."): readback.nearest_training(
            test_embeddings, train_embeddings, train_images
        ),
        NEAREST.format("ridge"): readback.nearest_training(ridge_predictions, train_embeddings, train_images),
        MEAN_IMAGE: readback.mean_image(train_images, len(test_embeddings)),
    }


def make_variants(st, *, inputs: Inputs) -> Variants:
    """The reconstruction variants of :func:`lib.analysis.variants.evaluation_variants` (03's, and the other
    encoder's made here with 03's settings) and the :func:`baselines`."""
    t0 = time.perf_counter()
    images, provenance = evaluation_variants(
        inputs.reconstructions,
        inputs.predictions,
        inputs.test_ids,
        inputs.generator,
        inputs.tuned_generator,
        inputs.embedder,
        st.seed,
    )
    train_ids, _ = prep.stimulus_split(st.ds, st.subject, st.sessions)
    vec = st.store.load_embeddings(model_key=inputs.embedder.key)
    f_train, f_test = (decoding.rows_of(vec["ids"], vec["image"], i) for i in (train_ids, inputs.test_ids))
    img_train = st.ds.images(train_ids)
    pred = inputs.predictions
    p_ridge = decoding.rows_of(pred["test_ids"], pred["pred_ridge_image"], inputs.test_ids)
    base = baselines(
        test_embeddings=f_test, ridge_predictions=p_ridge, train_embeddings=f_train, train_images=img_train
    )
    images |= base
    return Variants(images, provenance, list(base), train_ids, img_train, time.perf_counter() - t0)


def add_retrieval(table: dict, per_image: dict, retrieval: dict, hits: dict) -> None:
    """Put each encoder's retrieval (:func:`lib.analysis.decoding.encoder_retrieval`; ``hits``: per image) into the
    rows of its variants (named "<short name> · ..."), in place; other rows get None (retrieval belongs to the
    encoder: top-1 among at most 300, both directions)."""
    for v, row in table.items():
        enc = next((e for e, s in ENCODER_NAMES.items() if v.startswith(s + " ")), None)
        for label, way in labels.RETRIEVAL.items():
            row[label] = retrieval[enc][way] if enc else None
            per_image[v][label] = hits[enc][way] if enc else None


def bootstrap(st, *, per_image: dict, pairs: list) -> dict:
    """Intervals and paired comparisons (:func:`lib.analysis.decoding.uncertainty`) with the profile's
    ``stats.resamples`` and the seed of ``st``."""
    return decoding.uncertainty(per_image, pairs, st.config("stats").resamples, st.seed)


def score_variants(
    st, *, inputs: Inputs, variants: Variants, metric_names: list | None = None, weights_dir: str = ""
) -> Scores:
    """Every image set of ``variants`` scored against the test images with ``metric_names`` of
    :data:`lib.analysis.perceptual.METRICS` (empty: all; weights read from ``weights_dir``, never downloaded),
    PixCorr, SSIM and CLIP (2-way in 01's embedding), the 02 encoders' retrieval (:func:`add_retrieval`), and the
    intervals and comparisons of :func:`lib.analysis.variants.comparison_pairs`."""
    t0 = time.perf_counter()
    table, unavailable, per_image = perceptual.evaluate(
        variants.images,
        inputs.test_images,
        metric_names or None,
        embedder=inputs.embedder,
        folder=weights_dir or None,
        device=st.device,
        per_image=True,
    )
    seconds = time.perf_counter() - t0
    retrieval = decoding.encoder_retrieval(inputs.predictions, inputs.test_ids, ENCODER_NAMES, st.seed)
    hits = decoding.encoder_retrieval(
        inputs.predictions, inputs.test_ids, ENCODER_NAMES, st.seed, per_image=True
    )
    add_retrieval(table, per_image, retrieval, hits)
    uncertainty = bootstrap(st, per_image=per_image, pairs=comparison_pairs())
    return Scores(table, unavailable, per_image, retrieval, uncertainty, seconds)


def read_back(st, *, inputs: Inputs, variants: Variants, models_dir: str = "") -> Reading:
    """The attribute read-back of the test stimuli (the judge's ceiling) and of every image set: the judge
    trained on the training stimuli (:func:`lib.analysis.readback.train`, profile section ``readback``) beside the
    shape judge pretrained on the scene corpus (read from ``models_dir``; empty: models/). Only on a simulated
    dataset, whose scenes' attributes are known; empty otherwise."""
    ds = st.ds
    if not ds.is_simulated:
        return Reading({}, {}, {}, {})
    attrs_train, attrs_test = (
        scenes.attribute_table(ds.scenes(i)) for i in (variants.train_ids, inputs.test_ids)
    )
    cfg = st.config("readback")
    judge = readback.train(
        variants.train_images,
        attrs_train,
        epochs=cfg.epochs,
        batch=cfg.batch,
        lr=cfg.lr,
        blur_max=cfg.blur_max,
        seed=st.seed,
        device=st.device,
    )
    shapes = pretrained.load_shape_judge(models_dir or None, device=st.device)  # pretrained on the corpus
    read = {labels.STIMULI: inputs.test_images} | variants.images
    table, hits = readback.with_judge(judge.score(read, attrs_test), shapes.score(read, attrs_test))
    chance = readback.majority(attrs_test)
    chance[shape_judge.LABEL] = chance["shape"]
    uncertainty = bootstrap(st, per_image=hits, pairs=comparison_pairs())
    return Reading(table, chance, uncertainty, hits, judge, attrs_test)


def readback_figure(*, reading: Reading, n_test: int):
    """The read-back table as a figure (:func:`lib.report.figures.readback_table`)."""
    if not reading.table:
        raise EvaluationError("reading: no read-back table (a simulated dataset only): nothing to draw")
    title = labels.READBACK_TITLE.format(n=n_test)
    return figures.readback_table(reading.table, reading.chance, title, reading.uncertainty["intervals"])


def chance_levels(st, *, inputs: Inputs, variants: Variants, scores: Scores) -> dict[str, float]:
    """Chance of every metric drawn: 0.5 for 2-way identification, 1 / gallery for retrieval, and for PixCorr and
    SSIM the oracle reconstructions scored against the wrong images (each paired with the next test image)."""
    mismatched = np.roll(np.arange(len(inputs.test_ids)), 1)  # every reconstruction paired with another image
    wrong = {"mismatched": variants.images[ORACLE][mismatched]}
    low, _ = perceptual.evaluate(wrong, inputs.test_images, [], device=st.device)
    ret_chance = scores.retrieval["ridge_image"]["chance"]
    return {m: 0.5 for m in labels.TWO_WAY} | {k: ret_chance for k in labels.RETRIEVAL} | low["mismatched"]


def family_figures(st, *, scores: Scores, chance: dict, published) -> list[Path]:
    """One figure per metric family of :data:`lib.report.labels.FAMILIES` (every image set, 95% intervals,
    chance, the published rows of :func:`lib.report.labels.published_reference` beside them); where each will be."""
    ref = labels.published_reference(published)
    gallery = round(1 / scores.retrieval["ridge_image"]["chance"])
    out = []
    for name, (columns, _, lower) in labels.FAMILIES.items():
        fig = figures.metric_family(
            scores.table,
            columns,
            labels.family_title(name, gallery),
            ref,
            chance,
            lower,
            scores.uncertainty["intervals"],
        )
        out.append(st.figure(fig, name))
    return out


def roi_only_variants(st, *, inputs: Inputs, roi_groups: list) -> dict[str, np.ndarray]:
    """ROI-only reconstructions (04's construction): ridge's prediction with one group's voxels keeping their
    activity and every other voxel at its training mean, drawn by the fMRI-tuned generator; {group: images}."""
    data, _, _ = prep.prepare_cached(
        st.ds, st.subject, st.roi, st.sessions, compute=False, nonfinite=st.nonfinite
    )
    ridge = st.store.load_encoder(
        "ridge_image", st.device, model_key=inputs.embedder.key, roi=st.roi, subject=st.subject
    )
    x = decoding.rows_of(data.test_ids, data.x_test, inputs.test_ids)
    columns = prep.group_columns(st.ds, st.subject, data.voxel_ijk, roi_groups)
    only = loo.roi_only_predictions(ridge, x, loo.replacement(data.x_train, "mean", len(x)), columns)
    ratio = inputs.reconstructions.settings["feature_ratio"]
    return {g: gan.generate(inputs.tuned_generator, p, ratio, seed=st.seed) for g, p in only.items()}


def roi_rows(
    group_table: dict,
    group_scores: dict,
    *,
    scores: Scores,
    reading: Reading,
    judged: tuple[dict, dict] | None = None,
) -> tuple[dict, dict]:
    """The ROI-group table and its per-image scores: every group's row, and first the row of all voxels (the
    main table's :data:`lib.report.labels.ROI_VARIANT`); with ``judged`` (the read-back judge's (table, hits) of
    the groups), the read-back columns ("read-back <attribute>") too. Fills ``group_scores`` in place."""
    every, ref = labels.ALL_VOXELS, labels.ROI_VARIANT
    group_table[every], group_scores[every] = (
        {k: src[ref][k] for k in labels.ROI_LABELS} for src in (scores.table, scores.per_image)
    )
    if judged is not None:
        rb_table, rb_hits = judged
        rb_table[every], rb_hits[every] = reading.table[ref], reading.hits[ref]
        for g in group_table:
            group_table[g] |= {f"read-back {k}": v for k, v in rb_table[g].items()}
            group_scores[g] |= {f"read-back {k}": v for k, v in rb_hits[g].items()}
    return {every: group_table.pop(every)} | group_table, group_scores


def score_roi_groups(
    st, *, inputs: Inputs, roi_variants: dict, scores: Scores, reading: Reading
) -> RoiGroups:
    """The ROI-only reconstructions scored with the low-level metrics, CLIP, EffNet-Lite0 and (when there is one)
    the read-back judge, beside all voxels (:func:`roi_rows`), and each group compared with all voxels."""
    table, _, per_image = perceptual.evaluate(
        roi_variants,
        inputs.test_images,
        ["EffNet-Lite0 2-way"],
        embedder=inputs.embedder,
        device=st.device,
        per_image=True,
    )
    judged = reading.judge.score(roi_variants, reading.attributes) if reading.table else None
    table, per_image = roi_rows(table, per_image, scores=scores, reading=reading, judged=judged)
    pairs = [(g, labels.ALL_VOXELS) for g in roi_variants]
    return RoiGroups(table, per_image, bootstrap(st, per_image=per_image, pairs=pairs))


def roi_figure(*, groups: RoiGroups, chance: dict):
    """The ROI-group table's metrics as a figure (:func:`lib.report.figures.metric_family`)."""
    cols = labels.ROI_LABELS
    return figures.metric_family(
        groups.table,
        cols,
        labels.ROI_TITLE,
        chance={k: chance[k] for k in cols},
        intervals=groups.uncertainty["intervals"],
    )


def check(
    *,
    scores: Scores,
    reading: Reading,
    min_clip_two_way: float,
    min_effnet_two_way: float,
    min_readback_lift: float,
) -> None:
    """The checks of a run, each failure a :class:`CheckFailed` naming it: every metric finite, no value for an
    unavailable metric, :data:`CHECKED`'s CLIP and EffNet-Lite0 2-way above their thresholds, and the read-back
    judge reading the stimuli's background ``min_readback_lift`` above chance."""
    table, unavailable = scores.table, scores.unavailable
    values = [
        v for row in table.values() for k, v in row.items() if v is not None and k not in NOT_CHECKED_FINITE
    ]
    if not all(np.isfinite(values)):
        raise CheckFailed("a metric is not finite")
    if not all(row[k] is None for row in table.values() for k in unavailable):
        raise CheckFailed("an unavailable metric has a value")
    for label, least, what in (
        ("CLIP", min_clip_two_way, "ridge reconstructions are not identifiable by CLIP"),
        ("EffNet-Lite0 2-way", min_effnet_two_way, "an ImageNet network cannot tell them apart"),
    ):
        value = table[CHECKED][label]
        if not value > least:
            raise CheckFailed(f"{CHECKED} {label} {value:.3f}, not above {least}: {what}")
    if reading.table:  # the judge itself must work: it reads the stimuli well above chance
        value, chance = reading.table[labels.STIMULI]["background"], reading.chance["background"]
        if not value > chance + min_readback_lift:
            raise CheckFailed(
                f"read-back of the stimuli's background {value:.3f}, not {min_readback_lift} above "
                f"chance {chance:.3f}: the judge cannot read the stimuli"
            )


def results(
    st,
    *,
    inputs: Inputs,
    variants: Variants,
    scores: Scores,
    chance: dict,
    reading: Reading,
    groups: RoiGroups,
) -> Evaluation:
    """The results of 05 (its metrics file) from its steps' outputs."""
    return Evaluation(
        baselines=sorted(variants.baselines),
        chance=chance,
        generation_seconds=variants.seconds,
        generation_settings=inputs.reconstructions.settings,
        n_test=int(len(inputs.test_ids)),
        provenance=variants.provenance,
        readback=reading.table,
        readback_chance=reading.chance,
        readback_uncertainty=reading.uncertainty,
        roi=st.roi,
        roi_table=groups.table,
        roi_uncertainty=groups.uncertainty,
        score_seconds=scores.seconds,
        subject=st.subject,
        table=scores.table,
        unavailable=scores.unavailable,
        uncertainty=scores.uncertainty,
    )
