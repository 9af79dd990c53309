"""DINO self-supervised pretraining (student/teacher, multi-crop, EMA teacher) and k-NN probing of frozen features."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib import distributed, fileio, runtime
from lib.models import losses
from lib.trainer import Run

TRAIN_STATE_FORMAT = "lib.dino.state/1"


class ResNetBackbone(nn.Module):
    """The trunk of open_clip's ModifiedResNet (3-conv stem, anti-aliased bottleneck stages) with global average
    pooling instead of the attention pool, so that it takes crops of any size, as DINO's ResNet backbone does."""

    def __init__(self, layers=(1, 1, 1, 1), width: int = 16) -> None:
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet  # lazy: open_clip: seconds to import

        trunk = ModifiedResNet(layers=list(layers), output_dim=8, heads=1, image_size=32, width=width)
        del trunk.attnpool
        self.trunk = trunk
        self.width, self.layers = width, tuple(layers)
        self.dim = width * 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x = t.stem(x.to(t.conv1.weight.dtype))
        x = t.layer4(t.layer3(t.layer2(t.layer1(x))))
        return x.mean((2, 3))


class DINOHead(nn.Module):
    """DINO's projection head: 3-layer MLP to a bottleneck, L2 normalisation, then a weight-normalised linear
    layer to ``out_dim`` prototypes whose norm is frozen at 1 (``norm_last_layer``)."""

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden: int = 512, bottleneck: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        g = last.parametrizations.weight.original0
        g.data.fill_(1.0)
        g.requires_grad = False
        self.last_layer = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def multicrop(x: torch.Tensor, n: int, size: int, scale: tuple[float, float], generator: torch.Generator,
              flip: bool = True) -> torch.Tensor:  # fmt: skip
    """``n`` random resized crops of every image in ``x`` (B, C, H, W), batched with ``roi_align`` (bilinear):
    area fraction uniform in ``scale``, aspect ratio log-uniform in [3/4, 4/3], random horizontal flips.
    Returns (n * B, C, size, size), view-major (all images' first crop, then the second...)."""
    from torchvision.ops import roi_align  # lazy: torchvision: seconds to import

    b, _, h, w = x.shape
    m = n * b
    area = torch.empty(m).uniform_(scale[0], scale[1], generator=generator) * h * w
    ratio = torch.empty(m).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator).exp()
    cw = (area * ratio).sqrt().clamp(max=w)
    ch = (area / ratio).sqrt().clamp(max=h)
    x0 = torch.rand(m, generator=generator) * (w - cw)
    y0 = torch.rand(m, generator=generator) * (h - ch)
    boxes = torch.stack([(torch.arange(m) % b).float(), x0, y0, x0 + cw, y0 + ch], 1).to(x.device, x.dtype)
    out = roi_align(x, boxes, size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    if flip:
        f = (torch.rand(m, generator=generator) < 0.5).to(x.device)
        out = torch.where(f[:, None, None, None], out.flip(-1), out)
    return out.contiguous(memory_format=torch.channels_last)


@dataclass
class DinoConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 5e-4  # peak AdamW learning rate (DINO: 5e-4 * batch / 256; small batches here need more)
    weight_decay: float = 0.04
    warmup_frac: float = 0.1
    out_dim: int = 1024  # prototypes K
    n_global: int = 2
    n_local: int = 6
    global_size: int = 64
    local_size: int = 32
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    flip: bool = True  # random horizontal flips of every crop
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_frac: float = 0.3
    momentum: float = 0.996  # teacher EMA momentum at step 0, cosine to 1
    center_momentum: float = 0.9
    width: int = 16  # ResNet width (as the CLIP image tower)
    seed: int = 0
    checkpoint_every: int = 100

    def check(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "out_dim",
            "n_global",
            "global_size",
            "local_size",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        for name in ("global_size", "local_size"):
            if getattr(self, name) < 32:
                raise ValueError(
                    f"{name}={getattr(self, name)}: the ResNet trunk downsamples 32x, expected >= 32"
                )
        if self.n_global < 2 and self.n_local < 1:
            raise ValueError("DINO needs at least two views: n_global >= 2 or n_local >= 1")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected 0 < low <= high <= 1")
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum={self.momentum}: expected 0..1")


def build(cfg: DinoConfig) -> tuple[nn.Module, nn.Module]:
    """(student, teacher): backbone + head each, initialised from ``cfg.seed`` (so a second call gives the
    random-init baseline of a trained pair); the teacher starts as a copy and is never trained directly."""
    torch.manual_seed(cfg.seed)
    student = nn.Sequential(ResNetBackbone(width=cfg.width), None)
    student[1] = DINOHead(student[0].dim, cfg.out_dim)
    student = student.to(memory_format=torch.channels_last)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher


def _views(net: nn.Module, crops: torch.Tensor, n: int, batch: int, spread: bool) -> torch.Tensor:
    """``net`` on the crops (n * batch, ...) of a global batch, view-major; under several processes each runs its
    images' crops (:func:`lib.distributed.local_part`) and the outputs are gathered back into the whole batch's
    (n * batch, K), view-major, as one process computes them."""
    if not spread:
        return net(crops)
    part = distributed.local_part(batch)
    mine = crops.view(n, batch, *crops.shape[1:])[:, part].reshape(-1, *crops.shape[1:])
    out = net(mine.contiguous(memory_format=torch.channels_last))
    k = out.shape[-1]
    rows = distributed.gather(out.view(n, -1, k).transpose(0, 1).reshape(-1, n * k))  # (batch, n * K)
    return rows.view(batch, n, k).transpose(0, 1).reshape(n * batch, k)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter. Buffers (BatchNorm
    running statistics) are not copied: the teacher keeps its own, from the global crops it sees, as in DINO."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def train_dino(
    x: torch.Tensor, cfg: DinoConfig, state_dir: str | Path | None = None, device: str = "auto",
    stop_after: int | None = None, nproc: int | None = None, accumulate: int = 1, _launch: bool = True,
) -> tuple[nn.Module, nn.Module, dict]:  # fmt: skip
    """DINO on normalised images ``x`` (N, 3, H, W): returns (student, teacher, history).

    Each step: ``n_global`` global crops (seen by teacher and student) and ``n_local`` local crops (student only)
    of ``batch_size`` images; :class:`lib.models.losses.DINOLoss` with centring and teacher sharpening; AdamW with warm-up
    and cosine decay; the teacher follows the student by EMA with cosine-scheduled momentum. History per step:
    ``loss``, ``teacher_entropy`` (mean per-sample entropy of the teacher's output, nats), ``batch_entropy``
    (entropy of the batch-mean output: near 0 means collapse to one prototype, near log K with a per-sample
    entropy also near log K means collapse to uniform), ``momentum``, ``teacher_temp``; ``seconds``.
    Training state is checkpointed to ``state_dir/dino-state-<key>.pt`` and resumed as in
    :func:`lib.models.contrastive.train_clip`.

    Several processes (:mod:`lib.distributed`; under ``torchrun``, or ``nproc`` > 1 launches them): ``batch_size``
    is per process; every process draws the global batch and its crops as one process would and runs its images'
    crops; the student's and teacher's outputs are gathered (the student's with their gradients), so the loss and
    the centre's update (c <- m c + (1 - m) mean of the teacher's outputs) are those of the whole batch on every
    process: the all-reduced centre. BatchNorm uses each process's crops (SyncBatchNorm on GPUs); its running
    statistics are averaged after each step. ``accumulate``: micro-batches (each of the global batch) whose
    gradients are summed before each step.
    """
    cfg.check()
    if int(accumulate) < 1:
        raise ValueError(f"accumulate={accumulate}: expected 1 or more micro-batches per step")
    accumulate = int(accumulate)
    fileio.check_finite("x", x.detach().cpu().numpy() if torch.is_tensor(x) else x)
    w, ranks = distributed.spread(nproc)
    dev = torch.device(distributed.device(runtime.pick_device(device)))
    if len(x) < cfg.batch_size * ranks:
        raise ValueError(
            f"batch_size={cfg.batch_size} x {ranks} processes: larger than the {len(x)} training images"
        )
    if ranks > 1 and not w.active and _launch:  # launch the processes, then resume from their state
        given = {"x": x, "cfg": cfg, "device": device, "stop_after": stop_after, "accumulate": accumulate}
        return distributed.launched(train_dino, ranks, given, state_dir, "dino")
    batch_size = cfg.batch_size * ranks  # the global batch
    student, teacher = build(cfg)
    student, teacher = student.to(dev), teacher.to(dev)
    if w.active and dev.type == "cuda":
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    crit = losses.DINOLoss(
        cfg.out_dim, cfg.n_global, cfg.student_temp, cfg.teacher_temp, cfg.warmup_teacher_temp,
        int(round(cfg.teacher_temp_warmup_frac * cfg.steps)), cfg.center_momentum,
    ).to(dev)  # fmt: skip
    opt = runtime.adamw_for(student, cfg.lr, cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    key = fileio.content_key({"config": dataclasses.asdict(cfg), "data": fileio.array_key(x.detach().cpu().numpy()),
                          "device": dev.type} | ({"ranks": ranks} if ranks > 1 else {})
                         | ({"accumulate": accumulate} if accumulate > 1 else {}))  # fmt: skip
    history: dict = {k: [] for k in ("loss", "teacher_entropy", "batch_entropy", "momentum", "teacher_temp")}
    history["seconds"] = 0.0
    history["state_key"] = key
    objects = {
        "student": student,
        "teacher": teacher,
        "loss": crit,
        "optimizer": opt,
        "torch_rng": gen,
        "rng": rng,
    }
    # each process's centre is saved too: gathered teacher outputs keep them equal (tests/util/test_distributed.py)
    run = Run(state_dir, "dino-state", TRAIN_STATE_FORMAT, key, cfg.steps, "DINO training", objects,
              per_rank=("loss",) if w.active else ())  # fmt: skip
    run.start(history)
    history = run.history
    warmup = int(round(cfg.warmup_frac * cfg.steps))
    end = cfg.steps if stop_after is None else min(cfg.steps, run.step + stop_after)
    student.train()
    teacher.train()
    for step in run.steps(stop_after):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = losses.warmup_cosine(step, cfg.steps, warmup, cfg.lr)
        opt.zero_grad(set_to_none=True)
        sums = dict.fromkeys(("loss", "teacher_entropy", "batch_entropy"), 0.0)
        for _ in range(accumulate):  # micro-batches, gradients summed (the centre follows each one)
            batch = x[torch.as_tensor(rng.choice(len(x), batch_size, replace=False))].to(dev)
            glob = multicrop(batch, cfg.n_global, cfg.global_size, cfg.global_scale, gen, cfg.flip)
            with runtime.autocast(dev):
                with torch.no_grad():
                    t_out = _views(teacher, glob, cfg.n_global, batch_size, w.active)
                s_out = [_views(student, glob, cfg.n_global, batch_size, w.active)]
                if cfg.n_local:
                    loc = multicrop(batch, cfg.n_local, cfg.local_size, cfg.local_scale, gen, cfg.flip)
                    s_out.append(_views(student, loc, cfg.n_local, batch_size, w.active))
            with torch.no_grad():
                probs = crit.teacher_probs(t_out, step)
                sums["teacher_entropy"] += float(losses.entropy(probs).mean()) / accumulate
                sums["batch_entropy"] += float(losses.entropy(probs.mean(0))) / accumulate
            loss = crit(torch.cat(s_out), t_out, step)
            (loss / accumulate).backward()
            sums["loss"] += float(loss.detach()) / accumulate
        history["teacher_entropy"].append(sums["teacher_entropy"])
        history["batch_entropy"].append(sums["batch_entropy"])
        history["teacher_temp"].append(crit.teacher_temperature(step))
        distributed.average_gradients(student)
        opt.step()
        m = losses.cosine_momentum(step, cfg.steps, cfg.momentum)
        ema_update(teacher, student, m)
        distributed.average_buffers(student)  # BatchNorm's running statistics
        distributed.average_buffers(teacher)
        history["loss"].append(sums["loss"])
        history["momentum"].append(m)
        history["seconds"] += time.perf_counter() - t0
        done = run.advance(loss=f"{history['loss'][-1]:.3f}")
        if done % cfg.checkpoint_every == 0 or done == end:
            run.save()
    student.eval()
    teacher.eval()
    history["done"] = run.step >= cfg.steps
    return student, teacher, history


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float32 (3,), on the 0-1 scale) of uint8 (N, H, W, 3) images."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255
    return x.mean((0, 2, 3)).numpy(), x.std((0, 2, 3)).clamp_min(1e-6).numpy()


def normalise(images: np.ndarray, ids_fit: np.ndarray | None = None, mean=None, std=None) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) standardised per channel with the mean and standard deviation
    of the rows ``ids_fit`` (the training images; default all), or with the given ``mean`` and ``std`` (a
    pretrained backbone's, from :func:`channel_stats` of its training images)."""
    images = np.asarray(images)
    if mean is None or std is None:
        mean, std = channel_stats(images if ids_fit is None else images[np.asarray(ids_fit)])
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    m = torch.as_tensor(np.asarray(mean), dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(np.asarray(std), dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


BACKBONE_FORMAT = "lib.dino.backbone/1"


def save_backbone(path: str | Path, backbone: ResNetBackbone, stats, meta: dict | None = None) -> Path:
    """A DINO backbone as safetensors (float16 weights; width, layers and normalisation in the header)."""

    header = {"format": BACKBONE_FORMAT, "width": str(backbone.width), "layers": json.dumps(list(backbone.layers)),
              "mean": json.dumps([float(v) for v in stats[0]]), "std": json.dumps([float(v) for v in stats[1]]),
              "meta": json.dumps(meta or {})}  # fmt: skip
    return fileio.write_bytes(path, fileio.safetensors_bytes(backbone.state_dict(), header, half=True))


def load_backbone(path: str | Path) -> tuple[ResNetBackbone, tuple[np.ndarray, np.ndarray]]:
    """(backbone in eval mode, (mean, std)) from a file of :func:`save_backbone`."""

    state, meta = fileio.read_safetensors(path)
    if meta.get("format") != BACKBONE_FORMAT:
        raise ValueError(f"{path}: not a {BACKBONE_FORMAT} file")
    net = ResNetBackbone(layers=tuple(json.loads(meta["layers"])), width=int(meta["width"]))
    net.load_state_dict(fileio.cast_floats(state, torch.float32))
    stats = (np.array(json.loads(meta["mean"]), np.float32), np.array(json.loads(meta["std"]), np.float32))
    return net.to(memory_format=torch.channels_last).eval(), stats


@torch.no_grad()
def features(backbone: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Frozen backbone features (N, D) of normalised images, computed in eval mode on the backbone's device."""
    was = backbone.training
    backbone.eval()
    dev = next(backbone.parameters()).device
    out = [
        backbone(x[i : i + batch_size].to(dev).contiguous(memory_format=torch.channels_last)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    backbone.train(was)
    return torch.cat(out).numpy()
