"""The evaluation vocabulary of 03 and 05: the names of the reconstruction variants, what produced each, the
variants 05 scores and the comparisons its report makes, and 03's own scores of a variant."""

from __future__ import annotations

import numpy as np

from lib import metrics
from lib.analysis import stats
from lib.analysis.decoding import rows_of
from lib.models import stylegan2 as sg
from lib.models.gan import (
    EmbeddingView,
    combiner,
    embed_generated,
    generate,
    optimise_latents,
    tune_conditioning,
)


def two_way_monitor(view: EmbeddingView, features: np.ndarray, ratio: float, seed: int = 0):
    """A ``monitor`` for :func:`train_gan`: 2-way identification, in ``view``'s embedding, of the images
    generated from ``features`` (held-out images' true embeddings: the oracle) against those features."""

    def monitor(G: sg.Generator) -> dict:
        rec = generate(G, features, ratio, seed=seed)
        return {"two_way": metrics.two_way_identification(embed_generated(view, rec), features)}

    return monitor


def variant_provenance(source: str, encoder: str, tune_steps: int, opt_steps: int, combine_how: str = "optimise",
                       lowlevel: str = "the spatial pathway") -> dict[str, str]:  # fmt: skip
    """What produced each of 03's reconstruction variants, in words, for the hand-off to 05 (``source``: the
    generator, e.g. "the pretrained generator"; ``encoder``: the 02 encoder whose predictions drive it;
    ``lowlevel``: the spatial pathway's decoder, :func:`lib.models.lowlevel.describe`)."""
    pred = f"{encoder}'s test predictions (02)"
    how = {"optimise": "latent optimisation with its layout as a target",
           "impose": "its layout imposed on the fMRI-tuned reconstruction",
           "both": "latent optimisation with its layout as a target, then moved toward that layout"}[combine_how]  # fmt: skip
    return {
        SPATIAL: f"{lowlevel}'s low-resolution image (02), upsampled",
        COMBINED: f"the fMRI-tuned generator from {pred} and {lowlevel} (02): {how} ({opt_steps} steps)",
        "oracle": f"{source} from the true image embedding (01)",
        "predicted": f"{source} from {pred}",
        "tuned": f"{source} after fMRI tuning ({tune_steps} steps on ridge's out-of-fold predictions of the training "
        f"images) from {pred}",
        "optimised": f"the fMRI-tuned generator from {pred}, then {opt_steps} steps of latent optimisation",
    }


#: 03's names of the spatial pathway's own reconstruction and of the two pathways combined
SPATIAL, COMBINED = "spatial pathway", "combined"


#: 05's name of the spatial pathway's reconstruction (the same for every semantic encoder)
SPATIAL_ONLY = "spatial pathway only (blurry)"


#: 05's short names of the 02 encoders whose reconstructions it scores
ENCODER_NAMES = {"ridge_image": "ridge", "mlp_image": "MLP"}


def evaluation_variants(rec, pred: dict[str, np.ndarray], test_ids: np.ndarray, G: sg.Generator,
                        G_tuned: sg.Generator, embedder, seed: int = 0) -> tuple[dict, dict]:  # fmt: skip
    """05's reconstruction variants of ``test_ids`` and what produced each: the oracle of 03's reconstructions
    ``rec`` (:class:`lib.artifacts.Reconstructions`), and for each encoder of :data:`ENCODER_NAMES` the plain,
    fMRI-tuned and optimised reconstructions: 03's own for the encoder 03 optimised, made here with 03's settings
    (``rec.settings``) for the others, from 02's predictions ``pred`` (an MLP's regression head, its embedding).
    Returns ({"<short> · <kind>": uint8 images}, {same name: provenance})."""
    cfg, index = rec.settings, rows_of(rec.test_ids, np.arange(len(rec.test_ids)), test_ids)
    kinds = {"plain": "predicted", "fMRI-tuned": "tuned", "optimised": "optimised", "combined": COMBINED}
    variants = {ORACLE: rec.variants["oracle"][index], SPATIAL_ONLY: rec.variants[SPATIAL][index]}
    provenance = {ORACLE: rec.provenance["oracle"], SPATIAL_ONLY: rec.provenance[SPATIAL]}
    low = rows_of(pred["test_ids"], pred["lowlevel"], test_ids)
    for enc, short in ENCODER_NAMES.items():
        if enc == cfg["encoder"]:
            made = {kind: rec.variants[key][index] for kind, key in kinds.items()}
        else:
            p = rows_of(
                pred["test_ids"], pred["head_mlp_image" if enc == "mlp_image" else f"pred_{enc}"], test_ids
            )
            r = cfg["feature_ratio"]
            made = {"plain": generate(G, p, r, seed=seed), "fMRI-tuned": generate(G_tuned, p, r, seed=seed)}
            opt = dict(
                steps=cfg["opt_steps"], lr=cfg["opt_lr"], ratio=r, seed=seed, noise_maps=cfg["opt_noise_maps"]
            )
            made["optimised"], _ = optimise_latents(G_tuned, p, embedder, anchor=cfg["opt_anchor"], **opt)
            made["combined"] = combiner(G_tuned, embedder, cfg, seed, exact=False)(p, low)
        for kind, key in kinds.items():
            variants[f"{short} · {kind}"] = made[kind]
            words = rec.provenance[key]
            if enc != cfg["encoder"]:
                words = words.replace(cfg["encoder"], enc) + " (made in 05 with 03's settings)"
            provenance[f"{short} · {kind}"] = words
    return variants, provenance


