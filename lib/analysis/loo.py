"""Leave-one-out perturbation analysis: the effect of single voxels and of ROI groups on the predicted embedding and
on the generated image, batched (the exact closed form for a linear encoder, a rank-one update of the first layer for
the MLP), gradient x input saliency for comparison, ROI-only inputs, and the checks against a simulator's truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from lib import metrics, runtime
from lib.data.prf import VIEW_DEG
from lib.models import gan
from lib.models.mlp import MLPEncoder
from lib.models.ridge import RidgeEncoder

REPLACEMENTS = ("mean", "zero", "noise")
OUTPUTS = ("head", "retrieval")


class LOOError(ValueError):
    """Bad input to the perturbation analysis."""


@dataclasses.dataclass
class LooConfig:
    """The analysis sizes of notebook 04 (profile section ``loo``): how many test samples and voxels each
    image-space step uses, and how an effect map's centre is found."""

    image_samples: int = 60  # test samples averaged in each image-space effect map
    n_prf_voxels: int = 60  # early voxels (largest importance, pRF in the stimulus) in each pRF check
    centre_quantile: float = 0.9  # an effect map's centre: centre of mass of its part above this quantile
    layout_grid: int = 16  # raster of the embedding's colour-layout read-out in the pRF check
    saliency_samples: int = 100  # test samples of the gradient x input comparison
    # early and higher-area voxels perturbed through the combined reconstruction
    combined_voxels: list = dataclasses.field(default_factory=lambda: [40, 20])
    combined_samples: int = 60  # test samples of the combined effect maps (one search, then held)

    def check(self) -> None:
        """A one-line error naming the first field out of range."""
        for name in ("image_samples", "n_prf_voxels", "layout_grid", "saliency_samples", "combined_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LOOError(f"{name}={value!r}: expected a whole number >= 1")
        if not 0 <= self.centre_quantile < 1:
            raise LOOError(f"centre_quantile={self.centre_quantile!r}: expected a value in [0, 1)")
        v = self.combined_voxels
        if len(v) != 2 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in v):
            raise LOOError(f"combined_voxels={v!r}: expected [early, higher], two whole numbers >= 1")


def replacement(x_train: np.ndarray, mode: str, n: int, seed: int = 0) -> np.ndarray:
    """Values (n, V) that replace a left-out voxel, one row per sample: ``mean`` (the voxel's training mean),
    ``zero``, or ``noise`` (a draw from N(training mean, training SD) per sample and voxel)."""
    x_train = np.asarray(x_train)
    if x_train.ndim != 2 or len(x_train) < 2:
        raise LOOError(f"x_train {x_train.shape}: expected (trials >= 2, voxels)")
    if mode not in REPLACEMENTS:
        raise LOOError(f"replace={mode!r}: expected one of {', '.join(REPLACEMENTS)}")
    v = x_train.shape[1]
    if mode == "zero":
        return np.zeros((n, v), np.float32)
    mean = x_train.mean(0, dtype=np.float64).astype(np.float32)
    if mode == "mean":
        return np.broadcast_to(mean, (n, v)).copy()
    sd = x_train.std(0, dtype=np.float64).astype(np.float32)
    return (mean + sd * np.random.default_rng(seed).standard_normal((n, v), dtype=np.float32)).astype(
        np.float32
    )


@dataclasses.dataclass
class _Model:
    """An encoder as torch pieces: ``weight`` (H, V) and ``bias`` (H,) are its linear first layer, ``rest`` maps
    the first layer's output to the embedding (None for a linear encoder, whose first layer is the output)."""

    weight: torch.Tensor
    bias: torch.Tensor
    rest: object | None  # callable (B, H) -> (B, D), or None: linear
    device: torch.device

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.weight.T + self.bias
        return h if self.rest is None else self.rest(h)


def _model(encoder, output: str, device: str | torch.device | None) -> _Model:
    if output not in OUTPUTS:
        raise LOOError(f"output={output!r}: expected one of {', '.join(OUTPUTS)}")
    if isinstance(encoder, RidgeEncoder):
        if not hasattr(encoder, "coef_"):
            raise LOOError("RidgeEncoder is not fitted")
        dev = torch.device(runtime.pick_device(device or "auto"))
        coef = np.atleast_2d(encoder.coef_)
        w = torch.as_tensor(coef, dtype=torch.float32, device=dev)
        b = torch.as_tensor(np.atleast_1d(encoder.intercept_), dtype=torch.float32, device=dev)
        return _Model(w, b, None, dev)
    if isinstance(encoder, MLPEncoder):
        net = encoder.model.eval()
        dev = encoder.device if device is None else torch.device(runtime.pick_device(device))
        net = net.to(dev)
        lin, tail = net.stem[0], net.stem[1:]
        use_projector = output == "retrieval" and encoder.cfg.contrastive and net.projector is not None

        def rest(h: torch.Tensor) -> torch.Tensor:
            h = tail(h)
            for block in net.blocks:
                h = h + block(h)
            e = net.head(h)
            return net.projector(e) if use_projector else e

        return _Model(lin.weight, lin.bias, rest, dev)
    raise LOOError(f"encoder {type(encoder).__name__}: expected a RidgeEncoder or an MLPEncoder")


