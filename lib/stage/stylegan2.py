"""Notebook 03's steps: the CLIP-conditioned generator (a LAFITE checkpoint, the pretrained mini-world
generator, or one trained here), its conditioning alignment and fMRI tuning, the reconstructions of the test
images (oracle, predicted, tuned, optimised, the spatial pathway and the two pathways combined), their scores,
the hand-off to 04 and 05, and 03's results.

The hyperparameters are profile sections (:mod:`lib.stage.configs`): ``gan``
(:class:`lib.models.gan.GANConfig`, a generator trained here), ``align``
(:class:`~lib.models.gan.AlignConfig`), ``tune`` (:class:`~lib.models.gan.TuneConfig`) and ``opt``
(:class:`~lib.models.gan.OptConfig`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from lib import metrics
from lib.analysis import decoding, variants
from lib.data import prep
from lib.models import gan, lowlevel
from lib.report.results import Generator
from lib.stage import Stage

#: chance level of 03's scores (2-way identification)
CHANCE = {"two_way": 0.5}

#: test images whose oracle reconstructions monitor the generator (training curve, alignment)
MONITOR_IMAGES = 100

#: where 03's generator comes from (``generator``; a ``lafite_checkpoint`` overrides either)
GENERATOR_SOURCES = ("pretrained", "train")


def check_parameters(*, encoder: str, generator: str, combine: str, gan_resolution: int) -> None:
    """Notebook 03's own parameters, checked before anything runs: a bad one is a one-line error naming it."""
    if encoder not in variants.ENCODER_NAMES:
        raise ValueError(f"encoder={encoder!r}: expected one of {', '.join(variants.ENCODER_NAMES)}")
    if generator not in GENERATOR_SOURCES:
        raise ValueError(f"generator={generator!r}: expected one of {', '.join(GENERATOR_SOURCES)}")
    if combine not in gan.COMBINATIONS:
        raise ValueError(f"combine={combine!r}: expected one of {', '.join(gan.COMBINATIONS)}")
    if not isinstance(gan_resolution, int) or gan_resolution < 0 or gan_resolution & (gan_resolution - 1):
        raise ValueError(
            f"gan_resolution={gan_resolution!r}: expected 0 (the stimuli's size) or a power of two"
        )


@dataclasses.dataclass
class Inputs:
    """What 03 reads from 00-02: 01's embedding model and embeddings, 02's predictions, the split, the true
    and predicted embeddings, and the stimuli (the training ones at the generator's resolution)."""

    emb: object  # 01's embedding model (lib.models.embedding)
    vec: dict  # 01's embeddings of every stimulus (ids, image, model_key, ...)
    pred: dict  # 02's test predictions (test_ids, pred_<encoder>, lowlevel, ...)
    train_ids: np.ndarray
    test_ids: np.ndarray
    f_train: np.ndarray  # true embeddings of the training images
    f_test: np.ndarray  # true embeddings of the test images (the oracle's condition)
    p_test: np.ndarray  # the encoder's predicted embeddings of the test images
    img_train: np.ndarray  # uint8 training stimuli, at gan_resolution
    img_test: np.ndarray  # uint8 test stimuli, at the stimuli's size


def load_inputs(st: Stage, *, encoder: str, gan_resolution: int) -> Inputs:
    """01's embedding model and embeddings, 02's predictions of the stage's ROI and subject (``encoder``'s
    drive the reconstructions), the training/test split and the stimuli, with one line on their shapes."""
    emb = st.store.load_embedder(st.device)
    vec = st.store.load_embeddings(model_key=emb.key)
    pred = st.store.load_predictions(model_key=emb.key, roi=st.roi, subject=st.subject)
    test_ids = pred["test_ids"]
    train_ids, _ = prep.stimulus_split(st.ds, st.subject, st.sessions)
    f_train, f_test = (decoding.rows_of(vec["ids"], vec["image"], i) for i in (train_ids, test_ids))
    p_test = pred[f"pred_{encoder}"]
    img_train, img_test = st.ds.images(train_ids), st.ds.images(test_ids)
    if gan_resolution and gan_resolution != img_train.shape[1]:
        img_train = gan.resize_images(img_train, gan_resolution)
    print(f"train {img_train.shape}, test {img_test.shape}; condition dim {f_train.shape[1]}")
    return Inputs(emb, vec, pred, train_ids, test_ids, f_train, f_test, p_test, img_train, img_test)


