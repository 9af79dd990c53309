"""The shape judge: a small CNN, pretrained on the scene corpus, that reads the main object's shape from any image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib import fileio, runtime
from lib.data import scenes

#: the class of each output index: the shape names of :func:`lib.data.scenes.attribute_table`'s ``shape`` column
SHAPES = tuple(scenes.SHAPES)
SIZE = 64  # every image is resized to this side before reading
#: the judge's column beside the read-back judge's attributes (05's read-back table)
LABEL = "shape (judge)"
FORMAT = "lib.analysis.shape_judge/1"  # the shipped file's tag, from before the module moved to models
#: training augmentation (:func:`augment`): a reconstruction is blurrier, coarser and a little off in colour
AUGMENT = {
    "blur_p": 0.5,  # fraction of images blurred, sigma uniform in 0..blur_max px (at 64 px)
    "blur_max": 2.0,
    "down32_p": 0.25,  # fractions sampled down to 32 or to 16 px and back up (bilinear)
    "down16_p": 0.15,
    "gain": 0.15,  # brightness scale 1 +- gain, each channel 1 +- gain / 2, contrast 1 +- gain
    "noise": 0.02,  # sd of additive pixel noise (0..1 scale), per image uniform in 0..noise
}


class ShapeJudgeError(ValueError):
    """Bad input to the shape judge."""


def _checked(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8 or 0 in x.shape[1:3]:
        raise ShapeJudgeError(f"images {x.shape} {x.dtype}: expected uint8 (N, H, W, 3)")
    return x


def as_input(images: np.ndarray, dev: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) images of any side -> float (N, 3, 64, 64) in [0, 1] (bilinear, antialiased), on ``dev``."""
    x = _checked(images)
    t = torch.as_tensor(x, device=dev).permute(0, 3, 1, 2).float() / 255
    if t.shape[-2:] != (SIZE, SIZE):
        t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    return t


