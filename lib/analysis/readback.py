"""Attribute read-back, an independent judge of reconstructions: a small CNN trained on stimuli (never on
reconstructions, never inside a training loss) reads the background kind and colour and the main object's colour,
shape and 3 x 3 position from any image; and the reconstruction baselines it is compared with."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib import runtime
from lib.models import shape_judge

#: what the judge reads (columns of :func:`lib.data.scenes.attribute_table`); colour, shape, position: largest object
READ = ("background", "bg_colour", "colour", "shape", "position")
#: per-image means over attributes that :meth:`Readback.score` adds (the report's read-back goals compare them)
COMPOSITES = {"main object": ("colour", "shape", "position"), "mean": READ}
SIZE = 64  # every image is resized to this side before reading


@dataclass(frozen=True)
class ReadbackConfig:
    """How the read-back judge is trained (profile section ``readback``): the arguments of :func:`train`."""

    epochs: int = 30  # training epochs on the training stimuli
    batch: int = 64  # images per step
    lr: float = 2e-3  # peak learning rate (AdamW, one cycle)
    blur_max: float = 2.0  # largest Gaussian blur (sigma, px at 64 px) of the augmentation

    def check(self) -> None:
        if self.epochs < 1 or self.batch < 1 or self.lr <= 0 or self.blur_max < 0:
            raise ValueError(
                f"readback: epochs={self.epochs}, batch={self.batch}, lr={self.lr}, blur_max={self.blur_max}: "
                "expected epochs and batch >= 1, lr > 0, blur_max >= 0"
            )


class ReadbackError(ValueError):
    """Bad input to the read-back judge."""


def _as_input(images: np.ndarray, dev: torch.device) -> torch.Tensor:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ReadbackError(f"images {x.shape} {x.dtype}: expected uint8 (N, H, W, 3)")
    t = torch.as_tensor(x, device=dev).permute(0, 3, 1, 2).float() / 255
    if t.shape[-1] != SIZE:
        t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    return t * 2 - 1


class _Net(nn.Module):
    def __init__(self, classes: dict[str, int], width: int = 32) -> None:
        super().__init__()
        c = width
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),  # 32
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),  # 16
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),  # 8
            nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.BatchNorm2d(4 * c), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
            nn.Flatten(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({k: nn.Linear(4 * c * 9, n) for k, n in classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x.contiguous(memory_format=torch.channels_last))  # NHWC: about 1.4x faster on CPU
        return {k: head(h) for k, head in self.heads.items()}


class Readback:
    """A trained read-back judge: :meth:`predict` labels, :meth:`accuracy` against a table of true attributes."""

    def __init__(self, net: _Net, classes: dict[str, np.ndarray], dev: torch.device, seconds: float) -> None:
        self.net, self.classes, self.device, self.seconds = net.eval(), classes, dev, seconds

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
        out: dict[str, list] = {k: [] for k in self.classes}
        for i in range(0, len(images), batch):
            logits = self.net(_as_input(images[i : i + batch], self.device))
            for k, v in logits.items():
                out[k].append(self.classes[k][v.argmax(1).cpu().numpy()])
        return {k: np.concatenate(v) if v else np.array([], object) for k, v in out.items()}

    def accuracy(self, images: np.ndarray, table) -> dict[str, float]:
        """{attribute: fraction read correctly} against ``table`` (one row per image)."""
        if len(table) != len(images):
            raise ReadbackError(f"{len(images)} images but {len(table)} attribute rows")
        pred = self.predict(images)
        return {
            k: float((pred[k].astype(str) == table[k].astype(str).to_numpy()).mean()) for k in self.classes
        }

    def score(self, image_sets: dict[str, np.ndarray], table) -> tuple[dict[str, dict], dict[str, dict]]:
        """Read every image set (name -> images, one per row of ``table``): ({name: {attribute: accuracy}},
        {name: {attribute: 0/1 per image}}), each accuracy the mean of its per-image hits; also each
        :data:`COMPOSITES` entry whose attributes were all read (per image, the share of them read correctly)."""
        hits = {}
        for name, images in image_sets.items():
            h = {k: v.astype(np.float64) for k, v in self.per_image(images, table).items()}
            for c, attrs in COMPOSITES.items():
                if all(a in h for a in attrs):
                    h[c] = np.mean([h[a] for a in attrs], axis=0)
            hits[name] = h
        return {name: {k: float(v.mean()) for k, v in h.items()} for name, h in hits.items()}, hits

    def per_image(self, images: np.ndarray, table) -> dict[str, np.ndarray]:
        """{attribute: bool (N,)}: which images' attribute is read correctly (for paired comparisons)."""
        if len(table) != len(images):
            raise ReadbackError(f"{len(images)} images but {len(table)} attribute rows")
        pred = self.predict(images)
        return {k: pred[k].astype(str) == table[k].astype(str).to_numpy() for k in self.classes}