ORACLE = "oracle (true embedding)"


#: 05's baselines a reconstruction should beat (named as notebook 05 names them)
NEAREST, MEAN_IMAGE = "nearest training image · {}", "mean training image"


def comparison_pairs() -> list[tuple[str, str]]:
    """Every comparison 05's report makes, as (a, b) rows of its table (a - b on the same test images): for each
    encoder fMRI-tuned and optimised against plain and optimised against tuned, the oracle against plain, plain
    against the nearest training image (by that encoder's prediction) and the mean training image; and the MLP
    against ridge at each stage."""
    pairs = []
    for short in ENCODER_NAMES.values():
        plain, tuned, opt, comb = (f"{short} · {k}" for k in ("plain", "fMRI-tuned", "optimised", "combined"))
        pairs += [(tuned, plain), (opt, plain), (opt, tuned), (ORACLE, plain), (plain, NEAREST.format(short)),
                  (plain, MEAN_IMAGE), (comb, opt), (comb, plain), (comb, SPATIAL_ONLY),
                  (comb, NEAREST.format(short))]  # fmt: skip
    ridge, mlp = ENCODER_NAMES.values()
    pairs += [(f"{mlp} · {k}", f"{ridge} · {k}") for k in ("plain", "fMRI-tuned", "optimised", "combined")]
    return pairs


def variant_scores(recon: dict[str, np.ndarray], view: EmbeddingView, true: np.ndarray,
                   images: np.ndarray) -> tuple[dict[str, dict], dict[str, np.ndarray]]:  # fmt: skip
    """03's own scores of each reconstruction variant (name -> uint8 images): 2-way identification of its
    embedding (through ``view``) against the ``true`` embeddings, PixCorr and SSIM against the seen ``images``;
    and each image's cosine to its true embedding (for the grid). Not a judge: the generator was aligned to this
    embedding (05 scores with independent judges)."""
    table, per_image = {}, {}
    # the seen images resized and blurred once for all variants
    low = metrics.low_level_per_image(recon, images)
    for name, rec in recon.items():
        e = embed_generated(view, rec)
        table[name] = {"two_way": metrics.two_way_identification(e, true),
                       "pixcorr": float(np.mean(low[name]["PixCorr"])), "ssim": float(np.mean(low[name]["SSIM"]))}  # fmt: skip
        per_image[name] = metrics.cosine_per_sample(e, true)
    return table, per_image


def tuning_seed_spread(seeds, G: sg.Generator, predicted: np.ndarray, true: np.ndarray, embedder,
                       view: EmbeddingView, test_predicted: np.ndarray, test_true: np.ndarray, test_images: np.ndarray,
                       ratio: float, first: dict | None = None, **tune) -> dict:  # fmt: skip
    """The seed spread of 03's fMRI tuning: :func:`tune_conditioning` of ``G`` on (``predicted``, ``true``) with
    each of ``seeds`` (``tune``: its other arguments), the tuned generator drawing ``test_predicted`` with that seed,
    scored by :func:`variant_scores` ({"tuned": {two_way, pixcorr, ssim}}; ``first``: the first seed's, already
    computed); :func:`lib.analysis.stats.across_seeds`."""

    def table(seed: int) -> dict:
        tuned, _ = tune_conditioning(G, predicted, true, embedder, ratio=ratio, seed=seed, **tune)
        rec = generate(tuned, test_predicted, ratio, seed=seed)
        return variant_scores({"tuned": rec}, view, test_true, test_images)[0]

    return stats.across_seeds(seeds, table, first)
