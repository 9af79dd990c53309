"""The steps of notebook 02 (fMRI -> CLIP encoders), in the order the notebook runs them.

    inputs    = load_inputs(st, train_on=..., test_on=..., text_targets=...)    # 00's voxels, 01's embeddings
    encoders  = fit_encoders(st, inputs=inputs, mlp=..., ...)                   # ridge and the residual MLP
    ceiling   = fit_ceiling(st, inputs=inputs, encoders=encoders)               # the same on noise-free responses
    scores    = score(inputs=inputs, encoders=encoders, ceiling=ceiling, ...)   # 02's table
    ...
    results(...)                                                                # lib.report.results.FmriEncoder

Each step returns a small dataclass that the next steps take; the encoders, losses and analyses themselves live in
:mod:`lib.models.ridge`, :mod:`lib.models.mlp`, :mod:`lib.models.lowlevel` and :mod:`lib.analysis.decoding`. The
random generator ``st.rng`` is drawn from once, by :func:`fit_encoders` (the MLP's validation images).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lib.analysis import decoding, stats
from lib.data import prep, scenes, simulate
from lib.data.rois import STANDARD_GROUPS
from lib.models import lowlevel as lowlevel_models
from lib.models.mlp import MLPConfig
from lib.report.results import FmriEncoder

#: the conventions of the training and test responses (the field's: single training trials, averaged test repeats)
TRAIN_ON = ("trials", "averaged")
TEST_ON = ("averaged", "trials")
LOWLEVEL_MODELS = ("ridge", "mlp")
RIDGE_ALPHAS = (1.0, 10.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0, 1000000.0)


class FmriEncoderError(ValueError):
    """A parameter of 02 that is not what was expected, or a failed check of its results; the message names it."""


@dataclasses.dataclass
class EncoderConfig:
    """Ridge's alpha grid and the images held out for the MLP's early stopping (profile section ``encoder``)."""

    #: the grid every ridge of 02 chooses its alpha from (by leave-one-out, or ridge_cv folds)
    ridge_alphas: list = dataclasses.field(default_factory=lambda: list(RIDGE_ALPHAS))
    val_images: int = 200  # training images held out for the MLP's early stopping

    def check(self) -> None:
        if not self.ridge_alphas or any(not a > 0 for a in self.ridge_alphas):
            raise FmriEncoderError(f"ridge_alphas={self.ridge_alphas}: expected a list of positive alphas")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise FmriEncoderError(f"{name}={value!r}: expected one of {', '.join(map(repr, allowed))}")


# --- the responses and their targets ---------------------------------------------------------------------------


@dataclasses.dataclass
class Inputs:
    """The voxels 00 prepared and the embeddings 01 wrote, as the encoders read them."""

    prepared: prep.Prepared  # 00's prepared responses (voxel_ijk; training trials as prepared)
    vec: dict  # 01's embeddings (lib.artifacts.Store.load_embeddings)
    x_train: np.ndarray  # training responses (single trials, or repeats averaged with train_on="averaged")
    train_ids: np.ndarray  # the image of each training row
    x_test: np.ndarray  # test responses (repeats averaged, or the first presentation with test_on="trials")
    test_ids: np.ndarray
    y_train: dict  # {kind: embedding of each training row}; kinds: image (and text with text_targets)
    y_test: dict
    train_on: str
    test_on: str

    @property
    def kinds(self) -> list[str]:
        return list(self.y_train)

    def describe(self, roi: str) -> str:
        train, test = self.x_train.shape, self.x_test.shape
        return f"{roi}: train {train} ({self.train_on}), test {test} ({self.test_on})"


def load_inputs(
    st,
    *,
    train_on: str = "trials",
    test_on: str = "averaged",
    text_targets: bool = True,
    dino_targets: bool = True,
) -> Inputs:
    """00's prepared responses of ``st``'s subject, ROI and sessions (an error naming 00 when it has not run),
    with 01's image (and, with ``text_targets``, caption) embedding of each row as targets; with ``dino_targets``
    and 01's DINO features (simulated data), DINO's image vector ("dino") as a further target, and its patch
    tokens on a 2 x 2 grid ("dino_grid") for the spatial pathway, each standardised with the training images'
    mean and standard deviation (DINO's features are non-negative; retrieval compares directions)."""
    _one_of("train_on", train_on, TRAIN_ON)
    _one_of("test_on", test_on, TEST_ON)
    ds, where = st.ds, (st.subject, st.roi, st.sessions)
    data, _, _ = prep.prepare_cached(ds, *where, compute=False, nonfinite=st.nonfinite)
    if test_on == "trials":  # single test trials, prepared separately (cached): each image's first one
        single, _, _ = prep.prepare_cached(ds, *where, average_test=False, nonfinite=st.nonfinite)
        x_test, test_ids = prep.first_repeat(single.x_test, single.test_ids)
    else:
        x_test, test_ids = data.x_test, data.test_ids
    vec = st.store.load_embeddings()
    x_train, train_ids = data.x_train, data.train_ids
    if train_on == "averaged":
        x_train, train_ids, _ = prep.average_repeats(x_train, train_ids)
    kinds = ["image", "text"] if text_targets else ["image"]
    if dino_targets and "dino" in vec:
        vec = dict(vec) | {k: _standardised(vec[k], vec["ids"], train_ids) for k in DINO_SPACES if k in vec}
        kinds.append("dino")
    y_train = {k: decoding.rows_of(vec["ids"], vec[k], train_ids) for k in kinds}
    y_test = {k: decoding.rows_of(vec["ids"], vec[k], test_ids) for k in kinds}
    return Inputs(data, vec, x_train, train_ids, x_test, test_ids, y_train, y_test, train_on, test_on)


#: 01's DINO features 02 reads: the image vector (an encoder target) and the 2 x 2 grid (the spatial pathway's)
DINO_SPACES = ("dino", "dino_grid")


def _standardised(values: np.ndarray, ids: np.ndarray, train_ids: np.ndarray) -> np.ndarray:
    """Every row of ``values`` z-scored per column with the mean and standard deviation of the training images'."""
    fit = decoding.rows_of(ids, values, np.unique(train_ids))
    return ((values - fit.mean(0)) / np.maximum(fit.std(0), 1e-6)).astype(np.float32)


# --- the encoders -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Encoders:
    """Every fitted encoder and what fitting them took (the refits of the ceiling and the seed spread reuse it)."""

    fitted: dict  # {"ridge_<kind>" / "mlp_<kind>": (encoder, test prediction in its retrieval space, MLP history)}
    ridge: dict  # RidgeEncoder arguments (alphas, cv, device)
    mlp: MLPConfig
    mlp_kinds: list  # the target kinds the MLP is trained into
    val: np.ndarray  # boolean mask of the training rows held out for the MLP's early stopping
    x_val: np.ndarray  # their responses, repeats averaged
    val_ids: np.ndarray
    val_targets: dict  # {kind: embedding of each validation image}

    @property
    def histories(self) -> dict:
        """{MLP encoder: its training history}."""
        return {n: h for n, (_, _, h) in self.fitted.items() if h is not None}

    def describe(self) -> str:
        lines = []
        for name, (enc, _, h) in self.fitted.items():
            if h is None:
                lines.append(f"{name}: alpha {enc.alpha_:g}")
            else:
                lines.append(f"{name}: {len(h['loss'])} epochs, best {h.get('best_epoch')}")
        return "\n".join(lines)


def _fit(st, inputs: Inputs, enc: Encoders, x_train, x_test, x_val, mlp: MLPConfig, where: str) -> dict:
    return decoding.fit_encoders(x_train, inputs.y_train, x_test, enc.ridge, mlp, enc.val, x_val, enc.val_targets,
                                 enc.mlp_kinds, inputs.train_ids, st.device, st.store.work_dir(st.name, where))  # fmt: skip


def fit_encoders(st, *, inputs: Inputs, mlp: MLPConfig, alphas, ridge_cv: int = 0, val_images: int = 200,
                 mlp_text: bool = False, mlp_dino: bool = True) -> Encoders:  # fmt: skip
    """Ridge into every target kind (alpha from ``alphas`` by leave-one-image-out, or ``ridge_cv`` folds grouped by
    image) and the residual MLP (``mlp``) into the image embedding (and the caption's with ``mlp_text``, DINO's
    image vector with ``mlp_dino`` where it is a target). The MLP
    trains on the training rows of all but ``val_images`` images drawn by ``st.rng`` and stops early on those."""
    held_out = prep.draw_ids(np.unique(inputs.train_ids), val_images, st.rng, "encoder.val_images",
                             "training images held out for early stopping", keep=1)  # fmt: skip
    val = np.isin(inputs.train_ids, held_out)
    x_val, val_ids, _ = prep.average_repeats(inputs.x_train[val], inputs.train_ids[val])
    vec = inputs.vec
    enc = Encoders(
        fitted={}, ridge=dict(alphas=alphas, cv=ridge_cv or None, device=st.device), mlp=mlp,
        mlp_kinds=[k for k in inputs.kinds if {"image": True, "text": mlp_text, "dino": mlp_dino}[k]],
        val=val, x_val=x_val, val_ids=val_ids,
        val_targets={k: decoding.rows_of(vec["ids"], vec[k], val_ids) for k in inputs.kinds},
    )  # fmt: skip
    enc.fitted = _fit(st, inputs, enc, inputs.x_train, inputs.x_test, x_val, mlp, "measured")
    return enc


@dataclasses.dataclass
class Ceiling:
    """The same encoders fitted and tested on the simulator's noise-free responses (empty on real data)."""

    fitted: dict  # as Encoders.fitted; {} on real data
    x_test: np.ndarray | None  # the noise-free test responses, z-scored with the training rows' statistics
    raw_test: np.ndarray | None  # the noise-free test responses as simulated (for the ROI groups' ceiling)


def fit_ceiling(st, *, inputs: Inputs, encoders: Encoders) -> Ceiling:
    """On simulated data, the encoders of :func:`fit_encoders` refitted on the noise-free responses of the same
    trials, z-scored with the training rows' statistics like the measured data; nothing on real data."""
    if not st.ds.is_simulated:
        return Ceiling({}, None, None)
    ijk = inputs.prepared.voxel_ijk
    clean = [
        simulate.noise_free_for(st.ds, st.subject, ijk, i)
        for i in (inputs.train_ids, inputs.test_ids, encoders.val_ids)
    ]
    clean_tr, clean_te, clean_va = prep.standardise(*clean)
    fitted = _fit(st, inputs, encoders, clean_tr, clean_te, clean_va, encoders.mlp, "ceiling")
    return Ceiling(fitted, clean_te, clean[1])


@dataclasses.dataclass
class Scores:
    """02's table: {encoder: metrics on the test images (with its ceiling's, on simulated data)}."""

    table: dict
    chance: float  # 1 / the number of candidates of top-1 retrieval
    has_ceiling: bool

    @property
    def best(self) -> str:
        """The better image encoder by image retrieval."""
        return max(("ridge_image", "mlp_image"), key=lambda n: self.table[n]["img_retrieval_top1"])

    def describe(self) -> str:
        lines = [f"top-1 among {round(1 / self.chance)} (chance {self.chance:.4f}):"]
        for name, row in self.table.items():
            ceil = (
                f" | ceiling {row['ceiling_img_retrieval_top1']:.3f} ({row['fraction_of_ceiling']:.2f} of it)"
                if self.has_ceiling
                else ""
            )
            lines.append(
                f"  {name:12s} image {row['img_retrieval_top1']:.3f} brain {row['brain_retrieval_top1']:.3f} "
                f"2-way {row['two_way']:.3f} cosine {row['cosine']:.3f}{ceil}"
            )
        return "\n".join(lines)


def score(*, inputs: Inputs, encoders: Encoders, ceiling: Ceiling, seed: int) -> Scores:
    """Top-1 retrieval among at most 300 both ways, 2-way identification, cosine and r of every encoder
    (:func:`lib.analysis.decoding.encoder_scores`), with the fraction of its ceiling on simulated data."""
    table = decoding.encoder_scores(
        encoders.fitted, inputs.x_test, inputs.y_test, seed, ceiling.fitted, ceiling.x_test
    )
    return Scores(table, 1 / min(300, len(inputs.test_ids)), bool(ceiling.fitted))


def encoder_uncertainty(*, inputs: Inputs, encoders: Encoders, resamples: int, seed: int) -> dict:
    """95% bootstrap intervals over the test images of every number of the table, and the MLP against ridge on the
    same images (paired interval of the difference, sign-flip permutation p): :func:`decoding.uncertainty`."""
    per_image = decoding.encoder_per_sample(encoders.fitted, inputs.x_test, inputs.y_test, seed)
    return decoding.uncertainty(per_image, [("mlp_image", "ridge_image")], resamples, seed)


def describe_uncertainty(uncertainty: dict) -> str:
    rounded = {
        n: {m: np.round(v, 3).tolist() for m, v in iv.items()} for n, iv in uncertainty["intervals"].items()
    }
    return f"{rounded}\n{stats.describe_comparisons(uncertainty['comparisons'])}"


# --- ROI groups ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RoiGroups:
    """Ridge from each ROI group's voxels to the image embedding, the main object's shape and the layout."""

    columns: dict  # {group: column indices of the prepared voxels}
    x_train: np.ndarray  # training responses, repeats averaged (leaving one image out is then honest)
    train_ids: np.ndarray
    embedding: tuple  # (training, test) image embeddings
    results: dict  # {group: {n_voxels, img_retrieval_top1, brain_retrieval_top1, category_accuracy, ...}}
    uncertainty: dict  # intervals, and each group against the prepared ROI
    ceiling: dict | None  # the same on noise-free responses (None on real data)
    chance: dict  # chance of each measure


def roi_groups(
    st, *, inputs: Inputs, ceiling: Ceiling, groups: list, layout_grid: int, alphas, resamples: int
) -> RoiGroups:
    """:func:`lib.analysis.decoding.roi_comparison` of ``groups`` (empty: the standard groups present) within the
    prepared ROI, its bootstrap intervals, and its ceiling on simulated data."""
    ds, seed, data = st.ds, st.seed, inputs.prepared
    columns = prep.group_columns(ds, st.subject, data.voxel_ijk, groups or list(STANDARD_GROUPS))
    xa, ida, _ = prep.average_repeats(data.x_train, data.train_ids)
    e_pair, cat, lay, chance = decoding.roi_targets(ds, ida, inputs.test_ids, inputs.vec, layout_grid)
    # DINO's image vector decoded in the same fits: which areas carry what DINO encodes
    spaces = {k: (decoding.rows_of(inputs.vec["ids"], inputs.vec[k], ida), inputs.y_test[k])
              for k in inputs.kinds if k == "dino"}  # fmt: skip
    chance |= {f"{k}_retrieval_top1": chance["img_retrieval_top1"] for k in spaces}
    res, per_image = decoding.roi_comparison(
        xa, inputs.x_test, columns, e_pair, cat, lay, alphas, st.device, seed, per_image=True, spaces=spaces
    )
    pairs = [(g, st.roi) for g in res if g != st.roi]
    uncertainty = decoding.uncertainty(per_image, pairs, resamples, seed)
    roi_ceiling = None
    if ds.is_simulated:
        clean = simulate.noise_free_for(ds, st.subject, data.voxel_ijk, ida)
        ca, cte = prep.standardise(clean, ceiling.raw_test)
        roi_ceiling = decoding.roi_comparison(
            ca, cte, columns, e_pair, cat, lay, alphas, st.device, seed, spaces=spaces
        )
    return RoiGroups(columns, xa, ida, e_pair, res, uncertainty, roi_ceiling, chance)


# --- the spatial pathway ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Lowlevel:
    """The spatial pathway: a decoder from the early voxels to a low-resolution image, and its target choice."""

    decoder: object  # lib.models.lowlevel decoder (the one 03 and 04 read)
    choice: dict  # {size: {PixCorr, SSIM, alpha}} of ridge at each compared target side
    n_voxels: int
    roi: str
    size: int
    model: str
    images_test: np.ndarray  # the test stimuli
    blurry: np.ndarray  # the decoder's reconstructions of them at their size

    def describe(self) -> str:
        choice = {s: {k: round(v, 3) for k, v in r.items()} for s, r in self.choice.items()}
        return f"{lowlevel_models.describe(self.decoder)} {choice}"

    def record(self) -> dict:
        """As the metrics record it."""
        return {"roi": self.roi, "size": self.size, "model": self.model, "n_voxels": self.n_voxels,
                "target_choice": self.choice}  # fmt: skip


def spatial_pathway(st, *, inputs: Inputs, encoders: Encoders, roi: str = "early", size: int = 16,
                    sizes=(8, 16, 32), model: str = "ridge", alphas=None) -> Lowlevel:  # fmt: skip
    """Ridge from the ``roi`` voxels to the stimuli at each side of ``sizes`` (and ``size``), scored by PixCorr and
    SSIM of the blurry test reconstructions (:func:`lib.analysis.decoding.lowlevel_choice`); the pathway kept is
    the ridge at ``size``, or with ``model="mlp"`` an MLP (squared error only, ``encoders.mlp``) at that side."""
    _one_of("lowlevel_model", model, LOWLEVEL_MODELS)
    ds, x_train, ids = st.ds, inputs.x_train, inputs.train_ids
    cols = prep.group_columns(ds, st.subject, inputs.prepared.voxel_ijk, [roi])[roi]
    img_train, img_test = ds.images(ids), ds.images(inputs.test_ids)
    choice, fits = decoding.lowlevel_choice(x_train, img_train, inputs.x_test, img_test, cols,
                                            sorted({*sizes, size}), group=roi, groups=ids, alphas=alphas,
                                            device=st.device)  # fmt: skip
    if model == "ridge":
        dec = fits[size]
    else:
        dec = lowlevel_models.fit(x_train, img_train, cols, size=size, group=roi, model="mlp", mlp=encoders.mlp,
                                  val=encoders.val, device=st.device)  # fmt: skip
    blurry = dec.blurry(inputs.x_test, img_test.shape[1])
    return Lowlevel(dec, choice, int(len(cols)), roi, size, model, img_test, blurry)


@dataclasses.dataclass
class SpatialTargets:
    """The spatial pathway's candidate targets compared on its voxels: the pixels it decodes, and DINO's patch
    tokens on a 2 x 2 grid and its image vector (:func:`lib.analysis.decoding.spatial_targets`)."""

    scores: dict  # {target: {img_retrieval_top1, two_way, position_accuracy, position_true, dims}}
    chance: dict  # retrieval 1/n, 2-way 0.5, position the majority cell
    roi: str

    def describe(self) -> str:
        return "\n".join(
            f"{name:>12}: retrieval {r['img_retrieval_top1']:.3f}, 2-way {r['two_way']:.3f}, position "
            f"{r['position_accuracy']:.3f} (true targets {r['position_true']:.3f}), {r['dims']} dims"
            for name, r in self.scores.items()
        )


def spatial_targets(st, *, inputs: Inputs, lowlevel: Lowlevel, alphas) -> SpatialTargets | None:
    """DINO's features as candidate targets of the spatial pathway, beside its pixels, from the same ``lowlevel.roi``
    voxels: each scored by retrieval and 2-way identification in its own space and by where the main object is,
    read by a probe fitted on the true targets (the simulator's 3 x 3 position; None without DINO or on real
    data). The pixels are the pathway's own decoder's prediction."""
    if not (
        st.ds.is_simulated and "dino" in inputs.y_train and "dino_grid" in inputs.vec
    ):  # dino_targets off
        return None
    ds, ids = st.ds, inputs.train_ids
    cols = prep.group_columns(ds, st.subject, inputs.prepared.voxel_ijk, [lowlevel.roi])[lowlevel.roi]
    pixels = tuple(lowlevel_models.downsample(ds.images(i), lowlevel.size) for i in (ids, inputs.test_ids))
    targets = {f"pixels {lowlevel.size} px": pixels,
               "DINO grid": tuple(decoding.rows_of(inputs.vec["ids"], inputs.vec["dino_grid"], i)
                                  for i in (ids, inputs.test_ids)),
               "DINO image": (inputs.y_train["dino"], inputs.y_test["dino"])}  # fmt: skip
    position = tuple(
        scenes.attribute_table(ds.scenes(i))["position"].to_numpy() for i in (ids, inputs.test_ids)
    )
    decoded = {f"pixels {lowlevel.size} px": lowlevel.decoder.predict(inputs.x_test)}
    scores = decoding.spatial_targets(inputs.x_train, inputs.x_test, cols, targets, position, ids, alphas,
                                      st.device, st.seed, decoded)  # fmt: skip
    majority = float(np.unique(position[1], return_counts=True)[1].max() / len(position[1]))
    chance = {"img_retrieval_top1": 1 / min(300, len(inputs.test_ids)), "two_way": 0.5, "position": majority}
    return SpatialTargets(scores, chance, lowlevel.roi)


# --- learning curves, voxel accuracy, predictions -------------------------------------------------------------------


def ridge_curve(*, inputs: Inputs, encoders: Encoders, seed: int) -> dict:
    """Test image retrieval of ridge against the number of training images: {"ridge_image (test)": {n, top1}}."""
    curve = decoding.ridge_learning_curve(inputs.x_train, inputs.y_train["image"], inputs.train_ids, inputs.x_test,
                                          inputs.y_test["image"], ridge=encoders.ridge, seed=seed)  # fmt: skip
    return {"ridge_image (test)": curve}


@dataclasses.dataclass
class VoxelAccuracy:
    """The forward model's accuracy: Pearson r of each voxel's predicted test responses."""

    r: np.ndarray  # (V,)
    by_group: dict  # {ROI group: r of its voxels}

    def medians(self) -> dict:
        return {g: float(np.median(v)) for g, v in self.by_group.items()}

    def describe(self) -> str:
        by_group = {g: round(v, 3) for g, v in self.medians().items()}
        return f"median voxel r {np.median(self.r):.3f}; by group: {by_group}"


def voxel_accuracy(st, *, inputs: Inputs, roi: RoiGroups, alphas) -> VoxelAccuracy:
    """Ridge from the image embedding to every voxel (leave-one-out alpha per voxel), on the training images'
    averaged responses (:func:`lib.analysis.decoding.voxel_encoding_accuracy`)."""
    r = decoding.voxel_encoding_accuracy(
        roi.embedding[0], roi.x_train, inputs.y_test["image"], inputs.x_test, alphas, st.device
    )
    return VoxelAccuracy(r, {g: r[c] for g, c in roi.columns.items() if len(c)})


def image_predictions(*, inputs: Inputs, encoders: Encoders) -> dict:
    """The image encoders' test predictions (retrieval space), and the MLP's embedding head."""
    preds = {n: encoders.fitted[n][1] for n in ("ridge_image", "mlp_image")}
    preds["mlp_image (head)"] = encoders.fitted["mlp_image"][0].predict(inputs.x_test)
    return preds


# --- hand-offs, checks, seed spread, results ------------------------------------------------------------------------


def save(st, *, inputs: Inputs, encoders: Encoders, lowlevel: Lowlevel, scores: Scores) -> str:
    """Save every encoder, the spatial pathway and the test predictions for 03 and 04; then check that image
    retrieval is clearly above chance and every prediction finite. Returns what was saved, as text."""
    model_key, x_test = str(inputs.vec["model_key"]), inputs.x_test
    fitted = encoders.fitted
    for name, (enc, _, _) in fitted.items():
        st.store.save_encoder(name, enc, model_key, st.roi, st.subject)
    arrays = {f"pred_{n}": p for n, (_, p, _) in fitted.items()}
    arrays |= {f"head_{n}": e.predict(x_test) for n, (e, _, _) in fitted.items() if n.startswith("mlp")}
    arrays |= {f"true_{k}": v for k, v in inputs.y_test.items()}
    arrays["lowlevel"] = lowlevel.decoder.predict(x_test)
    st.store.save_lowlevel(lowlevel.decoder, st.roi, st.subject)
    path = st.store.save_predictions(inputs.test_ids, model_key, st.roi, st.subject, **arrays)
    best = scores.table[scores.best]["img_retrieval_top1"]
    if not best > 5 * scores.chance:
        raise FmriEncoderError(f"image retrieval {best:.4f} of {scores.best} is not clearly above chance")
    bad = [k for k, p in arrays.items() if not np.isfinite(p).all()]
    if bad:
        raise FmriEncoderError(f"predictions {bad} are not finite")
    return f"saved {sorted(fitted)} {path.name}"


def seed_spread(st, *, inputs: Inputs, encoders: Encoders, scores: Scores, seeds: int) -> dict:
    """The encoders refitted with the MLP seeded ``st.seed + 1, ...`` (``seeds`` in all), scored as the table
    (:func:`lib.analysis.stats.across_seeds`; one seed: a spread of 0)."""

    def table_of(s: int) -> dict:
        mlp = dataclasses.replace(encoders.mlp, seed=s)
        fitted = _fit(st, inputs, encoders, inputs.x_train, inputs.x_test, encoders.x_val, mlp, "measured")
        return decoding.encoder_scores(fitted, inputs.x_test, inputs.y_test, st.seed)

    return stats.across_seeds(range(st.seed, st.seed + seeds), table_of, first=scores.table)


def dino_ratio(scores: Scores) -> float | None:
    """The better DINO encoder's test image retrieval over the better CLIP-image encoder's (None without DINO)."""
    dino = [r["img_retrieval_top1"] for n, r in scores.table.items() if n.endswith("_dino")]
    return max(dino) / max(scores.table[scores.best]["img_retrieval_top1"], 1e-9) if dino else None


def results(st, *, inputs: Inputs, encoders: Encoders, scores: Scores, uncertainty: dict, roi: RoiGroups,
            lowlevel: Lowlevel, curve: dict, voxels: VoxelAccuracy, spread: dict,
            spatial: SpatialTargets | None = None) -> FmriEncoder:  # fmt: skip
    """02's results (:class:`lib.report.results.FmriEncoder`) from the steps' outputs."""
    fitted, table = encoders.fitted, scores.table
    return FmriEncoder(
        subject=st.subject, roi=st.roi, train_on=inputs.train_on, test_on=inputs.test_on,
        n_train=int(len(inputs.train_ids)), n_test=int(len(inputs.test_ids)), chance=scores.chance, encoders=table,
        roi_groups=roi.results, roi_groups_ceiling=roi.ceiling, roi_chance=roi.chance,
        ridge_alpha={n: enc.alpha_ for n, (enc, _, h) in fitted.items() if h is None},
        mlp_epochs={n: len(h["loss"]) for n, h in encoders.histories.items()},
        mlp_train_seconds={n: h["seconds"] for n, h in encoders.histories.items()},
        voxel_r_median=voxels.medians(), ridge_learning_curve=curve, uncertainty=uncertainty,
        roi_uncertainty=roi.uncertainty, seed_spread=spread, lowlevel=lowlevel.record(),
        best_fraction_of_ceiling=table[scores.best]["fraction_of_ceiling"] if scores.has_ceiling else None,
        dino_retrieval_ratio=dino_ratio(scores),
        spatial_targets=None if spatial is None else {"roi": spatial.roi, "chance": spatial.chance,
                                                      "scores": spatial.scores},
    )  # fmt: skip
