"""MindEye2's shared-subject encoder: each subject's voxels go through a linear map of its own into one shared latent
space, then through one residual MLP with heads (:class:`lib.models.mlp.ResidualMLP`) shared by every subject.
Pretrained on some subjects, it takes a new one by fitting that subject's map first (the rest frozen), then
everything, on the new subject's few sessions.

Training (:func:`train_shared`) uses the MLP's losses (:func:`lib.models.mlp.mlp_loss`: squared error, BiMixCo then
SoftCLIP), its one-cycle schedule, early stopping on a validation subject's retrieval, and the trainer harness
(:class:`lib.trainer.Run`): resumable, and on several processes as the other trainers.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from lib import distributed, fileio, metrics, runtime
from lib.models.mlp import MLPConfig, ResidualMLP, mlp_loss, new_history, one_cycle, validated
from lib.models.ridge import EncoderError
from lib.trainer import CudaRNG, Run, TorchRNG

STATE_FORMAT = "lib.encoders.shared-state/1"
FORMAT = "lib.encoders.shared/1"
TRAIN = ("all", "maps")  # what a run trains: everything, or only the subjects' maps (the backbone frozen)


@dataclasses.dataclass
class SharedConfig(MLPConfig):
    """:class:`lib.models.mlp.MLPConfig` (the shared backbone, its losses and schedule) and the subjects' maps:
    ``latent`` (the shared space's width; MindEye2: 4096) and ``map_decay`` (the maps' weight decay: a ridge
    penalty, MindEye2's "ridge regression" stage)."""

    latent: int = 256
    map_decay: float = 0.1
    # a new subject's two stages (its map, then everything) on its rows: a fixed budget of ``tune_steps`` updates
    # each in batches of ``tune_batch_size`` (many epochs of small batches for one session, a few for all)
    tune_steps: int = 400
    tune_batch_size: int = 32
    tune_lr: float = (
        3e-4  # the second stage's peak (everything moves: a tenth of the maps' lr keeps the backbone)
    )

    def check(self) -> None:
        super().check()
        if self.latent < 1 or self.map_decay < 0:
            raise EncoderError(f"latent={self.latent}, map_decay={self.map_decay}: expected >= 1 and >= 0")
        if self.tune_steps < 1 or self.tune_batch_size < 2 or not self.tune_lr > 0:
            raise EncoderError(f"tune_steps={self.tune_steps}, tune_batch_size={self.tune_batch_size}, "
                               f"tune_lr={self.tune_lr}: expected >= 1, >= 2 and > 0")  # fmt: skip

    def tuning(self, rows: int, everything: bool = False) -> SharedConfig:
        """The configuration of a new subject's stages on ``rows`` training rows: ``tune_batch_size`` and as many
        epochs as ``tune_steps`` updates take; the second stage (``everything``) with ``tune_lr``."""
        epochs = max(1, -(-self.tune_steps // max(1, rows // self.tune_batch_size)))
        return dataclasses.replace(self, epochs=epochs, batch_size=self.tune_batch_size,
                                   lr=self.tune_lr if everything else self.lr)  # fmt: skip


class SharedModel(torch.nn.Module):
    """The maps (``maps[subject]``: Linear(voxels, latent)) and the shared :class:`ResidualMLP` from the latent
    space; ``forward(x, subject)`` returns the backbone's (embedding, projection)."""

    def __init__(self, voxels: dict[str, int], out_dim: int, cfg: SharedConfig) -> None:
        super().__init__()
        self.maps = torch.nn.ModuleDict({s: torch.nn.Linear(int(v), cfg.latent) for s, v in voxels.items()})
        self.backbone = ResidualMLP(cfg.latent, out_dim, cfg.width, cfg.depth, cfg.dropout, cfg.projector,
                                    cfg.proj_width)  # fmt: skip

    def forward(self, x: torch.Tensor, subject: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone(self.maps[subject](x))


class SharedEncoder:
    """A trained :class:`SharedModel`: ``predict(x, subject)`` the embedding head, ``project`` the projection,
    ``retrieval_space`` the one retrieval should use (as :class:`lib.models.mlp.MLPEncoder`)."""

    def __init__(self, model: SharedModel, cfg: SharedConfig, out_dim: int, device) -> None:
        self.model, self.cfg, self.out_dim, self.device = model, cfg, out_dim, torch.device(device)

    @property
    def subjects(self) -> list[str]:
        return list(self.model.maps)

    def voxels(self, subject: str) -> int:
        return self.model.maps[subject].in_features

    def parameters_of(self, subject: str) -> int:
        """The number of parameters that are the subject's own (its map)."""
        return sum(p.numel() for p in self.model.maps[subject].parameters())

    @torch.no_grad()
    def _run(self, x: np.ndarray, subject: str, which: int, batch: int = 1024) -> np.ndarray:
        if subject not in self.model.maps:
            raise EncoderError(f"subject {subject!r}: this shared encoder has maps for {self.subjects}")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.voxels(subject):
            raise EncoderError(f"X has shape {x.shape}: expected (n, {self.voxels(subject)}) for {subject}")
        self.model.eval()
        out = [self.model(torch.as_tensor(x[i : i + batch], dtype=torch.float32, device=self.device), subject)[which]
               .float().cpu().numpy() for i in range(0, len(x), batch)]  # fmt: skip
        return np.concatenate(out) if out else np.zeros((0, self.out_dim), np.float32)

    def predict(self, x: np.ndarray, subject: str) -> np.ndarray:
        return self._run(x, subject, 0)

    def project(self, x: np.ndarray, subject: str) -> np.ndarray:
        return self._run(x, subject, 1)

    def retrieval_space(self, x: np.ndarray, subject: str) -> np.ndarray:
        return self.project(x, subject) if self.cfg.contrastive else self.predict(x, subject)


class Subjects:
    """Each subject's training rows, {subject: (x (n, voxels), y (n, D))}; it crosses to launched processes as
    one file per array (:class:`lib.distributed.Portable`)."""

    def __init__(self, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        if not data:
            raise EncoderError("no subjects: expected {subject: (x, y)} with at least one")
        self.data = {}
        dims = set()
        for s, (x, y) in data.items():
            x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
            if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or not len(x):
                raise EncoderError(
                    f"subject {s!r}: x {x.shape} and y {y.shape}: expected (n, V) and (n, D), n > 0"
                )
            fileio.check_finite(f"{s} x", x, EncoderError)
            fileio.check_finite(f"{s} y", y, EncoderError)
            dims.add(y.shape[1])
            self.data[str(s)] = (x, y)
        if len(dims) != 1:
            raise EncoderError(
                f"targets of {sorted(dims)} dimensions: every subject's y needs the same width"
            )
        self.out_dim = dims.pop()

    def key(self) -> str:
        return fileio.content_key({s: fileio.array_key(x, y) for s, (x, y) in self.data.items()})

    def to_launch(self, folder: Path, name: str) -> dict:
        names = {}
        for i, (s, (x, y)) in enumerate(self.data.items()):
            for part, a in (("x", x), ("y", y)):
                np.save(Path(folder) / f"{name}-{i}-{part}.npy", a, allow_pickle=False)
            names[s] = i
        return {"name": name, "subjects": names}

    @classmethod
    def from_launch(cls, spec: dict, folder: Path) -> Subjects:
        load = lambda i, part: np.load(Path(folder) / f"{spec['name']}-{i}-{part}.npy", allow_pickle=False)  # noqa: E731
        return cls({s: (load(i, "x"), load(i, "y")) for s, i in spec["subjects"].items()})


def _draw(rng: np.random.Generator, sizes: dict[str, int], batch: int) -> dict[str, np.ndarray]:
    """Rows of one step: ``batch`` rows split as evenly as possible over the subjects (MindEye2 mixes every
    subject into each batch), each subject's drawn without replacement."""
    names = list(sizes)
    share = np.full(len(names), batch // len(names))
    share[: batch % len(names)] += 1
    return {
        s: rng.choice(sizes[s], min(int(k), sizes[s]), replace=False)
        for s, k in zip(names, share, strict=True)
    }


def train_shared(data: Subjects | dict, cfg: SharedConfig, *, start=None, train: str = "all",
                 val_subject: str | None = None, x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
                 device: str = "auto",
                 state_dir: str | Path | None = None, stop_after: int | None = None, nproc: int | None = None,
                 _launch: bool = True) -> tuple[SharedEncoder, dict]:  # fmt: skip
    """Train a :class:`SharedModel` on every subject of ``data`` ({subject: (x, y)} or :class:`Subjects`).

    ``start``: a :class:`SharedEncoder` (or its model's weights) to start from; subjects it has no map for get a
    new one (initialised from ``cfg.seed``). ``train``: ``"all"`` trains the maps and the backbone; ``"maps"``
    only the maps of ``data``'s subjects, the backbone frozen (in eval mode, no dropout): MindEye2's first stage for
    a new subject. Each step draws ``batch_size`` rows per process spread over the subjects; an epoch is as many
    steps as the rows hold batches. The loss is :func:`lib.models.mlp.mlp_loss` on the latent rows (BiMixCo's mixup mixes them
    in the latent space). AdamW (the maps with ``map_decay``), one-cycle over ``cfg.epochs``, early stopping on
    the top-1 image retrieval of ``val_subject``'s (``x_val``, ``y_val``), the best epoch's weights returned.

    Resumable (``<state_dir>/shared-state-<key>.pt``, the key covers the configuration, data, start weights,
    ``train`` and device) and on several processes as :func:`lib.models.mlp.train_mlp` (each process runs its
    slice of every batch through the backbone; the outputs are gathered)."""
    cfg.check()
    if train not in TRAIN:
        raise EncoderError(f"train={train!r}: expected one of {TRAIN}")
    data = data if isinstance(data, Subjects) else Subjects(data)
    base = start.model.state_dict() if isinstance(start, SharedEncoder) else (
        start.state_dict() if start is not None else None)  # fmt: skip
    val = None
    if val_subject is not None:
        if x_val is None or y_val is None:
            raise EncoderError(f"val_subject={val_subject!r}: give x_val and y_val with it")
        if str(val_subject) not in data.data and (base is None or f"maps.{val_subject}.weight" not in base):
            raise EncoderError(f"val_subject={val_subject!r}: no map for it in data or start")
        val = (str(val_subject), np.asarray(x_val, np.float32), np.asarray(y_val, np.float32))
        fileio.check_finite("x_val", val[1], EncoderError)
    w, ranks = distributed.spread(nproc)
    dev = torch.device(distributed.device(runtime.pick_device(device)))
    key = fileio.content_key({"config": dataclasses.asdict(cfg), "data": data.key(), "train": train,
                              "start": None if base is None else fileio.content_key(
                                  {k: fileio.array_key(v.detach().cpu().numpy()) for k, v in base.items()}),
                              "val": None if val is None else [str(val[0]), fileio.array_key(val[1], val[2])],
                              "device": dev.type} | ({"ranks": ranks} if ranks > 1 else {}))  # fmt: skip
    if ranks > 1 and not w.active and _launch:
        given = {"data": data, "cfg": cfg, "train": train, "device": device, "stop_after": stop_after}
        given |= (
            {} if start is None else {"start": start.model if isinstance(start, SharedEncoder) else start}
        )
        given |= {} if val is None else {"val_subject": val[0], "x_val": val[1], "y_val": val[2]}
        return distributed.launched(train_shared, ranks, given, state_dir, "shared")
    voxels = {s: x.shape[1] for s, (x, _) in data.data.items()}
    if base is not None:
        voxels = {k.split(".")[1]: v.shape[1] for k, v in base.items() if k.startswith("maps.") and
                  k.endswith(".weight")} | voxels  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = SharedModel(voxels, data.out_dim, cfg)
    if base is not None:
        mine = model.state_dict()
        fresh = {k for k in mine if k.startswith("maps.") and k.split(".")[1] in data.data and k not in base}
        missing = [k for k in mine if k not in base and k not in fresh]
        if missing:
            raise EncoderError(
                f"start: weights without {missing[:3]}...: not a shared encoder of this configuration"
            )
        model.load_state_dict({k: base[k] if k in base else mine[k] for k in mine})
    model = model.to(dev)
    if w.active:
        torch.manual_seed(cfg.seed * 1000 + w.rank + 1)
    own = [p for s in data.data for p in model.maps[s].parameters()]
    for p in model.parameters():
        p.requires_grad = train == "all"
    for p in own:
        p.requires_grad = True
    groups = [{"params": [model.maps[s].weight for s in data.data], "weight_decay": cfg.map_decay},
              {"params": [model.maps[s].bias for s in data.data], "weight_decay": 0.0}]  # fmt: skip
    if train == "all":
        decay = [p for n, p in model.backbone.named_parameters() if p.ndim >= 2]
        flat = [p for n, p in model.backbone.named_parameters() if p.ndim < 2]
        groups += [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": flat, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)  # fused: runtime.adamw says why
    sizes = {s: len(x) for s, (x, _) in data.data.items()}
    batch = cfg.batch_size * ranks  # per process, as the other trainers: the step's batch is over all of them
    steps_per_epoch = max(1, sum(sizes.values()) // batch)
    sched = one_cycle(opt, cfg, cfg.epochs * steps_per_epoch)
    rng = np.random.default_rng(cfg.seed)
    history = new_history()
    objects = {"model": model, "optimizer": opt, "scheduler": sched, "rng": rng, "torch_rng": TorchRNG(),
               "cuda_rng": CudaRNG(dev)}  # fmt: skip
    run = Run(state_dir, "shared-state", STATE_FORMAT, key, cfg.epochs, f"shared encoder ({train})", objects,
              counter="epoch", per_rank=("torch_rng", "cuda_rng") if w.active else ())  # fmt: skip
    run.start(history, best=-1.0, best_state=None, stale=0)
    history = run.history
    best, best_state, stale = (run.extra[k] for k in ("best", "best_state", "stale"))
    tensors = {
        s: (torch.as_tensor(x, device=dev), torch.as_tensor(y, device=dev)) for s, (x, y) in data.data.items()
    }
    mix_epochs = int(round(cfg.bimixco_frac * cfg.epochs)) if cfg.bimixco else 0
    enc = SharedEncoder(model, cfg, data.out_dim, dev)
    for epoch in run.steps(stop_after):
        t0 = time.perf_counter()
        model.train()
        if train == "maps":
            model.backbone.eval()
        total, terms = 0.0, {}
        for _ in range(steps_per_epoch):
            rows = _draw(rng, sizes, batch)
            opt.zero_grad(set_to_none=True)
            with runtime.autocast(dev):
                z = torch.cat(
                    [model.maps[s](tensors[s][0][torch.as_tensor(r, device=dev)]) for s, r in rows.items()]
                )
                y = torch.cat([tensors[s][1][torch.as_tensor(r, device=dev)] for s, r in rows.items()])
                part = distributed.local_part(len(z)) if w.active else None
                loss, parts = mlp_loss(model.backbone, z, y, cfg, epoch < mix_epochs, rng, part)
            loss.backward()
            distributed.average_gradients(model)
            opt.step()
            sched.step()
            total += float(loss.detach())
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v / steps_per_epoch
        epoch += 1
        history["loss"].append(total / steps_per_epoch)
        history["terms"].append(terms)
        history["seconds"] += time.perf_counter() - t0
        if val is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            score = metrics.retrieval(enc.retrieval_space(val[1], str(val[0])), np.asarray(val[2]), draws=5,
                                      seed=cfg.seed)["image"]  # fmt: skip
            best, best_state, stale = validated(
                history, epoch, score, model, best, best_state, stale, cfg.val_every
            )
        run.done = distributed.agree(
            epoch >= cfg.epochs or (cfg.patience > 0 and stale >= cfg.patience and val is not None)
        )
        history["stopped_early"] = run.done and epoch < cfg.epochs
        run.advance(loss=f"{history['loss'][-1]:.3f}", val=f"{best:.3f}")
        run.checkpoint(best=best, best_state=best_state, stale=stale, done=run.done)
    if best_state is not None:
        model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad = False
    history["done"] = run.done
    history["state_key"] = key
    return SharedEncoder(model.eval(), cfg, data.out_dim, dev), history