def train(images: np.ndarray, table, epochs: int = 30, batch: int = 64, lr: float = 2e-3, blur_max: float = 2.0,
          seed: int = 0, device: str = "auto", attributes: tuple[str, ...] = READ) -> Readback:  # fmt: skip
    """Train the judge on stimuli ``images`` (uint8 (N, H, W, 3)) and their attribute ``table`` (a DataFrame of
    :func:`lib.data.scenes.attribute_table`). Augmentation: a random Gaussian blur (sigma 0..``blur_max`` px at 64 px)
    so that a blurry image is read by content rather than sharpness, and a shift of up to 2 px. AdamW, cosine."""
    missing = [a for a in attributes if a not in table]
    if missing:
        raise ReadbackError(f"table: missing attribute columns {missing}")
    if len(table) != len(images):
        raise ReadbackError(f"{len(images)} images but {len(table)} attribute rows")
    dev = torch.device(runtime.pick_device(device))
    torch.manual_seed(seed)
    classes, codes = {}, {}
    for a in attributes:
        classes[a], codes[a] = np.unique(table[a].astype(str).to_numpy(), return_inverse=True)
    net = _Net({a: len(c) for a, c in classes.items()}).to(dev)
    x_all = _as_input(images, dev)
    y_all = {a: torch.as_tensor(c, device=dev) for a, c in codes.items()}
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4, fused=True)
    steps_per = max(1, len(images) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    net.train()
    for _ in runtime.progress(range(epochs), desc="read-back judge"):
        perm = torch.randperm(len(images), generator=gen)
        for s in range(steps_per):
            idx = perm[s * batch : (s + 1) * batch].to(dev)
            x = shape_judge.blur_each(x_all[idx], torch.rand(len(idx), generator=gen).to(dev) * blur_max)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
            x = torch.roll(x, (dy, dx), (2, 3))
            out = net(x)
            loss = sum(F.cross_entropy(out[a], y_all[a][idx]) for a in classes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return Readback(net, classes, dev, time.perf_counter() - t0)


def majority(table, attributes: tuple[str, ...] = READ) -> dict[str, float]:
    """Chance for each attribute: the rate of its most frequent value in ``table``."""
    return {a: float(table[a].astype(str).value_counts(normalize=True).iloc[0]) for a in attributes}


# ================================================================================================================
# baselines a reconstruction method should beat


def nearest_training(query: np.ndarray, train_embeddings: np.ndarray, train_images: np.ndarray) -> np.ndarray:
    """For each query embedding, the training image whose embedding is most cosine-similar (retrieval)."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True).clip(1e-12)
    g = train_embeddings / np.linalg.norm(train_embeddings, axis=1, keepdims=True).clip(1e-12)
    return np.asarray(train_images)[(q @ g.T).argmax(1)]


def mean_image(train_images: np.ndarray, n: int) -> np.ndarray:
    """The mean training image (rounded to uint8), ``n`` times."""
    m = np.round(np.asarray(train_images, np.float64).mean(0)).astype(np.uint8)
    return np.repeat(m[None], n, axis=0)


def with_judge(readback_scores: tuple[dict, dict], judge_scores: tuple[dict, dict]) -> tuple[dict, dict]:
    """The read-back judge's (table, per-image hits) of :meth:`lib.analysis.readback.Readback.score` with this
    judge's :data:`lib.models.shape_judge.LABEL` column (:meth:`lib.models.shape_judge.ShapeJudge.score` of the same image sets) added to every row."""
    return tuple(
        {v: {**a[v], **b.get(v, {})} for v in a} for a, b in zip(readback_scores, judge_scores, strict=True)
    )
