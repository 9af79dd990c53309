"""Decoding analyses built on the encoders: targets by image id, fitting every encoder of 02, the ROI-group comparison,
voxel-wise encoding accuracy, learning curves and cross-fitted predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lib import metrics, runtime
from lib.analysis import stats
from lib.data import prep, scenes
from lib.models import lowlevel
from lib.models.mlp import MLPConfig, train_mlp
from lib.models.ridge import DEFAULT_ALPHAS, EncoderError, RidgeEncoder


def rows_of(table_ids: np.ndarray, values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of ``values`` (one per entry of ``table_ids``) for each id of ``ids``, in order (ids may repeat)."""
    table_ids = np.asarray(table_ids)
    order = np.argsort(table_ids, kind="stable")
    pos = np.searchsorted(table_ids, ids, sorter=order)
    pos = np.minimum(pos, len(table_ids) - 1)
    found = table_ids[order[pos]] == ids
    if not np.all(found):
        missing = np.asarray(ids)[~found][:5]
        raise EncoderError(f"ids {missing.tolist()} have no row in the table of {len(table_ids)} ids")
    return np.asarray(values)[order[pos]]


def one_hot(labels: np.ndarray, classes: list | None = None) -> tuple[np.ndarray, list]:
    """(n, C) one-hot float32 matrix of ``labels`` and the class list (sorted unique labels unless given)."""
    classes = sorted(set(labels)) if classes is None else list(classes)
    index = {c: k for k, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), np.float32)
    out[np.arange(len(labels)), [index[v] for v in labels]] = 1
    return out, classes


def roi_comparison(x_train: np.ndarray, x_test: np.ndarray, columns: dict[str, np.ndarray],
                   embedding: tuple[np.ndarray, np.ndarray], category: tuple[np.ndarray, np.ndarray],
                   layout: tuple[np.ndarray, np.ndarray], alphas=DEFAULT_ALPHAS, device: str = "auto",
                   seed: int = 0, per_image: bool = False, spaces: dict | None = None):  # fmt: skip
    """Decode three kinds of content from each ROI group's voxels (``columns``: group -> column indices), each
    by ridge with its own leave-one-out alpha per target, from one decomposition per group:

    - ``img_retrieval_top1``: the image embedding (``embedding`` = (train, test) targets), top-1 among the test set;
    - ``category_accuracy``: a class label (``category`` = (train, test) labels; ridge on one-hot, argmax);
    - ``layout_r``: the spatial layout (``layout`` = (train, test) low-resolution images), Pearson r per test
      image between decoded and true raster, averaged.

    ``spaces``: further image spaces {name: (train, test) targets} (e.g. DINO's features), each decoded in the
    same fit and scored as ``<name>_retrieval_top1``; with its own alpha per target column, adding them changes
    no other number.

    Rows of ``x_train`` must be distinct images (average repeats first), so that leaving one out is honest. With
    ``per_image`` also the scores behind each number, {group: {measure: (N test images,)}} (their means are the
    numbers), for :mod:`lib.analysis.stats`.
    """

    e_tr, e_te = embedding
    c_tr, classes = one_hot(np.asarray(category[0]))
    l_tr, l_te = layout
    spaces = spaces or {}
    y = np.hstack([e_tr, c_tr, l_tr, *(tr for tr, _ in spaces.values())]).astype(np.float32)
    de, dc, dl = e_tr.shape[1], c_tr.shape[1], l_tr.shape[1]
    out, scores = {}, {}
    for name, cols in runtime.progress(columns.items(), desc="ROI groups", leave=False):
        if len(cols) == 0:
            continue
        enc = RidgeEncoder(alphas=alphas, alpha_per_target=True, device=device).fit(x_train[:, cols], y)
        pred = enc.predict(x_test[:, cols])
        ret = metrics.retrieval(pred[:, :de], e_te, seed=seed)
        hits = metrics.retrieval_per_sample(pred[:, :de], e_te, seed=seed)
        guess = np.asarray(classes, dtype=object)[pred[:, de : de + dc].argmax(1)]
        scores[name] = {
            "img_retrieval_top1": hits["image"],
            "brain_retrieval_top1": hits["brain"],
            "category_accuracy": (guess == np.asarray(category[1], dtype=object)).astype(np.float64),
            "layout_r": metrics.pearson_per_sample(pred[:, de + dc : de + dc + dl], l_te),
        }
        at = de + dc + dl
        for space, (tr, te) in spaces.items():
            scores[name][f"{space}_retrieval_top1"] = metrics.retrieval_per_sample(
                pred[:, at : at + tr.shape[1]], te, seed=seed
            )["image"]
            at += tr.shape[1]
        out[name] = {
            "n_voxels": int(len(cols)),
            "img_retrieval_top1": ret["image"],
            "brain_retrieval_top1": ret["brain"],
            "category_accuracy": float(scores[name]["category_accuracy"].mean()),
            "layout_r": float(scores[name]["layout_r"].mean()),
        } | {
            f"{space}_retrieval_top1": float(scores[name][f"{space}_retrieval_top1"].mean())
            for space in spaces
        }
    return (out, scores) if per_image else out


