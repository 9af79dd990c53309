"""Report figures: brain maps on the anatomy, stimulus grids, ROI and noise-ceiling summaries; atomic PNG saving."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .io import atomic_path
from .nsd import NSD

#: regions drawn on the ROI map: display label -> (ROI name, colour)
ROI_MAP = {
    1: ("V1", "#1f77b4"),
    2: ("V2", "#2ca02c"),
    3: ("V3", "#bcbd22"),
    4: ("hV4", "#ff7f0e"),
    5: ("midventral", "#f7b6d2"),
    6: ("midlateral", "#c5b0d5"),
    7: ("midparietal", "#c49c94"),
    8: ("ventral", "#d62728"),
    9: ("lateral", "#9467bd"),
    10: ("parietal", "#8c564b"),
}


def save(fig: plt.Figure, path: str | Path, dpi: int = 130, close: bool = False) -> Path:
    """Save ``fig`` as PNG atomically (left open so that a notebook still shows it, unless ``close``)."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    if close:
        plt.close(fig)
    return Path(path)


def background_image(ds: NSD, subject: int):
    """Anatomy to draw a subject's maps on: the MNI152 template for mini-NSD (its space), NSD's
    ``T1_to_func1pt8mm.nii.gz`` for real NSD when present, else no background."""
    if ds.is_simulated:
        from nilearn import datasets

        return datasets.load_mni152_template(resolution=1)
    t1 = ds.func_dir(subject) / "T1_to_func1pt8mm.nii.gz"
    return str(t1) if t1.is_file() else False


def volume_image(ds: NSD, subject: int, values: np.ndarray, mask: np.ndarray | None = None):
    """A NIfTI image in the subject's functional space from a volume, or from ROI values in NIfTI order."""
    import nibabel as nib

    affine = ds.affine(subject)
    if mask is not None:
        vol = np.zeros(mask.shape, np.float32)
        vol[mask] = values
    else:
        vol = np.asarray(values, np.float32)
    return nib.Nifti1Image(vol, affine)


def roi_label_volume(ds: NSD, subject: int) -> np.ndarray:
    """One label volume of :data:`ROI_MAP` (early areas win over streams)."""
    out = None
    for label in sorted(ROI_MAP, reverse=True):
        m = ds.roi_mask(subject, ROI_MAP[label][0])
        out = np.where(m, label, 0 if out is None else out)
    return out.astype(np.int16)


def roi_map(ds: NSD, subject: int, cut_coords=(-12, -4, 4, 12, 22, 32)) -> plt.Figure:
    """Visual ROIs of the subject on the anatomy (axial slices), with a legend."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from nilearn import plotting

    vol = roi_label_volume(ds, subject)
    present = [k for k in ROI_MAP if (vol == k).any()]
    cmap = ListedColormap([ROI_MAP[k][1] for k in range(1, max(ROI_MAP) + 1)])
    fig = plt.figure(figsize=(12, 3.4))
    display = plotting.plot_roi(
        volume_image(ds, subject, vol), bg_img=background_image(ds, subject), display_mode="z",
        cut_coords=list(cut_coords), cmap=cmap, vmin=0.5, vmax=max(ROI_MAP) + 0.5, figure=fig,
        title=f"subj{subject:02d}: visual ROIs", draw_cross=False, alpha=0.9,
    )  # fmt: skip
    del display
    fig.legend(
        handles=[Patch(color=ROI_MAP[k][1], label=ROI_MAP[k][0]) for k in present],
        loc="lower center", ncol=len(present), frameon=False, bbox_to_anchor=(0.5, -0.08),
    )  # fmt: skip
    return fig


def ncsnr_map(ds: NSD, subject: int, groups: list[str], n_reps: int = 3) -> plt.Figure:
    """ncsnr on the anatomy, and the noise ceiling (n-trial average) per ROI group."""
    from nilearn import plotting

    from .nsd import noise_ceiling

    vol = ds.ncsnr(subject)
    fig = plt.figure(figsize=(13, 3.6))
    ax_map = fig.add_axes([0.0, 0.0, 0.62, 1.0])
    plotting.plot_stat_map(
        volume_image(ds, subject, vol), bg_img=background_image(ds, subject), display_mode="z",
        cut_coords=[-12, -2, 8, 18], threshold=0.05, cmap="hot", vmax=float(np.nanpercentile(vol[vol > 0], 99)) if (vol > 0).any() else 1.0,
        axes=ax_map, title=f"subj{subject:02d}: ncsnr", draw_cross=False, colorbar=True,
    )  # fmt: skip
    ax = fig.add_axes([0.68, 0.12, 0.31, 0.78])
    data = [noise_ceiling(ds.ncsnr(subject, g), n_reps) for g in groups]
    ax.boxplot(data, vert=False, showfliers=False, tick_labels=groups)
    ax.invert_yaxis()
    ax.set_xlabel(f"noise ceiling, % variance ({n_reps}-trial average)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def stimulus_grid(images: np.ndarray, captions: list[str], titles: list[str] | None = None, ncols: int = 6,
                  width: int = 26) -> plt.Figure:  # fmt: skip
    """Images with one caption each (wrapped), optional small titles above."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img, cap) in enumerate(zip(axes.flat, images, captions, strict=False)):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(titles[i] if titles else "", fontsize=8)
        ax.text(
            0.5, -0.04, textwrap.fill(cap, width), transform=ax.transAxes, ha="center", va="top", fontsize=7
        )
    fig.subplots_adjust(hspace=0.7, wspace=0.1)
    return fig


def bar_counts(counts: dict[str, int], title: str, xlabel: str = "voxels") -> plt.Figure:
    """Horizontal bar chart of counts per ROI, values printed at the bars."""
    names = list(counts)
    vals = [counts[k] for k in names]
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(names) + 1))
    ax.barh(names, vals, color="#4c72b0")
    ax.invert_yaxis()
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def zscore_effect(session_means: np.ndarray, reliability: dict[str, np.ndarray], n_voxels: int = 12,
                  seed: int = 0) -> plt.Figure:  # fmt: skip
    """Left: raw mean of example voxels in each session (drift that per-session z-scoring removes). Right:
    split-half reliability of test-image responses (repeat 1 vs 2, per voxel) without and with z-scoring."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"width_ratios": [1.2, 1]})
    ax = axes[0]
    pick = np.random.default_rng(seed).choice(
        session_means.shape[1], min(n_voxels, session_means.shape[1]), replace=False
    )
    sessions = np.arange(1, session_means.shape[0] + 1)
    ax.plot(sessions, session_means[:, pick], marker="o", ms=3, lw=1, alpha=0.8)
    ax.set_title(f"raw betas: mean of {len(pick)} example voxels per session", fontsize=10)
    ax.set_xlabel("session")
    ax.set_ylabel("% signal change")
    ax.grid(alpha=0.3)
    ax = axes[1]
    bins = np.linspace(-0.4, 1, 57)
    for label, r in reliability.items():
        ax.hist(r, bins=bins, alpha=0.55, label=f"{label} (median {np.median(r):.3f})")
    ax.set_xlabel("r(repeat 1, repeat 2) across test images, per voxel")
    ax.set_ylabel("voxels")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("test-retest reliability", fontsize=10)
    return fig
