"""Notebook 04's steps (leave-one-out: which voxels drive each reconstruction), in the notebook's order.

Each step takes the :class:`Inputs` of :func:`load_inputs` and earlier steps' outputs, calls
:mod:`lib.analysis.loo` (and :mod:`lib.analysis.prf_check`), and returns a small dataclass with what the
notebook shows and what :func:`results` records. The analysis sizes come from :class:`lib.analysis.loo.LooConfig`
(profile section ``loo``). Seeded steps take the stage's seed; only :func:`generator_prf_check` draws from the
stage's generator ``st.rng`` (its random reference voxels)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from scipy import stats

from lib import metrics
from lib.analysis import decoding, loo, prf_check
from lib.analysis.loo import LooConfig
from lib.data import prep, simulate
from lib.data.rois import STANDARD_GROUPS
from lib.models import gan, lowlevel
from lib.report import results as results_types

#: the areas of the spatial pathway's pRF check, one check each (those the subject has)
VISUAL_AREAS = ("V1", "V2", "V3", "hV4")
#: the simulator's higher areas (position-invariant attribute detectors)
HIGHER_AREAS = ("ventral", "lateral", "parietal")
#: voxels of each set (early, higher) shown in the combined reconstruction's effect maps
COMBINED_SHOWN = 6


class LeaveOneOutError(ValueError):
    """A bad argument to a step of notebook 04; the message names it."""


@dataclasses.dataclass
class Inputs:
    """What every step reads: the test voxels of the sweep and their replacements, the 02 encoder, the 03
    generator and the perturbation ratio 03 generated with, the embeddings, and each voxel's pRF centre where
    known."""

    subject: int
    roi: str
    encoder_name: str
    generator_name: str
    replace: str
    data: prep.Prepared
    encoder: object  # the 02 encoder (lib.models.ridge.RidgeEncoder or lib.models.mlp.MLPEncoder)
    generator: object  # the 03 generator
    ratio: float  # the perturbation ratio 03 generated with
    embeddings: dict  # the joint embedding's vectors (lib.artifacts.Store.load_embeddings)
    n: int  # test samples of the sweep
    x: np.ndarray  # (n, V) test voxels
    x_rep: np.ndarray  # (n, V) what replaces a left-out voxel
    test_ids: np.ndarray  # (n,) their nsdIds
    size: int  # stimulus side in pixels
    truth: dict | None  # the simulator's truth per voxel (lib.data.simulate.voxel_truth); None on real data
    prf_files: object | None  # NSD's pRF files at the voxels (lib.data.prf.PRF), where present
    prf: np.ndarray | None  # (V, 2) pRF centres in stimulus pixels: the truth, else the pRF files, else None
    area: np.ndarray  # (V,) each voxel's visual area in the truth ("?" on real data)

    def describe(self) -> str:
        return (
            f"{self.x.shape[1]} voxels of {self.roi}, {self.n} test samples; encoder {self.encoder_name}; "
            f"replace by {self.replace}; ratio {self.ratio}"
        )


def load_inputs(st, *, encoder: str, generator: str, replace: str, n_samples: int) -> Inputs:
    """The prepared voxels of the stage's subject and ROI (00), the 02 ``encoder`` and 03 ``generator`` it
    reads, the first ``n_samples`` test samples (0: all) with the values that replace a left-out voxel
    (``replace``: mean, zero or noise; :func:`lib.analysis.loo.replacement`), the embeddings, and the pRF
    centres: the simulator's truth on mini-NSD, else NSD's pRF files where present."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
        raise LeaveOneOutError(
            f"n_samples={n_samples!r}: expected a whole number >= 0 (0: every test sample)"
        )
    ds, dev = st.ds, st.device
    data, _, _ = prep.prepare_cached(
        ds, st.subject, st.roi, st.sessions, compute=False, nonfinite=st.nonfinite
    )
    if n_samples > len(data.x_test):
        raise LeaveOneOutError(
            f"n_samples={n_samples}: the prepared data has {len(data.x_test)} test samples"
        )
    enc = st.store.load_encoder(encoder, dev, roi=st.roi, subject=st.subject)
    G = st.store.load_generator(generator, dev, model_key=enc.meta["model_key"])
    ratio = st.store.generation_settings()["feature_ratio"]  # the perturbation ratio 03 generated with
    n = n_samples or len(data.x_test)
    x, test_ids = data.x_test[:n], data.test_ids[:n]
    x_rep = loo.replacement(data.x_train, replace, n, seed=st.seed)
    size = ds.images(test_ids[:1]).shape[1]  # stimulus side in pixels
    truth = simulate.voxel_truth(ds, st.subject, data.voxel_ijk)  # None on real data
    prf_files = ds.prf(st.subject, st.roi, missing="none")  # NSD's pRF files, where present
    prf_files = prf_files.at(data.voxel_ijk) if prf_files else None
    prf = truth["prf_xy"] if truth else (prf_files.centres_px(size) if prf_files else None)
    area = truth["area"] if truth else np.array(["?"] * x.shape[1])
    vec = st.store.load_embeddings(model_key=enc.meta["model_key"])
    return Inputs(
        st.subject,
        st.roi,
        encoder,
        generator,
        replace,
        data,
        enc,
        G,
        ratio,
        vec,
        n,
        x,
        x_rep,
        test_ids,
        size,
        truth,
        prf_files,
        prf,
        area,
    )