@dataclasses.dataclass
class Generation:
    """The generator 03 draws with, where it came from and what obtaining it cost; the embedding ``view`` and
    oracle ``monitor`` it is checked with; after :func:`align`, the alignment's history and cost."""

    G: object  # lib.models.stylegan2.Generator (after the conditioning alignment, when there was one)
    view: gan.EmbeddingView
    monitor: Callable  # G -> {"two_way": oracle 2-way on the first n_monitor test images}
    n_monitor: int
    ratio: float  # the perturbation ratio it generates with (gan.feature_ratio)
    kind: str  # "pretrained", "train" or "lafite_checkpoint"
    checkpoint: str | None  # the LAFITE checkpoint (None: none)
    source: str  # in words, for the hand-off's provenance
    parameters: int
    history: dict | None  # adversarial training's (None: not trained here)
    adversarial_seconds: float
    steps: int  # adversarial training steps (0: not trained here)
    G_adversarial: object = None  # before the alignment (G when there was none)
    align_history: dict | None = None
    align_seconds: float = 0.0
    align_steps: int = 0  # alignment steps run (0: none)
    align_pixel: float = 0.0  # the alignment's pixel weight (as configured, run or not)
    oracle_adversarial_only: float = float("nan")

    @property
    def seconds(self) -> float:
        """Seconds of generator training in all: adversarial, then alignment."""
        return self.adversarial_seconds + self.align_seconds


