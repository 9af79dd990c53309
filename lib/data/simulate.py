"""mini-NSD: a simulated Natural Scenes Dataset in NSD's on-disk layout, with a known ground truth.

    python -m lib.data.simulate --out DIR --profile quick|mini [--subjects N] [--seed S] [--force]

Writes, below DIR, the same paths as NSD (``nsddata/``, ``nsddata_betas/``, ``nsddata_stimuli/``) plus
``MINI_NSD.json`` (configuration, marker) and ``mininsd/`` (ground truth; see data_manifests/mini_nsd.md).
The whole tree is written to a temporary folder and renamed into place, so an interrupted run leaves nothing.
Same seed and profile -> the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from scipy.io import savemat
from scipy.ndimage import gaussian_filter
from threadpoolctl import threadpool_limits

from lib.data import prf as prf_lib
from lib.data import rois as roi_lib
from lib.data import scenes as sc
from lib.data.nsd import DESIGN
from lib.fileio import UMASK, atomic_path, exclusive
from lib.runtime import die_with_parent, progress

SIM_VERSION = 1
MARKER = "MINI_NSD.json"
ENSURE_WAIT = 1800.0  # seconds a run waits for another that is writing the same dataset
BETAS_VERSION = "betas_fithrf_GLMdenoise_RR"
SPACE = "func1pt8mm"  # NSD's folder name; mini-NSD voxels are coarser (the NIfTI header holds the real size)
#: field of view in MNI mm (x, y, z): the posterior brain, where visual cortex lies
FOV_MIN = np.array([-72.0, -108.0, -36.0])
FOV_MAX = np.array([72.0, -15.0, 63.0])
VIEW_DEG = prf_lib.VIEW_DEG  # NSD's stimuli subtend 8.4 degrees


@dataclass(frozen=True)
class SimConfig:
    n_shared: int  # test images, shown to every subject 3 times
    n_unique: int  # training images per subject, shown 1-3 times
    n_sessions: int
    trials_per_session: int
    runs_per_session: int
    image_size: int = 64
    voxel_mm: float = 3.0
    ncsnr: float = 0.45  # median noise-ceiling SNR of nsdgeneral voxels (NSD: roughly 0.2-0.6)
    shared_noise: float = 0.2  # fraction of noise variance shared across voxels (low-rank, as in real fMRI)
    n_captions: int = 5

    @property
    def n_trials(self) -> int:
        return self.n_sessions * self.trials_per_session

    @property
    def pool_size(self) -> int:
        """Resolution of the grid on which population receptive fields pool the image."""
        return min(self.image_size, 32)

    def check(self) -> None:
        need = 3 * self.n_shared + self.n_unique
        if not need <= self.n_trials <= 3 * (self.n_shared + self.n_unique):
            raise ValueError(
                f"profile needs between {need} and {3 * (self.n_shared + self.n_unique)} trials "
                f"(shared x3, training x1..3), got n_sessions*trials_per_session = {self.n_trials}"
            )
        if self.trials_per_session < self.runs_per_session:
            raise ValueError("trials_per_session must be >= runs_per_session")
        if not 0 < self.ncsnr <= 5:
            raise ValueError(f"ncsnr={self.ncsnr}: expected a value in (0, 5] (NSD's voxels: about 0.1-1)")


PROFILES = {
    "quick": SimConfig(
        n_shared=60, n_unique=240, n_sessions=6, trials_per_session=120, runs_per_session=4,
        image_size=32, voxel_mm=5.0,
    ),
    "mini": SimConfig(
        n_shared=300, n_unique=2100, n_sessions=15, trials_per_session=300, runs_per_session=12,
        image_size=64, voxel_mm=3.0,
    ),
}  # fmt: skip


# ================================================================================================================
# brain: grid, cortex, ROIs, retinotopy


@dataclass
class Brain:
    affine: np.ndarray  # (4, 4) voxel -> MNI mm
    brainmask: np.ndarray  # bool (X, Y, Z)
    cortex: np.ndarray  # bool (X, Y, Z)
    rois: dict[str, np.ndarray]  # ROI file -> int16 volume (-1 / 0 / labels)
    ctabs: dict[str, dict[int, str]]
    prf: dict[str, np.ndarray]  # per-voxel pRF maps over the grid (NaN where none): ecc, angle, x, y, sigma


def make_grid(voxel_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    shape = tuple(int(np.floor((FOV_MAX[i] - FOV_MIN[i]) / voxel_mm)) + 1 for i in range(3))
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = FOV_MIN
    return shape, affine


@functools.lru_cache(maxsize=4)
def _mni_tissue(voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask and grey-matter probability of nilearn's bundled MNI152 templates, resampled to the grid."""
    from nilearn import datasets, image  # lazy: nilearn: seconds to import, the MNI template only

    shape, affine = make_grid(voxel_mm)
    target = nib.Nifti1Image(np.zeros(shape, np.int8), affine)
    brain = image.resample_to_img(
        datasets.load_mni152_brain_mask(resolution=2), target, interpolation="nearest",
        force_resample=True, copy_header=True,
    )  # fmt: skip
    gm = image.resample_to_img(
        datasets.load_mni152_gm_template(resolution=2), target, interpolation="continuous",
        force_resample=True, copy_header=True,
    )  # fmt: skip
    return np.asarray(brain.dataobj) > 0.5, np.asarray(gm.dataobj, dtype=np.float32)


