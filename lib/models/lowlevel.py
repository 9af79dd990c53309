"""The spatial ("low-level") pathway: a decoder from fMRI, by default the early visual voxels, to a low-resolution
image of the stimulus (the "blurry" reconstruction of MindEye and Brain-Diffuser), with ridge or the MLP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib.models.mlp import MLPConfig, MLPEncoder, train_mlp
from lib.models.ridge import RidgeEncoder

LOWLEVEL_FORMAT = "lib.models.lowlevel/1"
MODELS = ("ridge", "mlp")


class LowLevelError(ValueError):
    """Bad input to the low-level decoder."""


def _uint8_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[3] != 3 or x.dtype != np.uint8:
        raise LowLevelError(f"{name} {x.shape} {x.dtype}: expected uint8 square RGB images (N, S, S, 3)")
    return x


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``images`` (N, S, S, 3) as area means in [0, 1] on a ``size`` x ``size`` raster (block means when S
    is a multiple of ``size``), float32 (N, size, size, 3): the decoder's target."""
    images = _uint8_images(images)
    if not isinstance(size, int | np.integer) or not 1 <= size <= images.shape[1]:
        raise LowLevelError(f"size={size!r}: expected an integer in 1..{images.shape[1]} (the image side)")
    return _area_means(images, size)


def _area_means(images: np.ndarray, size: int) -> np.ndarray:
    """Images (N, S, S, 3) on the 0-255 scale (any dtype) as area means in [0, 1], (N, size, size, 3) float32."""
    out = []
    for lo in range(0, len(images), 256):
        x = torch.as_tensor(images[lo : lo + 256]).permute(0, 3, 1, 2).double() / 255
        out.append(F.adaptive_avg_pool2d(x, int(size)).permute(0, 2, 3, 1).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.float32)


