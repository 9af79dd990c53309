"""MindEye's residual MLP encoder (voxels -> embedding head and contrastive projector) and its training: squared
error, BiMixCo then SoftCLIP, one-cycle schedule, early stopping on validation retrieval, resumable."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib import distributed, fileio, metrics, runtime
from lib.models import losses
from lib.models.ridge import EncoderError
from lib.trainer import CudaRNG, Run, TorchRNG


class ResidualMLP(torch.nn.Module):
    """voxels -> Linear, LayerNorm, GELU, dropout -> ``depth`` residual blocks of the same -> linear head to the
    embedding; a projector (LayerNorm, GELU, Linear, ... back to the embedding size) on top for the contrastive
    losses, as in MindEye. ``forward`` returns (embedding, projection); without a projector both are the head's
    output. A learnable logit scale (1/temperature, CLIP's parameterisation) serves the InfoNCE loss."""

    def __init__(self, n_voxels: int, out_dim: int, width: int = 4096, depth: int = 4, dropout: float = 0.15,
                 projector: bool = True, proj_width: int = 2048):  # fmt: skip
        super().__init__()
        if min(n_voxels, out_dim, width, proj_width) < 1 or depth < 0 or not 0 <= dropout < 1:
            raise EncoderError(
                f"ResidualMLP(n_voxels={n_voxels}, out_dim={out_dim}, width={width}, depth={depth}, "
                f"dropout={dropout}): expected positive sizes, depth >= 0 and 0 <= dropout < 1"
            )
        nn = torch.nn
        self.stem = nn.Sequential(
            nn.Linear(n_voxels, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout))
            for _ in range(depth)
        )
        self.head = nn.Linear(width, out_dim)
        self.projector = (
            nn.Sequential(
                nn.LayerNorm(out_dim),
                nn.GELU(),
                nn.Linear(out_dim, proj_width),
                nn.LayerNorm(proj_width),
                nn.GELU(),
                nn.Linear(proj_width, out_dim),
            )  # fmt: skip
            if projector
            else None
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        e = self.head(h)
        return e, (self.projector(e) if self.projector is not None else e)


@dataclasses.dataclass
class MLPConfig:
    """Architecture, losses and schedule of :func:`train_mlp`.

    Losses (weights; 0 switches one off): ``mse`` (squared L2 distance of the embedding head to the target),
    ``cosine`` (1 - cosine of the embedding head), ``clip`` (symmetric InfoNCE of the projection, learnable
    temperature), ``softclip`` and ``bimixco`` (MindEye's, on the projection). ``bimixco_frac``: BiMixCo (with
    voxel mixup) for that first fraction of the epochs, then SoftCLIP, as MindEye; with 0, SoftCLIP throughout.
    """

    width: int = 1024
    depth: int = 2
    dropout: float = 0.15
    projector: bool = True
    proj_width: int = 512
    epochs: int = 40
    batch_size: int = 128
    lr: float = 3e-4  # the one-cycle peak
    weight_decay: float = 0.01
    pct_start: float = 0.1
    mse: float = 1.0
    cosine: float = 0.0
    clip: float = 0.0
    softclip: float = 1.0
    bimixco: float = 1.0
    bimixco_frac: float = 1 / 3
    bimixco_temp: float = 0.006
    softclip_temp: float = 0.005
    mixup_beta: float = 0.15
    val_every: int = 1
    patience: int = 10  # epochs without a better validation retrieval before stopping; 0 never stops early
    seed: int = 0

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise EncoderError(f"epochs={self.epochs}, batch_size={self.batch_size}: expected >= 1 and >= 2")
        weights = {k: getattr(self, k) for k in ("mse", "cosine", "clip", "softclip", "bimixco")}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise EncoderError(f"loss weights {weights}: expected non-negative with at least one positive")
        if not 0 <= self.bimixco_frac <= 1:
            raise EncoderError(f"bimixco_frac={self.bimixco_frac}: expected a fraction in [0, 1]")
        if not (self.lr > 0 and 0 < self.pct_start < 1 and self.val_every >= 1 and self.patience >= 0):
            raise EncoderError(
                f"lr={self.lr}, pct_start={self.pct_start}, val_every={self.val_every}, patience={self.patience}: "
                "expected lr > 0, 0 < pct_start < 1, val_every >= 1, patience >= 0"
            )

    @property
    def contrastive(self) -> bool:
        return self.clip > 0 or self.softclip > 0 or self.bimixco > 0


MLP_STATE_FORMAT = "lib.encoders.mlp-state/1"
MLP_FORMAT = "lib.encoders.mlp/1"


class MLPEncoder:
    """A trained :class:`ResidualMLP` with its configuration; ``predict`` gives the embedding head, ``project``
    the projection head (the space the contrastive losses trained: use it for retrieval)."""

    def __init__(
        self, model: ResidualMLP, cfg: MLPConfig, n_voxels: int, out_dim: int, device: str | torch.device
    ):
        self.model, self.cfg, self.n_voxels, self.out_dim = model, cfg, n_voxels, out_dim
        self.device = torch.device(device)
        self.meta: dict = {}  # what made it (set by load from the file)

    @torch.no_grad()
    def _run(self, x: np.ndarray, which: int, batch: int = 1024) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_voxels:
            raise EncoderError(f"X has shape {x.shape}: expected (n, {self.n_voxels})")
        self.model.eval()
        out = [
            self.model(torch.as_tensor(x[i : i + batch], dtype=torch.float32, device=self.device))[which]
            .float().cpu().numpy()
            for i in range(0, len(x), batch)
        ]  # fmt: skip
        return np.concatenate(out) if out else np.zeros((0, self.out_dim), np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, 0)

    def project(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, 1)

    def retrieval_space(self, x: np.ndarray) -> np.ndarray:
        """The output retrieval should use: the projection when contrastive losses trained it, else the head."""
        return self.project(x) if self.cfg.contrastive else self.predict(x)

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        state = {"format": MLP_FORMAT, "config": dataclasses.asdict(self.cfg), "n_voxels": self.n_voxels,
                 "out_dim": self.out_dim, "model": self.model.state_dict(), "meta": meta or {}}  # fmt: skip
        return fileio.write_bytes(path, fileio.torch_bytes(state))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> MLPEncoder:
        """What :meth:`save` wrote, on ``device``; the ``meta`` given there is the attribute ``meta``."""
        try:
            s = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(s, dict) or s.get("format") != MLP_FORMAT:
                raise KeyError("format")
        except Exception as e:  # noqa: BLE001 - a foreign or truncated file is the same user error
            raise EncoderError(f"{path}: not a {MLP_FORMAT} file ({type(e).__name__})") from None
        dev = runtime.pick_device(device)
        try:
            cfg = MLPConfig(**s["config"])
            model = _build(cfg, s["n_voxels"], s["out_dim"])
            model.load_state_dict(s["model"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise EncoderError(
                f"{path}: a {MLP_FORMAT} file that does not fit this code ({type(e).__name__})"
            ) from None
        enc = cls(model.to(dev).eval(), cfg, s["n_voxels"], s["out_dim"], dev)
        enc.meta = dict(s.get("meta") or {})
        return enc


def _build(cfg: MLPConfig, n_voxels: int, out_dim: int) -> ResidualMLP:
    return ResidualMLP(n_voxels, out_dim, cfg.width, cfg.depth, cfg.dropout, cfg.projector, cfg.proj_width)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def mlp_loss(model: ResidualMLP, x: torch.Tensor, y: torch.Tensor, cfg: MLPConfig, mix: bool,
             rng: np.random.Generator, part: slice | None = None) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """The weighted loss of one batch, and its terms. ``mix``: BiMixCo phase (voxel mixup; the contrastive term
    is BiMixCo), else SoftCLIP. Regression terms and InfoNCE always see the unmixed batch. ``part``: under several
    processes, the rows of the (global) batch this process runs through the model; the outputs of every process
    are gathered, so each computes the loss of the whole batch, as one process would."""
    terms: dict[str, torch.Tensor] = {}
    yn = _unit(y.float())

    def forward(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if part is None:
            emb, proj = model(inputs)
        else:
            emb, proj = (distributed.gather(t) for t in model(inputs[part]))
        return emb.float(), proj.float()

    emb, proj = forward(x)
    if cfg.mse:
        terms["mse"] = ((emb - y.float()) ** 2).sum(-1).mean()
    if cfg.cosine:
        terms["cosine"] = (1 - (_unit(emb) * yn).sum(-1)).mean()
    if cfg.clip:
        terms["clip"] = losses.clip_loss(_unit(proj), yn, model.logit_scale.exp().clamp(max=100))
    if mix and cfg.bimixco:
        xm, perm, b = losses.mixco(x, rng, beta=cfg.mixup_beta)
        _, pm = forward(xm)
        terms["bimixco"] = losses.bimixco_loss(_unit(pm), yn, perm, b.float(), cfg.bimixco_temp)
    elif not mix and cfg.softclip:
        terms["softclip"] = losses.soft_clip_loss(_unit(proj), yn, cfg.softclip_temp)
    total = sum(getattr(cfg, k) * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}


def one_cycle(opt: torch.optim.Optimizer, cfg: MLPConfig, total_steps: int):
    """The one-cycle learning rate over ``total_steps`` (peak ``cfg.lr``, warm-up ``cfg.pct_start``)."""
    # a warm-up of exactly one step divides by zero in OneCycleLR: one and a half instead
    pct = cfg.pct_start if abs(cfg.pct_start * total_steps - 1) > 1e-9 else 1.5 / total_steps
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=pct)


def new_history() -> dict:
    """An encoder trainer's empty history: per-epoch loss and terms, validation scores, seconds."""
    return {"loss": [], "terms": [], "val_epoch": [], "val_img_retrieval_top1": [], "seconds": 0.0}


def validated(history: dict, epoch: int, score: float, model: torch.nn.Module, best: float, best_state,
              stale: int, val_every: int) -> tuple[float, dict | None, int]:  # fmt: skip
    """Record a validation ``score`` after ``epoch`` in ``history``; a better one than ``best`` keeps a copy of the
    weights and resets the patience count, another adds ``val_every`` to it. Returns (best, best_state, stale)."""
    history["val_epoch"].append(epoch)
    history["val_img_retrieval_top1"].append(score)
    if score > best:
        history["best_epoch"] = epoch
        return score, {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}, 0
    return best, best_state, stale + val_every


def train_mlp(x_train: np.ndarray, y_train: np.ndarray, cfg: MLPConfig, x_val: np.ndarray | None = None,
              y_val: np.ndarray | None = None, device: str = "auto", state_dir: str | Path | None = None,
              stop_after: int | None = None, accumulate: int = 1,
              nproc: int | None = None, _launch: bool = True) -> tuple[MLPEncoder, dict]:  # fmt: skip
    """Train a :class:`ResidualMLP` from voxels to target embeddings (rows of ``y_train``).

    Several processes (:mod:`lib.distributed`): under ``torchrun``, or with ``nproc`` > 1 (default: the
    pipeline's ``LIB_NPROC``), which launches them and resumes here from their finished state (``state_dir``
    given or temporary). ``cfg.batch_size`` is per process: a step's global batch is ``batch_size x processes x
    accumulate`` rows (``accumulate`` micro-batches' gradients summed before a step), and every process runs
    its slice of the same rows one process would, so the trained weights match one process's with that batch
    (dropout masks aside). Each process holding different rows (not the usual case) trains on its own, with
    the step count of the smallest and contrastive terms over its own batch.

    AdamW with a one-cycle learning rate over ``cfg.epochs``; bf16 autocast on CUDA. After every ``val_every``
    epochs, top-1 image retrieval on (``x_val``, ``y_val``) decides early stopping (``patience``) and which epoch's
    weights are returned (the best). The state (weights, optimiser, schedule, RNG, history, best weights) is saved
    atomically after each epoch to ``<state_dir>/mlp-state-<key>.pt``; the key covers the configuration, the data
    and the device, and a run with the same key resumes (``stop_after`` ends a session after that many epochs).
    Returns (encoder, history) with per-epoch ``loss`` and its terms, ``val_img_retrieval_top1``, ``seconds``.
    """

    cfg.check()
    if int(accumulate) < 1:
        raise EncoderError(f"accumulate={accumulate}: expected 1 or more micro-batches per step")
    accumulate = int(accumulate)
    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    if x_train.ndim != 2 or y_train.ndim != 2 or len(x_train) != len(y_train):
        raise EncoderError(f"x_train {x_train.shape} and y_train {y_train.shape}: expected (n, V) and (n, D)")
    if len(x_train) < cfg.batch_size:
        raise EncoderError(f"batch_size={cfg.batch_size}: larger than the {len(x_train)} training rows")
    for name, a in (("x_train", x_train), ("y_train", y_train), ("x_val", x_val), ("y_val", y_val)):
        if a is not None:
            fileio.check_finite(name, a, EncoderError)
    if (x_val is None) != (y_val is None):
        raise EncoderError("x_val and y_val: give both (validation for early stopping) or neither")
    has_val = x_val is not None
    if has_val:
        x_val, y_val = np.asarray(x_val), np.asarray(y_val)
        if (
            x_val.shape[1:] != x_train.shape[1:]
            or y_val.shape[1:] != y_train.shape[1:]
            or len(x_val) != len(y_val)
        ):
            raise EncoderError(
                f"x_val {x_val.shape} and y_val {y_val.shape}: expected (m, {x_train.shape[1]}) and "
                f"(m, {y_train.shape[1]}) like the training data"
            )
        if len(x_val) < 2:
            raise EncoderError(f"x_val has {len(x_val)} rows: validation retrieval needs at least 2")
    w, ranks = distributed.spread(nproc)
    dev = torch.device(distributed.device(runtime.pick_device(device)))
    n, v = x_train.shape
    d = y_train.shape[1]
    data_key = fileio.array_key(x_train, y_train, *((x_val, y_val) if has_val else ()))
    shared = distributed.all_same(data_key)  # every process holds the same rows: global batches
    spread = {"ranks": ranks} if ranks > 1 else {}
    spread |= {"accumulate": accumulate} if accumulate > 1 else {}
    spread |= {} if shared else {"own_rows": True}
    key = fileio.content_key(
        {"config": dataclasses.asdict(cfg), "data": data_key, "device": dev.type} | spread
    )
    if ranks > 1 and not w.active and _launch:  # launch the processes, then resume from their state
        given = {"x_train": x_train, "y_train": y_train, "cfg": cfg, "device": device, "stop_after": stop_after,
                 "accumulate": accumulate} | ({"x_val": x_val, "y_val": y_val} if has_val else {})  # fmt: skip
        return distributed.launched(train_mlp, ranks, given, state_dir, "mlp")
    global_batch = cfg.batch_size * (ranks if shared else 1) * accumulate
    steps_per_epoch = distributed.smallest(n // global_batch)
    if steps_per_epoch < 1:
        raise EncoderError(f"batch_size={cfg.batch_size} x {ranks} processes x accumulate={accumulate}: more "
                           f"than the {n} training rows")  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = _build(cfg, v, d).to(dev)
    if w.active:  # the same initial weights everywhere; each process its own dropout masks
        torch.manual_seed(cfg.seed * 1000 + w.rank + 1)
    opt = runtime.adamw_for(model, cfg.lr, cfg.weight_decay)
    sched = one_cycle(opt, cfg, cfg.epochs * steps_per_epoch)
    rng = np.random.default_rng(cfg.seed)
    history = new_history()
    # dropout draws from torch's generator (on a GPU, from the device's own)
    objects = {"model": model, "optimizer": opt, "scheduler": sched, "rng": rng, "torch_rng": TorchRNG(),
               "cuda_rng": CudaRNG(dev)}  # fmt: skip
    # under several processes each keeps its own dropout stream (and its own batch order, holding its own rows)
    per_rank = (("torch_rng", "cuda_rng") + (() if shared else ("rng",))) if w.active else ()
    run = Run(state_dir, "mlp-state", MLP_STATE_FORMAT, key, cfg.epochs, "MLP encoder", objects, counter="epoch",
              per_rank=per_rank)  # fmt: skip
    run.start(history, best=-1.0, best_state=None, stale=0)
    history = run.history
    best, best_state, stale = (run.extra[k] for k in ("best", "best_state", "stale"))
    xt = torch.as_tensor(x_train, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y_train, dtype=torch.float32, device=dev)
    mix_epochs = int(round(cfg.bimixco_frac * cfg.epochs)) if cfg.bimixco else 0
    for epoch in run.steps(stop_after):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(n)
        total, terms = 0.0, {}
        micro = global_batch // accumulate  # rows of one micro-batch, over every process when shared
        part = distributed.local_part(micro) if shared and w.active else None
        for b in range(steps_per_epoch):
            opt.zero_grad(set_to_none=True)
            for a in range(accumulate):
                lo = b * global_batch + a * micro
                idx = torch.as_tensor(order[lo : lo + micro], device=dev)
                with runtime.autocast(dev):
                    loss, parts = mlp_loss(model, xt[idx], yt[idx], cfg, epoch < mix_epochs, rng, part)
                (loss / accumulate).backward()
                total += float(loss.detach()) / accumulate
                for k, val in parts.items():
                    terms[k] = terms.get(k, 0.0) + val / (steps_per_epoch * accumulate)
            # shared rows: each process's loss is the whole batch's, and gathering summed its gradient over the
            # processes, so the average is the one-process gradient; own rows: the average of the processes'
            distributed.average_gradients(model)
            opt.step()
            sched.step()
        epoch += 1
        history["loss"].append(total / steps_per_epoch)
        history["terms"].append(terms)
        history["seconds"] += time.perf_counter() - t0
        if has_val and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            enc = MLPEncoder(model, cfg, v, d, dev)
            score = metrics.retrieval(enc.retrieval_space(x_val), y_val, draws=5, seed=cfg.seed)["image"]
            best, best_state, stale = validated(
                history, epoch, score, model, best, best_state, stale, cfg.val_every
            )
        run.done = distributed.agree(
            epoch >= cfg.epochs or (cfg.patience > 0 and stale >= cfg.patience and has_val)
        )
        history["stopped_early"] = run.done and epoch < cfg.epochs
        run.advance(loss=f"{history['loss'][-1]:.3f}", val=f"{best:.3f}")
        run.checkpoint(best=best, best_state=best_state, stale=stale, done=run.done)
    done = run.done
    if best_state is not None:
        model.load_state_dict(best_state)
    history["done"] = done
    history["state_key"] = key
    return MLPEncoder(model.eval(), cfg, v, d, dev), history
