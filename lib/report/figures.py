"""Report figures: brain maps on the anatomy, stimulus grids, ROI and noise-ceiling summaries; atomic PNG saving."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from scipy import stats

from lib.analysis.stats import differs
from lib.data.nsd import NSD, noise_ceiling, volume_affine
from lib.fileio import atomic_path
from lib.metrics import cosine_per_sample

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
    ``T1_to_func1pt8mm.nii.gz`` for real NSD when present, else None (no background)."""
    if ds.is_simulated:
        from nilearn import datasets  # lazy: nilearn: seconds to import, brain plots only

        return datasets.load_mni152_template(resolution=1)
    t1 = ds.func_dir(subject) / "T1_to_func1pt8mm.nii.gz"
    if not t1.is_file():
        return None

    # no qform/sform in NSD's files: placed as the maps are (NSD's LPI voxel order), not by nibabel's default
    img = nib.load(t1)
    return nib.Nifti1Image(np.asarray(img.dataobj, np.float32), volume_affine(img))


def volume_image(ds: NSD, subject: int, values: np.ndarray, mask: np.ndarray | None = None):
    """A NIfTI image in the subject's functional space from a volume, or from ROI values in NIfTI order."""

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
    from nilearn import plotting  # lazy: nilearn: seconds to import, brain plots only

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
    from nilearn import plotting  # lazy: nilearn: seconds to import, brain plots only

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
    ax.boxplot(data, orientation="horizontal", showfliers=False, tick_labels=groups)
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


# ----------------------------------------------------------------------------------------------------------------
# 01 joint embedding


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    if len(y) < 2 * n:
        return y
    return np.convolve(y, np.ones(n) / n, mode="valid")


def _smoothed(x, y, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) with y as running means of ``n`` points, x aligned to each window's last point."""
    y = _smooth(np.asarray(y, float), n)
    x = np.asarray(x)
    return x[len(x) - len(y) :], y