# Category ROIs: label name -> centre (|x|, y, z) in MNI mm, radius mm; both hemispheres unless 'hemis' says.
FLOC = {
    "floc-faces": {
        "OFA": ((40, -78, -10), 8), "FFA-1": ((40, -62, -18), 7), "FFA-2": ((42, -48, -20), 7),
        "mTL-faces": ((30, -30, -24), 6), "aTL-faces": ((34, -10, -32), 6),
    },
    "floc-bodies": {
        "EBA": ((46, -72, 4), 9), "FBA-1": ((40, -55, -16), 6), "FBA-2": ((42, -44, -18), 6),
        "mTL-bodies": ((30, -36, -22), 6),
    },
    "floc-places": {"OPA": ((32, -82, 22), 8), "PPA": ((26, -46, -10), 8), "RSC": ((14, -56, 12), 7)},
    "floc-words": {
        "OWFA": ((-42, -76, -12), 6), "VWFA-1": ((-44, -56, -16), 6), "VWFA-2": ((-44, -44, -14), 6),
        "mfs-words": ((-38, -30, -18), 5), "mTL-words": ((-32, -20, -26), 5),
    },
}  # fmt: skip
VISUAL = {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"}
STREAMS = {
    1: "early",
    2: "midventral",
    3: "midlateral",
    4: "midparietal",
    5: "ventral",
    6: "lateral",
    7: "parietal",
}
ECC = {1: "ecc0pt5", 2: "ecc1", 3: "ecc2", 4: "ecc4", 5: "ecc4+"}
# band widths (mm of cortex away from the calcarine line) of V1, V2, V3
BANDS = (7.0, 14.0, 21.0)


def make_brain(cfg: SimConfig, rng: np.random.Generator) -> Brain:
    """Cortex of the MNI152 template in the field of view, with retinotopic early areas and category ROIs.

    Early areas wrap the calcarine line zc(y) (V1 inside, then V2, then V3, dorsal above / ventral below); the
    eccentricity grows with distance from the occipital pole (log cortical magnification), polar angle with the
    distance from the calcarine line, mirrored at each area border. Each subject's anatomy is jittered by a few mm.
    """
    shape, affine = make_grid(cfg.voxel_mm)
    brain, gm = _mni_tissue(cfg.voxel_mm)
    cortex = brain & (gm > 0.45)
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    ax = np.abs(x)
    j = rng.normal(0, 2.0, size=8)  # anatomical jitter (mm) of this subject

    zc = 3 + j[0] + 0.3 * (y + 100)  # calcarine line, rising anteriorly
    u = z - zc
    y_pole = -104 + j[1]
    # the cerebellum lies under the occipital and ventral temporal cortex: keep it out of every ROI
    cerebellum = (z < -26) | ((ax < 14) & (z < -6) & (y > -88))
    cortex = cortex & ~cerebellum
    early_zone = cortex & (y < -64 + j[2]) & (ax < 26) & (np.abs(u) < BANDS[2])
    band = np.digitize(np.abs(u), BANDS)  # 0: V1, 1: V2, 2: V3
    visual = np.zeros(shape, np.int16)
    dorsal = u >= 0
    for b in range(3):
        sel = early_zone & (band == b)
        visual[sel & ~dorsal] = 2 * b + 1
        visual[sel & dorsal] = 2 * b + 2
    hv4 = (
        cortex
        & ~early_zone
        & (ax > 18)
        & (ax < 42)
        & (y > -90 + j[3])
        & (y < -66 + j[3])
        & (z < -2)
        & (z > -24)
    )
    visual[hv4] = 7

    # retinotopy of V1-V3: eccentricity from the pole, polar angle from the calcarine line (0 = horizontal)
    e_mm = np.clip(y - y_pole, 0, None)
    ecc_max = VIEW_DEG / 2 * np.sqrt(2) * 1.05
    ecc = ecc_max * np.expm1(e_mm / 12) / np.expm1(40 / 12)
    au = np.abs(u)
    angle = np.where(
        band == 0, au / BANDS[0], np.where(band == 1, 1 - (au - BANDS[0]) / 7, (au - BANDS[1]) / 7)
    )
    angle = 90 * np.clip(angle, 0, 1)
    # hV4: the contralateral hemifield, angle from the medial-lateral position, eccentricity from y
    ecc = np.where(visual == 7, 0.4 + (y - (-90 + j[3])) / 24 * (ecc_max - 0.4), ecc)
    angle = np.where(visual == 7, np.clip((ax - 18) / 24, 0, 1) * 180 - 90, np.where(dorsal, -angle, angle))
    has_prf = visual > 0
    theta = np.deg2rad(angle)
    vx = np.where(x < 0, 1, -1) * ecc * np.cos(theta)  # left hemisphere sees the right visual field
    vy = ecc * np.sin(theta)  # degrees, up positive (ventral cortex -> upper field)
    ppd = cfg.image_size / VIEW_DEG
    area_scale = np.select([visual <= 2, visual <= 4, visual <= 6], [1.0, 1.5, 2.1], 3.5)
    sigma_deg = (0.15 + 0.12 * ecc) * area_scale
    nan = np.full(shape, np.nan, np.float32)
    prf = {
        "ecc": np.where(has_prf, ecc, nan),
        "angle": np.where(has_prf, angle, nan),
        "x": np.where(has_prf, cfg.image_size / 2 + vx * ppd, nan),
        "y": np.where(has_prf, cfg.image_size / 2 - vy * ppd, nan),
        "sigma": np.where(has_prf, sigma_deg * ppd, nan),
    }

    # processing streams
    streams = np.zeros(shape, np.int16)
    post, ant = cortex & (y < -62), cortex & (y >= -62) & (y < -38 + j[6])
    rules = [
        (1, early_zone),
        (2, post & (z < zc - 4) & (ax >= 14) & (ax < 44)),
        (4, post & (u > 10) & (z < 44) & (ax < 34)),
        (3, post & (ax >= 28) & (z >= -14) & (z < 22)),
        (5, ant & (z < -4 + j[4]) & (ax >= 22) & (ax < 46)),
        (6, ant & (ax >= 40) & (z >= -12) & (z < 16)),
        (7, (cortex & (y >= -70) & (y < -42)) & (z >= 28 + j[5]) & (z < 56) & (ax >= 12) & (ax < 40)),
    ]
    for label, sel in rules:
        streams[sel & (streams == 0)] = label
    nsdgeneral = (streams > 0).astype(np.int16)

    eccroi = np.zeros(shape, np.int16)
    ecc_vis = np.where(has_prf, ecc, np.inf)
    for label, hi in zip(ECC, (0.5, 1, 2, 4, np.inf), strict=True):
        eccroi[has_prf & (eccroi == 0) & (ecc_vis < hi)] = label

    volumes = {"nsdgeneral": nsdgeneral, "prf-visualrois": visual, "prf-eccrois": eccroi, "streams": streams}
    ctabs = {
        "nsdgeneral": {1: "nsdgeneral"},
        "prf-visualrois": VISUAL,
        "prf-eccrois": ECC,
        "streams": STREAMS,
    }
    for file, table in FLOC.items():
        vol = np.zeros(shape, np.int16)
        names = {}
        for label, (name, (centre, radius)) in enumerate(table.items(), 1):
            names[label] = name
            cx, cy, cz = np.array(centre, float) + rng.normal(0, 2.0, 3)
            hemis = [np.sign(cx)] if centre[0] < 0 else [-1, 1]
            for h in hemis:
                d = np.sqrt((x - h * abs(cx)) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
                vol[cortex & (d < radius) & (vol == 0) & (nsdgeneral > 0)] = label
        volumes[file], ctabs[file] = vol, names
    for vol in volumes.values():
        vol[~cortex] = -1
    return Brain(affine, brain, cortex, volumes, ctabs, prf)


# ================================================================================================================
# responses


def _pool_weights(
    px: np.ndarray, py: np.ndarray, sigma: np.ndarray, image_size: int, grid: int
) -> np.ndarray:
    """Normalised Gaussian pRF weights (grid*grid, voxels) for centres/sizes given in stimulus pixels."""
    s = image_size / grid
    g = (np.arange(grid) + 0.5) * s
    gy, gx = np.meshgrid(g, g, indexing="ij")
    d2 = (gx.reshape(-1, 1) - px) ** 2 + (gy.reshape(-1, 1) - py) ** 2
    w = np.exp(-d2 / (2 * np.maximum(sigma, 0.5 * s) ** 2)).astype(np.float32)
    return w / np.maximum(w.sum(0, keepdims=True), 1e-12)


def _zscore_cols(a: np.ndarray) -> np.ndarray:
    sd = a.std(0, keepdims=True)
    return ((a - a.mean(0, keepdims=True)) / np.where(sd > 0, sd, 1)).astype(np.float32)


def stimulus_maps(images: np.ndarray, coverage: list[np.ndarray], grid: int):
    """Per-image maps the pRFs pool, on a grid x grid raster: R, G, B, contrast energy, and object coverage."""

    n, size = images.shape[0], images.shape[1]
    f = size // grid
    x = images.astype(np.float32) / 255
    blur = gaussian_filter(x, sigma=(0, 1.5, 1.5, 0))
    contrast = np.sqrt(((x - blur) ** 2).sum(-1))
    low = np.concatenate([x, contrast[..., None]], -1)
    low = low.reshape(n, grid, f, grid, f, 4).mean((2, 4)).reshape(n, grid * grid, 4)
    cov = np.zeros((n, 3, grid * grid), np.float32)
    for i, c in enumerate(coverage):
        if len(c):
            cov[i, : len(c)] = c.reshape(len(c), grid, f, grid, f).mean((2, 4)).reshape(len(c), -1)
    return low, cov


# mixture of (low-level pRF, object colour/shape in pRF, global attributes) per ROI: label -> weights
_MIX = {
    "early": (1.0, 0.05, 0.0),
    "hV4": (0.35, 1.0, 0.15),
    "midventral": (0.5, 0.6, 0.4),
    "midlateral": (0.5, 0.3, 0.5),
    "midparietal": (0.5, 0.1, 0.6),
    "ventral": (0.1, 0.35, 1.0),
    "lateral": (0.15, 0.25, 1.0),
    "parietal": (0.2, 0.0, 1.0),
}
# prior scale of global-attribute weights per feature group, per stream; floc ROIs add a preferred set
_GLOBAL_PRIOR = {
    "midventral": {"shape": 0.6, "colour": 0.6, "count": 0.2, "background": 0.3},
    "midlateral": {"shape": 0.6, "count": 0.4, "area": 0.3},
    "midparietal": {"count": 0.5, "area": 0.5, "position": 0.8},
    "ventral": {"shape": 1.0, "colour": 0.6, "count": 0.2, "background": 0.4, "area": 0.2},
    "lateral": {"shape": 1.0, "colour": 0.2, "count": 0.6, "area": 0.4},
    "parietal": {"count": 1.0, "area": 0.6, "position": 1.0, "shape": 0.2},
    "hV4": {"shape": 0.3, "colour": 0.3},
}
_FLOC_PREF = {
    "floc-faces": ["shape:circle", "shape:ring"],
    "floc-bodies": ["shape:bar", "shape:cross"],
    "floc-places": ["background:horizon", "background:stripes", "area"],
    "floc-words": ["shape:star", "shape:cross"],
}


def _feature_groups(names: list[str]) -> dict[str, np.ndarray]:
    kinds = {
        "shape": [n.startswith("shape:") for n in names],
        "colour": [n.startswith("colour:") for n in names],
        "count": [n.startswith("count:") for n in names],
        "background": [n.startswith("background:") for n in names],
        "area": [n == "area" for n in names],
        "position": [n in ("com_x", "com_y") for n in names],
    }
    return {k: np.array(v) for k, v in kinds.items()}


@dataclass
class Tuning:
    ijk: np.ndarray  # (V, 3) nsdgeneral voxels, NIfTI order
    area: np.ndarray  # (V,) str: the response class of each voxel
    prf_x: np.ndarray
    prf_y: np.ndarray
    prf_sigma: np.ndarray
    mix: np.ndarray  # (V, 3)
    w_low: np.ndarray  # (V, 4) R, G, B, contrast
    w_colour: np.ndarray  # (V, n_colours)
    w_shape: np.ndarray  # (V, n_shapes)
    w_global: np.ndarray  # (V, n_features)
    ncsnr: np.ndarray  # (V,)


def make_tuning(cfg: SimConfig, brain: Brain, rng: np.random.Generator) -> Tuning:
    """Draw each nsdgeneral voxel's tuning from the prior of its area."""
    mask = brain.rois["nsdgeneral"] > 0
    ijk = np.argwhere(mask)  # C order over (X, Y, Z) = NIfTI voxel order
    vis = brain.rois["prf-visualrois"][mask]
    stream = brain.rois["streams"][mask]
    area = np.array([STREAMS.get(int(s), "early") for s in stream], dtype=object)
    area[vis == 7] = "hV4"
    area[(vis >= 1) & (vis <= 6)] = "early"
    n = len(ijk)
    size = cfg.image_size
    px, py, sigma = (brain.prf[k][mask].astype(np.float64) for k in ("x", "y", "sigma"))
    # voxels without a retinotopic map (mid and higher areas): large fields near the centre of gaze
    no = np.isnan(px)
    big = np.isin(area, ["ventral", "lateral", "parietal"])
    px[no] = size / 2 + rng.normal(0, 0.15 * size, no.sum())
    py[no] = size / 2 + rng.normal(0, 0.15 * size, no.sum())
    sigma[no] = np.where(big[no], rng.uniform(0.3, 0.5, no.sum()), rng.uniform(0.15, 0.3, no.sum())) * size
    mix = np.array([_MIX[a] for a in area], np.float64) * rng.uniform(0.7, 1.3, (n, 3))
    w_low = np.column_stack([rng.uniform(0.0, 0.6, (n, 3)), rng.uniform(0.6, 1.2, n)])
    n_col, n_shp = len(sc.COLOURS), len(sc.SHAPES)
    w_colour = rng.normal(0, 1, (n, n_col))
    w_shape = rng.normal(0, 1, (n, n_shp))
    names = sc.global_feature_names()
    groups = _feature_groups(names)
    w_global = np.zeros((n, len(names)))
    for a, prior in _GLOBAL_PRIOR.items():
        sel = area == a
        for g, scale in prior.items():
            w_global[np.ix_(sel, groups[g])] = rng.normal(0, scale, (sel.sum(), groups[g].sum()))
    for file, pref in _FLOC_PREF.items():
        sel = brain.rois[file][mask] > 0
        cols = [names.index(p) for p in pref]
        w_global[np.ix_(sel, cols)] += rng.uniform(1.5, 2.5, (sel.sum(), len(cols)))
        mix[sel, 2] = np.maximum(mix[sel, 2], 1.0)
    base = np.where(area == "early", 1.2, np.where(area == "hV4", 1.0, 0.8)) * cfg.ncsnr
    ncsnr = base * np.exp(rng.normal(0, 0.35, n))
    return Tuning(ijk, area.astype(str), px, py, sigma, mix, w_low, w_colour, w_shape, w_global, ncsnr)


def noise_free_responses(tuning: Tuning, low: np.ndarray, cov: np.ndarray, feats: np.ndarray,
                         objects: list[list[tuple[int, int]]], cfg: SimConfig) -> np.ndarray:  # fmt: skip
    """(n_images, V) responses without noise: each component z-scored over images, mixed, z-scored again."""
    w = _pool_weights(tuning.prf_x, tuning.prf_y, tuning.prf_sigma, cfg.image_size, cfg.pool_size)
    pooled = np.einsum("npc,pv->nvc", low, w, optimize=True)  # (N, V, 4)
    r_low = _zscore_cols((pooled * tuning.w_low[None]).sum(-1))
    pc = np.einsum("nkp,pv->nkv", cov, w, optimize=True)  # coverage of each object inside each pRF
    r_obj = np.zeros(r_low.shape, np.float32)
    for i, objs in enumerate(objects):
        for k, (shape_i, colour_i) in enumerate(objs):
            r_obj[i] += pc[i, k] * (tuning.w_colour[:, colour_i] + tuning.w_shape[:, shape_i])
    r_obj = _zscore_cols(r_obj)
    r_glob = _zscore_cols(_zscore_cols(feats) @ tuning.w_global.T.astype(np.float32))
    mix = tuning.mix.astype(np.float32)
    return _zscore_cols(mix[:, 0] * r_low + mix[:, 1] * r_obj + mix[:, 2] * r_glob)


def prf_r2(mix: np.ndarray, ncsnr: np.ndarray) -> np.ndarray:
    """The R2 (percent) mini-NSD writes into ``prf_R2``: 100 x the fraction of a voxel's single-trial variance that
    its low-level pRF component explains, ``100 * m0^2 / (m0^2 + m1^2 + m2^2) * ncsnr^2 / (ncsnr^2 + 1)`` from its
    truth (``mix`` weights of the three z-scored response components, taken as uncorrelated, and its true ncsnr:
    signal variance over signal plus noise variance). Deterministic; high for early voxels, near 0 for higher ones."""
    m2 = np.asarray(mix, np.float64) ** 2
    s2 = np.asarray(ncsnr, np.float64) ** 2
    return 100 * m2[:, 0] / np.maximum(m2.sum(1), 1e-12) * s2 / (s2 + 1)


def prf_volumes(ijk: np.ndarray, prf_x: np.ndarray, prf_y: np.ndarray, prf_sigma: np.ndarray, mix: np.ndarray,
                ncsnr: np.ndarray, shape: tuple[int, int, int], image_size: int) -> dict[str, np.ndarray]:  # fmt: skip
    """NSD's pRF volumes of the truth: {file name: float32 (X, Y, Z)}, NaN outside the voxels ``ijk`` (nsdgeneral).

    Centres and sigma (stimulus pixels, x right, y down) become NSD's angle (degrees 0-360 counter-clockwise from the
    right horizontal meridian, y up; NaN at eccentricity 0), eccentricity and size (degrees; the image spans
    VIEW_DEG), through :mod:`lib.data.prf`; R2 is :func:`prf_r2`. No random numbers."""
    angle, ecc = prf_lib.pixels_to_prf(np.column_stack([prf_x, prf_y]), image_size)
    fields = {"angle": angle, "eccentricity": ecc, "size": prf_lib.pixels_to_size(prf_sigma, image_size),
              "r2": prf_r2(mix, ncsnr)}  # fmt: skip
    out = {}
    for field, values in fields.items():
        vol = np.full(shape, np.nan, np.float32)
        vol[tuple(np.asarray(ijk).T)] = values
        if field == "angle":
            vol[vol >= 360] = 0  # float32 rounding of an angle just below 360
        out[prf_lib.FILES[field]] = vol
    return out


def add_prf_files(root: str | Path) -> list[Path]:
    """Write the pRF files that a mini-NSD written before they existed lacks, from its ground truth (the bytes
    :func:`simulate` writes today; nothing else changes); returns the files written."""
    root = Path(root)
    info = json.loads((root / MARKER).read_text())
    shape, affine = make_grid(float(info["config"]["voxel_mm"]))
    written = []
    for s in range(1, int(info["subjects"]) + 1):
        func = root / f"nsddata/ppdata/{_subj(s)}/{SPACE}"
        missing = [name for name in prf_lib.FILES.values() if not (func / name).is_file()]
        if not missing:
            continue
        with h5py.File(root / f"mininsd/groundtruth_{_subj(s)}.hdf5", "r") as f:
            truth = {k: f[k][()] for k in ("ijk", "prf_x", "prf_y", "prf_sigma", "mix", "ncsnr")}
        vols = prf_volumes(**truth, shape=shape, image_size=int(info["config"]["image_size"]))
        for name in missing:
            with atomic_path(func / name) as tmp:
                tmp.write_bytes(_nifti_gz(vols[name], affine))
            written.append(func / name)
    return written


# ================================================================================================================
# design


@dataclass
class Design:
    masterordering: np.ndarray  # (n_trials,) 1-based index into a subject's image list
    subjectim: np.ndarray  # (n_subjects, n_shared + n_unique) 1-based 73k-style ids (nsdId + 1)
    sharedix: np.ndarray  # (n_shared,) 1-based ids of the shared images

    def trial_ids(self, subject: int) -> np.ndarray:
        """1-based 73k-style image id of each of the subject's trials."""
        return self.subjectim[subject - 1][self.masterordering - 1]


def make_design(cfg: SimConfig, n_subjects: int, rng: np.random.Generator) -> Design:
    """NSD's scheme, smaller: shared images 3x, each subject's own images 1-3x, one trial order for all subjects.
    The shared images and subject 1's own are the first ``n_shared + n_unique`` ids, shuffled, whatever the number
    of subjects; each further subject's own images follow in a block, so that adding subjects changes nothing of
    subject 1's."""
    first = cfg.n_shared + cfg.n_unique
    ids = rng.permutation(first) + 1
    shared = np.sort(ids[: cfg.n_shared])
    later = first + 1 + np.arange((n_subjects - 1) * cfg.n_unique).reshape(n_subjects - 1, cfg.n_unique)
    own = np.concatenate([ids[cfg.n_shared :][None], later])
    subjectim = np.concatenate([np.tile(shared, (n_subjects, 1)), own], axis=1)
    reps = np.ones(cfg.n_shared + cfg.n_unique, int)
    reps[: cfg.n_shared] = 3
    extra = cfg.n_trials - reps.sum()
    slots = np.repeat(np.arange(cfg.n_shared, cfg.n_shared + cfg.n_unique), 2)  # two more showings possible
    reps += np.bincount(rng.choice(slots, size=extra, replace=False), minlength=len(reps))
    order = rng.permutation(np.repeat(np.arange(1, len(reps) + 1), reps))
    return Design(order.astype(np.int64), subjectim.astype(np.int64), shared.astype(np.int64))


# ================================================================================================================
# writers (deterministic bytes: no time stamps in gzip, MAT or HDF5 headers)


def _nifti_gz(data: np.ndarray, affine: np.ndarray) -> bytes:

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=4)  # MNI
    img.set_sform(affine, code=4)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _savemat(path: Path, arrays: dict) -> None:

    buf = io.BytesIO()
    savemat(buf, arrays, do_compression=False, oned_as="row")
    raw = bytearray(buf.getvalue())
    head = b"MATLAB 5.0 MAT-file, written by mini-NSD (lib.simulate)"
    raw[:116] = head.ljust(116, b" ")  # scipy stamps the creation time here; keep files reproducible
    _write(path, bytes(raw))


def write_betas(
    path: Path, betas_int16: np.ndarray, ijk: np.ndarray, shape_xyz: tuple[int, int, int]
) -> None:
    """An NSD betas file: dataset ``betas`` (trials, Z, Y, X) int16, one chunk per voxel, uncompressed.

    Only voxels of the liberal brain mask are allocated (others read as the fill value 0, as NSD's zeros).
    ``betas_int16`` is (trials, voxels) in the order of ``ijk``.
    """
    n_trials = betas_int16.shape[0]
    X, Y, Z = shape_xyz
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", libver="earliest", track_order=False) as f:
        d = f.create_dataset(
            "betas", shape=(n_trials, Z, Y, X), dtype="<i2", chunks=(n_trials, 1, 1, 1), fillvalue=0,
            track_times=False,
        )  # fmt: skip
        cols = np.ascontiguousarray(betas_int16.T.astype("<i2"))
        for v, (i, j, k) in enumerate(ijk):
            d.id.write_direct_chunk((0, int(k), int(j), int(i)), cols[v].tobytes())


def _ncsnr_from_betas(z_sessions: list[np.ndarray], trial_ids: np.ndarray) -> np.ndarray:
    """NSD's formula on per-session z-scored betas: v2 = mean over 3-trial images of the unbiased variance."""
    z = np.concatenate(z_sessions)
    ids, counts = np.unique(trial_ids, return_counts=True)
    three = ids[counts == 3]
    rows = [np.flatnonzero(trial_ids == i) for i in three]
    v2 = np.mean([z[r].var(0, ddof=1) for r in rows], axis=0)
    return (np.sqrt(np.maximum(0, 1 - v2)) / np.sqrt(v2)).astype(np.float32)


# ================================================================================================================
# the whole dataset


def _subj(s: int) -> str:
    return f"subj{s:02d}"


def simulate(out: str | Path, profile: str = "mini", n_subjects: int = 1, seed: int = 0, force: bool = False,
             config: SimConfig | None = None) -> dict:  # fmt: skip
    """Write a mini-NSD dataset to ``out`` (atomically) and return its summary (also saved as MINI_NSD.json)."""
    t0 = time.perf_counter()
    if config is None:
        if profile not in PROFILES:
            raise ValueError(f"profile={profile!r}: expected one of {sorted(PROFILES)}")
        config = PROFILES[profile]
    config.check()
    if not 1 <= n_subjects <= 8:
        raise ValueError(f"subjects={n_subjects}: expected 1..8 (NSD has 8)")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(_lock(out), f"{out} (a mini-NSD being written)"):
        return _simulate_locked(out, config, profile, n_subjects, seed, force, t0)


def _lock(root: Path) -> Path:
    """The lock beside a dataset folder (``.<name>.lock``): held while it is written, so that two first runs
    neither write it twice nor delete it under each other."""
    return root.parent / f".{root.name}.lock"


def _simulate_locked(out: Path, config: SimConfig, profile: str, n_subjects: int, seed: int, force: bool,
                     t0: float) -> dict:  # fmt: skip
    if out.exists() and any(out.iterdir()):
        # not ours: never replaced, and no --force advice that would delete it
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{out}: folder exists, is not empty and holds no mini-NSD ({MARKER}); "
                                  "choose an empty or new folder")  # fmt: skip
        if not force:
            raise FileExistsError(
                f"{out}: holds a mini-NSD already (pass force=True / --force to replace it)"
            )
    # a killed writer's folder: tempfile's name for it (8 characters after the prefix); only lock holders make them
    ours = re.compile(rf"^\.{re.escape(out.name)}\.[a-z0-9_]{{8}}$")
    for stale in out.parent.iterdir():
        if ours.match(stale.name) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700; the dataset gets the permissions mkdir would give
    try:
        # one BLAS thread: sums in the same order on any machine, so the same seed gives the same bytes
        with threadpool_limits(1):
            summary = _simulate_into(tmp, config, profile, n_subjects, seed)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        _write(tmp / MARKER, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def _scene_draws(cfg: SimConfig, n_images: int, rng: np.random.Generator):
    """(scene, captions) of each stimulus in order, drawn from the stimulus stream ``rng``."""
    for _ in range(n_images):
        s = sc.sample_scene(rng)
        yield s, sc.captions(s, rng, cfg.n_captions)


#: the spawn key of the stream that draws the COCO stand-in ids of the images of subjects 2 and later (past the
#: keys of the stimulus, design and 8 subject streams)
LATER_IDS = 99


def stimulus_scenes(profile: str, seed: int = 0, n_subjects: int = 1,
                    config: SimConfig | None = None) -> list[tuple[sc.Scene, list[str]]]:  # fmt: skip
    """The (scene, captions) of every stimulus :func:`simulate` draws for these settings, without rendering: one
    stream, so that the first ``n_shared + n_unique`` (the shared images and subject 1's) are the same for any
    number of subjects."""
    cfg = config or PROFILES[profile]
    s_stim = np.random.SeedSequence(seed).spawn(2 + n_subjects)[0]
    return list(_scene_draws(cfg, cfg.n_shared + n_subjects * cfg.n_unique, np.random.default_rng(s_stim)))


def _simulate_into(root: Path, cfg: SimConfig, profile: str, n_subjects: int, seed: int) -> dict:
    ss = np.random.SeedSequence(seed)
    s_stim, s_design, *s_subjects = ss.spawn(2 + n_subjects)
    rng_stim = np.random.default_rng(s_stim)
    design = make_design(cfg, n_subjects, np.random.default_rng(s_design))
    n_first = cfg.n_shared + cfg.n_unique  # the shared images and subject 1's: the same for any n_subjects
    n_images = n_first + (n_subjects - 1) * cfg.n_unique

    # ---- stimuli, captions, attributes
    images = np.zeros((n_images, cfg.image_size, cfg.image_size, 3), np.uint8)
    coverage, scene_list, caps, feats, objects = [], [], [], [], []
    draws = _scene_draws(cfg, n_images, rng_stim)
    for i in progress(range(n_images), desc="render stimuli", leave=False):
        s, c = next(draws)
        images[i], cov = sc.render(s, cfg.image_size)
        coverage.append(cov)
        scene_list.append(s)
        caps.append(c)
        feats.append(sc.global_features(s, cov))
        objects.append([(sc.SHAPES.index(o.shape), list(sc.COLOURS).index(o.colour)) for o in s.objects])
        if (
            i == n_first - 1
        ):  # the stream as it stands after the first block: its COCO ids are drawn from here
            rng_first = np.random.default_rng()
            rng_first.bit_generator.state = rng_stim.bit_generator.state
    feats = np.stack(feats)
    stim_dir = root / "nsddata_stimuli/stimuli/nsd"
    stim_dir.mkdir(parents=True)
    with h5py.File(stim_dir / "nsd_stimuli.hdf5", "w", libver="earliest") as f:
        f.create_dataset(
            "imgBrick", data=images, chunks=(1, cfg.image_size, cfg.image_size, 3), track_times=False
        )
    # stand-ins for COCO ids, unique: the first block's from the stimulus stream as it stood after its images (the
    # same ids for any number of subjects), the later subjects' after them, from a stream of their own
    rng_later = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(LATER_IDS,)))
    coco_ids = (
        100000 + np.r_[rng_first.permutation(n_first), n_first + rng_later.permutation(n_images - n_first)]
    )
    split = np.where(np.r_[rng_first.random(n_first), rng_later.random(n_images - n_first)] < 0.1, "val2017",
                     "train2017")  # fmt: skip
    for which in ("train2017", "val2017"):
        sel = np.flatnonzero(split == which)
        coco = {
            "info": {
                "description": "mini-NSD captions (simulated, COCO caption format)",
                "version": str(SIM_VERSION),
            },
            "licenses": [],
            "images": [
                {
                    "id": int(coco_ids[i]),
                    "file_name": f"{coco_ids[i]:012d}.jpg",
                    "height": cfg.image_size,
                    "width": cfg.image_size,
                }
                for i in sel
            ],  # fmt: skip
            "annotations": [
                {"id": int(coco_ids[i]) * 10 + k, "image_id": int(coco_ids[i]), "caption": c}
                for i in sel
                for k, c in enumerate(caps[i])
            ],
        }
        _write(stim_dir / f"annotations/captions_{which}.json", json.dumps(coco, indent=1))

    # ---- design and stimulus table
    exp = root / "nsddata/experiments/nsd"
    _savemat(
        exp / "nsd_expdesign.mat",
        {
            "masterordering": design.masterordering[None, :].astype(np.float64),
            "subjectim": design.subjectim.astype(np.float64),
            "sharedix": design.sharedix[None, :].astype(np.float64),
            "basiccnt": np.zeros((3, cfg.n_sessions)),
            "stimpattern": np.zeros((cfg.n_sessions, cfg.runs_per_session, 1)),
        },
    )
    table = pd.DataFrame(
        {
            "cocoId": coco_ids,
            "cocoSplit": split,
            "cropBox": ["(0, 0, 0, 0)"] * n_images,
            "loss": 0.0,
            "nsdId": np.arange(n_images),
            "flagged": False,
            "BOLD5000": False,
            "shared1000": np.isin(np.arange(n_images) + 1, design.sharedix),
        }
    )
    for s in range(1, 9):
        table[f"subject{s}"] = (
            np.isin(np.arange(n_images) + 1, design.subjectim[s - 1]).astype(int) if s <= n_subjects else 0
        )
    for s in range(1, 9):
        reps = np.zeros((n_images, 3), int)
        if s <= n_subjects:
            ids73 = design.trial_ids(s)
            seen = np.zeros(n_images, int)
            for t, i in enumerate(ids73):
                reps[i - 1, seen[i - 1]] = t + 1
                seen[i - 1] += 1
        for r in range(3):
            table[f"subject{s}_rep{r}"] = reps[:, r]
    _write(exp / "nsd_stim_info_merged.csv", table.to_csv())

    # ---- ground truth of the stimuli
    gt = root / "mininsd"
    _write(gt / "scenes.json", json.dumps([dict(nsdId=i, **s.to_dict()) for i, s in enumerate(scene_list)]))
    low, cov = stimulus_maps(images, coverage, cfg.pool_size)
    del coverage

    summary = {
        "simulator": "mini-NSD", "version": SIM_VERSION, "profile": profile, "seed": seed, "subjects": n_subjects,
        "config": dataclasses.asdict(cfg), "n_images": n_images, "n_trials_per_subject": cfg.n_trials,
        "space": "MNI152NLin2009cAsym", "voxels": {},
    }  # fmt: skip
    jobs = [
        (root, s, cfg, design, low, cov, feats, objects, s_subjects[s - 1]) for s in range(1, n_subjects + 1)
    ]
    workers = min(len(jobs), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if workers > 1:  # one BLAS thread each: the subjects side by side, the same bytes as one after another
        import multiprocessing  # lazy: only for several subjects
        from concurrent.futures import ProcessPoolExecutor  # lazy: only for several subjects

        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent) as pool:
            done = list(pool.map(_subject_job, jobs))
    else:
        done = [_subject_job(job) for job in jobs]
    for s, voxels in enumerate(done, 1):
        summary["voxels"][_subj(s)] = voxels
    return summary


