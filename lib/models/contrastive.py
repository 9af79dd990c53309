"""Contrastive image-text training of an open_clip model on stimuli and their captions, with checkpoint/resume."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib import distributed, fileio, runtime
from lib.models import embedding, losses
from lib.models.embedding import Embedder, EmbeddingError
from lib.trainer import Run

TRAIN_STATE_FORMAT = "lib.contrastive.state/1"


@dataclass
class ClipTrainConfig:
    steps: int = 300
    batch_size: int = 128
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.1
    warmup_frac: float = 0.05  # linear warm-up, then cosine decay to zero
    max_logit_scale: float = 100.0  # CLIP clamps 1/temperature at 100
    seed: int = 0
    checkpoint_every: int = 50
    eval_every: int = 50  # steps between calls of the monitoring function (0: never)

    def check(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"warmup_frac={self.warmup_frac}: expected 0 <= warmup_frac < 1")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: expected > 0")


def train_clip(
    emb: Embedder,
    images: np.ndarray,
    captions: list[list[str]],
    cfg: ClipTrainConfig,
    state_dir: str | Path | None = None,
    monitor: Callable[[Embedder], dict] | None = None,
    stop_after: int | None = None,
    nproc: int | None = None,
    accumulate: int = 1,
    _launch: bool = True,
) -> dict:
    """Train ``emb`` in place with CLIP's symmetric InfoNCE (learnable temperature) on image-caption pairs.

    Each step draws ``batch_size`` distinct images and one of each image's captions at random. AdamW with linear
    warm-up and cosine decay; bfloat16 autocast on CUDA. With ``state_dir``, the full training state (weights,
    optimiser, step, sampler state, history) is saved every ``checkpoint_every`` steps and at the end to
    ``clip-state-<key>.pt``, the key covering the initial model, the configuration and the data; an existing
    state with the same key is resumed (a finished one is simply loaded).
    ``stop_after`` ends early after that many steps (to test resuming). Returns the history: per step ``loss``
    and ``logit_scale``; per evaluation ``eval_step`` plus whatever ``monitor(emb)`` returns; ``seconds`` of
    training (evaluations excluded) summed over all sessions.

    Several processes (:mod:`lib.distributed`; under ``torchrun``, or ``nproc`` > 1 launches them, default the
    pipeline's ``LIB_NPROC``): ``batch_size`` is per process; every process draws the same global batch and caption
    choices, embeds its rows, and the loss sees the gathered batch (every negative), so an image tower without
    BatchNorm trains as one process with the global batch. BatchNorm layers use each process's rows (SyncBatchNorm
    on GPUs) and their running statistics are averaged after each step. ``monitor`` runs on rank 0 only.
    ``accumulate``: micro-batches (each of the global batch, with its own negatives) whose gradients are summed
    before each step.
    """
    if int(accumulate) < 1:
        raise ValueError(f"accumulate={accumulate}: expected 1 or more micro-batches per step")
    accumulate = int(accumulate)
    cfg.check()
    if len(images) != len(captions):
        raise EmbeddingError(f"{len(images)} images but {len(captions)} caption lists")
    if len(images) < cfg.batch_size:
        raise ValueError(f"batch_size={cfg.batch_size}: larger than the {len(images)} training images")
    counts = {len(c) for c in captions}
    if 0 in counts:
        raise EmbeddingError("every training image needs at least one caption")
    model, dev = emb.model, emb.device
    w, ranks = distributed.spread(nproc)
    key = fileio.content_key(
        {
            "model": emb.key,
            "config": dataclasses.asdict(cfg),
            "data": _data_key(images, captions),
            "device": dev.type,
        }
        | ({"ranks": ranks} if ranks > 1 else {})
        | ({"accumulate": accumulate} if accumulate > 1 else {})
    )
    if ranks > 1 and not w.active and _launch:  # launch the processes, then resume from their state
        given = {
            "emb": emb,
            "images": np.asarray(images),
            "captions": captions,
            "cfg": cfg,
            "stop_after": stop_after,
            "accumulate": accumulate,
        }
        return distributed.launched(train_clip, ranks, given, state_dir, "clip")
    batch = cfg.batch_size * ranks  # the global batch
    if len(images) < batch:
        raise ValueError(
            f"batch_size={cfg.batch_size} x {ranks} processes: larger than the {len(images)} images"
        )
    part = distributed.local_part(batch)
    if w.active and dev.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = runtime.adamw_for(model, cfg.lr, cfg.weight_decay, no_decay=("logit_scale", "embedding"))
    rng = np.random.default_rng(cfg.seed)
    history: dict = {"loss": [], "logit_scale": [], "eval_step": [], "seconds": 0.0, "state_key": key}
    run = Run(state_dir, "clip-state", TRAIN_STATE_FORMAT, key, cfg.steps, "CLIP training",
              {"model": model, "optimizer": opt, "rng": rng})  # fmt: skip
    run.start(history)
    history = run.history
    warmup = int(round(cfg.warmup_frac * cfg.steps))
    end = cfg.steps if stop_after is None else min(cfg.steps, run.step + stop_after)
    if (
        run.step < end
    ):  # the whole training set, preprocessed once, captions tokenised once (not when finished)
        x_all = torch.cat([emb.preprocess(images[i : i + 512]) for i in range(0, len(images), 512)])
        n_cap = np.array([len(c) for c in captions])
        tokens = emb.tokenize([t for cs in captions for t in cs])
        first = np.concatenate([[0], np.cumsum(n_cap)[:-1]])
    model.train()
    for i in run.steps(stop_after):
        t0 = time.perf_counter()
        lr = losses.warmup_cosine(i, cfg.steps, warmup, cfg.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accumulate):  # micro-batches (each its own negatives), gradients summed
            idx = rng.choice(len(images), batch, replace=False)
            cap = first[idx] + (rng.random(batch) * n_cap[idx]).astype(int)
            with runtime.autocast(dev):
                img, txt, scale = model(x_all[idx[part]], tokens[cap[part]])  # this process's rows
                img, txt = distributed.gather(img), distributed.gather(txt)
                loss = losses.clip_loss(img.float(), txt.float(), scale.float())
            (loss / accumulate).backward()
            total += float(loss.detach()) / accumulate
        distributed.average_gradients(model)
        opt.step()
        distributed.average_buffers(model)  # BatchNorm's running statistics
        with torch.no_grad():
            model.logit_scale.clamp_(0, float(np.log(cfg.max_logit_scale)))
        history["loss"].append(total)
        history["logit_scale"].append(float(scale.detach()))
        history["seconds"] += time.perf_counter() - t0
        step = run.advance(loss=f"{history['loss'][-1]:.3f}")
        if (
            monitor is not None
            and cfg.eval_every
            and (step % cfg.eval_every == 0 or step == cfg.steps)
            and w.main
        ):
            result = monitor(emb)
            model.train()
            history["eval_step"].append(step)
            for k, v in result.items():
                history.setdefault(k, []).append(v)
        if step % cfg.checkpoint_every == 0 or step == end:
            run.save()
    model.eval()
    emb.key = fileio.content_key(
        {"trained_from": emb.key, "state": key, "step": run.step}
    )  # no longer the initial weights
    history["done"] = run.step >= cfg.steps
    return history


def _data_key(images: np.ndarray, captions: list[list[str]]) -> str:
    """Key of the training data: a hash of the pixels and the caption text."""
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update("\n".join("\t".join(c) for c in captions).encode())
    return h.hexdigest()[:16]


def train_from_scratch(arch: str, images: np.ndarray, captions: list[list[str]], cfg: ClipTrainConfig, store,
                       image_size: int | None = None, device: str = "auto",
                       monitor: Callable[[Embedder], dict] | None = None,
                       save: bool = True) -> tuple[Embedder, dict]:  # fmt: skip
    """The embedding 01 trains itself: ``arch`` at its initialisation for ``cfg.seed``, trained by
    :func:`train_clip` on the training stimuli (resumable state in 01's folder of the :class:`lib.artifacts.Store`
    ``store``), saved as the ``embedder_scratch`` artifact and read back from it, so that what is scored here is
    the file later stages load (``save=False``: kept in memory only, e.g. a further seed). Returns (embedder,
    history)."""

    emb = embedding.create(arch, image_size, device, cfg.seed)
    history = train_clip(emb, images, captions, cfg, state_dir=store.work_dir("01_joint_embedding"),
                         monitor=monitor)  # fmt: skip
    if not save:
        return emb, history
    store.save_embedder(emb, {"config": vars(cfg)}, scratch=True)
    return store.load_embedder(device, scratch=True), history