def upsample(low: np.ndarray, size: int) -> np.ndarray:
    """Low-resolution images (N, s, s, 3) in [0, 1] (values outside are clipped) as uint8 (N, size, size, 3),
    bicubic: the blurry reconstruction at the stimulus' size."""
    low = np.asarray(low, np.float32)
    if low.ndim != 4 or low.shape[1] != low.shape[2] or low.shape[3] != 3:
        raise LowLevelError(f"low {low.shape}: expected (N, s, s, 3)")
    x = torch.as_tensor(low).permute(0, 3, 1, 2)
    up = (
        F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        if size != low.shape[1]
        else x
    )
    return (up.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@dataclasses.dataclass
class LowLevelDecoder:
    """``encoder`` maps the voxels ``columns`` (indices into the prepared ROI's voxels) to a ``size`` x ``size``
    RGB image in [0, 1], flattened in (row, column, channel) order; ``group``: the ROI group those voxels are."""

    encoder: RidgeEncoder | MLPEncoder
    columns: np.ndarray
    size: int
    group: str
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def model(self) -> str:
        return "ridge" if isinstance(self.encoder, RidgeEncoder) else "mlp"

    def inputs(self, x: np.ndarray) -> np.ndarray:
        """The decoder's voxels of ``x`` (N, V): all voxels of the prepared ROI."""
        x = np.asarray(x)
        if x.ndim != 2 or (len(self.columns) and x.shape[1] <= int(self.columns.max())):
            raise LowLevelError(
                f"x {x.shape}: expected (N, V) with the prepared ROI's voxels (the decoder reads columns up to "
                f"{int(self.columns.max()) if len(self.columns) else 0})"
            )
        return x[:, self.columns]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The low-resolution image (N, size, size, 3), unclipped."""
        return self.encoder.predict(self.inputs(x)).reshape(len(x), self.size, self.size, 3)

    def blurry(self, x: np.ndarray, size: int) -> np.ndarray:
        """The blurry reconstruction: :meth:`predict` upsampled to ``size`` (uint8 (N, size, size, 3))."""
        return upsample(self.predict(x), size)

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """The encoder's file at ``path`` (ridge: .npz, MLP: .pt) with the columns, size and group in its meta."""
        own = {"format": LOWLEVEL_FORMAT, "columns": self.columns.tolist(), "size": int(self.size),
               "group": self.group, "model": self.model}  # fmt: skip
        return self.encoder.save(path, meta={**(meta or {}), "lowlevel": own})

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> LowLevelDecoder:
        path = Path(path)
        enc = RidgeEncoder.load(path) if path.suffix == ".npz" else MLPEncoder.load(path, device=device)
        meta = dict(getattr(enc, "meta", {}) or {})
        own = meta.pop("lowlevel", None)
        if not isinstance(own, dict) or own.get("format") != LOWLEVEL_FORMAT:
            raise LowLevelError(
                f"{path}: not a {LOWLEVEL_FORMAT} decoder (no low-level settings in its meta)"
            )
        return cls(enc, np.asarray(own["columns"], np.int64), int(own["size"]), str(own["group"]), meta)


def fit(x_train: np.ndarray, images: np.ndarray, columns: np.ndarray, size: int = 16, group: str = "early",
        model: str = "ridge", alphas=None, groups: np.ndarray | None = None, mlp: MLPConfig | None = None,
        val: np.ndarray | None = None, device: str = "auto") -> LowLevelDecoder:  # fmt: skip
    """Fit the decoder from the voxels ``columns`` of ``x_train`` (N, V) to :func:`downsample` (``images``,
    ``size``), one uint8 stimulus per row. ``model="ridge"``: :class:`RidgeEncoder` with one alpha from
    ``alphas`` by exact leave-one-out (leave-one-image-out with ``groups``, the image id of each row); ``"mlp"``:
    the residual MLP on the squared error only (``mlp`` config; its contrastive weights are set to 0), with the
    rows of the boolean ``val`` held out for early stopping (top-1 retrieval among their low-resolution images, as
    :func:`lib.models.mlp.train_mlp` does for embeddings)."""
    if model not in MODELS:
        raise LowLevelError(f"model={model!r}: expected one of {', '.join(MODELS)}")
    columns = np.asarray(columns, np.int64).ravel()
    x_train = np.asarray(x_train, np.float32)
    if x_train.ndim != 2 or len(images) != len(x_train):
        raise LowLevelError(f"x_train {x_train.shape} and {len(images)} images: expected one image per row")
    if len(columns) == 0 or columns.min() < 0 or columns.max() >= x_train.shape[1]:
        raise LowLevelError(f"columns: expected voxel indices in [0, {x_train.shape[1]}), got {len(columns)}")
    y = downsample(images, size).reshape(len(images), -1)
    xs = x_train[:, columns]
    if model == "ridge":
        kw = {} if alphas is None else {"alphas": list(alphas)}
        enc = RidgeEncoder(device=device, **kw).fit(xs, y, groups=groups)
    else:
        cfg = dataclasses.replace(mlp or MLPConfig(), mse=1.0, cosine=0.0, clip=0.0, softclip=0.0, bimixco=0.0,
                                  projector=False)  # fmt: skip
        val = np.zeros(len(xs), bool) if val is None else np.asarray(val, bool)
        enc, _ = train_mlp(xs[~val], y[~val], cfg, xs[val] if val.any() else None,
                           y[val] if val.any() else None, device=device)  # fmt: skip
    return LowLevelDecoder(enc, columns, int(size), group)


def describe(dec: LowLevelDecoder) -> str:
    """One line: what the decoder reads and predicts."""
    extra = f", alpha {dec.encoder.alpha_:g}" if dec.model == "ridge" else ""
    return f"{dec.model}: {len(dec.columns)} voxels of {dec.group} -> {dec.size} x {dec.size} RGB{extra}"


def impose(images: np.ndarray, low: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """``images`` (uint8 (N, S, S, 3)) with their s x s area means replaced by ``low`` (N, s, s, 3) in [0, 1]:
    image + ``strength`` x upsample(low - downsample(image)), both resamplings bicubic/area as in :func:`upsample`
    and :func:`downsample`: the detail of one pathway on the layout and colours of the other (``strength`` < 1
    moves the area means that fraction of the way). Float images on the 0-255 scale (e.g. a generator's unrounded
    output) give float32 unrounded."""
    if not 0 <= strength <= 1:
        raise LowLevelError(f"strength={strength}: expected a fraction in [0, 1]")
    exact = np.asarray(images).dtype != np.uint8
    if exact:
        x = np.asarray(images, np.float32)
        if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[3] != 3:
            raise LowLevelError(f"images {x.shape}: expected square RGB images (N, S, S, 3)")
        images = np.clip(x, 0, 255)
    else:
        images = _uint8_images(images)
    low = np.asarray(low, np.float32)
    if low.ndim != 4 or len(low) != len(images) or low.shape[1] != low.shape[2] or low.shape[3] != 3:
        raise LowLevelError(f"low {low.shape}: expected ({len(images)}, s, s, 3), one per image")
    s, size = low.shape[1], images.shape[1]
    delta = torch.as_tensor(low - _area_means(images, s)).permute(0, 3, 1, 2)
    if s != size:
        delta = F.interpolate(delta, size=(size, size), mode="bicubic", align_corners=False)
    out = (torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255 + strength * delta).clamp(0, 1) * 255
    if exact:
        return out.permute(0, 2, 3, 1).numpy()
    return out.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