# ----------------------------------------------------------------------------------------------------------------
# every voxel left out in turn, ROI groups, saliency


@dataclasses.dataclass
class Sweep:
    """Every voxel left out in turn: the per-sample effects, each voxel's importance (mean 1 - cos over
    samples) and the seconds the sweep took."""

    effects: loo.VoxelEffects
    importance: np.ndarray
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.effects.cos_change.size:,} perturbations in {self.seconds:.1f} s; median importance "
            f"{np.median(self.importance):.2e}"
        )


def voxel_sweep(inputs: Inputs, *, device: str) -> Sweep:
    """:func:`lib.analysis.loo.voxel_effects` of every voxel on every test sample of ``inputs``, timed."""
    t0 = time.perf_counter()
    eff = loo.voxel_effects(inputs.encoder, inputs.x, inputs.x_rep, device=device)
    seconds = time.perf_counter() - t0
    return Sweep(eff, eff.importance(), seconds)


@dataclasses.dataclass
class Groups:
    """ROI groups (name -> voxel columns, groups with voxels only), each left out as a whole: the mean change
    (1 - cos) and its standard error over samples, beside the mean single-voxel importance and the voxel count;
    ``early`` and ``higher``: the voxels of the early and higher areas (the truth's areas on mini-NSD, else the
    groups "early" and "higher")."""

    columns: dict[str, np.ndarray]
    effects: dict[str, dict[str, np.ndarray]]
    mean: dict[str, float]
    sem: dict[str, float]
    voxel_mean: dict[str, float]
    n_voxels: dict[str, int]
    early: np.ndarray
    higher: np.ndarray


def roi_group_effects(st, inputs: Inputs, *, importance: np.ndarray, roi_groups: list) -> Groups:
    """Leave each ROI group out as a whole (:func:`lib.analysis.loo.group_effects`); ``roi_groups`` empty: the
    standard groups (:data:`lib.data.rois.STANDARD_GROUPS`) the subject has."""
    groups = roi_groups or list(STANDARD_GROUPS)
    found = prep.group_columns(st.ds, st.subject, inputs.data.voxel_ijk, groups)
    columns = {g: c for g, c in found.items() if len(c)}
    eff = loo.group_effects(inputs.encoder, inputs.x, inputs.x_rep, columns, device=st.device)
    truth, area = inputs.truth, inputs.area
    early = np.flatnonzero(area == "early") if truth else columns.get("early", np.arange(inputs.x.shape[1]))
    higher = np.flatnonzero(np.isin(area, list(HIGHER_AREAS))) if truth else columns.get("higher", [])
    return Groups(
        columns,
        eff,
        {g: float(e["cos_change"].mean()) for g, e in eff.items()},
        {g: float(stats.sem(e["cos_change"])) for g, e in eff.items()},
        {g: float(importance[c].mean()) for g, c in columns.items()},
        {g: len(c) for g, c in columns.items()},
        early,
        higher,
    )