def voxel_encoding_accuracy(features_train: np.ndarray, x_train: np.ndarray, features_test: np.ndarray,
                            x_test: np.ndarray, alphas=DEFAULT_ALPHAS, device: str = "auto") -> np.ndarray:  # fmt: skip
    """Forward (encoding) model: ridge from stimulus features to every voxel (leave-one-out alpha per voxel);
    returns each voxel's Pearson r between predicted and measured test responses, (V,)."""

    enc = RidgeEncoder(alphas=alphas, alpha_per_target=True, device=device).fit(features_train, x_train)
    return metrics.pearson_per_column(enc.predict(features_test), x_test)


def fit_encoders(x_train: np.ndarray, targets: dict[str, np.ndarray], x_test: np.ndarray, ridge: dict,
                 mlp: MLPConfig | None, val: np.ndarray, x_val: np.ndarray, val_targets: dict[str, np.ndarray],
                 mlp_kinds=("image",), groups: np.ndarray | None = None, device: str = "auto",
                 state_dir: str | Path | None = None) -> dict[str, tuple]:  # fmt: skip
    """Ridge into every target kind of ``targets`` ({kind: (n_train, D)}), and the MLP into ``mlp_kinds``.

    Ridge fits all training rows (``ridge``: RidgeEncoder arguments; ``groups``, the image of each row, makes its
    cross-validation leave whole images out); the MLP trains
    on the rows not in the boolean mask ``val`` and stops early on (``x_val``, ``val_targets[kind]``), the
    held-out images' averaged responses. Returns {"ridge_<kind>" / "mlp_<kind>": (encoder, test prediction in its
    retrieval space, MLP history or None)}.
    """
    out: dict[str, tuple] = {}
    for kind, y in targets.items():
        r = RidgeEncoder(**ridge).fit(x_train, y, groups=groups)
        out[f"ridge_{kind}"] = (r, r.predict(x_test), None)
        if mlp is None or kind not in mlp_kinds:
            continue
        m, h = train_mlp(
            x_train[~val], y[~val], mlp, x_val, val_targets[kind], device=device, state_dir=state_dir
        )
        out[f"mlp_{kind}"] = (m, m.retrieval_space(x_test), h)
    return out


def encoder_scores(fitted: dict[str, tuple], x_test: np.ndarray, targets: dict[str, np.ndarray], seed: int = 0,
                   ceiling: dict[str, tuple] | None = None, x_clean: np.ndarray | None = None) -> dict[str, dict]:  # fmt: skip
    """02's table: for each encoder of :func:`fit_encoders` (``name`` = ``<model>_<kind>``), the metrics of
    :func:`lib.metrics.summary` against ``targets[kind]`` (retrieval and 2-way on its retrieval-space
    prediction; cosine and r on its regression output, an MLP's head). With ``ceiling`` (the same encoders fitted
    on noise-free responses, ``x_clean`` their test input) also its numbers as ``ceiling_*`` and the
    ``fraction_of_ceiling`` of image retrieval."""

    def score(result, x, kind):
        enc, pred, hist = result
        return metrics.summary(pred, targets[kind], seed=seed, regression=enc.predict(x) if hist else None)

    table = {}
    for name, result in fitted.items():
        kind = name.split("_", 1)[1]
        row = score(result, x_test, kind)
        if ceiling:
            c = score(ceiling[name], x_clean, kind)
            row |= {f"ceiling_{k}": v for k, v in c.items() if k not in ("retrieval_n", "chance")}
            row["fraction_of_ceiling"] = row["img_retrieval_top1"] / max(c["img_retrieval_top1"], 1e-9)
        table[name] = row
    return table


def encoder_per_sample(fitted: dict[str, tuple], x_test: np.ndarray, targets: dict[str, np.ndarray],
                       seed: int = 0) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """The scores behind :func:`encoder_scores`' measured numbers, per test image: {encoder: {metric: (N,)}}."""

    out = {}
    for name, (enc, pred, hist) in fitted.items():
        kind = name.split("_", 1)[1]
        out[name] = metrics.summary_per_sample(pred, targets[kind], seed=seed,
                                               regression=enc.predict(x_test) if hist else None)  # fmt: skip
    return out


