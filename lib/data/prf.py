"""NSD's population receptive field (pRF) conventions: file names, units, and conversion to and from image pixels.

NSD's volumes ``prf_angle``, ``prf_eccentricity``, ``prf_size`` and ``prf_R2`` (``nsddata/ppdata/subjAA/<space>/``)
hold, per voxel, the polar angle in degrees 0-360 counter-clockwise from the right horizontal meridian (90 = upper
vertical meridian, y up; NaN where the eccentricity is exactly 0), the eccentricity and size (Gaussian sigma) in
degrees of visual angle, and the percent variance explained; NaN where a voxel has no data. The pRF aperture and the
stimuli span :data:`VIEW_DEG` degrees, so for a W x H image: x = ecc cos(angle), y = ecc sin(angle) (degrees, x
right, y up); column = (x / 8.4 + 0.5) W, row = (0.5 - y / 8.4) H (rows run down); sigma_px = size / 8.4 W.
See ../shared/docs/lowlevel_and_prf.md.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

#: visual angle (degrees) that NSD's stimuli and its pRF mapping aperture span
VIEW_DEG = 8.4
#: field of :class:`PRF` -> NSD's file name (in the subject's functional folder)
FILES = {
    "angle": "prf_angle.nii.gz",
    "eccentricity": "prf_eccentricity.nii.gz",
    "size": "prf_size.nii.gz",
    "r2": "prf_R2.nii.gz",
}


class PRFError(ValueError):
    """A bad argument to a pRF conversion; the message names the parameter."""


def _extent(width, height=None) -> tuple[float, float]:
    for name, v in (("width", width), ("height", height)):
        if v is None and name == "height":
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v <= 0:
            raise PRFError(f"{name}={v!r}: expected a positive image size in pixels")
    return float(width), float(width if height is None else height)


def _vector(name: str, x, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise PRFError(f"{name}: shape {a.shape}, expected one value per voxel (N,)")
    if n is not None and len(a) != n:
        raise PRFError(f"{name}: {len(a)} values, expected {n} (one per voxel, as the other arguments)")
    return a


def _points(name: str, xy) -> np.ndarray:
    a = np.asarray(xy, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise PRFError(f"{name}: shape {a.shape}, expected (N, 2) points")
    return a


def _nonnegative(name: str, a: np.ndarray) -> None:
    if (a < 0).any():  # NaN compares False: kept
        raise PRFError(
            f"{name}: {int((a < 0).sum())} negative values (e.g. {a[a < 0][0]:g}); expected >= 0 degrees"
        )


def polar_to_degrees(angle, eccentricity) -> np.ndarray:
    """(N, 2) visual-field positions in degrees (x right, y up) of NSD's (angle, eccentricity); eccentricity 0 gives
    the centre whatever its angle (NSD's NaN there); NaN otherwise propagates."""
    ecc = _vector("eccentricity", eccentricity)
    ang = _vector("angle", angle, len(ecc))
    _nonnegative("eccentricity", ecc)
    t = np.deg2rad(ang)
    xy = np.stack([ecc * np.cos(t), ecc * np.sin(t)], 1)
    xy[ecc == 0] = 0.0
    return xy


def degrees_to_polar(xy_deg) -> tuple[np.ndarray, np.ndarray]:
    """(angle, eccentricity) in NSD's convention of visual-field positions (N, 2) in degrees (x right, y up): angle
    in [0, 360) counter-clockwise from the right horizontal meridian, NaN where the eccentricity is exactly 0."""
    xy = _points("xy_deg", xy_deg)
    ecc = np.hypot(xy[:, 0], xy[:, 1])
    ang = np.mod(np.rad2deg(np.arctan2(xy[:, 1], xy[:, 0])), 360.0)
    ang[ang >= 360.0] = 0.0  # mod of a tiny negative angle can round up to 360
    ang[ecc == 0] = np.nan
    return ang, ecc


def degrees_to_pixels(xy_deg, width, height=None) -> np.ndarray:
    """(N, 2) image positions (column, row; x right, y down, 0 = left/top edge) of visual-field positions in
    degrees (x right, y up, 0 = the image centre) for a ``width`` x ``height`` image spanning VIEW_DEG degrees."""
    w, h = _extent(width, height)
    xy = _points("xy_deg", xy_deg)
    return np.stack([(xy[:, 0] / VIEW_DEG + 0.5) * w, (0.5 - xy[:, 1] / VIEW_DEG) * h], 1)


def pixels_to_degrees(xy_px, width, height=None) -> np.ndarray:
    """The inverse of :func:`degrees_to_pixels`: (N, 2) visual-field degrees (x right, y up) of image positions
    (column, row)."""
    w, h = _extent(width, height)
    xy = _points("xy_px", xy_px)
    return np.stack([(xy[:, 0] / w - 0.5) * VIEW_DEG, (0.5 - xy[:, 1] / h) * VIEW_DEG], 1)


def prf_to_pixels(angle, eccentricity, width, height=None) -> np.ndarray:
    """(N, 2) pRF centres in image pixels (column, row; x right, y down) of NSD's angle and eccentricity."""
    _extent(width, height)
    return degrees_to_pixels(polar_to_degrees(angle, eccentricity), width, height)


def pixels_to_prf(xy_px, width, height=None) -> tuple[np.ndarray, np.ndarray]:
    """(angle, eccentricity) in NSD's convention of image positions (N, 2) (column, row) in pixels."""
    return degrees_to_polar(pixels_to_degrees(xy_px, width, height))


def size_to_pixels(size, width) -> np.ndarray:
    """pRF sigma in pixels of a ``width``-pixel image of NSD's size (degrees): size / VIEW_DEG x width."""
    w, _ = _extent(width)
    s = _vector("size", size)
    _nonnegative("size", s)
    return s / VIEW_DEG * w


def pixels_to_size(sigma_px, width) -> np.ndarray:
    """NSD's size (degrees) of a pRF sigma in pixels of a ``width``-pixel image."""
    w, _ = _extent(width)
    s = _vector("sigma_px", sigma_px)
    _nonnegative("sigma_px", s)
    return s / w * VIEW_DEG


@dataclass(frozen=True)
class PRF:
    """NSD's pRF parameters of an ROI's voxels, in the order of ``ijk`` (NIfTI voxel order: the columns of
    ``NSD.betas`` for the same ROI). NaN is kept where a file has it."""

    ijk: np.ndarray  # (V, 3) voxel indices
    angle: np.ndarray  # (V,) degrees, 0-360 counter-clockwise from the right horizontal meridian
    eccentricity: np.ndarray  # (V,) degrees of visual angle
    size: np.ndarray  # (V,) Gaussian sigma, degrees of visual angle
    r2: np.ndarray  # (V,) percent variance explained

    def __len__(self) -> int:
        return len(self.ijk)

    @property
    def valid(self) -> np.ndarray:
        """(V,) bool: a usable centre (finite eccentricity, and a finite angle unless the eccentricity is 0)."""
        ecc = self.eccentricity
        return np.isfinite(ecc) & (np.isfinite(self.angle) | (ecc == 0))

    def centres_px(self, width, height=None) -> np.ndarray:
        """(V, 2) pRF centres in pixels (column, row; x right, y down) of a ``width`` x ``height`` image."""
        return prf_to_pixels(self.angle, self.eccentricity, width, height)

    def sigma_px(self, width) -> np.ndarray:
        """(V,) pRF sigma in pixels of a ``width``-pixel image."""
        return size_to_pixels(self.size, width)

    def at(self, voxel_ijk: np.ndarray) -> PRF:
        """The pRFs of ``voxel_ijk`` (K, 3), in that order (e.g. a prepared ROI's voxels after voxels were
        dropped); a voxel not in this ROI gets NaN."""
        voxel_ijk = np.asarray(voxel_ijk, np.int64).reshape(-1, 3)
        index = {tuple(v): i for i, v in enumerate(np.asarray(self.ijk, np.int64))}
        rows = np.array([index.get(tuple(v), -1) for v in voxel_ijk], np.int64)

        def take(a: np.ndarray) -> np.ndarray:
            return np.where(rows >= 0, np.asarray(a, np.float64)[np.maximum(rows, 0)], np.nan)

        return PRF(voxel_ijk, take(self.angle), take(self.eccentricity), take(self.size), take(self.r2))