@dataclasses.dataclass
class Saliency:
    """Per voxel, over the first test samples: leave-one-out's relative change |p' - p| / |p| (``loo``) and
    gradient x input (``saliency``), and their rank correlation."""

    loo: np.ndarray
    saliency: np.ndarray
    rho: float


def saliency_agreement(st, inputs: Inputs, *, sweep: Sweep, cfg: LooConfig) -> Saliency:
    """:func:`lib.analysis.loo.saliency` on the first ``cfg.saliency_samples`` test samples against the sweep's
    relative change on the same samples."""
    ns = min(cfg.saliency_samples, inputs.n)
    sal = loo.saliency(inputs.encoder, inputs.x[:ns], inputs.x_rep[:ns], device=st.device).mean(0)
    rel = sweep.effects.rel_change[:ns].mean(0)
    return Saliency(rel, sal, float(stats.spearmanr(rel, sal)[0]))


# ----------------------------------------------------------------------------------------------------------------
# effect maps: through the generator, the spatial pathway, the combined reconstruction


@dataclasses.dataclass
class EffectMaps:
    """Effect maps to show, one per voxel (K, r, r): titles, the voxels' pRF centres and the maps' centres
    (:func:`lib.analysis.loo.effect_centres`), both in map pixels (``prf`` None: unknown)."""

    voxels: np.ndarray
    maps: np.ndarray
    titles: list[str]
    prf: np.ndarray | None
    centres: np.ndarray


def _shown(maps: np.ndarray, voxels, inputs: Inputs, quantile: float) -> EffectMaps:
    voxels = np.asarray(voxels)
    prf = inputs.prf[voxels] * maps.shape[-1] / inputs.size if inputs.prf is not None else None
    return EffectMaps(
        voxels,
        maps,
        [f"voxel {v} ({inputs.area[v]})" for v in voxels],
        prf,
        loo.effect_centres(maps, quantile=quantile),
    )


def image_effects(
    st, inputs: Inputs, *, importance: np.ndarray, early: np.ndarray, n_examples: int, cfg: LooConfig
) -> EffectMaps:
    """The image-space effect of ``n_examples`` voxels (half the most important early ones, half the most
    important others; :func:`lib.analysis.loo.example_voxels`) through the 03 generator, averaged over the first
    ``cfg.image_samples`` test samples (:func:`lib.analysis.loo.image_effect_maps`)."""
    examples = loo.example_voxels(importance, early, n_examples)
    ni = min(cfg.image_samples, inputs.n)
    p0, q = loo.perturbed_predictions(
        inputs.encoder, inputs.x[:ni], inputs.x_rep[:ni], examples, device=st.device
    )
    maps = loo.image_effect_maps(inputs.generator, p0, q, inputs.ratio, seed=st.seed)
    return _shown(maps, examples, inputs, cfg.centre_quantile)


@dataclasses.dataclass
class Spatial:
    """Every voxel's exact effect on 02's spatial pathway (``maps`` (V, s, s), ``importance`` their means), the
    early voxels its pRF check reads (``voxels``: largest effect, pRF in the stimulus, where pRFs are known) and
    the maps shown (the first of them)."""

    decoder: lowlevel.LowLevelDecoder
    maps: np.ndarray
    importance: np.ndarray
    voxels: np.ndarray
    shown: EffectMaps

    def describe(self) -> str:
        return f"{lowlevel.describe(self.decoder)}; {int((self.importance > 0).sum())} voxels act on it"