def uncertainty(
    per_image: dict[str, dict[str, np.ndarray]], pairs, resamples: int = 2000, seed: int = 0
) -> dict:
    """Bootstrap intervals of every number of a table of per-image scores and paired comparisons of ``pairs``
    (rows (a, b): a - b on the same images), as the metrics files record them: {"intervals": {row: {metric:
    [low, high]}}, "comparisons": {"a − b": {metric: {diff, low, high, p}}}, "resamples": ...}."""

    return {
        "intervals": stats.intervals(per_image, resamples, seed=seed),
        "comparisons": stats.comparisons(per_image, pairs, resamples, seed=seed),
        "resamples": int(resamples),
        "level": stats.LEVEL,
    }


def encoder_retrieval(pred: dict[str, np.ndarray], test_ids: np.ndarray, encoders, seed: int = 0,
                      per_image: bool = False) -> dict:  # fmt: skip
    """Top-1 retrieval both ways (:func:`lib.metrics.retrieval`, among at most 300) of each of
    ``encoders`` on ``test_ids``, from 02's predictions ``pred`` (``pred_<encoder>``, its retrieval space,
    against ``true_<kind>``): {encoder: {"image": ..., "brain": ..., "chance": ...}}. The same numbers as 02's
    table when ``test_ids`` are all of 02's test images and the seed is 02's. With ``per_image``, each test
    image's hits instead ({encoder: {"image": (N,), "brain": (N,)}}, :func:`~lib.metrics.retrieval_per_sample`)."""

    out = {}
    for enc in encoders:
        kind = enc.split("_", 1)[1]
        p, t = (rows_of(pred["test_ids"], pred[k], test_ids) for k in (f"pred_{enc}", f"true_{kind}"))
        out[enc] = (metrics.retrieval_per_sample if per_image else metrics.retrieval)(p, t, seed=seed)
    return out


def roi_targets(ds, train_ids: np.ndarray, test_ids: np.ndarray, vec: dict[str, np.ndarray],
                grid: int) -> tuple[tuple, tuple, tuple, dict]:  # fmt: skip
    """The three targets of :func:`roi_comparison` for (training, test) images: their image embeddings (from 01's
    ``vec``), the main object's shape (mini-NSD's scenes; "?" on real data, which has no such label) and the grey
    layout on a ``grid`` raster; and chance for each score (1/n retrieval among at most 300, the majority shape,
    layout r 0)."""

    e = tuple(rows_of(vec["ids"], vec["image"], i) for i in (train_ids, test_ids))
    lay = tuple(metrics.layout(ds.images(i), grid, grey=True) for i in (train_ids, test_ids))
    if ds.is_simulated:
        cat = tuple(scenes.attribute_table(ds.scenes(i))["shape"].to_numpy() for i in (train_ids, test_ids))
    else:
        cat = (np.array(["?"] * len(train_ids)), np.array(["?"] * len(test_ids)))
    majority = float(np.unique(cat[1], return_counts=True)[1].max() / len(cat[1]))
    chance = {
        "img_retrieval_top1": 1 / min(300, len(test_ids)),
        "category_accuracy": majority,
        "layout_r": 0.0,
    }
    return e, cat, lay, chance


def ridge_learning_curve(x_train: np.ndarray, y_train: np.ndarray, ids: np.ndarray, x_test: np.ndarray,
                         y_test: np.ndarray, fractions=(0.1, 0.25, 0.5, 1.0), ridge: dict | None = None,
                         seed: int = 0) -> dict[str, list]:  # fmt: skip
    """Test image retrieval of ridge trained on growing random subsets of the training images (all trials of an
    image together): {"n": images, "top1": retrieval}."""

    rng = np.random.default_rng(seed)
    uniq = rng.permutation(np.unique(ids))
    out: dict[str, list] = {"n": [], "top1": []}
    for n in sorted({int(round(f * len(uniq))) for f in fractions}):
        if n < 3:
            continue
        keep = np.isin(ids, uniq[:n])
        r = RidgeEncoder(**(ridge or {})).fit(x_train[keep], y_train[keep], groups=ids[keep])
        out["n"].append(n)
        out["top1"].append(metrics.retrieval(r.predict(x_test), y_test, seed=seed)["image"])
    return out