def _subject_job(job: tuple) -> dict:
    *args, seed = job
    with threadpool_limits(1):
        return _simulate_subject(*args, np.random.default_rng(seed))


def _simulate_subject(root: Path, s: int, cfg: SimConfig, design: Design, low, cov, feats, objects,
                      rng: np.random.Generator) -> dict:  # fmt: skip
    r_brain, r_tune, r_noise = (np.random.default_rng(x) for x in rng.bit_generator.seed_seq.spawn(3))
    brain = make_brain(cfg, r_brain)
    tuning = make_tuning(cfg, brain, r_tune)
    shape = brain.brainmask.shape
    func = root / f"nsddata/ppdata/{_subj(s)}/{SPACE}"
    x_mm = np.indices(shape)[0] * cfg.voxel_mm + FOV_MIN[0]
    for name, vol in brain.rois.items():
        _write(func / f"roi/{name}.nii.gz", _nifti_gz(vol, brain.affine))
        for hemi, side in (("lh", x_mm < 0), ("rh", x_mm >= 0)):
            _write(
                func / f"roi/{hemi}.{name}.nii.gz",
                _nifti_gz(np.where(side, vol, -1).astype(np.int16), brain.affine),
            )
        _write(
            root / f"nsddata/freesurfer/{_subj(s)}/label/{name}.mgz.ctab",
            roi_lib.format_ctab(brain.ctabs[name]),
        )
    _write(func / "brainmask.nii.gz", _nifti_gz(brain.brainmask.astype(np.int16), brain.affine))
    prf_vols = prf_volumes(tuning.ijk, tuning.prf_x, tuning.prf_y, tuning.prf_sigma, tuning.mix, tuning.ncsnr,
                           shape, cfg.image_size)  # fmt: skip
    for name, vol in prf_vols.items():
        _write(func / name, _nifti_gz(vol, brain.affine))

    # responses of every image, noise, session drifts; only brain-mask voxels are stored
    # (n_images, V): responses to the images this subject sees, z-scored over them (NaN for the others): subject 1
    # sees the whole first block, read as a slice, so its responses are those of a dataset of that block alone
    seen = np.sort(design.subjectim[s - 1] - 1)
    rows = slice(0, len(seen)) if np.array_equal(seen, np.arange(len(seen))) else seen
    signal = np.full((len(low), len(tuning.ijk)), np.nan, np.float32)
    picked = objects[rows] if isinstance(rows, slice) else [objects[i] for i in rows]
    signal[rows] = noise_free_responses(tuning, low[rows], cov[rows], feats[rows], picked, cfg)
    in_brain = np.argwhere(brain.brainmask)
    # nsdgeneral lies inside the brain mask and both are listed in NIfTI order, so the brain-mask columns
    # `has` are the nsdgeneral voxels in their own order
    has = (brain.rois["nsdgeneral"] > 0)[tuple(in_brain.T)]
    n_b = len(in_brain)
    snr = np.zeros(n_b, np.float32)
    snr[has] = tuning.ncsnr
    amp = r_noise.uniform(1.0, 2.5, n_b).astype(np.float32)  # % signal change per unit response
    baseline = r_noise.uniform(0.0, 2.0, n_b).astype(np.float32)
    noise_sd = np.where(snr > 0, 1 / np.maximum(snr, 1e-6), 1.0).astype(np.float32)
    k_shared = 5
    load = r_noise.normal(0, 1, (k_shared, n_b)).astype(np.float32)
    load /= np.linalg.norm(load, axis=0)  # unit variance of each voxel's shared noise, so ncsnr stays exact
    ids73 = design.trial_ids(s)
    nsd_ids = ids73 - 1
    sess_gain = np.exp(r_noise.normal(0, 0.25, (cfg.n_sessions, n_b))).astype(np.float32)
    sess_offset = r_noise.normal(0, 3.0, (cfg.n_sessions, n_b)).astype(np.float32)
    betas_dir = root / f"nsddata_betas/ppdata/{_subj(s)}/{SPACE}/{BETAS_VERSION}"
    z_sessions = []
    rows = []
    T = cfg.trials_per_session
    for sess in progress(range(cfg.n_sessions), desc=f"{_subj(s)} sessions", leave=False):
        ids = nsd_ids[sess * T : (sess + 1) * T]
        resp = np.zeros((T, n_b), np.float32)
        resp[:, has] = signal[ids]
        eps = r_noise.standard_normal((T, n_b), dtype=np.float32)
        shared = r_noise.standard_normal((T, k_shared), dtype=np.float32) @ load
        noise = np.sqrt(1 - cfg.shared_noise) * eps + np.sqrt(cfg.shared_noise) * shared
        pct = sess_gain[sess] * (baseline + amp * (resp + noise_sd * noise)) + sess_offset[sess]
        b16 = np.clip(np.round(pct * 300), -32768, 32767).astype(np.int16)
        write_betas(betas_dir / f"betas_session{sess + 1:02d}.hdf5", b16, in_brain, shape)
        f = b16[:, has].astype(np.float32)
        z_sessions.append((f - f.mean(0)) / np.where(f.std(0) > 0, f.std(0), 1))
        runs = np.array_split(np.arange(T), cfg.runs_per_session)
        for r, trials in enumerate(runs, 1):
            for n, t in enumerate(trials, 1):  # NSD numbers trials within each run
                g = sess * T + t
                rows.append((s, sess + 1, r, n, ids73[g], design.masterordering[g]))
    # ncsnr as NSD computes it, from the (simulated) data: full volume, 0 outside the signal voxels
    est = _ncsnr_from_betas(z_sessions, nsd_ids)
    vol = np.zeros(shape, np.float32)
    vol[tuple(tuning.ijk.T)] = est
    _write(betas_dir / "ncsnr.nii.gz", _nifti_gz(vol, brain.affine))

    beh = pd.DataFrame(rows, columns=["SUBJECT", "SESSION", "RUN", "TRIAL", "73KID", "10KID"])
    first = ~pd.Series(beh["73KID"]).duplicated()
    beh["ISOLD"] = (~first).astype(int)
    beh["MISSINGDATA"] = 0
    _write(root / f"nsddata/ppdata/{_subj(s)}/behav/responses.tsv", beh.to_csv(sep="\t", index=False))

    with h5py.File(root / f"mininsd/groundtruth_{_subj(s)}.hdf5", "w", libver="earliest") as f:
        f.attrs["description"] = (
            "mini-NSD ground truth of the nsdgeneral voxels (NIfTI order); see data_manifests/mini_nsd.md"
        )
        for k, v in dataclasses.asdict(tuning).items():
            f.create_dataset(k, data=v.astype("S16") if v.dtype.kind in "UO" else v, track_times=False)
        f.create_dataset("signal", data=signal, track_times=False)
        f.create_dataset("global_features", data=feats, track_times=False)
        f.create_dataset("global_feature_names", data=np.array(sc.global_feature_names(), dtype="S24"),
                         track_times=False)  # fmt: skip
        f.create_dataset("session_gain", data=sess_gain[:, has], track_times=False)
        f.create_dataset("session_offset", data=sess_offset[:, has], track_times=False)
    return {name: int((vol_ > 0).sum()) for name, vol_ in brain.rois.items()} | {"brainmask": int(n_b)}