def resample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images resized to ``size`` x ``size`` (bilinear, antialiased): e.g. stimuli seen at 16 px."""
    t = torch.as_tensor(_checked(images)).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def blur_each(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each image with its own ``sigma`` (pixels; 0 leaves it), separable, reflect padding."""
    r = 4
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = torch.where(sigma[:, None] < 1e-3, (t[None] == 0).to(x.dtype), k)
    k = k / k.sum(1, keepdim=True)
    n, c, h, w = x.shape
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    kk = k.repeat_interleave(c, 0)
    y = F.conv2d(y, kk[:, None, None, :], groups=n * c)
    y = F.conv2d(y, kk[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 images with a Gaussian blur of ``sigma`` pixels (reflect padding)."""
    x = torch.as_tensor(_checked(images)).permute(0, 3, 1, 2).float()
    y = blur_each(x, torch.full((len(x),), float(sigma)))
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def augment(x: torch.Tensor, gen: torch.Generator, p: dict | None = None) -> torch.Tensor:
    """Training augmentation of images in [0, 1] (N, 3, 64, 64), drawing from ``gen`` (CPU): random blur, sampling
    down to 32 or 16 px and back, brightness, channel gain, contrast and pixel noise (:data:`AUGMENT`)."""
    p = AUGMENT | (p or {})
    n, dev = len(x), x.device
    u = lambda *s: torch.rand(s, generator=gen).to(dev)  # noqa: E731
    sigma = u(n) * p["blur_max"] * (u(n) < p["blur_p"])
    x = blur_each(x, sigma)
    r = u(n)
    for size, sel in (
        (32, r < p["down32_p"]),
        (16, (r >= p["down32_p"]) & (r < p["down32_p"] + p["down16_p"])),
    ):
        if sel.any():
            small = F.interpolate(
                x[sel], size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
            x[sel] = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    g = p["gain"]
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + g * (2 * u(n, 1, 1, 1) - 1)) + mean  # contrast
    x = (
        x * (1 + g * (2 * u(n, 1, 1, 1) - 1)) * (1 + g / 2 * (2 * u(n, 3, 1, 1) - 1))
    )  # brightness, channel gain
    x = x + torch.randn(x.shape, generator=gen).to(dev) * (p["noise"] * u(n, 1, 1, 1))
    return x.clamp(0, 1)


class ShapeNet(nn.Module):
    """3 x 3 convolutions, BatchNorm and ReLU at 64, 32, 16 (two), 8 and 4 px (widths w, 2w, 2w, 2w, 4w, 4w), then
    the global mean and max of the last map -> one logit per :data:`SHAPES` entry. Input: [0, 1] (N, 3, 64, 64)."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.width = width
        w = width
        block = lambda a, b: [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]  # noqa: E731
        self.body = nn.Sequential(
            *block(3, w), nn.MaxPool2d(2),  # 32
            *block(w, 2 * w), nn.MaxPool2d(2),  # 16
            *block(2 * w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),  # 8
            *block(2 * w, 4 * w), nn.MaxPool2d(2),  # 4
            *block(4 * w, 4 * w),
        )  # fmt: skip
        self.head = nn.Linear(8 * w, len(SHAPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body((x * 2 - 1).contiguous(memory_format=torch.channels_last))  # NHWC: faster on CPU
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))


def _codes(shapes, n: int) -> np.ndarray:
    """Shape labels (names as in :func:`lib.data.scenes.attribute_table`, or integer codes of :data:`SHAPES`; a
    DataFrame with a ``shape`` column) -> int codes, checked against ``n`` images."""
    if hasattr(shapes, "columns"):
        if "shape" not in shapes.columns:
            raise ShapeJudgeError("table: no 'shape' column (expected lib.data.scenes.attribute_table)")
        shapes = shapes["shape"]
    s = np.asarray(shapes)
    if s.ndim != 1 or len(s) != n:
        raise ShapeJudgeError(f"shapes {s.shape}: expected one label per image ({n})")
    if np.issubdtype(s.dtype, np.integer):
        if len(s) and (s.min() < 0 or s.max() >= len(SHAPES)):
            raise ShapeJudgeError(f"shape codes {s.min()}..{s.max()}: expected 0..{len(SHAPES) - 1}")
        return s.astype(np.int64)
    bad = sorted({str(v) for v in s} - set(SHAPES))
    if bad:
        raise ShapeJudgeError(f"shapes {bad[:3]}: expected names of {SHAPES}")
    return np.array([SHAPES.index(str(v)) for v in s], np.int64)


class ShapeJudge:
    """A trained shape judge: :meth:`predict` class indices of :data:`SHAPES`, :meth:`accuracy`, :meth:`per_image`,
    :meth:`score` (like :meth:`lib.analysis.readback.Readback.score`, one attribute: ``shape``)."""

    def __init__(self, net: ShapeNet, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()

    @torch.no_grad()
    def logits(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """float (N, 7) logits of uint8 (N, H, W, 3) images of any side."""
        x = _checked(images)
        out = [
            self.net(as_input(x[i : i + batch], self.device)).float().cpu() for i in range(0, len(x), batch)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, len(SHAPES)), np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """int64 (N,): the index in :data:`SHAPES` of each image's main-object shape."""
        return self.logits(images).argmax(1).astype(np.int64)

    def predict_names(self, images: np.ndarray) -> np.ndarray:
        """The shape names (as in the attribute table) of :meth:`predict`."""
        return np.asarray(SHAPES, dtype=object)[self.predict(images)]

    def per_image(self, images: np.ndarray, shapes) -> np.ndarray:
        """bool (N,): which images' main-object shape is read as ``shapes`` (names or codes, or an attribute
        table), for paired comparisons."""
        want = _codes(shapes, len(images))
        return self.predict(images) == want

    def accuracy(self, images: np.ndarray, shapes) -> float:
        """Fraction of images whose shape is read as ``shapes``."""
        return float(self.per_image(images, shapes).mean())

    def score(self, image_sets: dict[str, np.ndarray], shapes) -> tuple[dict[str, dict], dict[str, dict]]:
        """Read every image set (name -> images, one per label of ``shapes``): ({name: {:data:`LABEL`: accuracy}},
        {name: {:data:`LABEL`: 0/1 float per image}}), keyed so that they merge into :meth:`Readback.score`'s."""
        hits = {name: {LABEL: self.per_image(x, shapes).astype(np.float64)} for name, x in image_sets.items()}
        return {name: {LABEL: float(h[LABEL].mean())} for name, h in hits.items()}, hits


def save(path: str | Path, net: ShapeNet, meta: dict | None = None) -> Path:
    """The judge's network as safetensors (float16 weights; width, classes and ``meta`` in the header), atomically."""
    header = {"format": FORMAT, "width": str(net.width), "classes": json.dumps(list(SHAPES)),
              "size": str(SIZE), "meta": json.dumps(meta or {})}  # fmt: skip
    return fileio.write_bytes(path, fileio.safetensors_bytes(net.state_dict(), header, half=True))


def load(path: str | Path, device: str = "auto") -> ShapeJudge:
    """A :class:`ShapeJudge` from a file of :func:`save` (float32 weights, eval mode)."""
    state, meta = fileio.read_safetensors(path, ShapeJudgeError)
    if meta.get("format") != FORMAT:
        raise ShapeJudgeError(f"{path}: not a {FORMAT} file")
    if json.loads(meta["classes"]) != list(SHAPES):
        raise ShapeJudgeError(f"{path}: classes {meta['classes']} differ from lib.data.scenes.SHAPES")
    net = ShapeNet(int(meta["width"]))
    net.load_state_dict(fileio.cast_floats(state, torch.float32))
    return ShapeJudge(net, runtime.pick_device(device))