def spatial_pathway(st, inputs: Inputs, *, early: np.ndarray, n_examples: int, cfg: LooConfig) -> Spatial:
    """02's spatial pathway (:class:`lib.models.lowlevel.LowLevelDecoder`) and each voxel's effect on its image
    (:func:`lib.analysis.loo.lowlevel_effect_maps`: exact, closed form for ridge); the ``cfg.n_prf_voxels`` early
    voxels it reads with the largest effect whose pRF lies in the stimulus, ``n_examples`` of them shown."""
    low = st.store.load_lowlevel(st.device, roi=st.roi, subject=st.subject)
    low_maps = loo.lowlevel_effect_maps(low, inputs.x, inputs.x_rep, device=st.device)
    low_importance = low_maps.mean((1, 2))
    acting = early[low_importance[early] > 0]  # the early voxels the spatial pathway reads
    prf, size = inputs.prf, inputs.size
    low_vox = (
        loo.prf_voxels(low_importance, acting, prf, size, cfg.n_prf_voxels) if prf is not None else acting
    )
    shown = low_vox[:n_examples]  # the largest effects among voxels whose pRF lies in the stimulus
    return Spatial(
        low, low_maps, low_importance, low_vox, _shown(low_maps[shown], shown, inputs, cfg.centre_quantile)
    )


@dataclasses.dataclass
class PathwayCheck:
    """Effect centres against pRF centres (:func:`lib.analysis.loo.pathway_prf_check`): ``centres`` (K, 2)
    stimulus pixels and ``check`` (None: no pRF centres), per visual area (``by_area``), and against NSD's pRF
    files (``files``, :func:`lib.analysis.prf_check.compare`; None without them)."""

    name: str
    centres: np.ndarray | None = None
    check: dict | None = None
    by_area: dict = dataclasses.field(default_factory=dict)
    files: dict | None = None

    def describe(self) -> str:
        if self.check is None:
            return f"{self.name}: no pRF centres to check against"
        c = self.check
        out = (
            f"{self.name}: median pRF error {c['median_error_deg']:.2f} deg vs chance "
            f"{c['chance_median_error_deg']:.2f} ({c['ratio']:.2f}x, {c['n_voxels']} voxels)"
        )
        if self.by_area:
            out += "; by area " + str({g: round(e["ratio"], 2) for g, e in self.by_area.items()})
        if self.files is not None:
            keys = ("distance_ratio", "hemifield_agreement", "angle_error_deg", "ecc_r")
            out += "\nagainst the pRF files: " + str({k: round(self.files[k], 3) for k in keys})
        return out


def spatial_prf_check(
    inputs: Inputs, *, spatial: Spatial, columns: dict, cfg: LooConfig, seed: int
) -> PathwayCheck:
    """The spatial pathway's effect centres against the pRF centres: its checked voxels, then per visual area
    (:data:`VISUAL_AREAS`, :func:`lib.analysis.loo.prf_by_group`), then against NSD's pRF files."""
    out = PathwayCheck("spatial pathway")
    prf, size, q = inputs.prf, inputs.size, cfg.centre_quantile
    if prf is not None:  # pRF centres: the simulator's truth, else NSD's pRF files
        out.centres, out.check = loo.pathway_prf_check(spatial.maps, spatial.voxels, prf, size, q, seed)
        areas = {g: columns[g] for g in VISUAL_AREAS if g in columns}
        out.by_area = loo.prf_by_group(
            spatial.maps, spatial.importance, areas, prf, size, cfg.n_prf_voxels, q, seed
        )
    if inputs.prf_files is not None:
        angle = inputs.prf_files.angle[spatial.voxels]
        ecc = inputs.prf_files.eccentricity[spatial.voxels]
        out.files = prf_check.compare(out.centres, angle, ecc, size, seed=seed)
    return out


@dataclasses.dataclass
class Combined:
    """Single voxels left out of 03's combined reconstruction: ``voxels`` (the ``n_early`` early voxels first,
    then the higher-area ones), their maps per sample (S, K, H, W) and averaged (K, H, W), the localisation
    contrast (:func:`lib.analysis.loo.localisation_contrast`) and the maps shown."""

    voxels: np.ndarray
    n_early: int
    per_sample: np.ndarray
    maps: np.ndarray
    localisation: dict
    shown: EffectMaps

    def describe(self) -> str:
        loc = self.localisation
        return (
            f"localisation early {loc['first_mean']:.3f} vs higher {loc['second_mean']:.3f}: "
            f"{loc['diff']:.3f} [{loc['low']:.3f}, {loc['high']:.3f}], p = {loc['p']:.4f}"
        )


