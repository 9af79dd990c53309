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

TRAIN_STATE_FORMAT = "lib.dino.state/2"
#: the backbone's output strides; 16 gives 4 x 4 patch tokens at 64 px
STRIDES = (16, 32)
#: cells per side of the layout-keeping image vector (:meth:`ResNetBackbone.grid`)
GRID = 2


class ResNetBackbone(nn.Module):
    """The trunk of open_clip's ModifiedResNet (3-conv stem, anti-aliased bottleneck stages) with global average
    pooling instead of the attention pool, so that it takes crops of any size, as DINO's ResNet backbone does.

    ``stride`` 16 drops the last stage's 2x downsampling, so that a 64 px image gives a 4 x 4 map of patch
    tokens (:meth:`tokens`, one per 16 px patch) for the masked-patch term; 32 is the plain trunk. The image
    vector (:meth:`forward`, DINO's CLS for a ResNet) is the mean of the tokens; :meth:`grid` keeps their layout."""

    def __init__(self, layers=(1, 1, 1, 1), width: int = 16, stride: int = 32) -> None:
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet  # lazy: open_clip: seconds to import

        if stride not in STRIDES:
            raise ValueError(f"stride={stride}: expected one of {STRIDES}")
        trunk = ModifiedResNet(layers=list(layers), output_dim=8, heads=1, image_size=32, width=width)
        del trunk.attnpool
        if stride == 16:  # the last stage keeps its input's resolution (its pools are the only downsampling)
            first = trunk.layer4[0]
            first.avgpool = nn.Identity()
            first.downsample[0] = nn.Identity()
        self.trunk = trunk
        self.width, self.layers, self.stride = width, tuple(layers), stride
        self.dim = width * 32

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (B, dim, H / stride, W / stride): one token per patch."""
        t = self.trunk
        x = t.stem(x.to(t.conv1.weight.dtype))
        return t.layer4(t.layer3(t.layer2(t.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x).mean((2, 3))

    def grid(self, x: torch.Tensor, cells: int = GRID) -> torch.Tensor:
        """The patch tokens averaged over a ``cells`` x ``cells`` grid and concatenated (B, cells^2 * dim): the
        image vector that keeps where things are."""
        return F.adaptive_avg_pool2d(self.tokens(x), cells).flatten(1)


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
              flip: bool = True, centres: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``n`` random resized crops of every image in ``x`` (B, C, H, W), batched with ``roi_align`` (bilinear):
    area fraction uniform in ``scale``, aspect ratio log-uniform in [3/4, 4/3], random horizontal flips.
    ``centres`` (n * B, 2) of (x, y) pixel positions, NaN where free: a crop is placed as near to its centre
    as the image allows (:func:`object_centres`); the others anywhere. Returns (n * B, C, size, size),
    view-major (all images' first crop, then the second...)."""
    from torchvision.ops import roi_align  # lazy: torchvision: seconds to import

    b, _, h, w = x.shape
    m = n * b
    area = torch.empty(m).uniform_(scale[0], scale[1], generator=generator) * h * w
    ratio = torch.empty(m).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator).exp()
    cw = (area * ratio).sqrt().clamp(max=w)
    ch = (area / ratio).sqrt().clamp(max=h)
    x0 = torch.rand(m, generator=generator) * (w - cw)
    y0 = torch.rand(m, generator=generator) * (h - ch)
    if centres is not None:
        c = centres.float().cpu()
        placed = ~c.isnan().any(1)
        x0 = torch.where(placed, (c[:, 0] - cw / 2).clamp(min=0).minimum(w - cw), x0)
        y0 = torch.where(placed, (c[:, 1] - ch / 2).clamp(min=0).minimum(h - ch), y0)
    boxes = torch.stack([(torch.arange(m) % b).float(), x0, y0, x0 + cw, y0 + ch], 1).to(x.device, x.dtype)
    out = roi_align(x, boxes, size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    if flip:
        f = (torch.rand(m, generator=generator) < 0.5).to(x.device)
        out = torch.where(f[:, None, None, None], out.flip(-1), out)
    return out.contiguous(memory_format=torch.channels_last)


def colour_jitter(crops: torch.Tensor, p: float, hue: float, strength: float, grey: float,
                  generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """DINO's colour augmentation on normalised crops (N, C, H, W), each crop with probability ``p``: a rotation
    of its colours about the grey axis (1, 1, 1) by up to ``hue`` of a turn, a saturation (distance from that axis)
    and contrast (distance from the crop's mean) scaled by 1 +- ``strength``, and a brightness shift of up to
    +-``strength``; then a share ``grey`` of the crops made grey (their projection on the axis). In the
    normalised space the axis is close to, not exactly, the images' grey; as an augmentation that does not
    matter. Views of one scene then differ in colour, so that matching them needs more than a colour histogram."""
    n = len(crops)
    u = torch.ones(3) / math.sqrt(3)
    on = (torch.rand(n, generator=generator) < p).float()
    theta = (torch.rand(n, generator=generator) * 2 - 1) * hue * 2 * math.pi * on
    k = torch.tensor([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    eye, outer = torch.eye(3), torch.outer(u, u)
    rot = eye + torch.sin(theta)[:, None, None] * k + (1 - torch.cos(theta))[:, None, None] * (k @ k)
    sat = 1 + (torch.rand(n, generator=generator) * 2 - 1) * strength * on
    con = 1 + (torch.rand(n, generator=generator) * 2 - 1) * strength * on
    bri = (torch.rand(n, generator=generator) * 2 - 1) * strength * on
    mix = rot @ (outer + sat[:, None, None] * (eye - outer))  # rotate, after scaling the colour off the axis
    greyed = torch.rand(n, generator=generator) < grey
    mix = torch.where(greyed[:, None, None], outer.expand(n, 3, 3), mix)
    dev, dt = crops.device, crops.dtype
    out = torch.einsum("nij,njhw->nihw", mix.to(dev, dt), crops)
    mean = out.mean((1, 2, 3), keepdim=True)
    out = (out - mean) * con.to(dev, dt).view(n, 1, 1, 1) + mean + bri.to(dev, dt).view(n, 1, 1, 1)
    return out.contiguous(memory_format=torch.channels_last)


def colour_rarity(x: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """(B, H, W): the share of its own image's pixels that fall in each pixel's colour bin (``bins`` per channel,
    over the batch's range of each channel). Backgrounds (plain, gradients, stripes, a horizon) fill most of a
    scene with few colours; the pixels of rare colours are where the objects are, found from the image alone."""
    b, c, h, w = x.shape
    v = x.detach().float().cpu()
    lo = v.amin((0, 2, 3), keepdim=True)
    hi = v.amax((0, 2, 3), keepdim=True)
    q = ((v - lo) / (hi - lo).clamp_min(1e-6) * bins).long().clamp(0, bins - 1)
    code = sum(q[:, i] * bins**i for i in range(c)).view(b, -1)  # (B, H * W)
    offset = torch.arange(b)[:, None] * bins**c
    counts = torch.bincount((code + offset).view(-1), minlength=b * bins**c).view(b, -1)
    return (counts.gather(1, code).float() / (h * w)).view(b, h, w)


def object_centres(x: torch.Tensor, n: int, share: float, generator: torch.Generator,
                   power: float = 2.0) -> torch.Tensor:  # fmt: skip
    """Centres for ``n`` local crops of every image in ``x`` (view-major, (n * B, 2) of (x, y), NaN where free):
    a fraction ``share`` of them drawn at pixels with probability proportional to :func:`colour_rarity` to the
    power -``power``, so that they mostly land on objects (found without labels); the rest left free."""
    b, _, h, w = x.shape
    out = torch.full((n * b, 2), float("nan"))
    placed = torch.rand(n * b, generator=generator) < share
    if not placed.any():
        return out
    weight = colour_rarity(x).view(b, -1).clamp_min(1.0 / (h * w)).pow(-power)
    pick = torch.multinomial(weight, n, replacement=True, generator=generator).T.reshape(-1)  # view-major
    xy = torch.stack([pick % w, pick // w], 1).float() + 0.5
    out[placed] = xy[placed]
    return out


def object_masks(x: torch.Tensor, bins: int = 4, threshold: float = 0.2) -> torch.Tensor:
    """Boolean (B, H, W): the pixels of each image whose colour is rare in it (:func:`colour_rarity` below
    ``threshold``), opened with a 3 x 3 square (eroded then dilated) so that the thin edges of stripes and
    gradient bands drop out. Found from the image alone, never from labels: on the corpus's held-out scenes about
    half of the marked pixels are object pixels and nine tenths of the object pixels are marked (a test checks it
    against the generator's object coverage)."""
    m = (colour_rarity(x, bins) < threshold).float()[:, None]
    m = -F.max_pool2d(-m, 3, 1, 1)  # erosion
    return F.max_pool2d(m, 3, 1, 1)[:, 0] > 0.5  # dilation


def swap_backgrounds(
    x: torch.Tensor, masks: torch.Tensor, p: float, generator: torch.Generator
) -> torch.Tensor:
    """``x`` (B, C, H, W) with the background of a share ``p`` of the images replaced by another image's of the
    batch (a random donor, never itself): an image's object pixels (``masks``, :func:`object_masks`) are kept in
    place over the donor's background, whose own object pixels are filled with the donor's median background
    colour. Two views of a scene with different donors then share their objects, not their background, so that
    DINO's teacher can no longer be matched from the background alone (copy-paste augmentation, from the image
    alone)."""
    b = len(x)
    if b < 2 or not p:
        return x
    donor = (torch.arange(b) + torch.randint(1, b, (b,), generator=generator)) % b
    on = (torch.rand(b, generator=generator) < p).to(x.device)
    m = masks.to(x.device)[:, None]
    flat = x.flatten(2)  # (B, C, H * W), the median over each image's background pixels
    fill = torch.stack([f[:, ~k.flatten()].median(1).values if (~k).any() else f.median(1).values
                        for f, k in zip(flat, masks.to(x.device), strict=True)])  # fmt: skip
    back = torch.where(m, fill[:, :, None, None], x)[donor.to(x.device)]
    pasted = torch.where(m, x, back)
    return torch.where(on[:, None, None, None], pasted, x).contiguous(memory_format=torch.channels_last)


def patch_masks(b: int, grid: int, ratio: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Boolean (B, grid, grid) masks of patches to hide, each image's share uniform in ``ratio`` (at least one
    patch, never all): iBOT's random masking on the grid of patch tokens."""
    p = grid * grid
    k = (torch.empty(b).uniform_(ratio[0], ratio[1], generator=generator) * p).round().long().clamp(1, p - 1)
    order = torch.rand(b, p, generator=generator).argsort(1)
    return (order < k[:, None]).view(b, grid, grid)


def apply_masks(crops: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``crops`` (B, C, H, W) with the pixels of each masked patch set to 0 (the training images' mean, as the
    images are normalised); ``masks`` (B, g, g) on a grid dividing H and W."""
    g = masks.shape[-1]
    up = (
        masks[:, None]
        .float()
        .repeat_interleave(crops.shape[-2] // g, 2)
        .repeat_interleave(crops.shape[-1] // g, 3)
    )
    return (crops * (1 - up.to(crops.device, crops.dtype))).contiguous(memory_format=torch.channels_last)


def draw_batch(rng: np.random.Generator, n_rows: int, batch_size: int, partners: np.ndarray | None = None,
               pair_share: float = 0.0) -> np.ndarray:  # fmt: skip
    """The rows of one training batch: ``batch_size`` distinct rows of ``n_rows``, of which a share ``pair_share``
    are rows drawn with their partner (``partners``: the row of each row's one-attribute partner, -1 for none)."""
    if partners is None or not pair_share:
        return rng.choice(n_rows, batch_size, replace=False)
    paired = np.flatnonzero(partners >= 0)
    anchors = rng.choice(paired, min(len(paired), int(round(pair_share * batch_size / 2))), replace=False)
    rows = np.unique(np.concatenate([anchors, partners[anchors]]))[:batch_size]
    rest = rng.choice(np.setdiff1d(np.arange(n_rows), rows), batch_size - len(rows), replace=False)
    return np.concatenate([rows, rest])


def koleo(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The Kozachenko-Leonenko entropy estimator's loss (DINOv2): minus the mean log distance of each
    L2-normalised row to its nearest other row, which spreads the features over the sphere."""
    z = F.normalize(features.float(), dim=-1)
    d = torch.cdist(z, z)
    d = d + torch.eye(len(z), device=z.device, dtype=z.dtype) * 4  # unit vectors are at most 2 apart
    return -torch.log(d.min(1).values + eps).mean()


class DinoNet(nn.Module):
    """Backbone and head: ``forward(x)`` gives the head's output of the image vector (B, K); with
    ``patches=True`` the head's outputs of every patch token too, (B, (1 + P) * K) with the image's first.
    :attr:`last_features` keeps the image vectors of the last call (for KoLeo)."""

    def __init__(self, backbone: ResNetBackbone, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.last_features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, patches: bool = False) -> torch.Tensor:
        t = self.backbone.tokens(x)
        cls = t.mean((2, 3))
        self.last_features = cls
        if not patches:
            return self.head(cls)
        tok = t.flatten(2).transpose(1, 2)  # (B, P, dim)
        out = self.head(torch.cat([cls[:, None], tok], 1).reshape(-1, t.shape[1]))
        return out.view(len(x), -1)


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
    centering: str = (
        "mean"  # the teacher's: DINO's running mean, or DINOv2's Sinkhorn-Knopp (losses.CENTERINGS)
    )
    width: int = 16  # ResNet width (as the CLIP image tower)
    stride: int = 32  # the backbone's output stride: 16 keeps a 4 x 4 grid of patch tokens at 64 px
    # a share of the local crops centred on rare-colour pixels (objects, found without labels): object_centres
    object_crops: float = 0.0
    # the share of views (global and local) whose background is swapped for another image's of the batch, the
    # objects kept in place (swap_backgrounds, object_masks: found without labels)
    background_swap: float = 0.0
    # iBOT's masked-patch term: the student sees its global views with patches hidden and predicts, at each
    # hidden patch, the teacher's output for that patch of the whole view (its own centre, same temperatures)
    patch_weight: float = 0.0
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    koleo_weight: float = 0.0  # DINOv2's KoLeo on the student's image vectors of each global view
    # colour_jitter: the share of crops whose colours are jittered (hue up to ``hue`` of a turn, saturation,
    # contrast and brightness by up to ``jitter_strength``); grey: the share made grey
    # the share of each batch made of one-attribute pairs (the corpus's hard negatives, ``partners`` of
    # train_dino): KoLeo's nearest neighbour is then often a scene that differs in one thing
    pair_share: float = 0.0
    colour_jitter: float = 0.0
    hue: float = 0.1
    jitter_strength: float = 0.4
    grey: float = 0.0
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
        if self.centering not in losses.CENTERINGS:
            raise ValueError(f"centering={self.centering!r}: expected one of {losses.CENTERINGS}")
        if self.stride not in STRIDES:
            raise ValueError(f"stride={self.stride}: expected one of {STRIDES}")
        for name in (
            "object_crops",
            "background_swap",
            "colour_jitter",
            "grey",
            "hue",
            "jitter_strength",
            "pair_share",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a share in [0, 1]")
        for name in ("patch_weight", "koleo_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 0")
        lo, hi = self.mask_ratio
        if not 0 < lo <= hi < 1:
            raise ValueError(f"mask_ratio={self.mask_ratio}: expected 0 < low <= high < 1")
        if self.patch_weight and self.global_size % self.stride:
            raise ValueError(f"global_size={self.global_size}: the masked-patch term needs a multiple of "
                             f"stride={self.stride}")  # fmt: skip

    @property
    def patch_grid(self) -> int:
        """Patch tokens per side of a global view."""
        return self.global_size // self.stride


def build(cfg: DinoConfig) -> tuple[DinoNet, DinoNet]:
    """(student, teacher) :class:`DinoNet` pairs, initialised from ``cfg.seed`` (so a second call gives the
    random-init baseline of a trained pair); the teacher starts as a copy and is never trained directly."""
    torch.manual_seed(cfg.seed)
    backbone = ResNetBackbone(width=cfg.width, stride=cfg.stride)
    student = DinoNet(backbone, DINOHead(backbone.dim, cfg.out_dim)).to(memory_format=torch.channels_last)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher


def _views(
    net: DinoNet, crops: torch.Tensor, n: int, batch: int, spread: bool, patches: bool = False
) -> torch.Tensor:
    """``net`` on the crops (n * batch, ...) of a global batch, view-major; under several processes each runs its
    images' crops (:func:`lib.distributed.local_part`) and the outputs are gathered back into the whole batch's
    (n * batch, K), view-major, as one process computes them (``patches``: (n * batch, (1 + P) * K))."""
    if not spread:
        return net(crops, patches)
    part = distributed.local_part(batch)
    mine = crops.view(n, batch, *crops.shape[1:])[:, part].reshape(-1, *crops.shape[1:])
    out = net(mine.contiguous(memory_format=torch.channels_last), patches)
    k = out.shape[-1]
    rows = distributed.gather(out.view(n, -1, k).transpose(0, 1).reshape(-1, n * k))  # (batch, n * K)
    return rows.view(batch, n, k).transpose(0, 1).reshape(n * batch, k)


def _crops(batch: torch.Tensor, cfg: DinoConfig, n: int, size: int, scale: tuple[float, float],
           gen: torch.Generator, centres: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """:func:`multicrop`'s ``n`` views of the batch; with ``cfg.background_swap`` each view is cut from its own
    copy of the batch with backgrounds swapped (:func:`swap_backgrounds`), view-major as multicrop's."""
    if not cfg.background_swap:
        return multicrop(batch, n, size, scale, gen, cfg.flip, centres)
    masks = object_masks(batch)
    b = len(batch)
    return torch.cat([multicrop(swap_backgrounds(batch, masks, cfg.background_swap, gen), 1, size, scale, gen,
                                cfg.flip, None if centres is None else centres[v * b : (v + 1) * b])
                      for v in range(n)])  # fmt: skip


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter. Buffers (BatchNorm
    running statistics) are not copied: the teacher keeps its own, from the global crops it sees, as in DINO."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def train_dino(
    x: torch.Tensor, cfg: DinoConfig, state_dir: str | Path | None = None, device: str = "auto",
    stop_after: int | None = None, nproc: int | None = None, accumulate: int = 1, partners: np.ndarray | None = None,
    _launch: bool = True,
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
    if cfg.pair_share and (partners is None or len(partners) != len(x)):
        raise ValueError(f"pair_share={cfg.pair_share}: needs partners, the partner row of each of the {len(x)} "
                         "images (-1 for none)")  # fmt: skip
    accumulate = int(accumulate)
    fileio.check_finite("x", x.detach().cpu().numpy() if torch.is_tensor(x) else x)
    w, ranks = distributed.spread(nproc)
    dev = torch.device(distributed.device(runtime.pick_device(device)))
    if len(x) < cfg.batch_size * ranks:
        raise ValueError(
            f"batch_size={cfg.batch_size} x {ranks} processes: larger than the {len(x)} training images"
        )
    if ranks > 1 and not w.active and _launch:  # launch the processes, then resume from their state
        given = {"x": x, "cfg": cfg, "device": device, "stop_after": stop_after, "accumulate": accumulate,
                 "partners": partners}  # fmt: skip
        return distributed.launched(train_dino, ranks, given, state_dir, "dino")
    batch_size = cfg.batch_size * ranks  # the global batch
    student, teacher = build(cfg)
    student, teacher = student.to(dev), teacher.to(dev)
    if w.active and dev.type == "cuda":
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    crit = losses.DINOLoss(
        cfg.out_dim, cfg.n_global, cfg.student_temp, cfg.teacher_temp, cfg.warmup_teacher_temp,
        int(round(cfg.teacher_temp_warmup_frac * cfg.steps)), cfg.center_momentum, cfg.centering,
    ).to(dev)  # fmt: skip
    patch_crit = losses.MaskedPatchLoss(cfg.out_dim, cfg.student_temp, cfg.center_momentum, cfg.centering).to(
        dev
    )
    opt = runtime.adamw_for(student, cfg.lr, cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    key = fileio.content_key({"config": dataclasses.asdict(cfg), "data": fileio.array_key(x.detach().cpu().numpy()),
                          "device": dev.type} | ({"ranks": ranks} if ranks > 1 else {})
                         | ({"accumulate": accumulate} if accumulate > 1 else {})
                         | ({"partners": fileio.array_key(partners)} if cfg.pair_share else {}))  # fmt: skip
    terms = ("patch_loss", "koleo")
    history: dict = {
        k: [] for k in ("loss", "teacher_entropy", "batch_entropy", "momentum", "teacher_temp", *terms)
    }
    history["seconds"] = 0.0
    history["state_key"] = key
    objects = {
        "student": student,
        "teacher": teacher,
        "loss": crit,
        "patch_loss": patch_crit,
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
        sums = dict.fromkeys(("loss", "teacher_entropy", "batch_entropy", *terms), 0.0)
        for _ in range(accumulate):  # micro-batches, gradients summed (the centre follows each one)
            rows = draw_batch(rng, len(x), batch_size, partners, cfg.pair_share)
            batch = x[torch.as_tensor(rows)].to(dev)
            glob = _crops(batch, cfg, cfg.n_global, cfg.global_size, cfg.global_scale, gen)
            if cfg.colour_jitter or cfg.grey:
                glob = colour_jitter(glob, cfg.colour_jitter, cfg.hue, cfg.jitter_strength, cfg.grey, gen)
            masks = patch_masks(len(glob), cfg.patch_grid, cfg.mask_ratio, gen) if cfg.patch_weight else None
            seen = glob if masks is None else apply_masks(glob, masks)
            with runtime.autocast(dev):
                with torch.no_grad():
                    t_all = _views(teacher, glob, cfg.n_global, batch_size, w.active, masks is not None)
                s_all = _views(student, seen, cfg.n_global, batch_size, w.active, masks is not None)
                vectors = student.last_features  # this process's image vectors of the global views
                if cfg.n_local:
                    centres = (
                        object_centres(batch, cfg.n_local, cfg.object_crops, gen)
                        if cfg.object_crops
                        else None
                    )
                    loc = _crops(batch, cfg, cfg.n_local, cfg.local_size, cfg.local_scale, gen, centres)
                    if cfg.colour_jitter or cfg.grey:
                        loc = colour_jitter(
                            loc, cfg.colour_jitter, cfg.hue, cfg.jitter_strength, cfg.grey, gen
                        )
                    s_loc = _views(student, loc, cfg.n_local, batch_size, w.active)
            t_out, s_out = t_all[:, : cfg.out_dim], [s_all[:, : cfg.out_dim]]
            if cfg.n_local:
                s_out.append(s_loc)
            with torch.no_grad():
                probs = crit.teacher_probs(t_out, step)
                sums["teacher_entropy"] += float(losses.entropy(probs).mean()) / accumulate
                sums["batch_entropy"] += float(losses.entropy(probs.mean(0))) / accumulate
            loss = crit(torch.cat(s_out), t_out, step)
            if masks is not None:
                patches = lambda o: o[:, cfg.out_dim :].reshape(len(o), -1, cfg.out_dim)  # noqa: E731
                term = patch_crit(
                    patches(s_all), patches(t_all), masks.flatten(1), crit.teacher_temperature(step)
                )
                loss = loss + cfg.patch_weight * term
                sums["patch_loss"] += float(term.detach()) / accumulate
            if cfg.koleo_weight:
                term = sum(koleo(v) for v in vectors.chunk(cfg.n_global)) / cfg.n_global
                loss = loss + cfg.koleo_weight * term
                sums["koleo"] += float(term.detach()) / accumulate
            (loss / accumulate).backward()
            sums["loss"] += float(loss.detach()) / accumulate
        history["teacher_entropy"].append(sums["teacher_entropy"])
        history["batch_entropy"].append(sums["batch_entropy"])
        history["teacher_temp"].append(crit.teacher_temperature(step))
        for k in terms:
            history[k].append(sums[k])
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


def normalise(images: np.ndarray, ids_fit: np.ndarray | None = None, mean=None, std=None,
              size: int | None = None) -> torch.Tensor:  # fmt: skip
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) standardised per channel with the mean and standard deviation
    of the rows ``ids_fit`` (the training images; default all), or with the given ``mean`` and ``std`` (a
    pretrained backbone's, from :func:`channel_stats` of its training images); ``size``: resized (bilinear,
    antialiased when shrinking) to ``size`` x ``size`` first, the side a backbone was trained at."""
    images = np.asarray(images)
    if mean is None or std is None:
        mean, std = channel_stats(images if ids_fit is None else images[np.asarray(ids_fit)])
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    if size is not None and x.shape[-2:] != (size, size):
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    m = torch.as_tensor(np.asarray(mean), dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(np.asarray(std), dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


BACKBONE_FORMAT = "lib.dino.backbone/2"
#: the format of backbones trained with the first recipe (global average pool only, stride 32), refused
OLD_BACKBONE_FORMATS = ("lib.dino.backbone/1",)


def save_backbone(path: str | Path, backbone: ResNetBackbone, stats, meta: dict | None = None) -> Path:
    """A DINO backbone as safetensors (float16 weights; width, layers, stride and normalisation in the header)."""

    header = {"format": BACKBONE_FORMAT, "width": str(backbone.width), "layers": json.dumps(list(backbone.layers)),
              "stride": str(backbone.stride), "mean": json.dumps([float(v) for v in stats[0]]),
              "std": json.dumps([float(v) for v in stats[1]]), "meta": json.dumps(meta or {})}  # fmt: skip
    return fileio.write_bytes(path, fileio.safetensors_bytes(backbone.state_dict(), header, half=True))


def load_backbone(path: str | Path) -> tuple[ResNetBackbone, tuple[np.ndarray, np.ndarray]]:
    """(backbone in eval mode, (mean, std)) from a file of :func:`save_backbone`."""

    state, meta = fileio.read_safetensors(path)
    if meta.get("format") in OLD_BACKBONE_FORMATS:
        raise ValueError(f"{path}: a DINO backbone of the earlier recipe ({meta['format']}, expected "
                         f"{BACKBONE_FORMAT}); restore models/ with git checkout or rerun make pretrain")  # fmt: skip
    if meta.get("format") != BACKBONE_FORMAT:
        raise ValueError(f"{path}: not a {BACKBONE_FORMAT} file")
    net = ResNetBackbone(
        layers=tuple(json.loads(meta["layers"])), width=int(meta["width"]), stride=int(meta["stride"])
    )
    net.load_state_dict(fileio.cast_floats(state, torch.float32))
    stats = (np.array(json.loads(meta["mean"]), np.float32), np.array(json.loads(meta["std"]), np.float32))
    return net.to(memory_format=torch.channels_last).eval(), stats


#: the image vectors :func:`features` gives: the mean of the patch tokens (DINO's CLS for a ResNet), and the
#: tokens pooled on a 2 x 2 grid (:meth:`ResNetBackbone.grid`)
POOLING = ("cls", "grid")


@torch.no_grad()
def features(
    backbone: ResNetBackbone, x: torch.Tensor, batch_size: int = 256, pooling: str = "cls"
) -> np.ndarray:
    """Frozen backbone features (N, D) of normalised images, computed in eval mode on the backbone's device:
    ``pooling`` "cls" (the mean of the patch tokens) or "grid" (the tokens pooled on a 2 x 2 grid)."""
    if pooling not in POOLING:
        raise ValueError(f"pooling={pooling!r}: expected one of {POOLING}")
    was = backbone.training
    backbone.eval()
    dev = next(backbone.parameters()).device
    run = backbone if pooling == "cls" else backbone.grid
    out = [
        run(x[i : i + batch_size].to(dev).contiguous(memory_format=torch.channels_last)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    backbone.train(was)
    return torch.cat(out).numpy()