def _check(x: np.ndarray, x_replace: np.ndarray, n_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float32)
    x_replace = np.asarray(x_replace, np.float32)
    if x.ndim != 2 or x.shape[1] != n_voxels:
        raise LOOError(f"x {x.shape}: expected (samples, {n_voxels}) for this encoder")
    if x_replace.shape != x.shape:
        raise LOOError(
            f"x_replace {x_replace.shape}: expected the shape of x {x.shape} (see loo.replacement)"
        )
    return x, x_replace


def _voxels(voxels, n_voxels: int) -> np.ndarray:
    v = np.arange(n_voxels) if voxels is None else np.asarray(voxels, np.int64).ravel()
    if len(v) and (v.min() < 0 or v.max() >= n_voxels):
        raise LOOError(f"voxels: indices must lie in [0, {n_voxels}), got {v.min()}..{v.max()}")
    return v


def _perturbed(m: _Model, h0: torch.Tensor, d: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Predictions (S, K, D) with voxel ``cols[k]`` moved by ``d[:, k]``: the first layer's output ``h0`` (S, H)
    plus d times the voxel's column, then the rest of the network (nothing more for a linear encoder)."""
    h = h0[:, None, :] + d[:, :, None] * m.weight[:, cols].T[None]
    return h if m.rest is None else m.rest(h.reshape(-1, h.shape[-1])).reshape(len(h0), len(cols), -1)


def _changes(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1 - cos(q, p) and |q - p| / |p| along the last axis (p broadcast against q)."""
    cos = F.cosine_similarity(q, p.expand_as(q), dim=-1)
    rel = (q - p).norm(dim=-1) / p.norm(dim=-1).clamp_min(1e-12)
    return 1 - cos, rel


@dataclasses.dataclass
class VoxelEffects:
    """Per sample and left-out voxel: ``cos_change`` = 1 - cos(perturbed, original prediction) and ``rel_change``
    = |perturbed - original| / |original|, both (samples, voxels), in the order of ``voxels``."""

    voxels: np.ndarray
    cos_change: np.ndarray
    rel_change: np.ndarray

    def importance(self, kind: str = "cos") -> np.ndarray:
        """Mean over samples, per voxel."""
        return (self.cos_change if kind == "cos" else self.rel_change).mean(0)


@torch.no_grad()
def voxel_effects(encoder, x: np.ndarray, x_replace: np.ndarray, voxels=None, output: str = "head",
                  method: str = "batched", chunk_elems: int = 2**21, device: str | None = None) -> VoxelEffects:  # fmt: skip
    """Leave each of ``voxels`` (default: all) out in turn, replacing x[:, v] by x_replace[:, v], and measure the
    change of the prediction (``output`` "head": the embedding; "retrieval": the MLP's projection, if trained).

    ``method``: "batched" (default) computes the first layer once and updates it by (x_replace - x)[:, v] times the
    voxel's column for many voxels at once: for a linear encoder (ridge) that is the exact closed form
    p' = p + d_v w_v; for the MLP the rest of the network runs on samples x voxels rows, chunked so that about
    ``chunk_elems`` floats are live. "naive" runs the whole encoder once per voxel on a copy of x (the reference).
    """
    m = _model(encoder, output, device)
    n_vox = m.weight.shape[1]
    x, x_replace = _check(x, x_replace, n_vox)
    vox = _voxels(voxels, n_vox)
    if method not in ("batched", "naive"):
        raise LOOError(f"method={method!r}: expected 'batched' or 'naive'")
    xt = torch.as_tensor(x, device=m.device)
    d_all = torch.as_tensor(x_replace, device=m.device) - xt
    p = m.predict(xt)  # (S, D)
    s = len(x)
    cos_out = torch.empty(s, len(vox))
    rel_out = torch.empty(s, len(vox))
    if method == "naive":
        for j in runtime.progress(range(len(vox)), desc="LOO (naive)"):
            xv = xt.clone()
            xv[:, vox[j]] += d_all[:, vox[j]]
            c, r = _changes(p, m.predict(xv))
            cos_out[:, j], rel_out[:, j] = c.cpu(), r.cpu()
    elif m.rest is None:  # linear: closed form from the weights, all voxels at once
        w = m.weight[:, vox]  # (D, K)
        d = d_all[:, vox]  # (S, K)
        pw = p @ w  # (S, K)
        pn2 = p.square().sum(1, keepdim=True)  # (S, 1)
        qn2 = (pn2 + 2 * d * pw + d.square() * w.square().sum(0)).clamp_min(0)  # |p + d w|^2
        cos = (pn2 + d * pw) / (pn2.sqrt() * qn2.sqrt()).clamp_min(1e-12)
        cos_out = (1 - cos.clamp(-1, 1)).cpu()
        rel_out = (d.abs() * w.norm(dim=0) / pn2.sqrt().clamp_min(1e-12)).cpu()
    else:
        h0 = xt @ m.weight.T + m.bias  # (S, H)
        hidden = h0.shape[1]
        step = max(1, chunk_elems // max(1, s * hidden))
        for lo in runtime.progress(range(0, len(vox), step), desc="LOO (batched)"):
            cols = torch.as_tensor(vox[lo : lo + step], device=m.device)
            c, r = _changes(p[:, None, :], _perturbed(m, h0, d_all[:, cols], cols))
            cos_out[:, lo : lo + len(cols)], rel_out[:, lo : lo + len(cols)] = c.cpu(), r.cpu()
    return VoxelEffects(vox, cos_out.numpy(), rel_out.numpy())


@torch.no_grad()
def perturbed_predictions(encoder, x: np.ndarray, x_replace: np.ndarray, voxels, output: str = "head",
                          device: str | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The original predictions (S, D) and those with each of ``voxels`` left out (S, K, D), batched as in
    :func:`voxel_effects`; for the image-space effect of a few voxels."""
    m = _model(encoder, output, device)
    x, x_replace = _check(x, x_replace, m.weight.shape[1])
    vox = _voxels(voxels, m.weight.shape[1])
    xt = torch.as_tensor(x, device=m.device)
    cols = torch.as_tensor(vox, device=m.device)
    d = torch.as_tensor(x_replace, device=m.device)[:, cols] - xt[:, cols]  # (S, K)
    q = _perturbed(m, xt @ m.weight.T + m.bias, d, cols)
    return m.predict(xt).cpu().numpy(), q.cpu().numpy()


def _replace_columns(x: np.ndarray, x_replace: np.ndarray, cols: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[:, cols] = x_replace[:, cols]
    return out


@torch.no_grad()
def group_effects(encoder, x: np.ndarray, x_replace: np.ndarray, groups: dict[str, np.ndarray],
                  output: str = "head", device: str | None = None) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """ROI-level leave-one-out: for each group (name -> voxel columns) every one of its voxels is replaced at once;
    returns {name: {"cos_change": (S,), "rel_change": (S,)}}."""
    m = _model(encoder, output, device)
    x, x_replace = _check(x, x_replace, m.weight.shape[1])
    p = m.predict(torch.as_tensor(x, device=m.device))
    out = {}
    for name, cols in groups.items():
        cols = _voxels(cols, m.weight.shape[1])
        q = m.predict(torch.as_tensor(_replace_columns(x, x_replace, cols), device=m.device))
        c, r = _changes(p, q)
        out[name] = {"cos_change": c.cpu().numpy(), "rel_change": r.cpu().numpy()}
    return out


def only_group(x: np.ndarray, x_replace: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """ROI-only input: the group's voxels keep their activity, every other voxel is set to its replacement (the
    training mean for Brain-Diffuser's "ROI-optimal" images); the encoder and generator then run as usual."""
    x, x_replace = np.asarray(x, np.float32), np.asarray(x_replace, np.float32)
    if x_replace.shape != x.shape:
        raise LOOError(f"x_replace {x_replace.shape}: expected the shape of x {x.shape}")
    keep = np.zeros(x.shape[1], bool)
    keep[_voxels(cols, x.shape[1])] = True
    return np.where(keep, x, x_replace)


def roi_only_predictions(encoder, x: np.ndarray, x_replace: np.ndarray,
                         columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # fmt: skip
    """The encoder's prediction from each ROI group alone (:func:`only_group`), {group: (N, D)}; groups without
    voxels are left out."""
    return {g: encoder.predict(only_group(x, x_replace, c)) for g, c in columns.items() if len(c)}


def saliency(encoder, x: np.ndarray, x_replace: np.ndarray, output: str = "head", batch: int = 256,
             device: str | None = None) -> np.ndarray:  # fmt: skip
    """Gradient x input: |J[:, v] (x_replace - x)_v| / |p| per sample and voxel (S, V), the first-order estimate of
    ``rel_change`` (exact for a linear encoder). One backward pass per output dimension."""
    m = _model(encoder, output, device)
    x, x_replace = _check(x, x_replace, m.weight.shape[1])
    out = []
    for lo in range(0, len(x), batch):
        xt = torch.as_tensor(x[lo : lo + batch], device=m.device).requires_grad_(True)
        d = torch.as_tensor(x_replace[lo : lo + batch], device=m.device) - xt.detach()
        with torch.enable_grad():
            p = m.predict(xt)
            sq = torch.zeros_like(xt)
            for k in range(p.shape[1]):
                (g,) = torch.autograd.grad(p[:, k].sum(), xt, retain_graph=k < p.shape[1] - 1)
                sq += (g * d).square()
        out.append((sq.sqrt() / p.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, x.shape[1]), np.float32)


# ================================================================================================================
# image space and validation


def _check_pq(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Original (S, D) and perturbed (S, K, D) predictions as float32, shapes checked."""
    p, q = np.asarray(p, np.float32), np.asarray(q, np.float32)
    if q.ndim != 3 or q.shape[0] != p.shape[0] or q.shape[2] != p.shape[1]:
        raise LOOError(f"q {q.shape}: expected (samples, perturbations, {p.shape[1]}) for p {p.shape}")
    return p, q


def image_effect_maps(G, p: np.ndarray, q: np.ndarray, ratio: float = 1.0, seed: int = 0) -> np.ndarray:
    """Image-space effect of each perturbation: the mean over samples and colour channels of |G(q[:, k]) - G(p)|
    (0-255 scale, not rounded: one voxel moves the image by less than a grey level), (K, R, R); ``p`` (S, D)
    original and ``q`` (S, K, D) perturbed predictions, generated as :func:`lib.models.gan.generate` does (z = 0,
    constant noise, the same perturbation ``ratio`` and seed per sample)."""

    p, q = _check_pq(p, q)
    base = gan.generate(G, p, ratio, seed=seed, exact=True)
    maps = []
    for k in runtime.progress(range(q.shape[1]), desc="image effects"):
        img = gan.generate(G, q[:, k], ratio, seed=seed, exact=True)
        maps.append(np.abs(img - base).mean(axis=(0, 3)))
    return np.stack(maps) if maps else np.zeros((0, *base.shape[1:3]), np.float32)


def _peaks(maps: np.ndarray, quantile: float | None) -> np.ndarray:
    """Effect maps (K, rows, columns) as float64, each lowered by its own ``quantile`` and clipped at 0 (None: as
    they are): the peak region only, without the diffuse floor every map has."""
    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3:
        raise LOOError(f"maps {maps.shape}: expected (K, rows, columns)")
    if quantile is not None:
        if not 0 <= quantile < 1:
            raise LOOError(f"quantile={quantile}: expected a value in [0, 1)")
        level = np.quantile(maps.reshape(len(maps), -1), quantile, axis=1)[:, None, None]
        maps = np.clip(maps - level, 0, None)
    return maps


def effect_centres(maps: np.ndarray, power: float = 2.0, quantile: float | None = None) -> np.ndarray:
    """(K, 2) x, y centres of mass of ``maps`` (K, R, R) weighted by map**power, in pixels from the top-left corner
    (pixel i spans [i, i + 1)); a map without any effect gives the image centre. With ``quantile`` (e.g. 0.9) each
    map is first lowered by its own quantile and clipped at 0, so only its peak region counts: a whole-map centre
    of mass is pulled towards the image centre by the effect's diffuse part, most for pRFs near the edge."""
    maps = _peaks(maps, quantile)
    w = maps**power
    total = w.sum(axis=(1, 2))
    yy, xx = np.mgrid[: maps.shape[1], : maps.shape[2]] + 0.5
    safe = np.where(total > 0, total, 1.0)
    cx = np.where(total > 0, (w * xx).sum(axis=(1, 2)) / safe, maps.shape[2] / 2)
    cy = np.where(total > 0, (w * yy).sum(axis=(1, 2)) / safe, maps.shape[1] / 2)
    return np.stack([cx, cy], 1)


def prf_errors(
    centres: np.ndarray, prf_xy: np.ndarray, shuffles: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Distance between each voxel's effect centre and its true pRF centre (both (K, 2), the same pixel units):
    the median, and chance as the median distance when the pRF centres are randomly re-paired with the voxels
    (the mean over ``shuffles`` permutations, its 5th percentile, and the permutation p-value) - chance keeps
    both spatial distributions, so a centre bias alone does not beat it."""
    centres, prf_xy = np.asarray(centres, np.float64), np.asarray(prf_xy, np.float64)
    if centres.shape != prf_xy.shape or centres.ndim != 2 or centres.shape[1] != 2 or len(centres) < 2:
        raise LOOError(f"centres {centres.shape} and prf_xy {prf_xy.shape}: expected equal (K >= 2, 2)")
    median = float(np.median(np.linalg.norm(centres - prf_xy, axis=1)))
    rng = np.random.default_rng(seed)
    null = np.array(
        [
            np.median(np.linalg.norm(centres - prf_xy[rng.permutation(len(prf_xy))], axis=1))
            for _ in range(shuffles)
        ]
    )
    return {
        "median_error": median,
        "chance_median_error": float(null.mean()),
        "chance_p05": float(np.percentile(null, 5)),
        "p_value": float((1 + (null <= median).sum()) / (1 + shuffles)),
    }


def in_stimulus(prf_xy: np.ndarray, size: float) -> np.ndarray:
    """Boolean (K,): pRF centres (K, 2) that lie inside the square stimulus of ``size`` pixels; a voxel whose pRF
    centre is outside the image cannot place its effect at that centre (NSD's images span 8.4 degrees)."""
    prf_xy = np.asarray(prf_xy, np.float64)
    return np.isfinite(prf_xy).all(1) & (prf_xy >= 0).all(1) & (prf_xy < size).all(1)


def fit_layout_readout(features: np.ndarray, images: np.ndarray, grid: int = 16, alphas=(0.01, 0.1, 1.0, 10.0, 100.0),
                       device: str | None = None) -> RidgeEncoder:  # fmt: skip
    """A linear read-out of the stimuli's colour layout (:func:`lib.metrics.layout`) from their embeddings (ridge, alpha by
    leave-one-out CV): how much of the image's spatial arrangement the joint embedding carries, and so the most
    any generator conditioned on it can place a voxel's effect. Fit it on training stimuli only."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or len(features) != len(images):
        raise LOOError(f"features {features.shape}: expected one row per image ({len(images)})")
    return RidgeEncoder(alphas=list(alphas), device=device or "auto").fit(
        features, metrics.layout(images, grid)
    )


def _ranked(importance: np.ndarray, early) -> tuple[np.ndarray, np.ndarray]:
    """Voxels by decreasing importance (ties in index order), and ``early`` (mask or indices) as a mask."""
    importance = np.asarray(importance)
    mask = np.zeros(len(importance), bool)
    mask[early] = True
    return np.argsort(-importance, kind="stable"), mask


def example_voxels(importance: np.ndarray, early: np.ndarray, n: int) -> np.ndarray:
    """Voxels to show: the ``n // 2`` most important of the ``early`` ones (boolean mask or indices) and the
    ``n - n // 2`` most important of the others, in that order."""
    order, mask = _ranked(importance, early)
    in_early = mask[order]
    return np.r_[order[in_early][: n // 2], order[~in_early][: n - n // 2]]


def prf_voxels(
    importance: np.ndarray, early: np.ndarray, prf_xy: np.ndarray, size: int, n: int
) -> np.ndarray:
    """The pRF check's voxels: the ``n`` most important ``early`` voxels (mask or indices) whose pRF centre
    (``prf_xy`` (V, 2), stimulus pixels) lies inside the ``size``-pixel stimulus (:func:`in_stimulus`)."""
    order, mask = _ranked(importance, early)
    return order[(mask & in_stimulus(prf_xy, size))[order]][:n]


def layout_effect_maps(readout: RidgeEncoder, p: np.ndarray, q: np.ndarray, grid: int) -> np.ndarray:
    """The effect of each perturbation on the layout the embedding implies: the mean over samples of
    |R(q[:, k]) - R(p)| summed over colour channels, (K, grid, grid), for a :func:`fit_layout_readout` R and the
    original (S, D) and perturbed (S, K, D) predictions of :func:`perturbed_predictions`."""
    p, q = _check_pq(p, q)
    coef = np.atleast_2d(readout.coef_)  # (grid * grid * 3, D); the intercept cancels in the difference
    if coef.shape != (grid * grid * 3, p.shape[1]):
        raise LOOError(f"readout maps {coef.shape[1]}-d vectors to {coef.shape[0]} values: expected "
                       f"{p.shape[1]} -> {grid * grid * 3} (grid {grid})")  # fmt: skip
    change = np.abs(np.einsum("skd,od->sko", q - p[:, None, :], coef, optimize=True))
    return change.mean(0).reshape(q.shape[1], grid, grid, 3).sum(-1)


def ideal_readout(signal: np.ndarray, noise_var: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Ground-truth read-out weights (V, D): the least-squares linear read-out of ``targets`` (N, D) from
    standardised inputs x = (signal + noise) / SD, where ``signal`` (N, V) is each voxel's noise-free response
    and the noise is independent across voxels with variance ``noise_var`` (V,). The population solution
    (C_s + diag(noise_var))^-1 C_sy, computed from the truth instead of noisy data, scaled by each input's SD
    sqrt(var(signal) + noise_var) to the units of z-scored betas. Its row norms are the weight each voxel carries
    in the best linear decoder of the embedding, what leave-one-out importance estimates."""
    s = np.asarray(signal, np.float64)
    nv = np.asarray(noise_var, np.float64).ravel()
    y = np.asarray(targets, np.float64)
    if s.ndim != 2 or y.ndim != 2 or len(y) != len(s):
        raise LOOError(f"signal {s.shape} and targets {y.shape}: expected (N, V) and (N, D) with equal N")
    if nv.shape != (s.shape[1],) or not (np.isfinite(nv).all() and (nv >= 0).all()):
        raise LOOError(f"noise_var {nv.shape}: expected {s.shape[1]} finite variances >= 0")
    s = s - s.mean(0)
    y = y - y.mean(0)
    cov = s.T @ s / len(s)
    var = cov.diagonal() + nv
    cov[np.diag_indices_from(cov)] = var
    w = np.linalg.solve(cov, s.T @ y / len(s))
    return (w * np.sqrt(var)[:, None]).astype(np.float32)


def prf_check(G, encoder, x: np.ndarray, x_replace: np.ndarray, voxels, reference, prf_xy: np.ndarray, size: int,
              readout: RidgeEncoder | None = None, grid: int = 16, ratio: float = 1.0, quantile: float = 0.9,
              seed: int = 0, device: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:  # fmt: skip
    """Where leaving each of ``voxels`` out moves the image, against their true pRF centres ``prf_xy`` (K, 2), in
    pixels of the ``size``-pixel stimulus. "through the generator": :func:`image_effect_maps` divided by the mean
    map of the ``reference`` voxels (the generator's own spatial bias), centred by :func:`effect_centres` at
    ``quantile``; with a ``readout`` (:func:`fit_layout_readout` on a ``grid``), also "embedding's layout
    read-out": the same for :func:`layout_effect_maps`. Returns (centres {name: (K, 2)}, {name: :func:`prf_errors`})."""
    voxels, reference = np.asarray(voxels), np.asarray(reference)
    k = len(voxels)
    p, q = perturbed_predictions(encoder, x, x_replace, np.r_[voxels, reference], device=device)
    m = image_effect_maps(G, p, q, ratio, seed=seed)
    ref = m[k:].mean(0) if len(reference) else 1.0
    centres = {
        "through the generator": effect_centres(m[:k] / (ref + 1e-6), quantile=quantile) * size / m.shape[-1]
    }
    if readout is not None:
        layout_maps = layout_effect_maps(readout, p, q[:, :k], grid)
        centres["embedding's layout read-out"] = effect_centres(layout_maps, quantile=quantile) * size / grid
    return centres, {name: prf_errors(c, prf_xy, seed=seed) for name, c in centres.items()}


def prf_summary(checks: dict[str, dict], n_voxels: int) -> dict[str, float]:
    """The metrics record of :func:`prf_check`'s errors: ``prf_*`` through the generator and ``prf_readout_*``
    through the embedding's layout read-out (when checked): median error, chance, p-value, in stimulus pixels."""
    out: dict[str, float] = {"prf_voxels": int(n_voxels)}
    for prefix, name in (("prf", "through the generator"), ("prf_readout", "embedding's layout read-out")):
        if name in checks:
            e = checks[name]
            out |= {f"{prefix}_median_error_px": e["median_error"], f"{prefix}_chance_error_px":
                    e["chance_median_error"], f"{prefix}_p_value": e["p_value"]}  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------------------
# the spatial pathway (lib.models.lowlevel)


@torch.no_grad()
def lowlevel_effect_maps(decoder, x: np.ndarray, x_replace: np.ndarray, voxels=None,
                         device: str | None = None) -> np.ndarray:  # fmt: skip
    """Each voxel's effect on the spatial pathway's low-resolution image: the mean over samples and colour
    channels of |D(x with the voxel left out) - D(x)| (0-1 scale), (K, s, s), for a
    :class:`lib.models.lowlevel.LowLevelDecoder` D reading voxels of ``x`` (S, V). Exact and in closed form for
    ridge: mean_s |x_replace[s, v] - x[s, v]| x the channel mean of |w_v|, the voxel's weight image; the MLP
    through :func:`perturbed_predictions`. A voxel the decoder does not read has an all-zero map."""
    if np.ndim(x) != 2:
        raise LOOError(f"x {np.shape(x)}: expected (samples, voxels of the prepared ROI)")
    x, x_replace = _check(x, x_replace, np.shape(x)[1])
    vox = _voxels(voxels, x.shape[1])
    cols = np.asarray(decoder.columns)
    position = np.full(x.shape[1], -1)
    position[cols] = np.arange(len(cols))
    pos = position[vox]
    read = np.flatnonzero(pos >= 0)
    s = decoder.size
    out = np.zeros((len(vox), s, s), np.float32)
    if not len(read):
        return out
    if isinstance(decoder.encoder, RidgeEncoder):
        w = (
            np.abs(np.atleast_2d(decoder.encoder.coef_)[:, pos[read]]).reshape(s, s, 3, -1).mean(2)
        )  # (s, s, K)
        d = np.abs(x_replace[:, vox[read]] - x[:, vox[read]]).mean(0)  # (K,)
        out[read] = np.moveaxis(w * d, -1, 0)
    else:
        p, q = perturbed_predictions(
            decoder.encoder, x[:, cols], x_replace[:, cols], pos[read], device=device
        )
        out[read] = np.abs(q - p[:, None]).mean(0).reshape(len(read), s, s, 3).mean(-1)
    return out


def localisation(maps: np.ndarray, radius: float, quantile: float | None = None) -> np.ndarray:
    """How local each effect is, (K,): the fraction of a map's energy (map**2) within ``radius`` pixels of its
    energy's centre of mass (:func:`effect_centres` with power 2); 1 for a point, about pi r^2 / area for a
    uniform map; NaN for a map without any effect. With ``quantile`` (as :func:`effect_centres`) each map is first
    lowered by its own quantile and clipped at 0: the share of its peak, not of a diffuse floor every map has."""
    if not radius > 0:
        raise LOOError(f"radius={radius}: expected a positive number of pixels")
    maps = _peaks(maps, quantile)
    energy = maps**2
    total = energy.sum(axis=(1, 2))
    c = effect_centres(maps, power=2.0)
    yy, xx = np.mgrid[: maps.shape[1], : maps.shape[2]] + 0.5
    inside = (xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2 <= radius**2
    within = (energy * inside).sum(axis=(1, 2))
    return np.where(total > 0, within / np.where(total > 0, total, 1.0), np.nan)


def pathway_prf_check(maps: np.ndarray, voxels, prf_xy: np.ndarray, size: int, quantile: float = 0.9,
                      seed: int = 0) -> tuple[np.ndarray, dict[str, float]]:  # fmt: skip
    """Effect centres of ``voxels`` (indices into ``maps`` (V, r, r), one effect map per voxel on an r-pixel
    raster, e.g. :func:`lowlevel_effect_maps`) in pixels of the ``size``-pixel stimulus (:func:`effect_centres`
    at ``quantile``), and :func:`prf_errors` against ``prf_xy[voxels]`` (V, 2), with the median error and its
    chance also in degrees of visual angle (NSD's 8.4 degree field)."""
    voxels = np.asarray(voxels, np.int64)
    maps = np.asarray(maps)
    centres = effect_centres(maps[voxels], quantile=quantile) * size / maps.shape[-1]
    errors = prf_errors(centres, np.asarray(prf_xy)[voxels], seed=seed)
    deg = VIEW_DEG / size
    errors |= {"median_error_deg": errors["median_error"] * deg,
               "chance_median_error_deg": errors["chance_median_error"] * deg,
               "ratio": errors["median_error"] / errors["chance_median_error"], "n_voxels": int(len(voxels))}  # fmt: skip
    return centres, errors


def prf_by_group(maps: np.ndarray, importance: np.ndarray, columns: dict[str, np.ndarray], prf_xy: np.ndarray,
                 size: int, n: int, quantile: float = 0.9, seed: int = 0) -> dict[str, dict[str, float]]:  # fmt: skip
    """:func:`pathway_prf_check` per ROI group ({name: voxel indices}): the ``n`` voxels of each group with the
    largest ``importance`` (> 0: the pathway reads them) whose pRF centre lies in the stimulus; groups with fewer
    than 3 such voxels are left out."""
    out = {}
    for name, cols in columns.items():
        cols = np.asarray(cols, np.int64)
        cols = cols[np.asarray(importance)[cols] > 0]
        voxels = prf_voxels(importance, cols, prf_xy, size, n)
        if len(voxels) >= 3:
            out[name] = pathway_prf_check(maps, voxels, prf_xy, size, quantile, seed)[1]
    return out


def combined_effect_maps(reconstruct, encoder, decoder, x: np.ndarray, x_replace: np.ndarray, voxels,
                         device: str | None = None) -> np.ndarray:  # fmt: skip
    """Each voxel's effect on the combined reconstruction, per sample: |R(q_k, l_k) - R(p, l)| averaged over colour
    channels, (S, K, H, W), where ``reconstruct`` R(features (S, D), low (S, s, s, 3)) -> float images (S, H, W, 3)
    on the 0-255 scale (e.g. :func:`lib.models.gan.combine` with ``exact=True``) draws from the semantic ``encoder``'s
    prediction p and the spatial ``decoder``'s low-resolution image l (:class:`lib.models.lowlevel.LowLevelDecoder`),
    and q_k, l_k are both with voxel ``voxels[k]`` of ``x`` (S, V) replaced by ``x_replace``. R is called once per
    voxel on the same S rows in the same order as the original, so a seeded R draws the same random numbers."""
    p, q = perturbed_predictions(encoder, x, x_replace, voxels, device=device)
    vox = _voxels(voxels, x.shape[1])
    low_p = decoder.predict(x)
    read = set(np.asarray(decoder.columns).tolist())
    base = np.asarray(reconstruct(p, low_p), np.float32)
    out = np.zeros((len(x), len(vox), *base.shape[1:3]), np.float32)
    for k, v in enumerate(runtime.progress(vox, desc="combined effects")):
        low_k = low_p
        if int(v) in read:
            xv = np.array(x, np.float32, copy=True)
            xv[:, v] = x_replace[:, v]
            low_k = decoder.predict(xv)
        out[:, k] = np.abs(np.asarray(reconstruct(q[:, k], low_k), np.float32) - base).mean(-1)
    return out


def localisation_contrast(per_sample_maps: np.ndarray, first, second, radius: float, resamples: int = 2000,
                          seed: int = 0, quantile: float | None = None) -> dict:  # fmt: skip
    """Whether voxel set ``first`` (indices into K) acts at a fixed place and ``second`` does not: the mean over
    samples of each voxel's maps (``per_sample_maps`` (S, K, H, W), e.g. :func:`combined_effect_maps`), its
    :func:`localisation` (at ``quantile``), and the difference of the two sets' means. A retinotopic voxel moves the same spot of
    every image, so its mean map stays local; a voxel tuned to a position-invariant attribute moves the object
    wherever it is, so its mean map spreads. The interval resamples the samples (test images) with replacement,
    the same images for both sets (paired), ``resamples`` times; ``p`` is the one-sided bootstrap p of a difference
    <= 0. Returns {"diff", "low", "high", "p", "first_mean", "second_mean", "n", "level"}."""
    m = np.asarray(per_sample_maps, np.float64)
    if m.ndim != 4 or len(m) < 2:
        raise LOOError(f"per_sample_maps {m.shape}: expected (samples >= 2, voxels, rows, columns)")
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    if not len(first) or not len(second):
        raise LOOError(f"first ({len(first)}) and second ({len(second)}): expected voxels in both sets")

    def contrast(maps: np.ndarray) -> tuple[float, float]:
        loc = localisation(maps, radius, quantile)
        return float(np.nanmean(loc[first])), float(np.nanmean(loc[second]))

    a, b = contrast(m.mean(0))
    rng = np.random.default_rng(seed)
    boot = np.array(
        [np.subtract(*contrast(m[rng.integers(0, len(m), len(m))].mean(0))) for _ in range(resamples)]
    )
    low, high = np.quantile(boot, [0.025, 0.975])
    return {"diff": a - b, "low": float(low), "high": float(high), "p": float((1 + (boot <= 0).sum()) / (1 + resamples)),
            "first_mean": a, "second_mean": b, "n": int(len(m)), "level": 0.95}  # fmt: skip
