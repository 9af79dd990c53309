"""Training and using the CLIP-conditioned StyleGAN2 (:mod:`lib.models.stylegan2`) for reconstructions from fMRI.

- :func:`train_gan`: LAFITE's language-free training on the stimuli, conditioned on their image embeddings with
  the pseudo-feature perturbation ``normalise(r * f + (1 - r) * n)``; non-saturating loss, lazy R1, contrastive
  terms between the embedding of the generated image and its condition (``itc``) and between the
  discriminator's features and the condition (``itd``), EMA generator, bf16 on CUDA, tqdm, atomic resumable state.
- :func:`tune_conditioning`: Mind Reader's fMRI tuning: only the conditioning path (every ``pre_0``, ``pre_1``,
  ``affine_0``) is trained, with z fixed at zero, so that images generated from encoder-predicted embeddings
  have the true stimulus embedding (plus an optional low-level pixel term).
- :func:`optimise_latents`: stylegan2-ada's projector adapted to a target embedding: per sample, w and every noise
  map are optimised (batched over samples) so that the generated image's embedding matches the target, with
  the noise regulariser, renormalised noise maps, the warm-up / cosine learning-rate schedule and decaying w noise.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib import distributed, fileio, runtime
from lib.models import losses, lowlevel, pretrained
from lib.models import stylegan2 as sg
from lib.models.embedding import fit_to_model
from lib.trainer import CudaRNG, Run, TorchRNG

GAN_STATE_FORMAT = "lib.gan.state/1"


class GANError(ValueError):
    """Bad input to GAN training or inversion."""


@dataclasses.dataclass
class GANConfig:
    z_dim: int = 64
    w_dim: int = 128
    mapping_layers: int = 2
    channel_base: int = 4096
    channel_max: int = 128
    fts_hidden: int = 128  # LAFITE: 512
    batch_size: int = 32
    steps: int = 1000
    lr: float = 0.0025  # Adam for G and D
    beta1: float = 0.0  # Adam's beta1 (stylegan2-ada: 0; momentum speeds up short CPU runs)
    r1_gamma: float | None = None  # None: stylegan2-ada's heuristic 0.0002 * res^2 / batch
    r1_interval: int = 16  # lazy regularisation
    adv: float = 1.0  # weight of the generator's non-saturating adversarial loss
    itc: float = 10.0  # contrastive: embedding of the generated image vs its condition
    itd: float = 5.0  # contrastive: discriminator features vs the condition
    temperature: float = 0.5  # of both contrastive terms (LAFITE: 0.5)
    rec: float = 0.0  # L1 between the generated image and its paired stimulus (0: LAFITE, adversarial only)
    feature_ratio: float = 0.25  # LAFITE's pseudo features: normalise(r f + (1 - r) n)
    ema_kimg: float = 5.0  # EMA half-life in thousands of images
    ema_rampup: float = 0.05
    crop_min: float = 0.5  # the embedding model sees a random crop of 50-100% of the generated image
    save_every: int = 100
    seed: int = 0
    monitor_every: int = 100  # steps between 03's monitor checks (not part of the state's key)

    def check(self) -> None:
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "fts_hidden",
                     "batch_size", "steps", "r1_interval", "save_every"):  # fmt: skip
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 1:
                raise GANError(f"{name}={v!r}: expected a positive integer")
        if self.batch_size % 4:
            raise GANError(
                f"batch_size={self.batch_size}: expected a multiple of 4 (minibatch-stddev groups)"
            )
        if not 0 < self.feature_ratio <= 1:
            raise GANError(f"feature_ratio={self.feature_ratio}: expected 0 < r <= 1")
        if not 0 < self.crop_min <= 1:
            raise GANError(f"crop_min={self.crop_min}: expected a fraction in (0, 1]")
        if not 0 <= self.beta1 < 1:
            raise GANError(f"beta1={self.beta1}: expected 0 <= beta1 < 1")
        for name in ("lr", "adv", "itc", "itd", "temperature", "ema_kimg", "rec"):
            if getattr(self, name) < 0:
                raise GANError(f"{name}={getattr(self, name)}: expected >= 0")


@dataclasses.dataclass
class AlignConfig:
    """03's conditioning alignment after adversarial training (:func:`align_conditioning`; profile section
    ``align``): only for a generator trained in 03, never for a checkpoint or the pretrained generator."""

    steps: int = 300  # alignment steps (0: none)
    pixel: float = 5.0  # weight of the pixel term (squared error to the stimulus, [-1, 1])

    def check(self) -> None:
        if self.steps < 0 or self.pixel < 0:
            raise GANError(f"align: steps={self.steps}, pixel={self.pixel}: expected >= 0")


@dataclasses.dataclass
class TuneConfig:
    """03's fMRI tuning of the conditioning path (:func:`tune_conditioning`; profile section ``tune``) on
    out-of-fold ridge predictions of the training images."""

    steps: int = 300  # tuning steps
    lr: float = 0.002  # Adam learning rate
    pixel: float = 5.0  # weight of the pixel term (squared error to the stimulus)
    folds: int = 5  # folds of the out-of-fold training predictions

    def check(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.pixel < 0:
            raise GANError(
                f"tune: steps={self.steps}, lr={self.lr}, pixel={self.pixel}: expected >= 0, > 0, >= 0"
            )
        if self.folds < 2:
            raise GANError(f"tune: folds={self.folds}: expected at least 2")


@dataclasses.dataclass
class OptConfig:
    """03's latent optimisation per test image (:func:`optimise_latents`) and the combination of the two pathways
    (:func:`combine`; profile section ``opt``). 04 and 05 reuse what 03 recorded, never these defaults."""

    steps: int = 25  # optimisation steps per test image
    anchor: float = 30.0  # weight of the 1/4-resolution squared error to the starting image (0: none)
    noise_maps: bool = False  # optimise the noise maps too (stylegan2-ada's projector) or only w
    lr: float = 0.03  # peak learning rate
    lowlevel: float = 3.0  # weight of the layout target (1 - Pearson r) in the combined optimisation
    impose_strength: float = 0.25  # impose and both: how far the image's area means move to the decoded ones

    def check(self) -> None:
        for name in ("steps", "anchor", "lr", "lowlevel"):
            if getattr(self, name) < 0:
                raise GANError(f"opt: {name}={getattr(self, name)}: expected >= 0")
        if not 0 <= self.impose_strength <= 1:
            raise GANError(f"opt: impose_strength={self.impose_strength}: expected 0 <= s <= 1")


def perturb(f: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """LAFITE's pseudo features: normalise(ratio * f + (1 - ratio) * n), n a random unit direction per row."""
    n = F.normalize(torch.randn(f.shape, generator=generator), dim=-1).to(f.device, f.dtype)
    return F.normalize(ratio * F.normalize(f, dim=-1) + (1 - ratio) * n, dim=-1)