def obtain_generator(st: Stage, inputs: Inputs, *, generator: str, cfg: gan.GANConfig,
                     lafite_checkpoint: str = "", models_dir: str = "") -> Generation:  # fmt: skip
    """03's generator (:func:`lib.models.gan.obtain_generator`): a LAFITE ``lafite_checkpoint`` when given,
    else ``generator`` "pretrained" (from ``models_dir``, empty: models/) or "train" (``cfg``, resumable in
    the stage's work folder, monitored every ``cfg.monitor_every`` steps), with one line on its size and
    cost."""
    view = gan.EmbeddingView(inputs.emb).to(st.device)
    n_mon = min(MONITOR_IMAGES, len(inputs.test_ids))
    monitor = variants.two_way_monitor(view, inputs.f_test[:n_mon], cfg.feature_ratio, st.seed)  # the oracle
    t0 = time.perf_counter()
    G, hist = gan.obtain_generator(
        generator, emb=inputs.emb, images=inputs.img_train, features=inputs.f_train, cfg=cfg,
        device=st.device, lafite_checkpoint=lafite_checkpoint, models_dir=models_dir or None,
        state_dir=st.store.work_dir(st.name), monitor=monitor, monitor_every=cfg.monitor_every,
    )  # fmt: skip
    adversarial_seconds = hist["seconds"] if hist else 0.0
    n_params = sum(p.numel() for p in G.parameters())
    print(f"generator: {n_params / 1e6:.2f} M parameters, {G.img_resolution} px; adversarial training "
          f"{adversarial_seconds:.0f} s (this call {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    source = f"LAFITE checkpoint {lafite_checkpoint}" if lafite_checkpoint else f"the generator ({generator})"
    kind = "lafite_checkpoint" if lafite_checkpoint else generator
    return Generation(
        G=G, view=view, monitor=monitor, n_monitor=n_mon, ratio=cfg.feature_ratio, kind=kind,
        checkpoint=lafite_checkpoint or None, source=source, parameters=int(n_params), history=hist,
        adversarial_seconds=adversarial_seconds, steps=cfg.steps if hist else 0, G_adversarial=G,
    )  # fmt: skip


def align(st: Stage, inputs: Inputs, gen: Generation, *, cfg: gan.AlignConfig) -> Generation:
    """``gen`` after the conditioning alignment on the training embeddings
    (:func:`lib.models.gan.align_conditioning`; only for a generator trained here, and only with ``cfg.steps``
    > 0), and the oracle 2-way of the adversarial generator alone and of the aligned one, in one line."""
    G_gan, G, align_seconds, align_hist = gen.G, gen.G, 0.0, None
    if cfg.steps and gen.kind == "train":
        t0 = time.perf_counter()
        G, align_hist = gan.align_conditioning(
            G_gan, inputs.f_train, inputs.emb, steps=cfg.steps, ratio=gen.ratio, pixel=cfg.pixel,
            images=inputs.img_train, seed=st.seed,
        )  # fmt: skip
        align_seconds = time.perf_counter() - t0
    oracle_gan_only = gen.monitor(G_gan)["two_way"]
    out = dataclasses.replace(
        gen, G=G, G_adversarial=G_gan, align_history=align_hist, align_seconds=align_seconds,
        align_steps=cfg.steps if align_hist else 0, align_pixel=cfg.pixel,
        oracle_adversarial_only=float(oracle_gan_only),
    )  # fmt: skip
    print(f"alignment {align_seconds:.0f} s; oracle 2-way on {gen.n_monitor} test images: adversarial only "
          f"{oracle_gan_only:.3f}, aligned {gen.monitor(G)['two_way']:.3f}; generator training "
          f"{out.seconds:.0f} s in all")  # fmt: skip
    return out


@dataclasses.dataclass
class Tuning:
    """The fMRI-tuned generator, its history, the out-of-fold predictions it was tuned on and their true
    embeddings, and its configuration (``args``: those of :func:`lib.models.gan.tune_conditioning`)."""

    G: object  # lib.models.stylegan2.Generator
    history: dict
    predicted: np.ndarray  # out-of-fold ridge predictions of the training images
    true: np.ndarray  # their true embeddings
    cfg: gan.TuneConfig
    args: dict  # steps, lr, pixel, images: what each seed of the spread is tuned with


def tune(st: Stage, inputs: Inputs, gen: Generation, *, cfg: gan.TuneConfig) -> Tuning:
    """Mind Reader's fMRI tuning of ``gen``'s conditioning path on out-of-fold predictions of the training
    images: ridge (02's alpha) fitted on the single trials of the other folds
    (:func:`lib.analysis.decoding.cross_fitted`), with one line comparing their closeness to the truth with
    the test predictions'."""
    data, _, _ = prep.prepare_cached(
        st.ds, st.subject, st.roi, st.sessions, compute=False, nonfinite=st.nonfinite
    )
    ridge02 = st.store.load_encoder("ridge_image", model_key=inputs.emb.key, roi=st.roi, subject=st.subject)
    vec = inputs.vec
    y_rows = decoding.rows_of(vec["ids"], vec["image"], data.train_ids)
    oof_ids, oof = decoding.cross_fitted(data.x_train, y_rows, data.train_ids, folds=cfg.folds, seed=st.seed,
                                         alphas=[ridge02.alpha_], device=st.device)  # fmt: skip
    f_oof = decoding.rows_of(vec["ids"], vec["image"], oof_ids)
    print(f"out-of-fold predictions: {oof.shape}, mean cosine to the truth "
          f"{metrics.cosine_per_sample(oof, f_oof).mean():.3f} "
          f"(test: {metrics.cosine_per_sample(inputs.p_test, inputs.f_test).mean():.3f})")  # fmt: skip
    images = gan.resize_images(st.ds.images(oof_ids), gen.G.img_resolution) if cfg.pixel else None
    args = dict(steps=cfg.steps, lr=cfg.lr, pixel=cfg.pixel, images=images)
    G_tuned, hist = gan.tune_conditioning(
        gen.G, oof, f_oof, inputs.emb, ratio=gen.ratio, seed=st.seed, **args
    )
    return Tuning(G_tuned, hist, oof, f_oof, cfg, args)


def reconstruct(inputs: Inputs, *, gen: Generation, tuning: Tuning, opt: gan.OptConfig,
                seed: int) -> tuple[dict[str, np.ndarray], dict]:  # fmt: skip
    """The semantic pathway's reconstructions of the test images (z = 0, constant noise): oracle (the true
    embedding), predicted, tuned (the fMRI-tuned generator) and optimised (its latents optimised per image
    toward the predicted embedding, :func:`lib.models.gan.optimise_latents`). Returns ({variant: uint8
    images}, the optimisation's history)."""
    G, ratio = gen.G, gen.ratio
    recon = {
        "oracle": gan.generate(G, inputs.f_test, ratio, seed=seed),
        "predicted": gan.generate(G, inputs.p_test, ratio, seed=seed),
        "tuned": gan.generate(tuning.G, inputs.p_test, ratio, seed=seed),
    }
    recon["optimised"], hist = gan.optimise_latents(
        tuning.G, inputs.p_test, inputs.emb, steps=opt.steps, lr=opt.lr, ratio=ratio, seed=seed,
        anchor=opt.anchor, noise_maps=opt.noise_maps,
    )  # fmt: skip
    return recon, hist


def generation_settings(*, encoder: str, combine: str, ratio: float, opt: gan.OptConfig) -> dict:
    """The settings 04 and 05 reuse (:data:`lib.artifacts.GENERATION_SETTINGS`), as 03 records them with its
    reconstructions: the perturbation ratio, the encoder, the latent optimisation's and the combination's."""
    return {
        "feature_ratio": ratio,
        "encoder": encoder,
        "opt_steps": opt.steps,
        "opt_lr": opt.lr,
        "opt_anchor": opt.anchor,
        "opt_noise_maps": opt.noise_maps,
        "combine": combine,
        "opt_lowlevel": opt.lowlevel,
        "impose_strength": opt.impose_strength,
    }


def add_pathways(inputs: Inputs, recon: dict[str, np.ndarray], *, tuning: Tuning, settings: dict,
                 seed: int) -> dict[str, np.ndarray]:  # fmt: skip
    """``recon`` and two more variants: the spatial pathway alone (02's low-resolution image decoded from
    early visual cortex, upsampled) and the two pathways combined (:func:`lib.models.gan.combiner` with
    ``settings``)."""
    low_test = inputs.pred["lowlevel"]
    out = dict(recon)
    out[variants.SPATIAL] = lowlevel.upsample(low_test, tuning.G.img_resolution)
    out[variants.COMBINED] = gan.combiner(tuning.G, inputs.emb, settings, seed=seed, exact=False)(
        inputs.p_test, low_test
    )
    return out


def describe_scores(table: dict[str, dict]) -> str:
    """The variants' scores (:func:`lib.analysis.variants.variant_scores`), one line each."""
    return "\n".join(
        f"{name:>10}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()) for name, row in table.items()
    )


def captions(st: Stage, ids: np.ndarray, *, n: int) -> list[str]:
    """The first caption of each of the first ``n`` of ``ids``."""
    return [st.ds.captions([i])[0][0] for i in ids[:n]]


def seed_spread(inputs: Inputs, *, gen: Generation, tuning: Tuning, seeds, first: dict) -> dict:
    """The seed spread of the fMRI tuning (:func:`lib.analysis.variants.tuning_seed_spread`): the conditioning
    path tuned again with each further seed of ``seeds``, its reconstructions drawn with that seed and scored
    as 03 scores them; ``first``: the first seed's scores of "tuned"."""
    return variants.tuning_seed_spread(
        seeds=seeds, G=gen.G, predicted=tuning.predicted, true=tuning.true, embedder=inputs.emb,
        view=gen.view, test_predicted=inputs.p_test, test_true=inputs.f_test, test_images=inputs.img_test,
        ratio=gen.ratio, first={"tuned": first}, **tuning.args,
    )  # fmt: skip


def ratio_effect(inputs: Inputs, *, gen: Generation, ratios: list[float], seed: int) -> dict[str, list]:
    """2-way identification of the oracle and predicted reconstructions at each perturbation ``ratio`` at
    inference (the generator was trained with ``gan.feature_ratio``)."""
    scores = {"ratio": list(ratios), "oracle": [], "predicted": []}
    for r in ratios:
        for name, f in (("oracle", inputs.f_test), ("predicted", inputs.p_test)):
            e = gan.embed_generated(gen.view, gan.generate(gen.G, f, r, seed=seed))
            scores[name].append(metrics.two_way_identification(e, inputs.f_test))
    return scores


def save_handoff(st: Stage, inputs: Inputs, *, gen: Generation, tuning: Tuning, recon: dict[str, np.ndarray],
                 settings: dict) -> None:  # fmt: skip
    """The hand-off to 04 and 05: the generator and the fMRI-tuned one (with the embedding model they read),
    and the reconstructions with what produced each (:func:`lib.analysis.variants.variant_provenance`) and the
    ``settings`` 04 and 05 reuse."""
    key = str(inputs.vec["model_key"])
    st.store.save_generator("generator", gen.G, key, source=gen.source)
    tuned_source = f"{gen.source}, fMRI-tuned on ridge's out-of-fold predictions"
    st.store.save_generator("generator_tuned", tuning.G, key, source=tuned_source)
    low_dec = st.store.load_lowlevel(roi=st.roi, subject=st.subject)
    provenance = variants.variant_provenance(
        source=gen.source, encoder=settings["encoder"], tune_steps=tuning.cfg.steps,
        opt_steps=settings["opt_steps"], combine_how=settings["combine"], lowlevel=lowlevel.describe(low_dec),
    )  # fmt: skip
    st.store.save_reconstructions(inputs.test_ids, recon, provenance, key, settings)


class CheckFailed(AssertionError):
    """A reconstruction score below its goal; the message names the parameter that set it."""


def check(table: dict[str, dict], *, min_oracle_two_way: float, min_predicted_two_way: float) -> None:
    """Every score a finite number, the 2-way identification within [0, 1], and the oracle and predicted
    reconstructions recognisable (2-way at least ``min_oracle_two_way`` and ``min_predicted_two_way``)."""
    bad = [
        name
        for name, row in table.items()
        if not (0 <= row["two_way"] <= 1 and np.isfinite(list(row.values())).all())
    ]
    if bad:
        raise CheckFailed(f"scores of {', '.join(bad)}: not finite, or a 2-way outside [0, 1]")
    oracle, predicted = table["oracle"]["two_way"], table["predicted"]["two_way"]
    if not oracle >= min_oracle_two_way:
        raise CheckFailed(f"oracle reconstructions are not recognisable: 2-way {oracle:.3f} < "
                          f"min_oracle_two_way {min_oracle_two_way}")  # fmt: skip
    if not predicted >= min_predicted_two_way:
        raise CheckFailed(f"reconstructions from fMRI are not recognisable: 2-way {predicted:.3f} < "
                          f"min_predicted_two_way {min_predicted_two_way}")  # fmt: skip


def results(st: Stage, inputs: Inputs, *, gen: Generation, tuning: Tuning, table: dict, ratios: dict,
            spread: dict, settings: dict) -> Generator:  # fmt: skip
    """03's results: the generator and what it cost, each variant's scores (``table``), the perturbation
    ratio's effect (``ratios``, :func:`ratio_effect`), the tuning's seed ``spread``, and the generation
    ``settings`` (:func:`generation_settings`)."""
    return Generator(
        subject=st.subject, roi=st.roi, n_train=int(len(inputs.train_ids)), n_test=int(len(inputs.test_ids)),
        resolution=int(gen.G.img_resolution), generator_parameters=int(gen.parameters), generator=gen.kind,
        lafite_checkpoint=gen.checkpoint, gan_train_seconds=float(gen.seconds),
        gan_adversarial_seconds=float(gen.adversarial_seconds), align_seconds=float(gen.align_seconds),
        align_steps=gen.align_steps, oracle_two_way_adversarial_only=float(gen.oracle_adversarial_only),
        gan_steps=gen.steps, variants=table, chance=CHANCE, ratio_effect=ratios,
        gan_monitor=(gen.history or {}).get("monitor", []), tune_steps=tuning.cfg.steps,
        align_pixel=gen.align_pixel, tune_pixel=tuning.cfg.pixel, tune_seed_spread=spread, **settings,
    )  # fmt: skip