def combined_effects(
    st,
    inputs: Inputs,
    *,
    spatial: Spatial,
    importance: np.ndarray,
    higher: np.ndarray,
    local_radius_deg: float,
    cfg: LooConfig,
) -> Combined:
    """Each of ``cfg.combined_voxels`` = [early, higher] voxels (the spatial pathway's checked early voxels, the
    most important ``higher`` ones) left out of 03's combined reconstruction of the first ``cfg.combined_samples``
    test samples, its latent search run once and held (:func:`lib.models.gan.held_combiner`,
    :func:`lib.analysis.loo.combined_effect_maps`); then how local each mean map is: its peak energy within
    ``local_radius_deg`` of its centre, early against higher, with an interval over test samples."""
    x, x_rep, enc, low, dev, seed = (
        inputs.x,
        inputs.x_rep,
        inputs.encoder,
        spatial.decoder,
        st.device,
        st.seed,
    )
    n_early = min(cfg.combined_voxels[0], len(spatial.voxels))
    n_higher = cfg.combined_voxels[1]
    comb_vox = np.r_[
        spatial.voxels[:n_early], loo.example_voxels(importance, higher, 2 * n_higher)[:n_higher]
    ]
    ns = min(cfg.combined_samples, inputs.n)
    settings = (
        st.store.generation_settings()
    )  # 03's combination, its search held at its result for these samples
    draw = gan.held_combiner(
        inputs.generator,
        st.store.load_embedder(dev),
        settings,
        enc.predict(x[:ns]),
        low.predict(x[:ns]),
        seed,
    )
    comb = loo.combined_effect_maps(draw, enc, low, x[:ns], x_rep[:ns], comb_vox.astype(int), device=dev)
    comb_maps = comb.mean(0)
    radius = local_radius_deg / loo.VIEW_DEG * comb_maps.shape[-1]
    loc = loo.localisation_contrast(
        comb,
        np.arange(n_early),
        np.arange(n_early, len(comb_vox)),
        radius,
        seed=seed,
        quantile=cfg.centre_quantile,
    )
    show = np.r_[np.arange(min(COMBINED_SHOWN, n_early)), n_early + np.arange(COMBINED_SHOWN)]
    show = show[show < len(comb_vox)]
    return Combined(
        comb_vox,
        n_early,
        comb,
        comb_maps,
        loc,
        _shown(comb_maps[show], comb_vox[show], inputs, cfg.centre_quantile),
    )


def combined_prf_check(inputs: Inputs, *, combined: Combined, cfg: LooConfig, seed: int) -> PathwayCheck:
    """The combined reconstruction's effect centres of its early voxels against their pRF centres."""
    out = PathwayCheck("combined reconstruction")
    if inputs.prf is not None:
        out.centres, out.check = loo.pathway_prf_check(
            combined.maps,
            np.arange(combined.n_early),
            inputs.prf[combined.voxels],
            inputs.size,
            cfg.centre_quantile,
            seed,
        )
    return out


# ----------------------------------------------------------------------------------------------------------------
# ROI-only reconstructions


@dataclasses.dataclass
class RoiOnly:
    """Each ROI group alone (every other voxel at its training mean): 2-way identification of its predicted
    embedding against the true test embeddings, and the reconstructions of the first test images beside the
    all-voxel one (``images``: those seen)."""

    two_way: dict[str, float]
    reconstructions: dict[str, np.ndarray]
    images: np.ndarray


def roi_only(st, inputs: Inputs, *, columns: dict, n_show: int) -> RoiOnly:
    """:func:`lib.analysis.loo.roi_only_predictions` of every group, scored and generated for ``n_show`` images."""
    enc, G, x, ratio, seed = inputs.encoder, inputs.generator, inputs.x, inputs.ratio, st.seed
    mean_rep = loo.replacement(inputs.data.x_train, "mean", inputs.n)
    vec = inputs.embeddings
    f_test = decoding.rows_of(vec["ids"], vec["image"], inputs.test_ids)
    only = loo.roi_only_predictions(enc, x, mean_rep, columns)
    two_way = {g: metrics.two_way_identification(p, f_test) for g, p in only.items()}
    recon = {"all voxels": gan.generate(G, enc.predict(x[:n_show]), ratio, seed=seed)}
    recon |= {g: gan.generate(G, p[:n_show], ratio, seed=seed) for g, p in only.items()}
    return RoiOnly(two_way, recon, st.ds.images(inputs.test_ids[:n_show]))