def ensure(root: str | Path, profile: str, seed: int = 0, n_subjects: int = 1) -> tuple[Path, float | None]:
    """Return ``root`` holding a dataset, simulating it first when ``profile`` is a simulated one.

    Returns (root, seconds spent simulating, or None when the dataset was already there). A mini-NSD already there
    that lacks the pRF files (written before the simulator wrote them) gets them from its ground truth
    (:func:`add_prf_files`): the same bytes a fresh simulation writes, every other file untouched. A mini-NSD of
    fewer than ``n_subjects`` subjects is simulated again with them (atomically); the subjects it had keep their
    files byte for byte (:func:`make_design`), so caches keyed by them stay valid.
    """
    root = Path(root)
    if (root / DESIGN).is_file():
        marker = root / MARKER
        if not marker.is_file():
            return root, None
        if profile in PROFILES and int(json.loads(marker.read_text()).get("subjects", 1)) < n_subjects:
            return _more_subjects(root, profile, seed, n_subjects)
        if profile in PROFILES:
            have = json.loads(marker.read_text())
            want = {
                "profile": profile,
                "seed": seed,
                "version": SIM_VERSION,
                "config": dataclasses.asdict(PROFILES[profile]),
            }
            diff = sorted(k for k in want if have.get(k) != want[k])
            if diff:
                raise ValueError(
                    f"{marker}: holds mini-NSD profile {have.get('profile')!r} seed {have.get('seed')} (simulator "
                    f"v{have.get('version')}), which differs in {diff} from profile {profile!r} seed {seed} "
                    f"(v{SIM_VERSION}); delete {root} or choose another data root"
                )
        try:  # a mini-NSD written before the simulator wrote pRF files gets them, from its own ground truth
            add_prf_files(root)
        except (OSError, KeyError) as e:
            warnings.warn(
                f"{root}: cannot add the pRF files (prf_*.nii.gz) to this mini-NSD ({e})", stacklevel=2
            )
        return root, None
    if any((root / d).is_dir() for d in ("nsddata", "nsddata_betas", "nsddata_stimuli")):
        raise FileNotFoundError(f"data root {root}: an incomplete NSD copy, no {DESIGN}; expected the NSD layout "
                                f"(make fetch SUBJECT=1 NSD_ROOT={root} downloads it), never a simulation over it")  # fmt: skip
    if profile not in PROFILES:
        raise ValueError(
            f"data root {root}: holds no NSD dataset, and profile {profile!r} is not simulated "
            f"({sorted(PROFILES)} are); point NSD_ROOT at an NSD copy"
        )
    root.resolve().parent.mkdir(parents=True, exist_ok=True)
    with exclusive(_lock(root.resolve()), f"{root} (a mini-NSD being written)", wait=ENSURE_WAIT):
        if (root / MARKER).is_file():  # another run wrote it while this one waited
            return root, None
        summary = _simulate_locked(root.resolve(), PROFILES[profile], profile, n_subjects, seed, False,
                                   time.perf_counter())  # fmt: skip
    return root, summary["seconds"]