def build(cfg: GANConfig, resolution: int, f_dim: int) -> tuple[sg.Generator, sg.Discriminator]:
    G = sg.Generator(
        z_dim=cfg.z_dim, w_dim=cfg.w_dim, img_resolution=resolution,
        mapping_kwargs={"num_layers": cfg.mapping_layers},
        synthesis_kwargs={"channel_base": cfg.channel_base, "channel_max": cfg.channel_max, "f_dim": f_dim,
                          "fts_hidden": cfg.fts_hidden},
    )  # fmt: skip
    D = sg.Discriminator(img_resolution=resolution, channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                         f_dim=f_dim)  # fmt: skip
    return G, D


class EmbeddingView(torch.nn.Module):
    """Differentiable image embedding with a frozen :class:`lib.models.embedding.Embedder`'s image tower: images in
    [-1, 1] (N, 3, H, W) -> L2-normalised embeddings, through the embedder's own geometry
    (:func:`lib.models.embedding.fit_to_model`); ``crop_min < 1`` takes a random square crop of that fraction of
    the side or more first (LAFITE's view of a generated image)."""

    def __init__(self, embedder, crop_min: float = 1.0):
        super().__init__()
        self.visual = embedder.model.visual
        self.size = embedder.image_size
        mean, std = embedder.mean_std
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.crop_min = crop_min
        self.visual.requires_grad_(False).eval()

    def forward(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = (img.float() + 1) / 2
        if self.crop_min < 1:
            h = x.shape[-1]
            frac = self.crop_min + (1 - self.crop_min) * float(torch.rand((), generator=generator))
            s = max(1, int(round(h * frac)))
            top, left = (int(torch.randint(0, h - s + 1, (), generator=generator)) for _ in range(2))
            x = x[..., top : top + s, left : left + s]
        x = fit_to_model(
            x, self.size, clamp=False
        )  # Embedder.preprocess's geometry; unclamped, for gradients
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return F.normalize(self.visual(x).float(), dim=-1)


def _noise_rows(G: sg.Generator, batch: int, part: slice, dev: torch.device, spread: bool) -> list | None:
    """Under several processes, this process's rows of the noise maps that ``noise_mode="random"`` draws for the
    whole batch (the same draws in the same order, from torch's generator, which every process keeps in step);
    one process: None (the generator draws them itself)."""
    if not spread:
        return None
    return [torch.randn([batch, 1, la.resolution, la.resolution], device=dev)[part] if la.use_noise else None
            for la in G.synthesis.noise_layers()]  # fmt: skip


def _contrastive(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    return losses.clip_loss(F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1), 1.0 / temperature)


def train_gan(images: np.ndarray, features: np.ndarray, cfg: GANConfig, embedder, device: str = "auto",
              state_dir: str | Path | None = None, stop_after: int | None = None,
              monitor=None, monitor_every: int = 0, nproc: int | None = None, accumulate: int = 1,
              _launch: bool = True) -> tuple[sg.Generator, sg.Discriminator, dict]:  # fmt: skip
    """Train a conditional generator on ``images`` (uint8 (N, R, R, 3)) and their embeddings ``features``
    ((N, D), by ``embedder``); returns (G_ema in eval mode, D, history). History: per-step ``loss_g``,
    ``loss_d``, ``itc`` and ``r1`` (0 between lazy R1 steps), and ``seconds``; ``monitor(G_ema)`` ->
    dict is recorded every ``monitor_every`` steps. The state is saved atomically every ``cfg.save_every``
    steps to ``<state_dir>/gan-state-<key>.pt`` (key: configuration, data, embedder, device) and resumed from
    there; ``stop_after`` ends this call after that many steps.

    Several processes (:mod:`lib.distributed`; under ``torchrun``, or ``nproc`` > 1 launches them, default the
    pipeline's ``LIB_NPROC``): ``cfg.batch_size`` is per process, every process holds all images and draws the
    same random numbers (batch rows, z, pseudo features, crops, noise maps) for the global batch and runs its own
    rows; the contrastive terms see the gathered batch, R1 and the losses are means over it, the EMA counts the
    global batch, and the minibatch-stddev groups are the ones one process forms: the trained weights match one
    process's with the global batch. ``monitor`` is not run by launched processes. ``accumulate``: micro-batches
    (each of the global batch's size) whose gradients are summed before each of G's and D's steps; R1's gamma and
    the EMA count all their images.
    """
    cfg.check()
    if int(accumulate) < 1:
        raise GANError(f"accumulate={accumulate}: expected 1 or more micro-batches per step")
    accumulate = int(accumulate)
    images, features = np.asarray(images), np.asarray(features, np.float32)
    if (
        images.ndim != 4
        or images.shape[-1] != 3
        or images.dtype != np.uint8
        or images.shape[1] != images.shape[2]
    ):
        raise GANError(f"images {images.shape} {images.dtype}: expected uint8 (N, R, R, 3)")
    if features.ndim != 2 or len(features) != len(images):
        raise GANError(f"features {features.shape}: expected one row per image ({len(images)})")
    fileio.check_finite("features", features, GANError)
    if len(images) < cfg.batch_size:
        raise GANError(f"batch_size={cfg.batch_size}: larger than the {len(images)} images")
    res = images.shape[1]
    w, ranks = distributed.spread(nproc)
    dev = torch.device(distributed.device(runtime.pick_device(device)))
    data_key = fileio.array_key(images, features)
    spread = ({"ranks": ranks} if ranks > 1 else {}) | ({"accumulate": accumulate} if accumulate > 1 else {})
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "monitor_every"}  # not the run's
    key = fileio.content_key({"config": config, "data": data_key, "embedder": embedder.key,
                          "device": dev.type} | spread)  # fmt: skip
    if ranks > 1 and not w.active and _launch:  # launch the processes, then resume from their state
        given = {"images": images, "features": features, "cfg": cfg, "embedder": embedder, "device": device,
                 "stop_after": stop_after, "accumulate": accumulate}  # fmt: skip
        return distributed.launched(train_gan, ranks, given, state_dir, "gan")
    if not distributed.all_same(data_key):
        raise GANError("images and features differ between processes: every process must hold all of them")
    batch = cfg.batch_size * ranks  # the global batch
    if len(images) < batch:
        raise GANError(
            f"batch_size={cfg.batch_size} x {ranks} processes: larger than the {len(images)} images"
        )
    part = distributed.local_part(batch)
    torch.manual_seed(cfg.seed)
    G, D = build(cfg, res, features.shape[1])
    G, D = G.to(dev).train(), D.to(dev).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    view = EmbeddingView(embedder, cfg.crop_min).to(dev)
    per_step = batch * accumulate  # images a step sees, over processes and micro-batches
    gamma = cfg.r1_gamma if cfg.r1_gamma is not None else 0.0002 * res**2 / per_step
    c = cfg.r1_interval / (cfg.r1_interval + 1)  # lazy regularisation: D's Adam adjusted as stylegan2-ada
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.99), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr * c, betas=(cfg.beta1**c, 0.99**c), eps=1e-8)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    history: dict = {"step": [], "loss_g": [], "loss_d": [], "itc": [], "r1": [], "seconds": 0.0}
    objects = {"G": G, "D": D, "G_ema": G_ema, "opt_g": opt_g, "opt_d": opt_d, "rng": rng, "gen": gen,
               "torch_rng": TorchRNG(), "cuda_rng": CudaRNG(dev)}  # fmt: skip
    run = Run(state_dir, "gan-state", GAN_STATE_FORMAT, key, cfg.steps, "GAN", objects)
    run.start(history)
    history = run.history
    real_all = torch.as_tensor(images, device=dev)
    feat_all = F.normalize(torch.as_tensor(features, device=dev), dim=-1)
    end = cfg.steps if stop_after is None else min(cfg.steps, run.step + stop_after)
    t0 = time.perf_counter()
    for step in run.steps(stop_after):
        gather = distributed.gather
        # generator: non-saturating loss + contrastive terms, over ``accumulate`` micro-batches
        G.requires_grad_(True)
        D.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        drawn, sums = [], dict.fromkeys(("loss_g", "loss_d", "itc", "r1"), 0.0)
        for _ in range(accumulate):
            idx = torch.as_tensor(rng.choice(len(images), batch, replace=False), device=dev)
            real = sg.from_uint8(real_all[idx[part]])
            f = feat_all[idx]  # the whole batch's conditions: the contrastive terms see all of them
            fts = perturb(f, cfg.feature_ratio, gen)[part]
            z = torch.randn(batch, cfg.z_dim, generator=gen).to(dev)[part]
            drawn.append((real, f, fts, z))
            with runtime.autocast(dev):
                fake = G(z, fts=fts, noises=_noise_rows(G, batch, part, dev, w.active))
                logit, d_fake = D(fake, fts)
                itc = (
                    _contrastive(gather(view(fake, gen)), f, cfg.temperature)
                    if cfg.itc
                    else fake.new_zeros(())
                )
                itd = _contrastive(gather(d_fake), f, cfg.temperature) if cfg.itd else fake.new_zeros(())
                loss_g = cfg.adv * F.softplus(-logit).mean() + cfg.itc * itc + cfg.itd * itd
                if cfg.rec:
                    loss_g = loss_g + cfg.rec * (fake.float() - real).abs().mean()
            (loss_g / accumulate).backward()
            sums["loss_g"] += float(loss_g.detach()) / accumulate
            sums["itc"] += float(itc.detach()) / accumulate
        distributed.average_gradients(G)
        opt_g.step()
        # discriminator: non-saturating loss + contrastive term on real images, lazy R1, same micro-batches
        G.requires_grad_(False)
        D.requires_grad_(True)
        r1_step = step % cfg.r1_interval == 0 and gamma > 0
        opt_d.zero_grad(set_to_none=True)
        for real, f, fts, z in drawn:
            with runtime.autocast(dev):
                with torch.no_grad():
                    fake = G(z, fts=fts, noises=_noise_rows(G, batch, part, dev, w.active))
                real_in = real.detach().requires_grad_(r1_step)
                logit_f, _ = D(fake, fts)
                logit_r, d_real = D(real_in, fts)
                loss_d = F.softplus(logit_f).mean() + F.softplus(-logit_r).mean()
                if cfg.itd:
                    loss_d = loss_d + cfg.itd * _contrastive(gather(d_real), f, cfg.temperature)
            r1 = torch.zeros((), device=dev)
            if r1_step:
                (grad,) = torch.autograd.grad(logit_r.float().sum(), real_in, create_graph=True)
                r1 = grad.square().sum(dim=[1, 2, 3]).mean()
                loss_d = loss_d + (gamma / 2) * r1 * cfg.r1_interval
            (loss_d / accumulate).backward()
            sums["loss_d"] += float(loss_d.detach()) / accumulate
            sums["r1"] += float(r1.detach()) / accumulate
        distributed.average_gradients(D)
        opt_d.step()
        distributed.average_buffers(G)  # w_avg: each process tracked its own rows' mean w
        # EMA generator, half-life ema_kimg with ramp-up
        step = run.advance()
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup:
            ema_nimg = min(ema_nimg, step * per_step * cfg.ema_rampup)
        beta = 0.5 ** (per_step / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for pe, p in zip(G_ema.parameters(), G.parameters(), strict=True):
                pe.copy_(p.detach().lerp(pe, beta))
            for be, b in zip(G_ema.buffers(), G.buffers(), strict=True):
                be.copy_(b)
        history["step"].append(step)
        for k, v in sums.items():
            history[k].append(distributed.mean(v))  # over the processes' rows
        if step % 10 == 0:
            run.bar.set_postfix(g=f"{history['loss_g'][-1]:.2f}", d=f"{history['loss_d'][-1]:.2f}",
                                itc=f"{history['itc'][-1]:.2f}")  # fmt: skip
        if (
            monitor is not None
            and monitor_every
            and (step % monitor_every == 0 or step == cfg.steps)
            and w.main
        ):
            history.setdefault("monitor", []).append({"step": step, **monitor(G_ema)})
        if run.path is not None and (step % cfg.save_every == 0 or step == end):
            history["seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            run.save()
    history["seconds"] += time.perf_counter() - t0
    history["state_key"] = key
    history["done"] = run.step >= cfg.steps
    return G_ema.eval().requires_grad_(False), D.eval(), history


# ================================================================================================================
# generation, fMRI tuning, latent optimisation


@torch.no_grad()
def generate(G: sg.Generator, features: np.ndarray, ratio: float = 0.25, seed: int = 0, z: str = "zero",
             batch: int = 64, device: str | None = None, exact: bool = False) -> np.ndarray:  # fmt: skip
    """uint8 images (N, R, R, 3) from condition vectors ``features`` (N, D), perturbed as in training with
    ``ratio`` (1 = no perturbation) by a fixed seed; ``z`` "zero" (Mind Reader) or "random". ``exact``: float32
    on the same 0-255 scale without rounding (differences smaller than one grey level stay visible)."""
    dev = next(G.parameters()).device if device is None else torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    f = F.normalize(torch.as_tensor(np.asarray(features, np.float32)), dim=-1)
    out = []
    for i in range(0, len(f), batch):
        fb = f[i : i + batch]
        fts = perturb(fb, ratio, gen).to(dev) if ratio < 1 else fb.to(dev)
        zb = torch.zeros(len(fb), G.z_dim) if z == "zero" else torch.randn(len(fb), G.z_dim, generator=gen)
        img = G(zb.to(dev), fts=fts, noise_mode="const")
        out.append(_exact_0_255(img) if exact else sg.to_uint8(img))
    empty = np.zeros((0, G.img_resolution, G.img_resolution, 3), np.float32 if exact else np.uint8)
    return np.concatenate(out) if out else empty


def _exact_0_255(img: torch.Tensor) -> np.ndarray:
    """:func:`lib.models.stylegan2.to_uint8`'s mapping without the rounding."""
    return (img.detach().float().permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).cpu().numpy()


def embed_generated(view: EmbeddingView, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """Embeddings (N, D) of uint8 images through the same differentiable view, no crop."""
    dev = view.mean.device
    with torch.no_grad():
        out = [view(sg.from_uint8(images[i : i + batch], dev)).cpu() for i in range(0, len(images), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def conditioning_parameters(G: sg.Generator) -> list[torch.nn.Parameter]:
    """Every parameter of the conditioning path: the pre_0, pre_1 and affine_0 layers."""
    return [p for n, p in G.named_parameters() if any(f".{k}." in n for k in ("pre_0", "pre_1", "affine_0"))]


def tune_conditioning(G: sg.Generator, predicted: np.ndarray, true: np.ndarray, embedder, steps: int = 200,
                      lr: float = 0.002, batch_size: int = 32, ratio: float = 0.25, pixel: float = 0.0,
                      images: np.ndarray | None = None, seed: int = 0) -> tuple[sg.Generator, dict]:  # fmt: skip
    """A copy of ``G`` whose conditioning path is fine-tuned so that images generated (z = 0) from
    ``predicted`` embeddings (training split, out-of-sample predictions) have the ``true`` stimulus embeddings:
    loss 1 - cos(embed(G(pred)), true), plus ``pixel`` x the squared error to ``images`` (uint8, the stimuli).
    Returns (tuned generator in eval mode, history with per-step ``loss``)."""
    predicted, true = np.asarray(predicted, np.float32), np.asarray(true, np.float32)
    if predicted.shape != true.shape or predicted.ndim != 2:
        raise GANError(f"predicted {predicted.shape} and true {true.shape}: expected equal (N, D)")
    if pixel and (images is None or len(images) != len(true)):
        raise GANError("pixel > 0 needs images: one stimulus per row of true")
    dev = next(G.parameters()).device
    tuned = copy.deepcopy(G).eval().requires_grad_(False)  # eval: the mapping keeps its w_avg
    params = conditioning_parameters(tuned)
    for p in params:
        p.requires_grad_(True)
    view = EmbeddingView(embedder).to(dev)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    pred_t = F.normalize(torch.as_tensor(predicted), dim=-1)
    true_t = F.normalize(torch.as_tensor(true), dim=-1).to(dev)
    history = {"loss": []}
    for _ in runtime.progress(range(steps), desc="fMRI tuning"):
        idx = rng.choice(len(predicted), min(batch_size, len(predicted)), replace=False)
        fts = perturb(pred_t[idx], ratio, gen).to(dev) if ratio < 1 else pred_t[idx].to(dev)
        with runtime.autocast(dev):
            img = tuned(torch.zeros(len(idx), tuned.z_dim, device=dev), fts=fts, noise_mode="const")
            loss = (1 - (view(img) * true_t[idx]).sum(1)).mean()
            if pixel:
                target = sg.from_uint8(images[idx], dev)
                loss = loss + pixel * (img.float() - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history["loss"].append(float(loss.detach()))
    return tuned.eval().requires_grad_(False), history


def align_conditioning(
    G: sg.Generator,
    features: np.ndarray,
    embedder,
    steps: int = 300,
    lr: float = 0.002,
    batch_size: int = 32,
    ratio: float = 1.0,
    pixel: float = 0.0,
    images: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[sg.Generator, dict]:
    """The generator's last training stage: its conditioning path fine-tuned so that images generated (z = 0)
    from the training ``features`` have those embeddings (loss 1 - cos), the direct form of LAFITE's contrastive
    term, plus ``pixel`` x the squared error to the stimuli ``images`` (uint8, at the generator's resolution),
    which keeps their layout. A short adversarial run on CPU draws images but barely reads its condition; this
    stage makes it read it. :func:`tune_conditioning` with the features as both input and target; returns
    (generator, history)."""
    return tune_conditioning(G, features, features, embedder, steps=steps, lr=lr, batch_size=batch_size,
                             ratio=ratio, pixel=pixel, images=images, seed=seed)  # fmt: skip


def _noise_reg(noises: list[torch.Tensor]) -> torch.Tensor:
    """stylegan2-ada's projector regulariser: squared autocorrelation at one-pixel shifts, over a pyramid."""
    reg = 0.0
    for v in noises:
        n = v
        while True:
            reg = reg + (n * torch.roll(n, 1, dims=3)).mean(dim=[1, 2, 3]).square().sum()
            reg = reg + (n * torch.roll(n, 1, dims=2)).mean(dim=[1, 2, 3]).square().sum()
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return reg


def optimise_latents(G: sg.Generator, targets: np.ndarray, embedder, steps: int = 100, lr: float = 0.1,
                     ratio: float = 0.25, noise_reg: float = 1e5, w_noise: float = 0.05, batch: int = 64,
                     crop_min: float = 1.0, start: str = "generated", seed: int = 0, noise_maps: bool = True,
                     anchor: float = 0.0, low_target: np.ndarray | None = None, low_weight: float = 0.0,
                     low_loss: str = "mse", condition: bool = False,
                     exact: bool = False) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Per target embedding, optimise one w (broadcast to every layer) and, with ``noise_maps``, every noise map so
    that the embedding of G(w, condition = the target perturbed as in :func:`generate`, noises) has the largest
    cosine with the target; batched over ``batch`` targets. ``start``: "generated" begins at :func:`generate`'s
    image (w of z = 0, the constant noise maps), so the search refines the plain reconstruction; "w_avg" begins
    where stylegan2-ada's unconditional projector does (w_avg, random noise maps). The projector's schedule:
    learning rate ``lr`` with a 5% warm-up and a cosine ramp-down over the last 25%, Gaussian noise on w of scale
    w_std * ``w_noise`` * max(0, 1 - t / 0.75)^2, ``noise_reg`` x the noise regulariser, and the noise maps
    renormalised after each step. ``noise_maps=False`` keeps the noise maps fixed (only w moves; no regulariser, no
    renormalisation). ``anchor`` > 0 adds ``anchor`` x the squared error between the image and the starting image,
    both at 1/4 resolution: the search may change detail but not the layout and colours it started from (the
    embedding of a prediction from fMRI is noisy, and matching it without an anchor also matches its noise).
    ``low_target`` (N, s, s, 3) in [0, 1], the spatial pathway's low-resolution image of each target
    (:mod:`lib.models.lowlevel`), with ``low_weight`` > 0 adds ``low_weight`` x the squared error (``low_loss``
    "mse") or 1 - Pearson r ("corr") between the image's s x s area means (in [0, 1]) and it: the semantic and the
    spatial pathway combined in one search. ``condition`` optimises the condition vector too (measured worse on
    mini: README).
    Returns (uint8 images, or with ``exact`` float32 on the same 0-255 scale unrounded, as :func:`generate`;
    history with mean ``loss`` and ``cosine`` per step (of the noised w while it is noised), ``noise_maps``,
    ``anchor`` and ``low_weight``)."""
    targets = np.asarray(targets, np.float32)
    if targets.ndim != 2:
        raise GANError(f"targets {targets.shape}: expected (N, D)")
    if start not in ("generated", "w_avg"):
        raise GANError(f"start={start!r}: expected 'generated' or 'w_avg'")
    if not anchor >= 0:  # also refuses NaN
        raise GANError(f"anchor={anchor}: expected a number >= 0")
    if not low_weight >= 0:
        raise GANError(f"low_weight={low_weight}: expected a number >= 0")
    if low_loss not in ("mse", "corr"):
        raise GANError(f"low_loss={low_loss!r}: expected 'mse' or 'corr'")
    if low_target is not None:
        low_target = np.asarray(low_target, np.float32)
        if (
            low_target.ndim != 4
            or low_target.shape[0] != len(targets)
            or low_target.shape[-1] != 3
            or low_target.shape[1] != low_target.shape[2]
            or low_target.shape[1] > G.img_resolution
        ):
            raise GANError(f"low_target {low_target.shape}: expected ({len(targets)}, s, s, 3) with s <= "
                           f"{G.img_resolution}, one low-resolution image per target")  # fmt: skip
    elif low_weight:
        raise GANError(f"low_weight={low_weight} needs low_target, the low-resolution images")
    dev = next(G.parameters()).device
    G = G.eval().requires_grad_(False)
    view = EmbeddingView(embedder, crop_min).to(dev)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        zs = torch.randn(10000, G.z_dim, generator=gen).to(dev)
        w_samples = G.mapping(zs, None)[:, 0, :]
        w_avg = w_samples.mean(0, keepdim=True)
        w_std = float(((w_samples - w_avg).square().sum() / len(zs)).sqrt())
        w_start = (
            G.mapping(torch.zeros(1, G.z_dim, device=dev), None)[:, 0, :] if start == "generated" else w_avg
        )
    layers = G.synthesis.noise_layers()
    out, found, hist_loss, hist_cos = [], [], np.zeros(steps), np.zeros(steps)
    gen_p = torch.Generator(device="cpu").manual_seed(seed)
    for i in runtime.progress(range(0, len(targets), batch), desc="latent optimisation"):
        t = F.normalize(torch.as_tensor(targets[i : i + batch]), dim=-1)
        nb = len(t)
        fts = (perturb(t, ratio, gen_p) if ratio < 1 else t).to(dev)
        t = t.to(dev)
        w = w_start.repeat(nb, 1).clone().requires_grad_(True)
        if start == "generated":
            noises = [
                la.noise_const.expand(nb, 1, -1, -1).clone().requires_grad_(noise_maps) for la in layers
            ]
        else:
            noises = [torch.randn(nb, 1, la.resolution, la.resolution, generator=gen).to(dev)
                      .requires_grad_(noise_maps) for la in layers]  # fmt: skip
        ref = None
        if anchor:
            with torch.no_grad():
                ws0 = w.detach().unsqueeze(1).repeat(1, G.num_ws, 1)
                ref = F.avg_pool2d(G.synthesis(ws0, fts, noises=noises), 4)
        low = None
        if low_weight:
            low = torch.as_tensor(low_target[i : i + batch]).permute(0, 3, 1, 2).to(dev)
        if condition:
            fts = fts.clone().requires_grad_(True)
        params = [w, *noises] if noise_maps else [w]
        opt = torch.optim.Adam(params + ([fts] if condition else []), lr=lr, betas=(0.9, 0.999))
        for s in range(steps):
            frac = s / max(steps, 1)
            noise_scale = w_std * w_noise * max(0.0, 1.0 - frac / 0.75) ** 2
            ramp = 0.5 - 0.5 * np.cos(min(1.0, (1 - frac) / 0.25) * np.pi)  # cosine down over the last 25%
            for g in opt.param_groups:
                g["lr"] = lr * ramp * min(1.0, frac / 0.05)  # 5% warm-up
            wn = w + torch.randn(w.shape, generator=gen).to(dev) * noise_scale
            ws = wn.unsqueeze(1).repeat(1, G.num_ws, 1)
            img = G.synthesis(ws, fts, noises=noises)
            cos = (view(img) * t).sum(1)
            loss = (1 - cos).sum()
            if noise_maps:
                loss = loss + noise_reg * _noise_reg(noises)
            if ref is not None:
                loss = loss + anchor * (F.avg_pool2d(img, 4) - ref).square().mean(dim=[1, 2, 3]).sum()
            if low is not None:
                pooled = F.adaptive_avg_pool2d((img + 1) / 2, low.shape[-1])
                if low_loss == "corr":  # 1 - Pearson r over pixels and channels: the layout, not its contrast
                    a = pooled.flatten(1) - pooled.flatten(1).mean(1, keepdim=True)
                    b = low.flatten(1) - low.flatten(1).mean(1, keepdim=True)
                    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)
                    loss = loss + low_weight * (1 - r).sum()
                else:
                    loss = loss + low_weight * (pooled - low).square().mean(dim=[1, 2, 3]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for n in noises if noise_maps else ():
                    n -= n.mean(dim=[1, 2, 3], keepdim=True)
                    n /= n.square().mean(dim=[1, 2, 3], keepdim=True).sqrt()
            hist_loss[s] += float(loss.detach()) / len(targets)
            hist_cos[s] += float(cos.detach().sum()) / len(targets)
        with torch.no_grad():
            ws = w.detach().unsqueeze(1).repeat(1, G.num_ws, 1)
            img = G.synthesis(ws, fts.detach(), noises=[n.detach() for n in noises])
            out.append(_exact_0_255(img) if exact else sg.to_uint8(img))
            found.append(w.detach().cpu().numpy())
    empty = np.zeros((0, G.img_resolution, G.img_resolution, 3), np.float32 if exact else np.uint8)
    images = np.concatenate(out) if out else empty
    return images, {
        "loss": hist_loss.tolist(),
        "cosine": hist_cos.tolist(),
        "noise_maps": noise_maps,
        "anchor": anchor,
        "low_weight": low_weight,
        "w": np.concatenate(found) if found else np.zeros((0, G.w_dim), np.float32),
    }


@torch.no_grad()
def synthesise(G: sg.Generator, w: np.ndarray, features: np.ndarray, ratio: float = 0.25, seed: int = 0,
               batch: int = 64, exact: bool = False) -> np.ndarray:  # fmt: skip
    """Images from given latents ``w`` (N, w_dim; e.g. :func:`optimise_latents`' ``hist["w"]``) and condition vectors
    ``features`` (N, D), with the constant noise maps and the condition perturbed as :func:`optimise_latents`
    perturbs it (same ``ratio``, ``seed`` and ``batch``): the image a search found, redrawn for other conditions."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2 or len(w) != len(features) or w.shape[1] != G.w_dim:
        raise GANError(f"w {w.shape}: expected ({len(features)}, {G.w_dim}), one latent per condition")
    dev = next(G.parameters()).device
    gen_p = torch.Generator(device="cpu").manual_seed(seed)
    layers = G.synthesis.noise_layers()
    out = []
    for i in range(0, len(w), batch):
        t = F.normalize(torch.as_tensor(np.asarray(features[i : i + batch], np.float32)), dim=-1)
        fts = (perturb(t, ratio, gen_p) if ratio < 1 else t).to(dev)
        ws = torch.as_tensor(w[i : i + batch], device=dev).unsqueeze(1).repeat(1, G.num_ws, 1)
        noises = [la.noise_const.expand(len(t), 1, -1, -1) for la in layers]
        img = G.synthesis(ws, fts, noises=noises)
        out.append(_exact_0_255(img) if exact else sg.to_uint8(img))
    return np.concatenate(out) if out else np.zeros((0, G.img_resolution, G.img_resolution, 3), np.uint8)


COMBINATIONS = ("optimise", "impose", "both")


def combine(G: sg.Generator, features: np.ndarray, low: np.ndarray, embedder, how: str = "optimise",
            low_weight: float = 3.0, exact: bool = False, strength: float = 1.0,
            **optimise) -> tuple[np.ndarray, dict | None]:  # fmt: skip
    """The semantic and the spatial pathway in one image, from predicted embeddings ``features`` (N, D) and the
    spatial pathway's low-resolution images ``low`` (N, s, s, 3; clipped to [0, 1]). ``how``: "optimise", latent
    optimisation (:func:`optimise_latents` with ``optimise``'s settings) toward the embedding with ``low`` as its
    layout target (``low_weight`` x (1 - Pearson r) between the image's s x s area means and ``low``: the layout,
    not the contrast of a shrunken ridge prediction) in place of the anchor to the start; "impose", the plain
    reconstruction with its s x s area means moved ``strength`` of the way to ``low``
    (:func:`lib.models.lowlevel.impose`); "both", the first then the second. Returns (images, uint8 or with ``exact`` float32 0-255; the optimisation's history or
    None). Measured on mini (100 test images, ridge, weight 3): "optimise" raises PixCorr from .69 to .75 and
    keeps the read-back; "impose" raises it as far but halves the colour read-back (README, "Two pathways")."""
    if how not in COMBINATIONS:
        raise GANError(f"how={how!r}: expected one of {', '.join(COMBINATIONS)}")
    low = np.clip(np.asarray(low, np.float32), 0, 1)
    if how == "impose":
        ratio, seed = optimise.get("ratio", 0.25), optimise.get("seed", 0)
        return lowlevel.impose(generate(G, features, ratio, seed=seed, exact=exact), low, strength), None
    optimise = {**optimise, "anchor": 0.0}
    images, hist = optimise_latents(G, features, embedder, low_target=low, low_weight=low_weight, low_loss="corr",
                                    exact=exact, **optimise)  # fmt: skip
    return (lowlevel.impose(images, low, strength) if how == "both" else images), hist


def combiner(G: sg.Generator, embedder, settings: dict, seed: int = 0, exact: bool = True):
    """:func:`combine` with 03's recorded generation ``settings`` (:data:`lib.artifacts.GENERATION_SETTINGS`) as
    a function (features (N, D), low (N, s, s, 3)) -> images: what 04 perturbs and 05 draws for other encoders."""
    opt = dict(steps=settings["opt_steps"], lr=settings["opt_lr"], ratio=settings["feature_ratio"], seed=seed,
               noise_maps=settings["opt_noise_maps"])  # fmt: skip

    def draw(features: np.ndarray, low: np.ndarray) -> np.ndarray:
        return combine(G, features, low, embedder, settings["combine"], settings["opt_lowlevel"], exact=exact,
                       strength=settings["impose_strength"], **opt)[0]  # fmt: skip

    return draw


def held_combiner(
    G: sg.Generator, embedder, settings: dict, features: np.ndarray, low: np.ndarray, seed: int = 0
):
    """:func:`combiner`'s reconstruction of these rows (``features`` (N, D), ``low`` (N, s, s, 3)) with the search's
    result held: the latent optimisation runs once, on these inputs, and the returned function redraws (other
    features, other low) of the same N rows with those latents (:func:`synthesise`), then moves the area means
    toward the other low-resolution image as 03 does (``combine`` "both"). What 04 perturbs: an Adam search is not
    a smooth function of its input (a tiny change flips the sign of its first steps where a gradient is near 0), so
    a voxel's effect through a rerun search is mostly the search's own noise; holding its result gives the effect
    of the voxel on the image the search found. "impose" has no search and is drawn as :func:`combiner` does."""
    if settings["combine"] == "impose":
        return combiner(G, embedder, settings, seed)
    if settings["opt_noise_maps"]:
        raise GANError(
            "held_combiner: opt_noise_maps=True searches noise maps too; expected w only (03's default)"
        )
    opt = dict(steps=settings["opt_steps"], lr=settings["opt_lr"], ratio=settings["feature_ratio"], seed=seed,
               noise_maps=False)  # fmt: skip
    _, hist = combine(G, features, low, embedder, settings["combine"], settings["opt_lowlevel"], exact=True,
                      strength=settings["impose_strength"], **opt)  # fmt: skip
    w, ratio, strength = hist["w"], settings["feature_ratio"], settings["impose_strength"]

    def draw(f: np.ndarray, lo: np.ndarray) -> np.ndarray:
        img = synthesise(G, w, f, ratio, seed, exact=True)
        return lowlevel.impose(img, np.clip(lo, 0, 1), strength) if settings["combine"] == "both" else img

    return draw


def obtain_generator(source: str, emb, images: np.ndarray, features: np.ndarray, cfg: GANConfig,
                     device: str = "auto", lafite_checkpoint: str = "", models_dir: str | None = None,
                     state_dir: str | Path | None = None, monitor=None, monitor_every: int = 100):  # fmt: skip
    """03's generator: a LAFITE / stylegan2-ada ``lafite_checkpoint`` when given, else ``source`` "pretrained"
    (the shipped model, refused unless ``emb`` is the shipped embedding it is conditioned on) or "train"
    (:func:`train_gan` on (``images``, ``features``) with ``cfg``, resumable in ``state_dir``). Returns
    (generator, training history or None)."""

    if lafite_checkpoint:
        G = sg.load_lafite(lafite_checkpoint, device=device)
        if G.f_dim != features.shape[1]:
            raise GANError(f"{lafite_checkpoint}: conditions on {G.f_dim}-d vectors, the 01 model gives "
                           f"{features.shape[1]}")  # fmt: skip
        return G, None
    if source == "pretrained":
        want = pretrained.conditioned_on(models_dir)
        if emb.meta.get("pretrained", {}).get("sha256") != want["sha256"]:
            raise GANError(f"generator='pretrained' reads the space of {want['file']}; run 01 with "
                           "embedding_source='pretrained' (or set generator='train')")  # fmt: skip
        return pretrained.load_generator(models_dir, device), None
    if source == "train":
        G, _, history = train_gan(images, features, cfg, emb, device, state_dir=state_dir, monitor=monitor,
                                  monitor_every=monitor_every)  # fmt: skip
        return G, history
    raise GANError(f"generator={source!r}: expected 'pretrained' or 'train'")


def resize_images(images: np.ndarray, size: int, batch: int = 256) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, size, size, 3), bilinear with antialiasing (e.g. NSD's 425 px stimuli to
    a generator's power-of-two resolution)."""
    out = []
    for i in range(0, len(images), batch):
        x = sg.from_uint8(images[i : i + batch])
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(sg.to_uint8(x))
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)
