"""Effect centres of voxels against their pRFs from NSD's pRF files: angle, eccentricity, distance, hemifield, with
permutation nulls.

Each voxel's effect centre (image pixels, x right, y down) is compared with its pRF (NSD's angle and eccentricity,
:mod:`lib.data.prf`) by four statistics; the null permutes the pRFs across the voxels given (one ROI), keeping the
effect centres in place, so it asks whether the right voxel lands near its own pRF rather than near anyone's.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from lib.data import prf as prf_lib

#: permutations of the null unless a caller says otherwise, and how many are evaluated at once
PERMUTATIONS = 2000
_CHUNK = 100


class PRFCheckError(ValueError):
    """Inputs that cannot be compared; the message names the parameter."""


def _image_size(image_size) -> tuple[float, float]:
    size = image_size if isinstance(image_size, tuple | list) else (image_size, image_size)
    if len(size) != 2 or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) and v > 0 for v in size
    ):
        raise PRFCheckError(
            f"image_size={image_size!r}: expected a positive size in pixels, or (width, height)"
        )
    return float(size[0]), float(size[1])


def _wrapped(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of angles in degrees, wrapped to [0, 180]."""
    return np.abs(np.mod(a - b + 180.0, 360.0) - 180.0)


def _stats(eff_ang, eff_ecc, eff_deg, prf_ang, prf_ecc, prf_deg, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The four statistics for each row of ``idx`` (P, n): the pRFs taken in that order against the effects."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row of angles gives NaN
        angle = np.nanmedian(_wrapped(eff_ang[None], prf_ang[idx]), axis=1)
    pe = prf_ecc[idx]
    ee = eff_ecc - eff_ecc.mean()
    pe = pe - pe.mean(1, keepdims=True)
    den = np.sqrt((ee**2).sum() * (pe**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (pe * ee[None]).sum(1) / den, np.nan)
    dist = np.median(np.linalg.norm(eff_deg[None] - prf_deg[idx], axis=2), axis=1)
    agree = (np.sign(eff_deg[None, :, 0]) == np.sign(prf_deg[idx, 0])).mean(1)
    return {"angle_error": angle, "ecc_r": r, "distance": dist, "hemifield": agree}


def compare(
    centres_px, angle, eccentricity, image_size, n_perm: int = PERMUTATIONS, seed: int = 0
) -> dict[str, float]:
    """Effect centres (N, 2) in pixels (column, row: x right, y down) of an ``image_size`` image (pixels, or
    (width, height)) against the same N voxels' pRFs (``angle``, ``eccentricity``: NSD's degrees, from the pRF
    files). Returns a JSON-able dict:

    - ``angle_error_deg``: median absolute wrapped difference between the effect's and the pRF's polar angle
      (voxels where either is undefined, at eccentricity 0, are left out of this one: ``n_angle``);
    - ``ecc_r``: Pearson correlation of the effect's and the pRF's eccentricity;
    - ``distance_deg``: median distance between effect centre and pRF centre in degrees of visual angle;
    - ``hemifield_agreement``: fraction of voxels whose effect centre and pRF lie on the same side of the vertical
      meridian (the sign of x; a point on the meridian agrees only with another on it);
    - for each ``<stat>``: ``<stat>_null_median``, ``<stat>_null_mean`` over ``n_perm`` permutations of the pRFs
      across voxels (seeded by ``seed``) and a one-sided permutation p-value ``<stat>_p`` = (1 + #null at least as
      good) / (1 + n_perm) (good: smaller angle error and distance, larger r and agreement);
    - ``distance_ratio`` and ``angle_error_ratio``: observed over the null's median (1 = chance, 0 = perfect);
    - counts: ``n_voxels``, ``n_used``, ``n_nan_prf`` (no usable pRF: NaN eccentricity, or NaN angle off the
      centre), ``n_nan_effect`` (NaN effect centre), ``n_angle``, and ``n_perm``, ``seed``.
    Voxels with a NaN pRF or effect centre are left out and counted.
    """
    w, h = _image_size(image_size)
    c = np.asarray(centres_px, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2:
        raise PRFCheckError(f"centres_px: shape {c.shape}, expected (N, 2) effect centres (column, row)")
    n = len(c)
    ang = np.asarray(angle, dtype=np.float64)
    ecc = np.asarray(eccentricity, dtype=np.float64)
    for name, a in (("angle", ang), ("eccentricity", ecc)):
        if a.shape != (n,):
            raise PRFCheckError(f"{name}: shape {a.shape}, expected ({n},), one value per effect centre")
    if (ecc < 0).any():
        raise PRFCheckError(
            f"eccentricity: {int((ecc < 0).sum())} negative values; expected degrees >= 0 or NaN"
        )
    if np.isinf(c).any() or np.isinf(ang).any():
        raise PRFCheckError("centres_px or angle: infinite values; expected finite numbers or NaN")
    if isinstance(n_perm, bool) or not isinstance(n_perm, numbers.Integral) or n_perm < 1:
        raise PRFCheckError(f"n_perm={n_perm!r}: expected a whole number of permutations >= 1")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise PRFCheckError(f"seed={seed!r}: expected an integer")

    prf_ok = np.isfinite(ecc) & (np.isfinite(ang) | (ecc == 0))
    eff_ok = np.isfinite(c).all(1)
    use = prf_ok & eff_ok
    k = int(use.sum())
    if k < 3:
        raise PRFCheckError(f"centres_px, angle, eccentricity: {k} voxels with a finite effect centre and pRF; "
                            "expected at least 3")  # fmt: skip
    eff_deg = prf_lib.pixels_to_degrees(c[use], w, h)
    eff_ang, eff_ecc = prf_lib.degrees_to_polar(eff_deg)
    prf_ecc = ecc[use]
    prf_ang = np.where(prf_ecc == 0, np.nan, np.mod(ang[use], 360.0))
    prf_deg = prf_lib.polar_to_degrees(np.nan_to_num(prf_ang), prf_ecc)
    args = (eff_ang, eff_ecc, eff_deg, prf_ang, prf_ecc, prf_deg)

    observed = {key: float(v[0]) for key, v in _stats(*args, np.arange(k)[None]).items()}
    rng = np.random.default_rng(int(seed))
    parts = []
    for start in range(0, int(n_perm), _CHUNK):
        p = min(_CHUNK, int(n_perm) - start)
        parts.append(_stats(*args, rng.permuted(np.tile(np.arange(k), (p, 1)), axis=1)))
    null = {key: np.concatenate([q[key] for q in parts]) for key in observed}

    names = {"angle_error": "angle_error_deg", "ecc_r": "ecc_r", "distance": "distance_deg",
             "hemifield": "hemifield_agreement"}  # fmt: skip
    smaller_is_better = {"angle_error", "distance"}
    out: dict[str, float] = {}
    for key, name in names.items():
        obs, nul = observed[key], null[key]
        nul = nul[np.isfinite(nul)]
        stem = name.removesuffix("_deg")
        out[name] = obs
        out[f"{stem}_null_median"] = float(np.median(nul)) if len(nul) else float("nan")
        out[f"{stem}_null_mean"] = float(np.mean(nul)) if len(nul) else float("nan")
        if np.isfinite(obs) and len(nul):
            hits = (nul <= obs) if key in smaller_is_better else (nul >= obs)
            out[f"{stem}_p"] = float((1 + hits.sum()) / (1 + len(nul)))
        else:
            out[f"{stem}_p"] = float("nan")
    for stem, name in (("distance", "distance_deg"), ("angle_error", "angle_error_deg")):
        med = out[f"{stem}_null_median"]
        out[f"{stem}_ratio"] = float(out[name] / med) if med > 0 else float("nan")
    n_angle = int((np.isfinite(eff_ang) & np.isfinite(prf_ang)).sum())
    out |= {"n_voxels": n, "n_used": k, "n_nan_prf": int((~prf_ok).sum()), "n_nan_effect": int((~eff_ok).sum()),
            "n_angle": n_angle, "n_perm": int(n_perm), "seed": int(seed)}  # fmt: skip
    return out