def cross_fitted(x: np.ndarray, y: np.ndarray, ids: np.ndarray, folds: int = 5, seed: int = 0,
                 **ridge) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Out-of-fold ridge predictions for every training image, made the way the test set is predicted: the
    images are split into ``folds`` (all repeats of an image in one fold); each fold's :class:`RidgeEncoder`
    (``ridge`` keyword arguments) is fitted on the single trials of the other folds and predicts the
    repeat-averaged responses of its own images. Returns (sorted image ids, predictions (n_images, D)); what a
    generator tuned on fMRI (03) trains on, since in-sample predictions are closer to the truth than test ones."""

    x, y, ids = np.asarray(x), np.asarray(y), np.asarray(ids)
    if len(x) != len(y) or len(x) != len(ids):
        raise EncoderError(f"x ({len(x)}), y ({len(y)}) and ids ({len(ids)}): expected one row each")
    uniq = np.unique(ids)
    if not 2 <= folds <= len(uniq):
        raise EncoderError(f"folds={folds}: expected 2 .. {len(uniq)} (the number of images)")
    fold_of = dict(zip(uniq, np.random.default_rng(seed).permutation(len(uniq)) % folds, strict=True))
    row_fold = np.array([fold_of[i] for i in ids])
    x_avg, avg_ids, _ = prep.average_repeats(x, ids)
    avg_fold = np.array([fold_of[i] for i in avg_ids])
    out = np.zeros((len(avg_ids), y.shape[1]), np.float32)
    for k in runtime.progress(range(folds), desc="cross-fitted ridge"):
        enc = RidgeEncoder(**ridge).fit(x[row_fold != k], y[row_fold != k])
        out[avg_fold == k] = enc.predict(x_avg[avg_fold == k])
    order = np.argsort(avg_ids)
    return avg_ids[order], out[order]


def lowlevel_choice(x_train: np.ndarray, images_train: np.ndarray, x_test: np.ndarray, images_test: np.ndarray,
                    columns: np.ndarray, sizes, group: str = "early", groups: np.ndarray | None = None,
                    alphas=None, device: str = "auto") -> tuple[dict[int, dict[str, float]], dict]:  # fmt: skip
    """The spatial pathway's target resolution, chosen by measurement: for each of ``sizes``, ridge
    (:func:`lib.models.lowlevel.fit`) from the voxels ``columns`` to the stimuli at that size, and PixCorr and
    SSIM of its blurry reconstructions of the test images (``images_test``, one per row of ``x_test``). Returns
    ({size: {"PixCorr", "SSIM", "alpha"}}, {size: decoder})."""
    scores, decoders = {}, {}
    for size in sizes:
        dec = lowlevel.fit(x_train, images_train, columns, size=int(size), group=group, alphas=alphas,
                           groups=groups, device=device)  # fmt: skip
        low = metrics.low_level_per_image({"blurry": dec.blurry(x_test, images_test.shape[1])}, images_test)
        scores[int(size)] = {"PixCorr": float(np.mean(low["blurry"]["PixCorr"])),
                             "SSIM": float(np.mean(low["blurry"]["SSIM"])), "alpha": float(dec.encoder.alpha_)}  # fmt: skip
        decoders[int(size)] = dec
    return scores, decoders


def spatial_targets(x_train: np.ndarray, x_test: np.ndarray, columns: np.ndarray, targets: dict[str, tuple],
                    position: tuple[np.ndarray, np.ndarray], train_ids: np.ndarray, alphas=DEFAULT_ALPHAS,
                    device: str = "auto", seed: int = 0, decoded: dict | None = None) -> dict[str, dict]:  # fmt: skip
    """Candidate targets of the spatial pathway compared on the same voxels: for each of ``targets`` ({name:
    (target of each training row, of each test row)}), ridge from the voxels ``columns`` (one alpha, chosen
    leaving whole images out; ``decoded``: {name: test prediction} already made, e.g. the pathway's own pixels)
    and, on its test prediction: top-1 retrieval among the test images and 2-way identification in the target's
    own space, and ``position_accuracy``, the 3 x 3 cell of the main object read from the prediction by a
    linear probe (:func:`lib.metrics.linear_probe_accuracy`) fitted on the true targets of the distinct training
    images (``position``: (label of each training row, of each test row)), beside ``position_true``, the same
    probe on the true test targets (what the space itself holds). Returns {name: those numbers, ``dims``}."""
    decoded = decoded or {}
    first = np.unique(train_ids, return_index=True)[1]  # one row per training image
    lab_tr = pd.DataFrame({"position": np.asarray(position[0])[first]})
    lab_te = pd.DataFrame({"position": np.asarray(position[1])})
    out = {}
    for name, (y_tr, y_te) in targets.items():
        y_tr, y_te = np.reshape(y_tr, (len(y_tr), -1)), np.reshape(y_te, (len(y_te), -1))
        if name in decoded:
            pred = np.reshape(decoded[name], (len(y_te), -1))
        else:
            enc = RidgeEncoder(alphas=alphas, device=device).fit(x_train[:, columns], y_tr, groups=train_ids)
            pred = enc.predict(x_test[:, columns])
        ret = metrics.retrieval(pred, y_te, seed=seed)
        out[name] = {
            "img_retrieval_top1": ret["image"],
            "two_way": metrics.two_way_identification(pred, y_te),
            "position_accuracy": metrics.linear_probe_accuracy(y_tr[first], pred, lab_tr, lab_te)["position"],
            "position_true": metrics.linear_probe_accuracy(y_tr[first], y_te, lab_tr, lab_te)["position"],
            "dims": int(y_tr.shape[1]),
        }
    return out