# ----------------------------------------------------------------------------------------------------------------
# validation on the simulator's ground truth


@dataclasses.dataclass
class Truth:
    """Importance against each voxel's true weight ``w_true`` in the ideal linear read-out of the embedding
    (:func:`lib.analysis.loo.ideal_readout`) and against its true ncsnr, overall and per area; the training
    images and their embeddings (for the layout read-out of :func:`generator_prf_check`)."""

    w_true: np.ndarray
    rho: float
    rho_ncsnr: float
    by_area: dict[str, float]
    train_ids: np.ndarray
    f_train: np.ndarray

    def describe(self) -> str:
        by_area = {a: round(v, 2) for a, v in self.by_area.items()}
        return (
            f"Spearman importance vs true read-out weight {self.rho:.3f}, vs true ncsnr {self.rho_ncsnr:.3f} "
            f"(chance 0); by area {by_area}"
        )


def importance_vs_truth(inputs: Inputs, *, importance: np.ndarray) -> Truth | None:
    """The simulator's check of the importance (None on real data): the true read-out weight is computed from
    every voxel's noise-free responses and noise level, never from the betas."""
    truth, area, vec = inputs.truth, inputs.area, inputs.embeddings
    if not truth:
        return None
    train = np.unique(inputs.data.train_ids)
    f_train = decoding.rows_of(vec["ids"], vec["image"], train)
    w_true = np.linalg.norm(
        loo.ideal_readout(truth["signal"][train], 1 / truth["ncsnr"] ** 2, f_train), axis=1
    )
    rho = float(stats.spearmanr(importance, w_true)[0])
    rho_ncsnr = float(stats.spearmanr(importance, truth["ncsnr"])[0])
    by_area = {
        a: float(stats.spearmanr(importance[area == a], w_true[area == a])[0]) for a in np.unique(area)
    }
    return Truth(w_true, rho, rho_ncsnr, by_area, train, f_train)


@dataclasses.dataclass
class GeneratorPrf:
    """:func:`lib.analysis.loo.prf_check` of the early voxels with the largest importance whose pRF lies in the
    stimulus (``voxels``): effect centres and their errors through the generator and through the embedding's
    layout read-out, and their metrics record (:func:`lib.analysis.loo.prf_summary`)."""

    voxels: np.ndarray
    centres: dict[str, np.ndarray]
    checks: dict[str, dict]
    summary: dict

    def describe(self) -> str:
        return "\n".join(
            f"pRF {name}: median error {e['median_error']:.1f} px vs chance "
            f"{e['chance_median_error']:.1f} px (p = {e['p_value']:.3f}, {len(self.voxels)} voxels, "
            "stimulus pixels)"
            for name, e in self.checks.items()
        )


def generator_prf_check(
    st, inputs: Inputs, *, importance: np.ndarray, early: np.ndarray, truth: Truth | None, cfg: LooConfig
) -> GeneratorPrf | None:
    """Where the ``cfg.n_prf_voxels`` most important early voxels (pRF in the stimulus) move the generated image,
    its maps divided by the mean map of as many random voxels (drawn from ``st.rng``: the generator's own spatial
    bias), and the layout a linear read-out finds in the embedding (fitted on the training images on a
    ``cfg.layout_grid`` raster), against the true pRF centres. None without the simulator's ``truth``."""
    if truth is None:
        return None
    prf, size, x = inputs.prf, inputs.size, inputs.x
    top_early = loo.prf_voxels(importance, early, prf, size, cfg.n_prf_voxels)
    ref = st.rng.choice(x.shape[1], len(top_early), replace=False)
    readout = loo.fit_layout_readout(
        truth.f_train, st.ds.images(truth.train_ids), cfg.layout_grid, device=st.device
    )
    ni = min(cfg.image_samples, inputs.n)
    centres, checks = loo.prf_check(
        inputs.generator,
        inputs.encoder,
        x[:ni],
        inputs.x_rep[:ni],
        top_early,
        ref,
        prf[top_early],
        size,
        readout,
        cfg.layout_grid,
        inputs.ratio,
        cfg.centre_quantile,
        seed=st.seed,
        device=st.device,
    )
    return GeneratorPrf(top_early, centres, checks, loo.prf_summary(checks, len(top_early)))