def _more_subjects(root: Path, profile: str, seed: int, n_subjects: int) -> tuple[Path, float]:
    """:func:`ensure` of a mini-NSD with fewer subjects than asked: the whole dataset again with ``n_subjects``
    (under the dataset's lock; a run that finds it done while waiting returns)."""
    with exclusive(_lock(root.resolve()), f"{root} (a mini-NSD being written)", wait=ENSURE_WAIT):
        have = json.loads((root / MARKER).read_text())
        if int(have.get("subjects", 1)) >= n_subjects:
            return root, 0.0
        if have.get("profile") != profile or have.get("seed") != seed:
            raise ValueError(f"{root / MARKER}: holds mini-NSD profile {have.get('profile')!r} seed "
                             f"{have.get('seed')}, not {profile!r} seed {seed}; delete {root} or choose another "
                             "data root")  # fmt: skip
        print(f"{root}: {have.get('subjects', 1)} subject(s), {n_subjects} wanted: simulating again with "
              f"{n_subjects} (the earlier subjects' files stay the same bytes)")  # fmt: skip
        summary = _simulate_locked(root.resolve(), PROFILES[profile], profile, n_subjects, seed, True,
                                   time.perf_counter())  # fmt: skip
    return root, summary["seconds"]


def load_ground_truth(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a ``groundtruth_subjAA.hdf5`` file (strings decoded)."""
    with h5py.File(path, "r") as f:
        return {k: f[k][()].astype(str) if f[k].dtype.kind == "S" else f[k][()] for k in f}


def ncsnr_recovery(ds, subject: int, roi: str = "nsdgeneral") -> float:
    """Pearson r between the ncsnr NSD's formula estimates from the simulated betas and each voxel's true ncsnr."""
    gt = load_ground_truth(ds.ground_truth_path(subject))
    mask = ds.roi_mask(subject, roi)
    sel = mask[tuple(gt["ijk"].T)]  # ground truth covers nsdgeneral; keep the ROI's voxels
    est = ds.ncsnr(subject)[tuple(gt["ijk"][sel].T)]
    return float(np.corrcoef(est, gt["ncsnr"][sel])[0, 1])


def manifest(root: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every file below ``root`` (for checking that two runs wrote the same bytes)."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.data.simulate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="dataset root to write")
    ap.add_argument("--profile", default="mini", choices=sorted(PROFILES))
    ap.add_argument("--subjects", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ncsnr", type=float, help="median noise-ceiling SNR of nsdgeneral voxels (profile default)"
    )
    ap.add_argument("--force", action="store_true", help="replace an existing dataset at --out")
    a = ap.parse_args(argv)
    config = None if a.ncsnr is None else dataclasses.replace(PROFILES[a.profile], ncsnr=a.ncsnr)
    try:
        summary = simulate(a.out, a.profile, a.subjects, a.seed, a.force, config=config)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"mini-NSD ({a.profile}, seed {a.seed}) written to {a.out} in {summary['seconds']} s")
    for subj, counts in summary["voxels"].items():
        print(f"  {subj}: nsdgeneral {counts['nsdgeneral']} voxels, brain mask {counts['brainmask']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def truth_columns(gt: dict, voxel_ijk: np.ndarray) -> np.ndarray:
    """Columns of the ground truth's per-voxel arrays for the given voxels (NIfTI indices, within nsdgeneral)."""
    col = {tuple(v): k for k, v in enumerate(gt["ijk"].tolist())}
    try:
        return np.array([col[tuple(v)] for v in np.asarray(voxel_ijk).tolist()], dtype=np.int64)
    except KeyError as e:
        raise ValueError(
            f"voxel {e.args[0]} lies outside nsdgeneral: the ground truth has no response for it"
        ) from None


def voxel_truth(ds, subject: int, voxel_ijk: np.ndarray) -> dict[str, np.ndarray] | None:
    """The simulator's truth for prepared voxels (NIfTI indices ``voxel_ijk``, in their order), or None for a
    dataset that is not simulated: ``area`` (V,) visual area names, ``prf_xy`` (V, 2) pRF centres in stimulus
    pixels (x right, y down; NaN without a pRF), ``ncsnr`` (V,), and ``signal`` (images, V) noise-free responses
    by 0-based nsdId."""
    if not ds.is_simulated:
        return None
    gt = load_ground_truth(ds.ground_truth_path(subject))
    cols = truth_columns(gt, voxel_ijk)
    return {"area": gt["area"][cols], "prf_xy": np.stack([gt["prf_x"], gt["prf_y"]], 1)[cols],
            "ncsnr": gt["ncsnr"][cols], "signal": gt["signal"][:, cols]}  # fmt: skip


def noise_free_for(ds, subject: int, voxel_ijk: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The simulator's noise-free responses (ids x voxels) of the given voxels (NIfTI indices, all within
    nsdgeneral) to the given 0-based nsdIds: the data an encoder's ceiling is measured on."""
    gt = load_ground_truth(ds.ground_truth_path(subject))
    return gt["signal"][np.asarray(ids)][:, truth_columns(gt, voxel_ijk)]
