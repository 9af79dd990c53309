"""Pretraining of the mini world's stand-ins for CLIP, DINO and LAFITE on the scene corpus (:mod:`lib.data.corpus`),
resumable, and the shipped model files with their manifest: ``python -m lib.models.pretrained --profile full|quick``.

- **Joint embedding** (open_clip ``mini-clip``: ModifiedResNet image tower, 2-layer text transformer over the
  caption grammar's 89-piece vocabulary): CLIP's symmetric InfoNCE on corpus scenes and one of their captions,
  a quarter of each batch being hard negatives (an anchor's copy with one attribute changed, and its caption);
  beside it, linear attribute heads on both towers' normalised embeddings (the scene generator's labels: shape,
  colour, size and 3 x 3 cell of the largest object, count, background kind and colour; shared by the towers, so
  that images and captions put an attribute in the same direction) and a small pixel decoder reading a 32 px
  image back from the image embedding (so that the embedding keeps the layout a generator needs). Heads and
  decoder are training aids only; the shipped file is the open_clip model.
- **DINO** (:mod:`lib.models.dino`, the same ResNet trunk) on corpus images, with milder crops than natural-image DINO
  and no flips, so that size and position survive the augmentations.
- **Shape judge** (:mod:`lib.models.shape_judge`, a small CNN): cross-entropy on the shape of each corpus scene's
  largest object, under blur, sampling down to 32 or 16 px and colour jitter, so that it reads reconstructions too.
  It judges reconstructions (05) and is never part of a training loss.
- **Generator** (:mod:`lib.models.stylegan2`, LAFITE's architecture and names, 64 px) conditioned on the frozen
  embedding of each corpus image (plus a little noise, as a predicted embedding has), z = 0 and constant noise
  as at inference, in four phases (:func:`gan_phases`). First L1 and a low-pass squared error to the image, then
  the adversarial loss of LAFITE's conditional discriminator added for sharpness. Second, from the first's
  weights, object pixels weighted up in the L1 and LAFITE's image-condition term 1 - cos(embedding of the
  generated image, its condition), again ending adversarially. Third, from the second's weights, the same losses
  on fresh scenes for 4.5 times as many steps. Fourth, from the third's weights, the same losses on fresh scenes
  at half the learning rate, 0.001 (each phase starts from the previous phase's file under the state folder, so
  a phase can be rerun alone with ``--only``). The conditioning layers ``pre_0``/``pre_1`` carry StyleGAN's 0.01
  learning-rate multiplier; their Adam step is scaled up by its inverse so they learn at the rate of the rest.

Each model is scored on held-out corpus scenes (never seen in training) and written as safetensors (float16)
with an entry in ``manifest.json``: sha256, bytes, the command, the git commit, corpus seed and size, training
seconds and those scores. :mod:`lib.models.pretrained` loads them, refusing a file whose checksum does not match.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib import distributed, fileio, metrics, paths, runtime
from lib.data import corpus as cp
from lib.models import dino, embedding, gan, losses, pretrained, shape_judge
from lib.models import stylegan2 as sg
from lib.trainer import Group, Run, TorchRNG

PROG = "python -m lib.models.pretrained"
STATE_FORMAT = "lib.pretrain.state/1"  # the tag of state files written before the module moved
#: first batch index of each stage's stream (disjoint ranges of the same corpus), and of the held-out scenes
OFFSETS = {
    "clip": 0,
    "gan": 1_000_000,
    "dino": 2_000_000,
    "refine": 3_000_000,
    "extend": 4_000_000,
    "anneal": 5_000_000,
    "judge": 6_000_000,
    "vocab": 8_000_000,
    "heldout": 9_000_000,
}


@dataclass
class PretrainConfig:
    seed: int = 0  # corpus seed (scenes) and initialisation
    image_size: int = 64
    # joint embedding
    clip_arch: str = "mini-clip"
    clip_steps: int = 1200
    clip_batch: int = 256
    clip_lr: float = 2e-3
    hard_negatives: float = 0.25  # fraction of each batch made of one-attribute partners
    attr_weight: float = 0.5  # cross-entropy of each attribute head, image and text
    pixel_weight: float = 10.0  # squared error of the 32 px read-back from the image embedding
    # DINO
    dino_steps: int = 1500  # lib.stage.dino_recipes --steps 1500: 750 s on 2 cores
    dino_batch: int = 64
    dino_images: int = 24000  # corpus images DINO trains on
    dino_width: int = 16
    # generator
    gan_steps: int = 1500
    gan_adv_steps: int = 200  # of gan_steps, the last ones add the adversarial loss
    gan_batch: int = 32
    gan_lr: float = 0.002
    gan_channel_base: int = 2048
    gan_channel_max: int = 128
    gan_fts_hidden: int = 128
    gan_z_dim: int = 64
    gan_w_dim: int = 128
    gan_mapping_layers: int = 2
    gan_adv: float = 0.05  # weight of the adversarial term in the last phase
    gan_lowpass: float = 4.0  # weight of the squared error at 1/4 resolution
    gan_noise: float = 0.2  # norm of the Gaussian noise added to each unit condition vector
    # generator, second phase (from the first phase's weights): objects weighted up, LAFITE's image-condition term
    refine_steps: int = 2000
    refine_adv_steps: int = 300
    refine_lr: float = 0.002
    refine_itc: float = 1.0  # weight of 1 - cos(embedding of the generated image, its condition)
    refine_object_weight: float = 4.0  # extra L1 weight on pixels covered by an object
    # generator, third phase (from the second's weights): the second phase's losses on fresh scenes, longer
    extend_steps: int = 9000
    extend_adv_steps: int = 600
    # generator, fourth phase (from the third's weights): the same losses on fresh scenes at a lower learning rate
    anneal_steps: int = 4000
    anneal_adv_steps: int = 400
    anneal_lr: float = 0.001  # half of refine_lr, which the second and third phases use
    # shape judge (a judge of reconstructions only, never in a loss)
    judge_steps: int = 1500
    judge_batch: int = 96
    judge_lr: float = 3e-3
    judge_width: int = 16  # channels of its first layer (lib.models.shape_judge.ShapeNet)
    # evaluation on held-out corpus scenes
    heldout_train: int = 3000
    heldout_test: int = 600
    checkpoint_every: int = 100

    def check(self) -> None:
        for name in ("clip_steps", "clip_batch", "dino_steps", "dino_batch", "dino_images", "gan_steps",
                     "gan_batch", "judge_steps", "judge_batch", "judge_width", "heldout_train", "heldout_test",
                     "checkpoint_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        if not 0 <= self.gan_adv_steps <= self.gan_steps:
            raise ValueError(f"gan_adv_steps={self.gan_adv_steps}: expected 0..gan_steps ({self.gan_steps})")
        if self.gan_batch % 4:
            raise ValueError(
                f"gan_batch={self.gan_batch}: expected a multiple of 4 (minibatch-stddev groups)"
            )


PROFILES = {
    # the shipped models (about four hours on 2 CPU cores, minutes on a GPU)
    "full": PretrainConfig(),
    # the same code in seconds, for CI: tiny steps and batches, 32 px
    "quick": PretrainConfig(
        image_size=32,
        clip_steps=6,
        clip_batch=32,
        dino_steps=4,
        dino_batch=16,
        dino_images=64,
        gan_steps=4,
        gan_adv_steps=2,
        gan_batch=8,
        gan_channel_base=256,
        gan_channel_max=32,
        gan_fts_hidden=32,
        refine_steps=4,
        refine_adv_steps=2,
        extend_steps=4,
        extend_adv_steps=2,
        anneal_steps=4,
        anneal_adv_steps=2,
        judge_steps=4,
        judge_batch=16,
        judge_width=8,
        heldout_train=96,
        heldout_test=48,
        checkpoint_every=2,
    ),  # fmt: skip
}


# ================================================================================================================
# training aids of the joint embedding


class AttributeHeads(nn.Module):
    """One linear classifier per corpus label on a unit embedding (scaled by sqrt(dim))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = float(np.sqrt(dim))
        self.heads = nn.ModuleDict({k: nn.Linear(dim, len(v)) for k, v in cp.LABELS.items()})

    def loss(self, e: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(F.cross_entropy(h(e * self.scale), labels[k]) for k, h in self.heads.items())


class PixelDecoder(nn.Module):
    """A unit embedding -> a 32 px RGB image in [0, 1] (4 -> 8 -> 16 -> 32 px, nearest upsampling + 3x3 convs)."""

    def __init__(self, dim: int, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Linear(dim, width * 16)
        layers: list[nn.Module] = []
        for _ in range(3):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), nn.GELU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        x = self.fc(e * np.sqrt(e.shape[-1])).view(-1, self.width, 4, 4)
        return torch.sigmoid(self.body(F.gelu(x)))


def _targets(images: np.ndarray, size: int, dev: torch.device) -> torch.Tensor:
    x = torch.as_tensor(images, device=dev).permute(0, 3, 1, 2).float() / 255
    return F.adaptive_avg_pool2d(x, size)


@functools.cache
def corpus_vocab(seed: int, n: int = 20000) -> np.ndarray:
    """BPE ids of the caption grammar, from the captions of ``n`` corpus scenes (a fixed range of batches of
    corpus ``seed``; cached per process)."""
    corp = cp.Corpus(seed, exclude=frozenset())
    texts = [
        c for i in range(0, n, 1000) for cs in corp.scenes(OFFSETS["vocab"] + i // 1000, 1000)[2] for c in cs
    ]
    return embedding.grammar_vocab(texts)


def _run(state_dir, name: str, key: str, total: int, desc: str, gen: torch.Generator, rng: np.random.Generator,
         **objects) -> Run:  # fmt: skip
    """A pretraining stage's resumable run: ``pretrain-<name>-<key>.pt``, its random generators saved as one (one
    per process under several: each draws for its own scenes)."""
    rngs = Group(gen=gen, rng=rng, torch=TorchRNG())
    per_rank = ("rng",) if distributed.world().active else ()
    return Run(state_dir, f"pretrain-{name}", STATE_FORMAT, key, total, desc, {**objects, "rng": rngs},
               per_rank=per_rank)  # fmt: skip


def _batch(corp: cp.Corpus, offset: int, step: int, n: int, w: distributed.World) -> cp.Batch:
    """This process's scenes of a step: batch ``offset + step`` alone, else batch ``offset + step * size + rank``
    (each process draws and renders its own ``n`` scenes; the step's global batch is ``n * size``)."""
    return corp.batch(offset + step * w.size + w.rank, n)


def train_embedding(cfg: PretrainConfig, corp: cp.Corpus, state_dir: Path | None, device: str = "auto",
                    stop_after: int | None = None, nproc: int | None = None,
                    _launch: bool = True) -> tuple[embedding.Embedder, dict]:  # fmt: skip
    """The joint embedding (see the module docstring); returns the trained :class:`Embedder` and its history.
    Several processes (``nproc`` or ``LIB_NPROC``, or under torchrun): each draws its own ``clip_batch`` scenes a
    step, the contrastive loss sees the gathered batch, gradients and BatchNorm statistics are averaged."""
    w, ranks = distributed.spread(nproc)
    if ranks > 1 and not w.active and _launch:
        given = {"cfg": cfg, "corp": corp, "device": device, "stop_after": stop_after}
        return distributed.launched(train_embedding, ranks, given, state_dir, "pretrain-clip")
    dev = torch.device(distributed.device(runtime.pick_device(device)))
    vocab = corpus_vocab(corp.seed)
    emb = embedding.create(cfg.clip_arch, cfg.image_size, str(dev), cfg.seed, vocab=vocab)
    aids = nn.ModuleDict({"heads": AttributeHeads(emb.dim), "decoder": PixelDecoder(emb.dim)}).to(dev)
    params = nn.ModuleDict({"model": emb.model, "aids": aids})
    opt = runtime.adamw_for(params, cfg.clip_lr, 0.1, no_decay=("logit_scale", "embedding"))
    key = fileio.content_key({"stage": "clip", "config": dataclasses.asdict(cfg), "model": emb.key, "device": dev.type}
                         | ({"ranks": ranks} if ranks > 1 else {}))  # fmt: skip
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    history: dict = {"loss": [], "clip": [], "attr": [], "pixel": [], "seconds": 0.0, "scenes": 0}
    run = _run(
        state_dir, "clip", key, cfg.clip_steps, "pretrain joint embedding", gen, rng, params=params, opt=opt
    )
    run.start(history)
    history = run.history
    end = cfg.clip_steps if stop_after is None else min(cfg.clip_steps, run.step + stop_after)
    warmup = max(1, cfg.clip_steps // 20)
    params.train()
    for step in run.steps(stop_after):
        t0 = time.perf_counter()
        b = _batch(corp, OFFSETS["clip"], step, cfg.clip_batch, w)
        for g in opt.param_groups:
            g["lr"] = losses.warmup_cosine(step, cfg.clip_steps, warmup, cfg.clip_lr)
        pick = rng.integers(0, [len(c) for c in b.captions])
        tokens = emb.tokenize([c[i] for c, i in zip(b.captions, pick, strict=True)])
        labels = {k: torch.as_tensor(v, device=dev) for k, v in b.labels.items()}
        with runtime.autocast(dev):
            img, txt, scale = emb.model(emb.preprocess(b.images), tokens)
        img, txt = img.float(), txt.float()
        l_clip = losses.clip_loss(distributed.gather(img), distributed.gather(txt), scale.float())
        l_attr = aids["heads"].loss(img, labels) + aids["heads"].loss(txt, labels)
        l_pix = F.mse_loss(aids["decoder"](img), _targets(b.images, 32, dev))
        loss = l_clip + cfg.attr_weight * l_attr + cfg.pixel_weight * l_pix
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(params)
        opt.step()
        distributed.average_buffers(params)
        with torch.no_grad():
            emb.model.logit_scale.clamp_(0, float(np.log(100)))
        for k, v in (("loss", loss), ("clip", l_clip), ("attr", l_attr), ("pixel", l_pix)):
            history[k].append(distributed.mean(float(v.detach())))
        history["scenes"] += len(b.images) * w.size
        history["seconds"] += time.perf_counter() - t0
        done = run.advance(clip=f"{history['clip'][-1]:.2f}", attr=f"{history['attr'][-1]:.2f}",
                           pix=f"{history['pixel'][-1]:.4f}")  # fmt: skip
        if done % cfg.checkpoint_every == 0 or done == end:
            run.save()
    emb.model.eval()
    history["done"] = run.step >= cfg.clip_steps
    return emb, history


# ================================================================================================================
# generator


def _condition_groups(G: sg.Generator, lr: float) -> list[dict]:
    """Adam groups: ``pre_0``/``pre_1`` (learning-rate multiplier 0.01) at 100 x ``lr``, everything else at ``lr``."""
    cond, rest = [], []
    for name, p in G.named_parameters():
        (cond if ".pre_0." in name or ".pre_1." in name else rest).append(p)
    return [{"params": rest, "lr": lr}, {"params": cond, "lr": lr * 100}]


def gan_config(cfg: PretrainConfig) -> gan.GANConfig:
    return gan.GANConfig(z_dim=cfg.gan_z_dim, w_dim=cfg.gan_w_dim, mapping_layers=cfg.gan_mapping_layers,
                         channel_base=cfg.gan_channel_base, channel_max=cfg.gan_channel_max,
                         fts_hidden=cfg.gan_fts_hidden, batch_size=cfg.gan_batch, seed=cfg.seed)  # fmt: skip


@dataclass(frozen=True)
class GanPhase:
    """One phase of the generator's pretraining: its name (state file, corpus stream), steps, how many of the last
    steps add the adversarial loss, learning rate, and the weights of the image-condition term and of objects."""

    name: str
    steps: int
    adv_steps: int
    lr: float
    itc: float = 0.0
    object_weight: float = 0.0


def gan_phases(cfg: PretrainConfig) -> tuple[GanPhase, ...]:
    """(first phase: from scratch, pixel losses; second: from the first's weights, objects weighted up and the
    generated image's embedding pulled to its condition; third: from the second's weights, the second's losses on
    fresh scenes for longer; fourth: from the third's, the same at half the learning rate), each ending with the
    adversarial loss added. Each phase starts with a fresh warm-up and cosine schedule."""
    return (GanPhase("gan", cfg.gan_steps, cfg.gan_adv_steps, cfg.gan_lr),
            GanPhase("refine", cfg.refine_steps, cfg.refine_adv_steps, cfg.refine_lr, cfg.refine_itc,
                     cfg.refine_object_weight),
            GanPhase("extend", cfg.extend_steps, cfg.extend_adv_steps, cfg.refine_lr, cfg.refine_itc,
                     cfg.refine_object_weight),
            GanPhase("anneal", cfg.anneal_steps, cfg.anneal_adv_steps, cfg.anneal_lr, cfg.refine_itc,
                     cfg.refine_object_weight))  # fmt: skip


def train_generator(cfg: PretrainConfig, corp: cp.Corpus, emb: embedding.Embedder, state_dir: Path | None,
                    device: str = "auto", stop_after: int | None = None, phase: GanPhase | None = None,
                    init: sg.Generator | None = None, nproc: int | None = None,
                    _launch: bool = True) -> tuple[sg.Generator, dict]:  # fmt: skip
    """One phase of the generator (see the module docstring; default the first) on the frozen embedding ``emb``,
    starting from ``init``'s weights when given; returns (G_ema, history). Several processes (``nproc`` or
    ``LIB_NPROC``, or under torchrun): each draws its own ``gan_batch`` scenes a step; gradients and ``w_avg`` are
    averaged, R1's gamma and the EMA count the global batch."""
    phase = phase or gan_phases(cfg)[0]
    w, ranks = distributed.spread(nproc)
    if ranks > 1 and not w.active and _launch:
        given = {"cfg": cfg, "corp": corp, "emb": emb, "device": device, "stop_after": stop_after, "phase": phase,
                 "init": init}  # fmt: skip
        return distributed.launched(train_generator, ranks, given, state_dir, f"pretrain-{phase.name}")
    dev = torch.device(distributed.device(runtime.pick_device(device)))
    emb.model.to(dev).eval().requires_grad_(False)
    torch.manual_seed(cfg.seed)
    G, D = gan.build(gan_config(cfg), cfg.image_size, emb.dim)
    if init is not None:
        G.load_state_dict(init.state_dict())
    G, D = G.to(dev).train(), D.to(dev).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    view = gan.EmbeddingView(emb).to(dev) if phase.itc else None
    opt_g = torch.optim.Adam(_condition_groups(G, phase.lr), betas=(0.9, 0.99), eps=1e-8)
    c = 16 / 17  # lazy R1 every 16 steps, D's Adam adjusted as stylegan2-ada
    opt_d = torch.optim.Adam(D.parameters(), lr=phase.lr * c, betas=(0.9**c, 0.99**c), eps=1e-8)
    batch = cfg.gan_batch * ranks  # the global batch
    gamma = 0.0002 * cfg.image_size**2 / batch
    init_key = (
        None if init is None else fileio.array_key(*(v.cpu().numpy() for v in init.state_dict().values()))
    )
    key = fileio.content_key({"stage": phase.name, "config": dataclasses.asdict(cfg), "phase": dataclasses.asdict(phase),
                          "init": init_key, "embedder": emb.key, "device": dev.type}
                         | ({"ranks": ranks} if ranks > 1 else {}))  # fmt: skip
    rng, gen = np.random.default_rng(cfg.seed + 1), torch.Generator().manual_seed(cfg.seed + 1)
    if w.active:  # each process its own noise on the conditions of its own scenes
        rng, gen = (
            np.random.default_rng([cfg.seed + 1, w.rank]),
            torch.Generator().manual_seed(cfg.seed + 1 + 1000 * w.rank),
        )
    history: dict = {"l1": [], "itc": [], "adv_g": [], "loss_d": [], "seconds": 0.0, "scenes": 0}
    run = _run(state_dir, phase.name, key, phase.steps, f"pretrain generator ({phase.name})", gen, rng,
               G=G, D=D, G_ema=G_ema, opt_g=opt_g, opt_d=opt_d)  # fmt: skip
    run.start(history)
    history = run.history
    end = phase.steps if stop_after is None else min(phase.steps, run.step + stop_after)
    adv_from = phase.steps - phase.adv_steps
    z = torch.zeros(cfg.gan_batch, G.z_dim, device=dev)
    for step in run.steps(stop_after):
        t0 = time.perf_counter()
        for g, base in zip(opt_g.param_groups, (phase.lr, phase.lr * 100), strict=True):
            g["lr"] = losses.warmup_cosine(step, phase.steps, max(1, phase.steps // 50), base, base * 0.1)
        b = _batch(corp, OFFSETS[phase.name], step, cfg.gan_batch, w)
        real = sg.from_uint8(b.images, dev)
        f = torch.as_tensor(emb.embed_images(b.images), device=dev)
        noise = torch.randn(f.shape, generator=gen).to(dev) * cfg.gan_noise / np.sqrt(f.shape[1])
        fts = F.normalize(f + noise, dim=-1)
        adv = step >= adv_from and cfg.gan_adv > 0
        G.requires_grad_(True)
        D.requires_grad_(False)
        fake = G(z, fts=fts, noise_mode="const")
        weight = 1 + phase.object_weight * torch.as_tensor(b.objects, device=dev)[:, None]
        l1 = (weight * (fake - real).abs()).mean() / weight.mean()
        low = F.mse_loss(F.avg_pool2d(fake, 4), F.avg_pool2d(real, 4))
        loss_g = l1 + cfg.gan_lowpass * low
        itc = torch.zeros((), device=dev)
        if view is not None:
            itc = (1 - (view(fake) * f).sum(1)).mean()
            loss_g = loss_g + phase.itc * itc
        adv_g = torch.zeros((), device=dev)
        if adv:
            logit, _ = D(fake, fts)
            adv_g = F.softplus(-logit).mean()
            loss_g = loss_g + cfg.gan_adv * adv_g
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        distributed.average_gradients(G)
        opt_g.step()
        loss_d = torch.zeros((), device=dev)
        if adv:
            G.requires_grad_(False)
            D.requires_grad_(True)
            r1_step = (step - adv_from) % 16 == 0
            real_in = real.detach().requires_grad_(r1_step)
            logit_f, _ = D(fake.detach(), fts)
            logit_r, _ = D(real_in, fts)
            loss_d = F.softplus(logit_f).mean() + F.softplus(-logit_r).mean()
            if r1_step:
                (grad,) = torch.autograd.grad(logit_r.sum(), real_in, create_graph=True)
                loss_d = loss_d + (gamma / 2) * grad.square().sum([1, 2, 3]).mean() * 16
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            distributed.average_gradients(D)
            opt_d.step()
        distributed.average_buffers(G)  # w_avg
        step += 1  # the EMA's ramp-up counts this step
        beta = 0.5 ** (batch / max(min(2000.0, step * batch * 0.1), 1e-8))
        with torch.no_grad():
            for pe, p in zip(G_ema.parameters(), G.parameters(), strict=True):
                pe.copy_(p.detach().lerp(pe, beta))
        for k, v in (("l1", l1), ("itc", itc), ("adv_g", adv_g), ("loss_d", loss_d)):
            history[k].append(distributed.mean(float(v.detach())))
        history["scenes"] += len(b.images) * w.size
        history["seconds"] += time.perf_counter() - t0
        run.advance(l1=f"{history['l1'][-1]:.3f}", adv=f"{history['adv_g'][-1]:.2f}")
        if step % cfg.checkpoint_every == 0 or step == end:
            run.save()
    history["done"] = run.step >= phase.steps
    return G_ema.eval().requires_grad_(False), history


# ================================================================================================================
# DINO


def dino_config(cfg: PretrainConfig) -> dino.DinoConfig:
    """The shipped DINO recipe (chosen by :mod:`lib.stage.dino_recipes`): milder crops than natural-image DINO and
    no flips, so that size and position survive the augmentations; a stride-16 trunk whose 4 x 4 patch tokens
    carry iBOT's masked-patch term; colour jitter, local crops centred on rare-colour pixels (objects, found
    without labels), and KoLeo on batches that keep one-attribute pairs together; half the views pasted onto
    another scene's background (objects found the same way), and DINOv2's Sinkhorn-Knopp centring."""
    return dino.DinoConfig(
        steps=cfg.dino_steps, batch_size=cfg.dino_batch, lr=1e-3, out_dim=1024, n_global=2, n_local=4,
        global_size=cfg.image_size, local_size=max(32, cfg.image_size // 2), global_scale=(0.6, 1.0),
        local_scale=(0.05, 0.3), flip=False, width=cfg.dino_width, stride=16, object_crops=0.75, patch_weight=1.0,
        koleo_weight=0.1, pair_share=0.5, colour_jitter=0.8, grey=0.2, background_swap=0.5, centering="sinkhorn",
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
    )  # fmt: skip


def dino_data(cfg: PretrainConfig, corp: cp.Corpus | None = None):
    """DINO's ``dino_images`` corpus images, normalised; their channel (mean, std); the row of each one's
    one-attribute partner (-1 for none), for batches that keep pairs together."""
    corp = corp or cp.Corpus(cfg.seed, cfg.image_size, hard_negatives=cfg.hard_negatives)
    b = corp.take(cfg.dino_images, start=OFFSETS["dino"])
    mean, std = dino.channel_stats(b.images)
    return dino.normalise(b.images, mean=mean, std=std), (mean, std), b.partner


def train_dino_teacher(cfg: PretrainConfig, corp: cp.Corpus, state_dir: Path | None, device: str = "auto"):
    """DINO on ``dino_images`` corpus images; returns (teacher backbone, (mean, std) of the normalisation, history)."""
    x, stats, partners = dino_data(cfg, corp)
    _, teacher, history = dino.train_dino(
        x, dino_config(cfg), state_dir=state_dir, device=device, partners=partners
    )
    history["scenes"] = cfg.dino_images
    return teacher.backbone.eval(), stats, history


# ================================================================================================================
# shape judge


def judge_config(cfg: PretrainConfig) -> dict:
    """What the shape judge's training depends on (its state key and manifest config)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k.startswith("judge")} | {
        "seed": cfg.seed, "image_size": cfg.image_size, "hard_negatives": cfg.hard_negatives,
        "input_size": shape_judge.SIZE, "augment": dict(shape_judge.AUGMENT)}  # fmt: skip


def train_judge(cfg: PretrainConfig, corp: cp.Corpus, state_dir: Path | None, device: str = "auto",
                stop_after: int | None = None) -> tuple[shape_judge.ShapeJudge, dict]:  # fmt: skip
    """The shape judge (see the module docstring) on ``judge_steps`` fresh corpus batches of ``judge_batch`` scenes
    (AdamW, warm-up and cosine); resumable from ``state_dir``. Returns the judge (eval mode) and its history."""
    dev = torch.device(runtime.pick_device(device))
    torch.manual_seed(cfg.seed)
    net = shape_judge.ShapeNet(cfg.judge_width).to(dev)
    opt = runtime.adamw_for(net, cfg.judge_lr, 1e-4)
    key = fileio.content_key({"stage": "judge", "config": judge_config(cfg), "device": dev.type})
    rng, gen = np.random.default_rng(cfg.seed + 6), torch.Generator().manual_seed(cfg.seed + 6)
    history: dict = {"loss": [], "acc": [], "seconds": 0.0, "scenes": 0}
    run = _run(state_dir, "judge", key, cfg.judge_steps, "pretrain shape judge", gen, rng, net=net, opt=opt)
    run.start(history)
    history = run.history
    end = cfg.judge_steps if stop_after is None else min(cfg.judge_steps, run.step + stop_after)
    warmup = max(1, cfg.judge_steps // 20)
    net.train()
    for step in run.steps(stop_after):
        t0 = time.perf_counter()
        b = corp.batch(OFFSETS["judge"] + step, cfg.judge_batch)
        for g in opt.param_groups:
            g["lr"] = losses.warmup_cosine(step, cfg.judge_steps, warmup, cfg.judge_lr)
        x = shape_judge.augment(shape_judge.as_input(b.images, dev), gen)
        y = torch.as_tensor(b.labels["shape"], device=dev)
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history["loss"].append(float(loss.detach()))
        history["acc"].append(float((logits.argmax(1) == y).float().mean()))
        history["scenes"] += len(b.images)
        history["seconds"] += time.perf_counter() - t0
        done = run.advance(loss=f"{history['loss'][-1]:.3f}", acc=f"{np.mean(history['acc'][-20:]):.3f}")
        if done % cfg.checkpoint_every == 0 or done == end:
            run.save()
    history["done"] = run.step >= cfg.judge_steps
    return shape_judge.ShapeJudge(net.eval(), dev), history


def score_judge(judge: shape_judge.ShapeJudge, te: cp.Batch) -> dict:
    """Shape accuracy on held-out corpus scenes: as rendered, blurred (sigma 1.5 px at 64 px) and seen at 32 and
    16 px, beside chance (the most frequent shape)."""
    images, y = te.images, te.labels["shape"]
    sigma = 1.5 * images.shape[1] / 64
    return {"shape": judge.accuracy(images, y), "shape_blur1.5": judge.accuracy(shape_judge.blur(images, sigma), y),
            "shape_32px": judge.accuracy(shape_judge.resample(images, 32), y),
            "shape_16px": judge.accuracy(shape_judge.resample(images, 16), y),
            "chance": float(np.bincount(y).max() / len(y)), "n": len(y)}  # fmt: skip


# ================================================================================================================
# held-out scores


def heldout(cfg: PretrainConfig, corp: cp.Corpus):
    """(training, test) batches of held-out corpus scenes for the models' own scores."""
    tr = corp.take(cfg.heldout_train, start=OFFSETS["heldout"])
    te = corp.take(cfg.heldout_test, start=OFFSETS["heldout"] + 1000)
    return tr, te


def _table(b: cp.Batch):

    return pd.DataFrame({k: np.asarray(cp.LABELS[k], dtype=object)[v] for k, v in b.labels.items()})


def score_embedding(emb: embedding.Embedder, tr: cp.Batch, te: cp.Batch) -> dict:
    a, b = emb.embed_images(tr.images), emb.embed_images(te.images)
    probes = metrics.linear_probe_accuracy(a, b, _table(tr), _table(te))
    n = min(300, len(te.images))
    txt, _ = emb.embed_captions(te.captions[:n])
    i2t, t2i = metrics.paired_top1(b[:n], txt)
    return {"linear_probe": probes, "img2txt_top1": i2t, "txt2img_top1": t2i, "retrieval_pool": n}


def score_dino(backbone: nn.Module, stats, tr: cp.Batch, te: cp.Batch, cfg: PretrainConfig) -> dict:
    """k-NN and linear probes of the held-out scenes' attributes from the teacher's image vector and patch grid,
    and k-NN from the same network at random initialisation."""
    mean, std = stats
    rand = dino.build(dino_config(cfg))[0].backbone
    out = {}
    for pool, suffix in (("cls", ""), ("grid", "_grid")):
        fa, fb, ra, rb = (dino.features(net, dino.normalise(b.images, mean=mean, std=std), pooling=pool)
                          for net in (backbone, rand) for b in (tr, te))  # fmt: skip
        out |= {f"knn{suffix}": metrics.knn_accuracy(fa, fb, _table(tr), _table(te)),
                f"linear_probe{suffix}": metrics.linear_probe_accuracy(fa, fb, _table(tr), _table(te)),
                f"knn_random_init{suffix}": metrics.knn_accuracy(ra, rb, _table(tr), _table(te))}  # fmt: skip
    return out


def score_generator(G: sg.Generator, emb: embedding.Embedder, te: cp.Batch) -> dict:
    rec = gan.generate(G, emb.embed_images(te.images), ratio=1.0)
    return {"pixcorr": metrics.pixcorr(rec, te.images), "ssim": metrics.ssim(rec, te.images), "n": len(rec)}


# ================================================================================================================
# files and manifest


def git_commit() -> str:
    """HEAD's commit of the repository this code is in, with ``+dirty`` when tracked files are modified."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.PROJ_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "lib"],
                               cwd=paths.PROJ_ROOT, capture_output=True, text=True).stdout.strip()  # fmt: skip
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(out: Path, name: str, entry: dict) -> Path:
    """Add or replace the manifest entry of model file ``out/name`` (sha256 and bytes from the file)."""
    path = out / pretrained.MANIFEST
    manifest = (
        pretrained.read_manifest(path)
        if path.exists()
        else {"format": pretrained.MANIFEST_FORMAT, "models": {}}
    )
    f = out / name
    manifest["models"][name] = {"sha256": fileio.file_sha256(f, n=64), "bytes": f.stat().st_size, **entry}
    return fileio.write_json(path, manifest)


STAGES = ("clip", "gan", "refine", "extend", "anneal", "dino", "judge")


def run(profile: str = "full", out: str | Path | None = None, stages: tuple[str, ...] = STAGES,
        device: str = "auto", state_dir: str | Path | None = None) -> dict:  # fmt: skip
    """Pretrain ``stages`` of ``profile`` into ``out`` (default: ``models/`` for full, else
    ``build/pretrain/<profile>/models``), resuming from ``state_dir`` (default ``build/pretrain/<profile>``)."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: expected one of {sorted(PROFILES)}")
    bad = set(stages) - set(STAGES)
    if bad:
        raise ValueError(f"stages {sorted(bad)}: expected some of {STAGES}")
    cfg = PROFILES[profile]
    cfg.check()
    work = Path(state_dir) if state_dir else paths.BUILD_DIR / "pretrain" / profile
    out = Path(out) if out else (pretrained.MODELS_DIR if profile == "full" else work / "models")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    cli = Path(sys.argv[0]).parent.name == "pretrained"  # run as python -m lib.models.pretrained
    command = f"{PROG} " + (" ".join(sys.argv[1:]) if cli else f"--profile {profile}")
    commit = git_commit()
    corp = cp.Corpus(cfg.seed, cfg.image_size, hard_negatives=cfg.hard_negatives)
    tr, te = heldout(cfg, corp)
    common = {"command": command, "git_commit": commit, "profile": profile, "torch_threads": torch.get_num_threads(),
              "device": runtime.pick_device(device)}  # fmt: skip
    corpus_info = lambda n: {"seed": cfg.seed, "scenes_seen": int(n), "hard_negatives": cfg.hard_negatives}  # noqa: E731
    done: dict = {}
    emb = None
    if "clip" in stages:
        emb, hist = train_embedding(cfg, corp, work, device)
        scores = score_embedding(emb, tr, te)
        embedding.save_checkpoint(out / pretrained.FILES["clip"], emb, {"profile": profile}, half=True)
        record(out, pretrained.FILES["clip"], {**common, "corpus": corpus_info(hist["scenes"]),
               "train_seconds": hist["seconds"], "steps": cfg.clip_steps, "scores": scores,
               "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k.startswith("clip") or k in
                          ("hard_negatives", "attr_weight", "pixel_weight", "image_size")}})  # fmt: skip
        done["clip"] = scores
        print(f"joint embedding: {hist['seconds']:.0f} s, {json.dumps(scores)}", flush=True)
    # each phase's generator and record, where the next phase starts
    phase_file = lambda i: work / f"generator_phase{i + 1}.safetensors"  # noqa: E731
    all_phases = gan_phases(cfg)
    for i, phase in enumerate(all_phases):
        if phase.name not in stages:
            continue
        if emb is None:
            emb = embedding.load(
                checkpoint=pretrained.verified(out / pretrained.FILES["clip"]), device=device
            )
        init = None
        if i > 0:
            if not phase_file(i - 1).is_file():
                raise FileNotFoundError(f"{phase_file(i - 1)}: no phase-{i} generator; run the "
                                        f"{all_phases[i - 1].name} stage first")  # fmt: skip
            init = sg.load_generator(phase_file(i - 1))
        G, hist = train_generator(cfg, corp, emb, work, device, phase=phase, init=init)
        scores = score_generator(G, emb, te)
        entry = {**common, "phase": phase.name, "corpus": corpus_info(hist["scenes"]),
                 "train_seconds": hist["seconds"], "steps": phase.steps, "scores": scores,
                 "conditioned_on": pretrained.FILES["clip"], "config": dataclasses.asdict(phase)
                 | {k: v for k, v in dataclasses.asdict(cfg).items() if k.startswith("gan")}}  # fmt: skip
        meta = {"profile": profile, "embedding": pretrained.FILES["clip"]}
        before = json.loads(phase_file(i - 1).with_suffix(".json").read_text()) if i > 0 else None
        # the first phase's record lists no phases: it is its own
        earlier = [] if before is None else before.get("phases", [before])
        phases = [*earlier, dict(entry)]
        if len(phases) > 1:  # the shipped entry sums the phases so far and keeps each phase's record
            entry = entry | {"corpus": corpus_info(sum(p["corpus"]["scenes_seen"] for p in phases)),
                             "train_seconds": sum(p["train_seconds"] for p in phases),
                             "steps": sum(p["steps"] for p in phases), "phases": phases}  # fmt: skip
        sg.save_generator(phase_file(i), G, meta, half=True)
        fileio.write_json(phase_file(i).with_suffix(".json"), entry)
        sg.save_generator(out / pretrained.FILES["gan"], G, meta, half=True)
        record(out, pretrained.FILES["gan"], entry)
        done[phase.name] = scores
        print(f"generator ({phase.name}): {hist['seconds']:.0f} s, {json.dumps(scores)}", flush=True)
    if "dino" in stages:
        backbone, stats, hist = train_dino_teacher(cfg, corp, work, device)
        scores = score_dino(backbone, stats, tr, te, cfg)
        dino.save_backbone(out / pretrained.FILES["dino"], backbone, stats, {"profile": profile})
        record(out, pretrained.FILES["dino"], {**common, "corpus": corpus_info(hist["scenes"]),
               "train_seconds": hist["seconds"], "steps": cfg.dino_steps, "scores": scores,
               "config": dataclasses.asdict(dino_config(cfg))})  # fmt: skip
        done["dino"] = scores
        print(f"DINO: {hist['seconds']:.0f} s, {json.dumps(scores)}", flush=True)
    if "judge" in stages:
        judge, hist = train_judge(cfg, corp, work, device)
        f = shape_judge.save(out / pretrained.FILES["judge"], judge.net, {"profile": profile})
        scores = score_judge(shape_judge.load(f, device), te)  # the stored (float16) weights
        record(out, pretrained.FILES["judge"], {**common, "corpus": corpus_info(hist["scenes"]),
               "train_seconds": hist["seconds"], "steps": cfg.judge_steps, "scores": scores,
               "config": judge_config(cfg)})  # fmt: skip
        done["judge"] = scores
        print(f"shape judge: {hist['seconds']:.0f} s, {json.dumps(scores)}", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full", choices=sorted(PROFILES))
    ap.add_argument("--out", default=None, help="model folder (default: models/ for full, else under build/)")
    ap.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages: {', '.join(STAGES)}")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    run(a.profile, a.out, tuple(s for s in a.only.split(",") if s), a.device)
    return 0