@dataclasses.dataclass
class PrfOverview:
    """Every pRF estimate beside the others (:func:`lib.report.figures.prf_check`'s inputs): the pRF centres each
    estimate checks, its effect centres and errors, over the mean of the test images it averaged."""

    prf_xy: dict[str, np.ndarray]
    centres: dict[str, np.ndarray]
    checks: dict[str, dict]
    images: np.ndarray


def prf_overview(
    st,
    inputs: Inputs,
    *,
    generator_prf: GeneratorPrf,
    spatial: Spatial,
    spatial_prf: PathwayCheck,
    combined: Combined,
    combined_prf: PathwayCheck,
    cfg: LooConfig,
) -> PrfOverview:
    """Through the generator, the embedding, the spatial pathway (exact) and the combined reconstruction."""
    prf = inputs.prf
    both = {"spatial pathway (exact)": spatial_prf, "combined reconstruction": combined_prf}
    centres = generator_prf.centres | {name: c.centres for name, c in both.items()}
    checks = generator_prf.checks | {name: c.check for name, c in both.items()}
    prf_sets = {name: prf[generator_prf.voxels] for name in centres} | {
        "spatial pathway (exact)": prf[spatial.voxels],
        "combined reconstruction": prf[combined.voxels[: combined.n_early]],
    }
    ni = min(cfg.image_samples, inputs.n)
    return PrfOverview(prf_sets, centres, checks, st.ds.images(inputs.test_ids[:ni]))


# ----------------------------------------------------------------------------------------------------------------
# the results


def results(
    inputs: Inputs,
    *,
    sweep: Sweep,
    groups: Groups,
    saliency: Saliency,
    examples: EffectMaps,
    spatial: Spatial,
    spatial_prf: PathwayCheck,
    combined: Combined,
    combined_prf: PathwayCheck,
    roi_only: RoiOnly,
    truth: Truth | None,
    generator_prf: GeneratorPrf | None,
    local_radius_deg: float,
) -> results_types.LeaveOneOut:
    """Notebook 04's results (:class:`lib.report.results.LeaveOneOut`) from its steps' outputs; the checks
    against the simulator's truth are None on real data."""
    validation = {}
    if truth is not None:
        validation = {
            "spearman_importance_vs_truth": truth.rho,
            "spearman_importance_vs_ncsnr": truth.rho_ncsnr,
            "spearman_by_area": truth.by_area,
        }
    if generator_prf is not None:
        validation |= generator_prf.summary
    return results_types.LeaveOneOut(
        subject=inputs.subject,
        roi=inputs.roi,
        encoder=inputs.encoder_name,
        generator=inputs.generator_name,
        ratio=inputs.ratio,
        replace=inputs.replace,
        n_voxels=int(inputs.x.shape[1]),
        n_samples=int(inputs.n),
        sweep_seconds=sweep.seconds,
        group_effects=groups.mean,
        roi_only_two_way=roi_only.two_way,
        spearman_loo_vs_saliency=saliency.rho,
        examples=examples.voxels.tolist(),
        lowlevel=lowlevel.describe(spatial.decoder),
        lowlevel_prf=spatial_prf.check,
        lowlevel_prf_by_area=spatial_prf.by_area,
        lowlevel_prf_files=spatial_prf.files,
        combined_prf=combined_prf.check,
        combined_voxels=combined.voxels.tolist(),
        localisation=combined.localisation,
        local_radius_deg=local_radius_deg,
        **validation,
    )


def key_numbers(result: results_types.LeaveOneOut) -> dict:
    """The results' single numbers and strings (the nested tables left out), for the notebook's last line."""
    return {k: v for k, v in dataclasses.asdict(result).items() if not isinstance(v, dict | list)}