def training_curves(clip: dict | None, dino: dict | None, chance: float | None = None) -> plt.Figure:
    """CLIP loss, temperature and held-out retrieval over steps; DINO loss and teacher entropies over steps."""
    panels = (3 if clip else 0) + (2 if dino else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(3.6 * max(panels, 1), 3.0), squeeze=False)
    axes = list(axes[0])
    if clip:
        loss = np.asarray(clip["loss"])
        ax = axes.pop(0)
        ax.plot(loss, color="0.75", lw=0.8, label="per step")
        s = _smooth(loss, 10)
        ax.plot(np.arange(len(s)) + (len(loss) - len(s)) // 2, s, color="C0", label="moving mean")
        ax.set(title="CLIP InfoNCE loss", xlabel="step", ylabel="loss")
        ax.legend(frameon=False, fontsize=8)
        ax = axes.pop(0)
        ax.plot(1 / np.asarray(clip["logit_scale"]), color="C1")
        ax.set(title="learned temperature", xlabel="step", ylabel="1 / logit scale")
        ax = axes.pop(0)
        if clip.get("eval_step"):
            ax.plot(clip["eval_step"], clip["img2txt_top1"], "o-", label="image → text")
            ax.plot(clip["eval_step"], clip["txt2img_top1"], "s-", label="text → image")
        if chance is not None:
            ax.axhline(chance, color="k", ls=":", lw=1, label="chance")
        ax.set(title="held-out top-1 retrieval", xlabel="step", ylabel="top-1", ylim=(0, 1))
        ax.legend(frameon=False, fontsize=8)
    if dino:
        ax = axes.pop(0)
        ax.plot(dino["loss"], color="C2")
        ax.set(title="DINO loss", xlabel="step", ylabel="cross-entropy")
        ax = axes.pop(0)
        ax.plot(dino["teacher_entropy"], label="per sample")
        ax.plot(dino["batch_entropy"], label="batch mean (0 = collapse)")
        if "log_k" in dino:
            ax.axhline(dino["log_k"], color="k", ls=":", lw=1, label="log K (uniform)")
        ax.set(title="DINO teacher entropy", xlabel="step", ylabel="nats")
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def similarity_matrix(sim: np.ndarray, n_show: int = 60, title: str = "") -> plt.Figure:
    """Cosine similarity of test images (rows) and their captions (columns): full matrix and a zoom."""
    n_show = min(n_show, len(sim))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, m, t in (
        (axes[0], sim, f"all {len(sim)} test images"),
        (axes[1], sim[:n_show, :n_show], f"first {n_show}"),
    ):
        im = ax.imshow(m, cmap="viridis", interpolation="nearest")
        ax.set(title=t, xlabel="caption of image j", ylabel="image i")
        fig.colorbar(im, ax=ax, fraction=0.046, label="cosine similarity")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def retrieval_examples(
    images: np.ndarray, ranked: list[list[tuple[str, bool, float]]], ncols: int = 2
) -> plt.Figure:
    """Each image with its top captions: (text, whether it is one of the image's own captions, similarity)."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols * 2, figsize=(6.8 * ncols, 1.75 * nrows),
                             gridspec_kw={"width_ratios": [1, 3.2] * ncols}, squeeze=False)  # fmt: skip
    for i in range(nrows * ncols):
        ax_img, ax_txt = axes[i // ncols, 2 * (i % ncols)], axes[i // ncols, 2 * (i % ncols) + 1]
        ax_img.axis("off")
        ax_txt.axis("off")
        if i >= n:
            continue
        ax_img.imshow(images[i])
        for r, (text, ok, s) in enumerate(ranked[i]):
            line = textwrap.shorten(text, 78, placeholder="…")
            mark = "own caption" if ok else "another image's"
            ax_txt.text(0.02, 0.95 - 0.33 * r, f"{r + 1}. {line}\n     cos {s:.2f} · {mark}", fontsize=7.5, va="top",
                        color="C2" if ok else "C3", transform=ax_txt.transAxes)  # fmt: skip
    fig.suptitle("top-3 captions among all test captions (green: the image's own)", fontsize=10)
    fig.tight_layout()
    return fig


def knn_bars(
    panels: dict[str, dict[str, dict[str, float]]], chance: dict[str, float], title: str = "",
    intervals: dict[str, dict[str, dict]] | None = None,
) -> plt.Figure:  # fmt: skip
    """One panel per probe ({probe: {feature set: {attribute: accuracy}}}): grouped bars per attribute, with the
    majority-class rate as chance, and 95% bootstrap intervals over test images as error bars where ``intervals``
    ({probe: {feature set: {attribute: [low, high]}}}) gives them."""
    attrs = list(chance)
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(1.25 * len(attrs) + 2, 3.2 * len(panels)), squeeze=False
    )
    for ax, (probe, results) in zip(axes[:, 0], panels.items(), strict=True):
        w = 0.8 / len(results)
        for j, (name, acc) in enumerate(results.items()):
            x = np.arange(len(attrs)) + (j - (len(results) - 1) / 2) * w
            bars = ax.bar(x, [acc[a] for a in attrs], w, label=name, color=f"C{j}")
            iv = (intervals or {}).get(probe, {}).get(name)
            tops = [acc[a] for a in attrs]
            if iv:
                lo, hi = np.array([iv[a][0] for a in attrs]), np.array([iv[a][1] for a in attrs])
                vals = np.array(tops)
                ax.errorbar(x, vals, yerr=[np.maximum(vals - lo, 0), np.maximum(hi - vals, 0)], fmt="none",
                            ecolor="0.2", elinewidth=0.8, capsize=1.5)  # fmt: skip
                tops = hi
            for b, a, top in zip(bars, attrs, tops, strict=True):
                ax.text(b.get_x() + b.get_width() / 2, top + 0.01, f"{acc[a]:.2f}", ha="center", fontsize=6.5)
        for i, a in enumerate(attrs):
            ax.hlines(
                chance[a],
                i - 0.45,
                i + 0.45,
                color="k",
                ls=":",
                lw=1,
                label="majority class" if i == 0 else None,
            )
        ax.set_xticks(np.arange(len(attrs)), attrs)
        # room above the bars for the legend's rows (three entries to a row)
        rows = -(-(len(results) + 1) // 3)
        ax.set(ylabel="accuracy (test images)", ylim=(0, 1.02 + 0.1 * rows), title=probe)
        ax.legend(frameon=False, fontsize=7.5, ncols=3, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def embedding_2d(xy: np.ndarray, labels: dict[str, np.ndarray], title: str = "") -> plt.Figure:
    """A 2-D projection of embeddings, one panel per attribute, points coloured by its value."""
    fig, axes = plt.subplots(1, len(labels), figsize=(3.6 * len(labels), 3.6), squeeze=False)
    for ax, (name, lab) in zip(axes[0], labels.items(), strict=True):
        values = list(dict.fromkeys(sorted(map(str, lab))))
        cmap = plt.get_cmap("tab10" if len(values) <= 10 else "tab20")
        for k, v in enumerate(values):
            sel = np.asarray(list(map(str, lab))) == v
            ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=cmap(k % cmap.N), label=v, alpha=0.85, lw=0)
        ax.set(title=name, xticks=[], yticks=[])
        ax.legend(frameon=False, fontsize=6.5, markerscale=1.5, loc="best", ncols=2 if len(values) > 5 else 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def roi_comparison(results: dict[str, dict], ceiling: dict[str, dict] | None, chance: dict[str, float],
                   title: str = "", intervals: dict[str, dict] | None = None) -> plt.Figure:  # fmt: skip
    """One panel per measure (``chance`` keys: e.g. img_retrieval_top1, category_accuracy, layout_r): a bar per
    ROI group with its 95% bootstrap interval over test images (``intervals``: {group: {measure: [low, high]}}),
    the ceiling (noise-free responses) as a tick over each bar, chance as a dotted line."""
    groups = list(results)
    fig, axes = plt.subplots(
        1, len(chance), figsize=(4.3 * len(chance), 0.32 * len(groups) + 1.6), squeeze=False
    )
    names = {
        "img_retrieval_top1": "image retrieval top-1",
        "category_accuracy": "category (shape) accuracy",
        "layout_r": "spatial layout r (8 × 8)",
        "dino_retrieval_top1": "DINO image vector: retrieval top-1",
    }
    y = np.arange(len(groups))
    for ax, (measure, ch) in zip(axes[0], chance.items(), strict=True):
        vals = [results[g][measure] for g in groups]
        ax.barh(y, vals, color=[_group_colour(g) for g in groups], alpha=0.85)
        ends = vals
        if intervals:
            lo, hi = (np.array([intervals[g][measure][k] for g in groups]) for k in (0, 1))
            ax.errorbar(vals, y, xerr=[np.maximum(vals - lo, 0), np.maximum(hi - vals, 0)], fmt="none",
                        ecolor="0.2", elinewidth=0.9, capsize=2, label="95% interval (test images)")  # fmt: skip
            ends = hi
        for yi, v, e in zip(y, vals, ends, strict=True):
            ax.text(e, yi, f" {v:.2f}", va="center", fontsize=7)
        if ceiling:
            ax.scatter([ceiling[g][measure] for g in groups], y, marker="|", s=160, color="k", lw=1.5,
                       label="ceiling (noise-free)", zorder=3)  # fmt: skip
        ax.axvline(ch, color="k", ls=":", lw=1, label="chance")
        ax.set_yticks(y, [f"{g} ({results[g]['n_voxels']})" for g in groups], fontsize=8)
        ax.invert_yaxis()
        ax.set(title=names.get(measure, measure), xlim=(min(0, ch), 1.05))
        ax.grid(axis="x", alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), frameon=False, fontsize=8, loc="lower center", ncol=3)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def _group_colour(group: str) -> str:
    by_name = {name: colour for name, colour in ROI_MAP.values()}
    if group in by_name:
        return by_name[group]
    if group.startswith("floc"):
        return "#e377c2"
    return {"nsdgeneral": "0.35", "V1-hV4": "#17becf", "early": "#1f77b4", "higher": "#d62728"}.get(
        group, "0.6"
    )


def encoder_curves(histories: dict[str, dict], size_curve: dict[str, dict] | None = None,
                   chance: float | None = None) -> plt.Figure:  # fmt: skip
    """MLP training loss and validation retrieval per epoch ({name: history}); optionally test retrieval against
    the number of training images ({name: {"n": [...], "top1": [...]}})."""
    panels = 2 + (size_curve is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2))
    for k, (name, h) in enumerate(histories.items()):
        axes[0].plot(np.arange(1, len(h["loss"]) + 1), h["loss"], color=f"C{k}", label=name)
        axes[1].plot(h["val_epoch"], h["val_img_retrieval_top1"], "o-", ms=3, color=f"C{k}", label=name)
        if "best_epoch" in h:
            axes[1].axvline(h["best_epoch"], color=f"C{k}", ls="--", lw=0.8)
    axes[0].set(title="MLP training loss", xlabel="epoch", ylabel="loss (log scale)", yscale="log")
    axes[1].set(title="validation image retrieval (top-1)", xlabel="epoch", ylabel="top-1", ylim=(0, 1))
    if size_curve is not None:
        ax = axes[2]
        for k, (name, c) in enumerate(size_curve.items()):
            ax.plot(c["n"], c["top1"], "o-", color=f"C{k + len(histories)}", label=name)
        ax.set(
            title="test retrieval vs training images", xlabel="training images", ylabel="top-1", ylim=(0, 1)
        )
        ax.set_xlim(0, None)
    for ax in axes[1:]:
        if chance is not None:
            ax.axhline(chance, color="k", ls=":", lw=1, label="chance")
    for ax in axes:
        ax.legend(frameon=False, fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _positive_volume(ds: NSD, subject: int, values: np.ndarray, voxel_ijk: np.ndarray):
    """Per-voxel values as a NIfTI image on the subject's grid, negative values set to 0 (the maps show the
    positive part)."""
    vol = np.zeros(ds.roi_mask(subject, "nsdgeneral").shape, np.float32)
    vol[tuple(np.asarray(voxel_ijk).T)] = np.clip(values, 0, None)
    return volume_image(ds, subject, vol)


def voxel_map(ds: NSD, subject: int, values: np.ndarray, voxel_ijk: np.ndarray, title: str,
              by_group: dict[str, np.ndarray] | None = None, label: str = "r") -> plt.Figure:  # fmt: skip
    """Per-voxel values on the anatomy (axial slices; positive part), and their distribution per ROI group."""
    from nilearn import plotting  # lazy: nilearn: seconds to import, brain plots only

    img = _positive_volume(ds, subject, values, voxel_ijk)
    fig = plt.figure(figsize=(13, 3.6))
    ax_map = fig.add_axes([0.0, 0.0, 0.6 if by_group else 1.0, 1.0])
    vmax = float(np.nanpercentile(values, 99)) if np.any(values > 0) else 1.0
    plotting.plot_stat_map(
        img, bg_img=background_image(ds, subject), display_mode="z",
        cut_coords=[-12, -2, 8, 18], threshold=0.05 * vmax, cmap="hot", vmax=vmax, axes=ax_map, title=title,
        draw_cross=False, colorbar=True,
    )  # fmt: skip
    if by_group:
        ax = fig.add_axes([0.72, 0.12, 0.27, 0.78])
        ax.boxplot(
            list(by_group.values()), orientation="horizontal", showfliers=False, tick_labels=list(by_group)
        )
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    return fig


def predicted_vs_true(preds: dict[str, np.ndarray], true: np.ndarray, n_points: int = 4000,
                      seed: int = 0) -> plt.Figure:  # fmt: skip
    """Predicted against true embedding entries (a random subset of test samples x dimensions), both centred on
    the mean true embedding so that the shared direction of all images does not inflate r; and the distribution
    of per-sample cosine similarity (uncentred, as the metric is defined), one column per encoder."""

    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(2, len(preds), figsize=(3.6 * len(preds), 6.4), squeeze=False)
    centre = true.mean(0, keepdims=True)
    flat_t = (true - centre).ravel()
    pick = rng.choice(flat_t.size, min(n_points, flat_t.size), replace=False)
    for k, (name, p) in enumerate(preds.items()):
        ax = axes[0, k]
        flat_p = (p - centre).ravel()
        r = float(np.corrcoef(flat_p, flat_t)[0, 1])
        ax.scatter(flat_t[pick], flat_p[pick], s=3, alpha=0.3, lw=0, color=f"C{k}")
        lim = float(np.abs(flat_t[pick]).max())
        ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8, ls="--")
        ax.set(title=f"{name}: r = {r:.2f}", xlabel="true entry (centred)", ylabel="predicted (centred)")
        cos = cosine_per_sample(p, true)
        axes[1, k].hist(cos, bins=30, color=f"C{k}", alpha=0.8)
        axes[1, k].set(xlabel="cosine(predicted, true) per test image", ylabel="images",
                       title=f"mean {cos.mean():.2f}")  # fmt: skip
    fig.tight_layout()
    return fig


def reconstruction_grid(truth: np.ndarray, variants: dict[str, np.ndarray], n: int = 8,
                        captions: list[str] | None = None, scores: dict[str, np.ndarray] | None = None,
                        title: str = "") -> plt.Figure:  # fmt: skip
    """Rows: test images; columns: the seen image, then each reconstruction variant ({name: uint8 images}, long
    names wrapped). ``scores`` ({name: per-image value}) are written under each reconstruction."""
    cols = ["seen image", *variants]
    n = min(n, len(truth))
    fig, axes = plt.subplots(n, len(cols), figsize=(1.55 * len(cols), 1.6 * n), squeeze=False)
    for r in range(n):
        for c, name in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(truth[r] if c == 0 else variants[name][r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(textwrap.fill(name, 16), fontsize=8)
            if c == 0 and captions is not None:
                ax.set_ylabel(textwrap.fill(captions[r], 22), fontsize=6, rotation=0, ha="right", va="center")
            if c > 0 and scores is not None and name in scores:
                ax.set_xlabel(f"{scores[name][r]:.2f}", fontsize=7, labelpad=1)
    fig.subplots_adjust(hspace=0.25, wspace=0.05)
    if title:  # just above the column titles
        h = fig.get_figheight()
        fig.subplots_adjust(top=1 - 0.75 / h)
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / h)
    return fig


def gan_curves(gan: dict | None, tuning: dict | None = None, optimisation: dict | None = None,
               chance: float = 0.5, alignment: dict | None = None) -> plt.Figure:  # fmt: skip
    """GAN training losses per step (and the monitored oracle 2-way identification) when the generator was trained
    here, the losses of the conditioning path's alignment and fMRI tuning, and the mean cosine to the target during
    latent optimisation."""
    tuned = {k: v for k, v in (("alignment (true embeddings)", alignment), ("fMRI tuning", tuning)) if v}
    trained = bool(gan and gan.get("step"))
    panels = max(1, trained + bool(tuned) + (optimisation is not None))
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.3), squeeze=False)
    if trained:
        ax = axes[0, 0]
        for k, key in enumerate(("loss_d", "loss_g", "itc")):
            ax.plot(*_smoothed(gan["step"], gan[key], 20), color=f"C{k}", label=key)
        ax.set(title="GAN training (20-step means)", xlabel="step", ylabel="loss", yscale="log")
        if gan.get("monitor"):
            ax2 = ax.twinx()
            m = gan["monitor"]
            ax2.plot(
                [e["step"] for e in m], [e["two_way"] for e in m], "ko-", ms=3, label="oracle 2-way (test)"
            )
            ax2.axhline(chance, color="k", ls=":", lw=1)
            ax2.set(ylim=(0.4, 1.0), ylabel="oracle 2-way identification")
            ax2.legend(frameon=False, fontsize=8, loc="lower right")
        ax.legend(frameon=False, fontsize=8, loc="upper right")
    k = int(trained)
    if tuned:
        a = axes[0, k]
        for j, (name, h) in enumerate(tuned.items()):
            a.plot(*_smoothed(np.arange(1, len(h["loss"]) + 1), h["loss"], 10), color=f"C{3 + j}", label=name)
        a.set(
            title="conditioning path (10-step means)",
            xlabel="step",
            ylabel="1 - cos(embedding, truth) + pixel term",
        )
        a.legend(frameon=False, fontsize=8)
        k += 1
    if optimisation is not None:
        a = axes[0, k]
        a.plot(np.arange(1, len(optimisation["cosine"]) + 1), optimisation["cosine"], color="C5")
        what = "latent + noise" if optimisation.get("noise_maps", True) else "latent (w only)"
        a.set(title=f"{what} optimisation", xlabel="step", ylabel="cos(embedding, predicted), w noised early")
    for a in axes.flat:
        a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def variant_scores(
    table: dict[str, dict], chance: dict[str, float], ratios: dict | None = None
) -> plt.Figure:
    """Bars per reconstruction variant for each metric ({variant: {metric: value}}), chance marked; optionally
    the oracle's and the predicted embeddings' 2-way identification against the perturbation ratio at inference
    ({"ratio": [...], name: [...]})."""
    names = list(table)
    keys = list(next(iter(table.values())))
    panels = len(keys) + (ratios is not None)
    fig, axes = plt.subplots(1, panels, figsize=(3.3 * panels, 3.2), squeeze=False)
    for j, key in enumerate(keys):
        ax = axes[0, j]
        vals = [table[v][key] for v in names]
        ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        if key in chance:
            ax.axhline(chance[key], color="k", ls=":", lw=1, label="chance")
            ax.legend(frameon=False, fontsize=7, loc="lower right")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        span = (min(0, min(vals)) * 1.25 - 1e-3, max(0, max(vals)) * 1.25 + 1e-3)  # bars start at 0
        ax.set(title=key, ylim=(0, 1.1) if key == "two_way" else span)
        ax.grid(alpha=0.3, axis="y")
    if ratios is not None:
        ax = axes[0, -1]
        for k, (name, vals) in enumerate((n, v) for n, v in ratios.items() if n != "ratio"):
            ax.plot(ratios["ratio"], vals, "o-", color=f"C{k}", label=name)
        ax.axhline(chance.get("two_way", 0.5), color="k", ls=":", lw=1)
        ax.set(title="perturbation ratio at inference", xlabel="feature weight r", ylabel="2-way identification",
               ylim=(0.4, 1.0))  # fmt: skip
        ax.legend(frameon=False, fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ================================================================================================================
# 04 leave-one-out


def importance_brain(ds: NSD, subject: int, values: np.ndarray, voxel_ijk: np.ndarray, title: str,
                     label: str = "importance") -> plt.Figure:  # fmt: skip
    """Per-voxel importance on the MNI template: a glass brain (maximum projection) and axial slices."""
    from nilearn import plotting  # lazy: nilearn: seconds to import, brain plots only

    img = _positive_volume(ds, subject, values, voxel_ijk)
    vmax = float(np.nanpercentile(values, 99.5)) if np.any(values > 0) else 1.0
    fig = plt.figure(figsize=(13, 6.4))
    plotting.plot_glass_brain(img, display_mode="lyrz", cmap="hot", vmax=vmax, threshold=0.1 * vmax, colorbar=True,
                              plot_abs=False, axes=fig.add_axes([0.0, 0.5, 1.0, 0.48]), title=f"{title} (glass brain)")  # fmt: skip
    plotting.plot_stat_map(img, bg_img=background_image(ds, subject), display_mode="z", cut_coords=[-12, -2, 8, 18],
                           threshold=0.1 * vmax, vmax=vmax, cmap="hot", draw_cross=False, colorbar=True,
                           axes=fig.add_axes([0.0, 0.0, 1.0, 0.48]), title=f"{title}: {label}")  # fmt: skip
    return fig


def roi_effects(group_mean: dict[str, float], group_sem: dict[str, float], voxel_mean: dict[str, float],
                n_voxels: dict[str, int]) -> plt.Figure:  # fmt: skip
    """ROI-group leave-one-out (every voxel of the group replaced at once) and the mean single-voxel importance
    per group."""
    names = list(group_mean)
    colours = [_group_colour(n) for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.6))
    y = np.arange(len(names))
    axes[0].barh(y, [group_mean[n] for n in names], xerr=[group_sem[n] for n in names], color=colours)
    axes[0].set(title="leave the ROI group out", xlabel="1 - cos(prediction, original)")
    axes[1].barh(y, [voxel_mean[n] for n in names], color=colours)
    axes[1].set(title="single voxels (mean per group)", xlabel="mean 1 - cos per voxel")
    for ax in axes:
        ax.set_yticks(y, [f"{n} ({n_voxels[n]})" for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xscale("log")
    fig.tight_layout()
    return fig


def effect_maps(maps: np.ndarray, titles: list[str], prf_xy: np.ndarray | None = None,
                centres: np.ndarray | None = None, ncols: int = 6) -> plt.Figure:  # fmt: skip
    """Image-space effect of leaving single voxels out (mean |generated - original| per pixel), one panel per
    voxel; the voxel's true pRF centre (+) and the map's centre of mass (o), in map pixels."""
    k = len(maps)
    rows = int(np.ceil(k / ncols))
    fig, axes = plt.subplots(rows, ncols, figsize=(2.1 * ncols, 2.3 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= k:
            ax.axis("off")
            continue
        im = ax.imshow(maps[i], cmap="magma", extent=(0, maps.shape[2], maps.shape[1], 0))
        if prf_xy is not None:
            ax.plot(*prf_xy[i], "c+", ms=12, mew=2)
        if centres is not None:
            ax.plot(*centres[i], "wo", ms=6, mfc="none", mew=1.5)
        ax.set(xlim=(0, maps.shape[2]), ylim=(maps.shape[1], 0))  # a pRF centre off the image stays off
        ax.set_title(titles[i], fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def loo_agreement(loo_importance: np.ndarray, other: np.ndarray, groups: dict[str, np.ndarray], xlabel: str,
                  ylabel: str, title: str) -> plt.Figure:  # fmt: skip
    """Scatter of two per-voxel importances (log-log), coloured by ROI group, with Spearman's rho in the title."""

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for name, cols in groups.items():
        ax.scatter(loo_importance[cols], other[cols], s=3, alpha=0.5, color=_group_colour(name), label=name)
    rho = stats.spearmanr(loo_importance, other)[0]
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=f"{title}: Spearman {rho:.2f}")
    ax.legend(frameon=False, fontsize=7, markerscale=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def prf_check(prf_xy: np.ndarray | dict[str, np.ndarray], centres: dict[str, np.ndarray], checks: dict[str, dict],
              size: float, images: np.ndarray | None = None) -> plt.Figure:  # fmt: skip
    """Per estimate (name -> (K, 2) effect centres, stimulus pixels): each voxel's true pRF centre (+; ``prf_xy``
    (K, 2), or per estimate {name: (K, 2)} when they check different voxels) joined to its effect centre (o), on
    the stimulus frame (over the mean test image when given), with the median error against chance from
    ``checks`` (:func:`lib.analysis.loo.prf_errors`) in the title."""
    fig, axes = plt.subplots(1, len(centres), figsize=(4.2 * len(centres), 4.3), squeeze=False)
    for ax, (name, c) in zip(axes[0], centres.items(), strict=True):
        pxy = prf_xy[name] if isinstance(prf_xy, dict) else prf_xy
        if images is not None:
            ax.imshow(images.mean(0).astype(np.uint8), extent=(0, size, size, 0), alpha=0.35)
        for (x0, y0), (x1, y1) in zip(pxy, c, strict=True):
            ax.plot([x0, x1], [y0, y1], color="0.5", lw=0.6)
        ax.plot(*pxy.T, "c+", ms=7, mew=1.5, label="true pRF centre")
        ax.plot(*c.T, "o", color="tab:red", ms=4, mfc="none", label="effect centre")
        e = checks[name]
        ax.set(xlim=(0, size), ylim=(size, 0), aspect="equal", xlabel="x (stimulus px)", ylabel="y")
        ax.set_title(f"{name}\nmedian error {e['median_error']:.1f} px, chance {e['chance_median_error']:.1f} "
                     f"(p = {e['p_value']:.3f})", fontsize=9)  # fmt: skip
    axes[0, 0].legend(frameon=False, fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def _once(pending: set[str], label: str) -> str | None:
    """``label`` the first time it is asked for (removed from ``pending``), None after."""
    if label in pending:
        pending.discard(label)
        return label
    return None


def metric_family(table: dict[str, dict], labels: list[str], title: str, published=None,
                  chance: dict[str, float] | None = None, lower_better: bool = False,
                  intervals: dict[str, dict] | None = None) -> plt.Figure:  # fmt: skip
    """One metric family: a group of bars per metric (``labels``), one bar per variant of ``table``
    ({variant: {metric: value or None}}) with its 95% bootstrap interval over test images as an error bar
    (``intervals``: {variant: {metric: [low, high]}}); a metric without a value is marked n/a (weights
    unavailable). Published rows (a DataFrame with a ``method`` column and these metric columns) are drawn as grey
    markers, labelled as another dataset; ``chance`` per metric as a dashed line."""
    variants = list(table)
    n = len(variants)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(labels) + 2.5), 4.2))
    colours = plt.get_cmap("tab10")(np.arange(n) % 10)
    for i, v in enumerate(variants):  # legend entries, also when the first metric has no values
        ax.bar(0, 0, 0, color=colours[i], label=v)
    legend = {"chance", "published on NSD (not comparable)", "95% interval (test images)"}  # once each
    for j, label in enumerate(labels):
        for i, v in enumerate(variants):
            x = j - 0.4 + (i + 0.5) * width
            val = table[v].get(label)
            if val is None:
                ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="0.4")
            else:
                ax.bar(x, val, width * 0.92, color=colours[i])
                iv = (intervals or {}).get(v, {}).get(label)
                if iv is not None:
                    ax.errorbar(x, val, yerr=[[max(val - iv[0], 0)], [max(iv[1] - val, 0)]], fmt="none",
                                ecolor="0.15", elinewidth=0.8, capsize=1.5,
                                label=_once(legend, "95% interval (test images)"))  # fmt: skip
        if chance and label in chance:
            ax.hlines(chance[label], j - 0.45, j + 0.45, colors="k", linestyles="--", lw=1,
                      label=_once(legend, "chance"))  # fmt: skip
        if published is not None and label in published:
            vals = published[["method", label]].dropna()
            for k, (_, row) in enumerate(vals.iterrows()):
                ax.plot(j + 0.46, row[label], "d", color=str(0.25 + 0.5 * k / max(1, len(vals))), ms=5,
                        label=_once(legend, "published on NSD (not comparable)"))  # fmt: skip
    if not any(v is not None for row in table.values() for v in (row.get(lb) for lb in labels)):
        ax.text(0.5, 0.5, "no pretrained weights for these metrics here", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, color="0.3")  # fmt: skip
    ax.set_xticks(range(len(labels)), labels)
    ax.set(
        ylabel="lower is better" if lower_better else "higher is better",
        title=title,
        xlim=(-0.6, len(labels)),
    )
    ax.legend(frameon=False, fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def readback_table(
    table: dict[str, dict[str, float]], chance: dict[str, float], title: str = "",
    intervals: dict[str, dict] | None = None,
) -> plt.Figure:  # fmt: skip
    """The attribute read-back as a table: one row per image set (stimuli first), one column per attribute, the
    accuracy printed in each cell (with its 95% bootstrap interval over test images under it when ``intervals``
    gives one) and coloured by how far it lies between chance (white) and 1 (dark)."""
    rows, cols = list(table), list(chance)
    acc = np.array([[table[r][c] for c in cols] for r in rows])
    lift = (acc - np.array([chance[c] for c in cols])) / (1 - np.array([chance[c] for c in cols]))
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 3.5, (0.5 if intervals else 0.36) * len(rows) + 1.4))
    ax.imshow(np.clip(lift, 0, 1), cmap="Greens", vmin=0, vmax=1.3, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            iv = (intervals or {}).get(rows[i], {}).get(cols[j])
            text = f"{acc[i, j]:.2f}" + (f"\n[{iv[0]:.2f}, {iv[1]:.2f}]" if iv is not None else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=7 if iv is not None else 8)
    ax.set_xticks(range(len(cols)), [f"{c}\n(chance {chance[c]:.2f})" for c in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def recipe_table(table: dict[str, dict[str, dict]], title: str = "") -> plt.Figure:
    """The DINO recipe ablation (:func:`lib.stage.dino_recipes.comparison` of one probe and pooling per panel,
    {panel: {recipe: {attribute: {"accuracy", "vs_random", "vs_previous"}}}}): each cell the recipe's accuracy,
    coloured by its difference from the same network at random initialisation; a star where that paired difference
    is one the report may call a difference (:func:`lib.analysis.stats.differs`: the 95% interval excludes 0 and
    p < 0.05), and the difference from the recipe above it (the row's change) below, starred alike."""
    panels = list(table)
    recipes = list(next(iter(table.values())))
    attrs = list(next(iter(next(iter(table.values())).values())))
    fig, axes = plt.subplots(len(panels), 1, figsize=(1.2 * len(attrs) + 4.5, 0.62 * len(recipes) * len(panels) + 1.6),
                             squeeze=False)  # fmt: skip
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        rows = table[panel]
        diff = np.array([[rows[r][a]["vs_random"]["diff"] for a in attrs] for r in recipes])
        im = ax.imshow(diff, cmap="RdBu", vmin=-0.3, vmax=0.3, aspect="auto")
        for i, r in enumerate(recipes):
            for j, a in enumerate(attrs):
                c = rows[r][a]
                star = "*" if differs(c["vs_random"]) else ""
                prev = c["vs_previous"]
                step = "" if prev is None else f"\n{prev['diff']:+.2f}{'*' if differs(prev) else ''}"
                ax.text(j, i, f"{c['accuracy']:.2f}{star}{step}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(attrs)), attrs)
        ax.set_yticks(range(len(recipes)), recipes, fontsize=8)
        ax.set_title(panel, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, label="− random init")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(
        rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()) if title else None
    )  # the title above the panels
    return fig


def few_sessions_curves(table: dict[str, dict], intervals: dict[str, dict], across: dict[str, dict], ks: list[int],
                        models: list[str], chance: float, target: str, n_sessions: int | None = None) -> plt.Figure:  # fmt: skip
    """06's learning curves: image and brain retrieval (top-1) of each model against the target's sessions, with
    95% intervals over the test images (``table`` and ``intervals``: {"<model> @ k": {metric: ...}}), and every
    target subject's image retrieval at the session counts all targets have, the mean as a bar (``across``:
    {"<model> @ k": {metric: spread over targets}})."""
    labels = [str(k) if k else f"all ({n_sessions})" if n_sessions else "all" for k in ks]
    x = np.arange(len(ks))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    panels = ((axes[0], "img_retrieval_top1", f"{target}: image retrieval"),
              (axes[1], "brain_retrieval_top1", f"{target}: brain retrieval"))  # fmt: skip
    colours = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, metric, title in panels:
        for i, m in enumerate(models):
            rows = [f"{m} @ {k or 'all'}" for k in ks]
            if not all(r in table for r in rows):
                continue
            y = np.array([table[r][metric] for r in rows])
            lo = np.array([intervals[r][metric][0] for r in rows])
            hi = np.array([intervals[r][metric][1] for r in rows])
            off = (i - (len(models) - 1) / 2) * 0.06
            ax.errorbar(x + off, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=m, color=colours[m])
        ax.axhline(chance, color="grey", ls=":", label="chance")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x, labels)
        ax.set_xlabel("sessions of the target subject")
    axes[0].set_ylabel("top-1 among the test images")
    ax = axes[
        2
    ]  # every target: one dot per target subject, the mean as a bar, at the session counts all have
    shared_ks = [k for k in ks if all(f"{m} @ {k or 'all'}" in across for m in models)]
    width = 0.8 / max(len(shared_ks), 1)
    n = 0
    for j, k in enumerate(shared_ks):
        for i, m in enumerate(models):
            v = across[f"{m} @ {k or 'all'}"]["img_retrieval_top1"]
            xi = i + (j - (len(shared_ks) - 1) / 2) * width
            ax.bar(xi, v["mean"], width * 0.9, color=colours[m], alpha=0.35)
            ax.plot(np.full(len(v["values"]), xi), v["values"], "o", color=colours[m], ms=4)
            n = len(v["values"])
    ax.axhline(chance, color="grey", ls=":")
    which = ", ".join(str(k) if k else "all" for k in shared_ks)
    ax.set_title(
        f"image retrieval of each of {n} target subjects, {which} session(s) (bar: mean)", fontsize=10
    )
    ax.set_xticks(range(len(models)), models, rotation=20, fontsize=8)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
