"""Report figures (lib.report.figures): every public function draws from tiny synthetic inputs, saves a PNG, and
shows the values it was given (bar heights, image arrays, line data, titles, tick labels, table cells)."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from scipy import stats  # noqa: E402

from lib.data.nsd import noise_ceiling  # noqa: E402
from lib.metrics import cosine_per_sample  # noqa: E402
from lib.report import figures  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _saved(fig: plt.Figure, tmp_path, name: str = "fig.png"):
    """Save through figures.save and check that a non-empty PNG lies under the name asked for."""
    path = figures.save(fig, tmp_path / name)
    assert path == tmp_path / name
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    return path


def _texts(fig: plt.Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def _ticklabels(ax, axis: str = "x") -> list[str]:
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in labels]


def _legend(ax) -> list[str]:
    leg = ax.get_legend()
    return [] if leg is None else [t.get_text() for t in leg.get_texts()]


def _bars(ax) -> list:
    """Bar rectangles of an axes (not the background patch)."""
    return [p for c in ax.containers if isinstance(c, matplotlib.container.BarContainer) for p in c.patches]


def _colour(c) -> tuple:
    return tuple(np.round(to_rgba(c), 4))


# ----------------------------------------------------------------------------------------------------------
# save


def test_save_writes_png_atomically_and_closes_only_when_asked(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    path = figures.save(fig, tmp_path / "sub" / "a.png", dpi=50)
    assert path == tmp_path / "sub" / "a.png" and path.read_bytes()[:8] == PNG_MAGIC
    assert plt.fignum_exists(fig.number)  # left open for the notebook
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]  # no temporary file left
    small = plt.imread(path).shape
    big_path = figures.save(fig, tmp_path / "b.png", dpi=100, close=True)
    big = plt.imread(big_path).shape
    assert not plt.fignum_exists(fig.number)
    assert big[1] == pytest.approx(2 * small[1], rel=0.1) and big[0] == pytest.approx(2 * small[0], rel=0.1)


# ----------------------------------------------------------------------------------------------------------
# maps on the anatomy (need a dataset: the session's tiny mini-NSD from conftest)


@pytest.fixture(scope="module")
def voxels(tiny):
    """Voxel indices of nsdgeneral in subject 1 and per-voxel values with both signs."""
    ijk = np.argwhere(tiny.roi_mask(1, "nsdgeneral"))
    values = np.random.default_rng(0).normal(size=len(ijk)).astype(np.float32)
    return ijk, values


def _overlay_values(fig: plt.Figure, shape: tuple) -> np.ndarray:
    """All unmasked values of the images drawn at the resolution of the functional grid (the data overlays;
    the template background is finer)."""
    out = [
        np.ma.compressed(im.get_array())
        for ax in fig.axes
        for im in ax.images
        if im.get_array().ndim == 2 and max(im.get_array().shape) <= max(shape)
    ]
    return np.concatenate(out) if out else np.array([])


def test_background_and_volume_image(tiny):
    bg = figures.background_image(tiny, 1)
    assert isinstance(bg, nib.Nifti1Image)  # the MNI template for mini-NSD
    mask = tiny.roi_mask(1, "nsdgeneral")
    vals = np.arange(1, mask.sum() + 1, dtype=np.float32)
    img = figures.volume_image(tiny, 1, vals, mask)
    data = np.asanyarray(img.dataobj)
    np.testing.assert_array_equal(img.affine, tiny.affine(1))
    assert data.shape == mask.shape
    np.testing.assert_array_equal(data[mask], vals)
    assert not data[~mask].any()
    whole = figures.volume_image(tiny, 1, data)
    np.testing.assert_array_equal(np.asanyarray(whole.dataobj), data)


def _headerless_nsd(root, data: np.ndarray, name: str = "roi/nsdgeneral.nii.gz"):
    """A real-NSD-shaped subject folder: 1.8 mm NIfTI files with no qform or sform (both codes 0), as NSD's are."""
    from lib.data.nsd import NSD

    (root / "nsddata/experiments/nsd").mkdir(parents=True, exist_ok=True)
    (root / "nsddata/experiments/nsd/nsd_expdesign.mat").touch()
    img = nib.Nifti1Image(data, None)
    img.header.set_zooms((1.8, 1.8, 1.8))
    path = root / "nsddata/ppdata/subj01/func1pt8mm" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    assert int(nib.load(path).header["sform_code"]) == int(nib.load(path).header["qform_code"]) == 0
    return NSD(root)


def test_real_nsd_maps_show_a_left_posterior_voxel_on_the_left_and_at_the_back(tmp_path):
    from nilearn import plotting

    shape = (30, 36, 24)
    ds = _headerless_nsd(tmp_path, np.ones(shape, np.float32))
    _headerless_nsd(tmp_path, np.full(shape, 100.0, np.float32), "T1_to_func1pt8mm.nii.gz")  # the anatomy
    # NSD's volumes are LPI: voxel (0, 0, 0) is left, posterior, inferior. nibabel's default for a file without
    # qform/sform is LAS (left-right flipped): a map drawn with it would show this voxel on the right.
    assert nib.load(ds.func_dir(1) / "roi/nsdgeneral.nii.gz").affine[0, 0] < 0
    aff = ds.affine(1)
    centred = [[1.8, 0, 0, -26.1], [0, 1.8, 0, -31.5], [0, 0, 1.8, -20.7], [0, 0, 0, 1]]
    np.testing.assert_allclose(aff, centred)
    bg = figures.background_image(ds, 1)
    np.testing.assert_allclose(bg.affine, aff)  # the anatomy is placed as the maps are
    vol = np.zeros(shape, np.float32)
    vol[2:6, 3:7, 12] = 1.0  # left (small i), posterior (small j)
    z = float((aff @ [0, 0, 12, 1])[2])
    display = plotting.plot_stat_map(figures.volume_image(ds, 1, vol), bg_img=bg, display_mode="z",
                                     cut_coords=[z], threshold=0.5, vmax=2.0, cmap="hot", colorbar=False,
                                     draw_cross=False, annotate=False, black_bg=True)  # fmt: skip
    ax = display.axes[z].ax
    fig = ax.figure
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    ys, xs = np.nonzero((rgb[..., 0] > 150) & (rgb[..., 2] < 100))  # the marked voxels (hot's red)
    box = ax.get_window_extent()  # pixels from bottom left; the slice spans the volume, centred on x = y = 0
    assert 20 < len(xs) < 0.2 * box.width * box.height
    assert xs.mean() < (box.x0 + box.x1) / 2, "the left voxel is drawn on the right"
    assert rgb.shape[0] - ys.mean() < (box.y0 + box.y1) / 2, "the posterior voxel is drawn at the front"


def test_roi_label_volume_early_areas_win(tiny):
    vol = figures.roi_label_volume(tiny, 1)
    assert vol.dtype == np.int16 and vol.shape == tiny.roi_mask(1, "V1").shape
    for label, (name, _) in figures.ROI_MAP.items():
        m = tiny.roi_mask(1, name)
        assert m[vol == label].all(), name  # every voxel labelled k lies in ROI k
        higher = [k for k in figures.ROI_MAP if k < label]  # labels that win over this one
        assert np.isin(vol[m], [label, *higher]).all(), name
    assert (vol[tiny.roi_mask(1, "V1")] == 1).all()
    assert (vol > 0).sum() == np.any([tiny.roi_mask(1, n) for n, _ in figures.ROI_MAP.values()], axis=0).sum()


def test_roi_map(tiny, tmp_path):
    fig = figures.roi_map(tiny, 1, cut_coords=(-4, 4, 12))
    _saved(fig, tmp_path)
    vol = figures.roi_label_volume(tiny, 1)
    present = [figures.ROI_MAP[k][0] for k in figures.ROI_MAP if (vol == k).any()]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == present
    texts = _texts(fig)
    assert "subj01: visual ROIs" in texts
    assert {"z=-4", "z=4", "z=12"} <= set(texts)
    shown = np.unique(_overlay_values(fig, vol.shape))
    assert len(shown) and set(shown) <= set(np.unique(vol[vol > 0]).astype(float))


def test_ncsnr_map(tiny, tmp_path):
    groups = ["nsdgeneral", "V1", "V2"]
    fig = figures.ncsnr_map(tiny, 1, groups, n_reps=2)
    _saved(fig, tmp_path)
    ax = fig.axes[-1]
    assert ax.get_xlabel() == "noise ceiling, % variance (2-trial average)"
    assert _ticklabels(ax, "y") == groups
    assert ax.yaxis_inverted()
    assert "subj01: ncsnr" in _texts(fig)
    # one median mark per group at the median noise ceiling of the group's voxels
    vertical = {round(float(ln.get_xdata()[0]), 6) for ln in ax.lines if np.ptp(ln.get_xdata()) == 0}
    for g in groups:
        assert round(float(np.median(noise_ceiling(tiny.ncsnr(1, g), 2))), 6) in vertical, g
    shown = _overlay_values(fig, tiny.ncsnr(1).shape)
    assert len(shown) and np.isin(shown.astype(np.float32), tiny.ncsnr(1).astype(np.float32)).all()


def test_voxel_map(tiny, voxels, tmp_path):
    ijk, values = voxels
    by_group = {"V1": values[:10], "V2": values[10:30]}
    fig = figures.voxel_map(tiny, 1, values, ijk, "encoding r", by_group, label="voxel r")
    _saved(fig, tmp_path)
    ax = fig.axes[-1]
    assert ax.get_xlabel() == "voxel r" and _ticklabels(ax, "y") == ["V1", "V2"]
    assert "encoding r" in _texts(fig)
    shown = _overlay_values(fig, tiny.roi_mask(1, "nsdgeneral").shape)
    assert len(shown) and (shown > 0).all()  # positive part only
    assert np.isin(shown.astype(np.float32), values[values > 0]).all()
    # without groups: the map alone
    fig = figures.voxel_map(tiny, 1, values, ijk, "alone")
    assert all(a.get_xlabel() == "" for a in fig.axes)


def test_importance_brain(tiny, voxels, tmp_path):
    ijk, values = voxels
    imp = np.abs(values)
    fig = figures.importance_brain(tiny, 1, imp, ijk, "subj01 ridge", "mean 1 - cos")
    _saved(fig, tmp_path)
    texts = _texts(fig)
    assert "subj01 ridge (glass brain)" in texts and "subj01 ridge: mean 1 - cos" in texts
    shown = _overlay_values(fig, tiny.roi_mask(1, "nsdgeneral").shape)
    assert np.isin(shown.astype(np.float32), imp.astype(np.float32)).all()
    assert shown.max() == pytest.approx(float(imp.max()), rel=1e-5)  # the glass brain's maximum projection


# ----------------------------------------------------------------------------------------------------------
# 00 data preparation


def _images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_stimulus_grid(tmp_path):
    imgs = _images(5)
    caps = ["a red square on a blue background, twice as large as the circle next to it", "b", "c", "d", "e"]
    titles = [f"nsdId {i}" for i in range(5)]
    fig = figures.stimulus_grid(imgs, caps, titles, ncols=3, width=20)
    _saved(fig, tmp_path)
    assert len(fig.axes) == 6
    for i, ax in enumerate(fig.axes[:5]):
        np.testing.assert_array_equal(ax.images[0].get_array(), imgs[i])
        assert ax.get_title() == titles[i]
        assert [t.get_text() for t in ax.texts] == [textwrap.fill(caps[i], 20)]
    assert not fig.axes[5].images and not fig.axes[5].axison
    fig = figures.stimulus_grid(imgs[:2], caps[:2])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["", ""]


def test_bar_counts(tmp_path):
    counts = {"nsdgeneral": 300, "V1": 120, "hV4": 15}
    fig = figures.bar_counts(counts, "subj01: voxels per ROI group", xlabel="n")
    _saved(fig, tmp_path)
    ax = fig.axes[0]
    assert ax.get_title() == "subj01: voxels per ROI group" and ax.get_xlabel() == "n"
    assert [p.get_width() for p in _bars(ax)] == list(counts.values())
    assert _ticklabels(ax, "y") == list(counts)
    assert ax.yaxis_inverted()  # first entry on top
    assert [t.get_text() for t in ax.texts] == [" 300", " 120", " 15"]


def test_zscore_effect(tmp_path):
    rng = np.random.default_rng(1)
    means = rng.normal(size=(4, 20))
    reliability = {"raw": rng.uniform(-0.3, 0.9, 50), "z-scored": rng.uniform(-0.3, 0.9, 50)}
    fig = figures.zscore_effect(means, reliability, n_voxels=5, seed=7)
    _saved(fig, tmp_path)
    left, right = fig.axes
    pick = np.random.default_rng(7).choice(20, 5, replace=False)
    assert len(left.lines) == 5
    for line, v in zip(left.lines, pick, strict=True):
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(line.get_ydata(), means[:, v])
    assert "5 example voxels" in left.get_title() and left.get_xlabel() == "session"
    assert _legend(right) == [f"{k} (median {np.median(r):.3f})" for k, r in reliability.items()]
    heights = np.array([p.get_height() for p in right.patches])
    assert heights.sum() == 100  # every value lies inside the histogram range
    # fewer voxels than asked for: all of them
    fig = figures.zscore_effect(means[:, :3], reliability, n_voxels=12)
    assert len(fig.axes[0].lines) == 3 and "3 example voxels" in fig.axes[0].get_title()


# ----------------------------------------------------------------------------------------------------------
# 01 joint embedding


def _clip_history(n: int = 30) -> dict:
    rng = np.random.default_rng(2)
    return {
        "loss": list(np.linspace(4, 1, n) + rng.normal(0, 0.1, n)),
        "logit_scale": list(np.linspace(10, 40, n)),
        "eval_step": [10, 20, 30],
        "img2txt_top1": [0.2, 0.4, 0.6],
        "txt2img_top1": [0.1, 0.3, 0.5],
    }


def _dino_history(n: int = 25) -> dict:
    return {
        "loss": list(np.linspace(5, 2, n)),
        "teacher_entropy": list(np.linspace(3, 1, n)),
        "batch_entropy": list(np.linspace(4, 3, n)),
        "log_k": float(np.log(64)),
    }


def test_training_curves(tmp_path):
    clip, dino = _clip_history(), _dino_history()
    fig = figures.training_curves(clip, dino, chance=0.1)
    _saved(fig, tmp_path)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "CLIP InfoNCE loss",
        "learned temperature",
        "held-out top-1 retrieval",
        "DINO loss",
        "DINO teacher entropy",
    ]
    loss_ax, temp_ax, ret_ax, dloss_ax, ent_ax = fig.axes
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), clip["loss"])
    smooth = np.convolve(clip["loss"], np.ones(10) / 10, mode="valid")
    np.testing.assert_allclose(loss_ax.lines[1].get_ydata(), smooth)
    np.testing.assert_array_equal(loss_ax.lines[1].get_xdata(), np.arange(len(smooth)) + 4)  # centred windows
    np.testing.assert_allclose(temp_ax.lines[0].get_ydata(), 1 / np.array(clip["logit_scale"]))
    np.testing.assert_array_equal(ret_ax.lines[0].get_xdata(), clip["eval_step"])
    np.testing.assert_array_equal(ret_ax.lines[0].get_ydata(), clip["img2txt_top1"])
    np.testing.assert_array_equal(ret_ax.lines[1].get_ydata(), clip["txt2img_top1"])
    assert list(ret_ax.lines[2].get_ydata()) == [0.1, 0.1] and "chance" in _legend(ret_ax)
    assert ret_ax.get_ylim() == (0, 1)
    np.testing.assert_array_equal(dloss_ax.lines[0].get_ydata(), dino["loss"])
    np.testing.assert_array_equal(ent_ax.lines[0].get_ydata(), dino["teacher_entropy"])
    np.testing.assert_array_equal(ent_ax.lines[1].get_ydata(), dino["batch_entropy"])
    assert ent_ax.lines[2].get_ydata()[0] == pytest.approx(np.log(64))
    # one model only, or none
    assert len(figures.training_curves(clip, None).axes) == 3
    assert [a.get_title() for a in figures.training_curves(None, dino).axes] == titles[3:]
    assert len(figures.training_curves(None, None).axes) == 1


def test_similarity_matrix(tmp_path):
    sim = np.random.default_rng(3).uniform(-1, 1, (8, 8))
    fig = figures.similarity_matrix(sim, n_show=3, title="CLIP test images")
    _saved(fig, tmp_path)
    full, zoom = fig.axes[:2]
    assert len(fig.axes) == 4  # two panels and their colour bars
    np.testing.assert_array_equal(full.images[0].get_array(), sim)
    np.testing.assert_array_equal(zoom.images[0].get_array(), sim[:3, :3])
    assert full.get_title() == "all 8 test images" and zoom.get_title() == "first 3"
    assert full.get_xlabel() == "caption of image j" and full.get_ylabel() == "image i"
    assert fig.get_suptitle() == "CLIP test images"
    assert figures.similarity_matrix(sim, n_show=60).axes[1].get_title() == "first 8"


def test_retrieval_examples(tmp_path):
    imgs = _images(3)
    long = "a very long caption " * 10
    ranked = [
        [("a red circle", True, 0.91), ("a blue square", False, 0.52), (long, False, 0.40)],
        [("two shapes", True, 0.8)],
        [("nothing", False, 0.1)],
    ]
    fig = figures.retrieval_examples(imgs, ranked, ncols=2)
    _saved(fig, tmp_path)
    assert len(fig.axes) == 8  # 2 rows x (image, text) x 2
    axes = np.array(fig.axes).reshape(2, 4)
    for i, ax in enumerate([axes[0, 0], axes[0, 2], axes[1, 0]]):
        np.testing.assert_array_equal(ax.images[0].get_array(), imgs[i])
    assert not axes[1, 2].images and not axes[1, 3].texts
    texts = axes[0, 1].texts
    assert texts[0].get_text() == "1. a red circle\n     cos 0.91 · own caption"
    assert texts[1].get_text() == "2. a blue square\n     cos 0.52 · another image's"
    assert _colour(texts[0].get_color()) == _colour("C2") and _colour(texts[1].get_color()) == _colour("C3")
    line = texts[2].get_text().split("\n")[0]
    assert line.startswith("3. a very long caption") and line.endswith("…") and len(line) <= 3 + 78
    assert [t.get_text().split("\n")[0] for t in axes[0, 3].texts] == ["1. two shapes"]


def test_knn_bars(tmp_path):
    chance = {"colour": 0.3, "shape": 0.25, "count": 0.5}
    panels = {
        "k-NN": {
            "DINO": {"colour": 0.9, "shape": 0.7, "count": 0.6},
            "random": {"colour": 0.4, "shape": 0.3, "count": 0.5},
        },
        "linear probe": {"DINO": {"colour": 0.95, "shape": 0.8, "count": 0.65}},
    }
    fig = figures.knn_bars(panels, chance, "probes")
    _saved(fig, tmp_path)
    assert len(fig.axes) == 2 and fig.get_suptitle() == "probes"
    for ax, (probe, results) in zip(fig.axes, panels.items(), strict=True):
        assert ax.get_title() == probe
        assert _ticklabels(ax) == list(chance)
        bars = _bars(ax)
        expected = [acc[a] for acc in results.values() for a in chance]
        assert [b.get_height() for b in bars] == expected
        assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in expected]
        chance_y = [seg[0, 1] for coll in ax.collections for seg in coll.get_segments()]
        assert chance_y == list(chance.values())
        assert sorted(_legend(ax)) == sorted([*results, "majority class"])
    # bars of one feature set sit side by side around each attribute's tick
    x = [b.get_x() + b.get_width() / 2 for b in _bars(fig.axes[0])]
    np.testing.assert_allclose(x, [-0.2, 0.8, 1.8, 0.2, 1.2, 2.2])


def test_embedding_2d(tmp_path):
    rng = np.random.default_rng(4)
    xy = rng.normal(size=(12, 2))
    labels = {"colour": np.array(["red", "blue", "green"] * 4), "count": np.array([1, 2] * 6)}
    fig = figures.embedding_2d(xy, labels, "t-SNE")
    _saved(fig, tmp_path)
    assert [ax.get_title() for ax in fig.axes] == ["colour", "count"]
    assert fig.get_suptitle() == "t-SNE"
    for ax, lab in zip(fig.axes, labels.values(), strict=True):
        values = sorted(set(map(str, lab)))
        assert _legend(ax) == values
        assert len(ax.collections) == len(values)
        for coll, v in zip(ax.collections, values, strict=True):
            np.testing.assert_allclose(coll.get_offsets(), xy[lab.astype(str) == v])


# ----------------------------------------------------------------------------------------------------------
# 02 fMRI encoders


def test_roi_comparison(tmp_path):
    measures = ("img_retrieval_top1", "category_accuracy", "layout_r")
    results = {
        "nsdgeneral": dict(zip(measures, (0.3, 0.6, 0.5), strict=True), n_voxels=300),
        "V1": dict(zip(measures, (0.2, 0.4, 0.7), strict=True), n_voxels=50),
        "floc-faces": dict(zip(measures, (0.05, 0.3, 0.1), strict=True), n_voxels=20),
    }
    ceiling = {g: {m: min(1.0, r[m] + 0.2) for m in measures} for g, r in results.items()}
    chance = {"img_retrieval_top1": 0.01, "category_accuracy": 0.25, "layout_r": 0.0}
    fig = figures.roi_comparison(results, ceiling, chance, "subj01: decoding")
    _saved(fig, tmp_path)
    assert [ax.get_title() for ax in fig.axes] == [
        "image retrieval top-1",
        "category (shape) accuracy",
        "spatial layout r (8 × 8)",
    ]
    assert fig.get_suptitle() == "subj01: decoding"
    for ax, (m, ch) in zip(fig.axes, chance.items(), strict=True):
        bars = _bars(ax)
        assert [b.get_width() for b in bars] == [results[g][m] for g in results]
        assert [_colour(b.get_facecolor())[:3] for b in bars] == [
            _colour(c)[:3] for c in ("0.35", "#1f77b4", "#e377c2")
        ]
        assert _ticklabels(ax, "y") == ["nsdgeneral (300)", "V1 (50)", "floc-faces (20)"]
        np.testing.assert_allclose(ax.collections[0].get_offsets()[:, 0], [ceiling[g][m] for g in results])
        assert list(ax.lines[-1].get_xdata()) == [ch, ch]
        assert ax.get_xlim() == (min(0, ch), 1.05)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "ceiling (noise-free)",
        "chance",
    ]  # below all
    fig = figures.roi_comparison(results, None, chance)
    assert not any(ax.collections for ax in fig.axes) and fig.get_suptitle() == ""


def test_encoder_curves(tmp_path):
    histories = {
        "mlp_image": {
            "loss": [1.0, 0.5, 0.3, 0.2],
            "val_epoch": [2, 4],
            "val_img_retrieval_top1": [0.2, 0.4],
            "best_epoch": 4,
        },
        "mlp_text": {
            "loss": [2.0, 1.0, 0.8, 0.7],
            "val_epoch": [2, 4],
            "val_img_retrieval_top1": [0.1, 0.15],
        },
    }
    size_curve = {"ridge_image (test)": {"n": [10, 20, 40], "top1": [0.05, 0.1, 0.2]}}
    fig = figures.encoder_curves(histories, size_curve, chance=0.01)
    _saved(fig, tmp_path)
    loss_ax, val_ax, size_ax = fig.axes
    assert [a.get_title() for a in fig.axes] == [
        "MLP training loss",
        "validation image retrieval (top-1)",
        "test retrieval vs training images",
    ]
    assert loss_ax.get_yscale() == "log"
    for line, h in zip(loss_ax.lines, histories.values(), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(line.get_ydata(), h["loss"])
    val_lines = [ln for ln in val_ax.lines if ln.get_label() in histories]
    for line, h in zip(val_lines, histories.values(), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), h["val_epoch"])
        np.testing.assert_array_equal(line.get_ydata(), h["val_img_retrieval_top1"])
    assert [list(ln.get_xdata()) for ln in val_ax.lines if ln.get_linestyle() == "--"] == [[4, 4]]
    np.testing.assert_array_equal(size_ax.lines[0].get_xdata(), [10, 20, 40])
    np.testing.assert_array_equal(size_ax.lines[0].get_ydata(), [0.05, 0.1, 0.2])
    for ax in (val_ax, size_ax):
        assert "chance" in _legend(ax) and list(ax.lines[-1].get_ydata()) == [0.01, 0.01]
    assert "chance" not in _legend(loss_ax)
    assert _legend(loss_ax) == list(histories)
    assert len(figures.encoder_curves(histories).axes) == 2


def test_predicted_vs_true(tmp_path):
    rng = np.random.default_rng(5)
    true = rng.normal(size=(6, 4))
    preds = {"ridge": true + rng.normal(0, 0.5, true.shape), "mlp": rng.normal(size=true.shape)}
    fig = figures.predicted_vs_true(preds, true, n_points=10, seed=1)
    _saved(fig, tmp_path)
    axes = np.array(fig.axes).reshape(2, 2)
    centre = true.mean(0, keepdims=True)
    for k, (name, p) in enumerate(preds.items()):
        r = np.corrcoef((p - centre).ravel(), (true - centre).ravel())[0, 1]
        assert axes[0, k].get_title() == f"{name}: r = {r:.2f}"
        pts = axes[0, k].collections[0].get_offsets()
        assert len(pts) == 10
        assert np.isin(pts[:, 0], (true - centre).ravel()).all()  # true entries on x, centred
        assert np.isin(pts[:, 1], (p - centre).ravel()).all()
        cos = cosine_per_sample(p, true)
        assert axes[1, k].get_title() == f"mean {cos.mean():.2f}"
        assert sum(b.get_height() for b in axes[1, k].patches) == len(true)
    # the subset is capped by the entries available
    fig = figures.predicted_vs_true(preds, true)
    assert len(fig.axes[0].collections[0].get_offsets()) == true.size


# ----------------------------------------------------------------------------------------------------------
# 03 StyleGAN2


def test_reconstruction_grid(tmp_path):
    truth = _images(3, seed=1)
    variants = {"oracle": _images(3, seed=2), "predicted": _images(3, seed=3)}
    scores = {"oracle": np.array([0.5, 0.25, 0.125])}
    captions = ["first image", "second image", "third"]
    fig = figures.reconstruction_grid(truth, variants, n=2, captions=captions, scores=scores)
    _saved(fig, tmp_path)
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["seen image", "oracle", "predicted"]
    assert [ax.get_title() for ax in axes[1]] == ["", "", ""]
    for r in range(2):
        np.testing.assert_array_equal(axes[r, 0].images[0].get_array(), truth[r])
        np.testing.assert_array_equal(axes[r, 1].images[0].get_array(), variants["oracle"][r])
        np.testing.assert_array_equal(axes[r, 2].images[0].get_array(), variants["predicted"][r])
        assert axes[r, 0].get_ylabel() == captions[r]
        assert axes[r, 1].get_xlabel() == f"{scores['oracle'][r]:.2f}" and axes[r, 2].get_xlabel() == ""
    assert len(figures.reconstruction_grid(truth, variants, n=8).axes) == 3 * 3  # capped at the images given


def test_gan_curves(tmp_path):
    steps = list(range(1, 61))
    rng = np.random.default_rng(6)
    gan = {
        "step": steps,
        "loss_d": list(rng.uniform(0.5, 1.5, 60)),
        "loss_g": list(rng.uniform(0.5, 2.0, 60)),
        "itc": list(rng.uniform(1.0, 3.0, 60)),
        "monitor": [{"step": 20, "two_way": 0.6}, {"step": 40, "two_way": 0.8}],
    }
    tuning = {"loss": list(np.linspace(1, 0.2, 30))}
    alignment = {"loss": list(np.linspace(2, 0.5, 25))}
    optimisation = {"cosine": [0.1, 0.3, 0.5, 0.6]}
    fig = figures.gan_curves(gan, tuning, optimisation, chance=0.5, alignment=alignment)
    _saved(fig, tmp_path)
    gan_ax, tune_ax, opt_ax, twin = fig.axes
    assert gan_ax.get_title() == "GAN training (20-step means)" and gan_ax.get_yscale() == "log"
    for line, key in zip(gan_ax.lines, ("loss_d", "loss_g", "itc"), strict=True):
        assert line.get_label() == key
        np.testing.assert_allclose(line.get_ydata(), np.convolve(gan[key], np.ones(20) / 20, mode="valid"))
        np.testing.assert_array_equal(line.get_xdata(), steps[19:])  # x at each window's last step
    np.testing.assert_array_equal(twin.lines[0].get_xdata(), [20, 40])
    np.testing.assert_array_equal(twin.lines[0].get_ydata(), [0.6, 0.8])
    assert list(twin.lines[1].get_ydata()) == [0.5, 0.5] and twin.get_ylim() == (0.4, 1.0)
    assert tune_ax.get_title() == "conditioning path (10-step means)"
    assert _legend(tune_ax) == ["alignment (true embeddings)", "fMRI tuning"]
    np.testing.assert_allclose(
        tune_ax.lines[0].get_ydata(), np.convolve(alignment["loss"], np.ones(10) / 10, "valid")
    )
    np.testing.assert_array_equal(tune_ax.lines[1].get_xdata(), np.arange(10, 31))
    assert opt_ax.get_title() == "latent + noise optimisation"
    np.testing.assert_array_equal(opt_ax.lines[0].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(opt_ax.lines[0].get_ydata(), optimisation["cosine"])
    # a pretrained generator (no training history): only the other panels
    fig = figures.gan_curves({"step": []}, tuning, optimisation)
    assert [a.get_title() for a in fig.axes] == [
        "conditioning path (10-step means)",
        "latent + noise optimisation",
    ]
    fig = figures.gan_curves(None, None, optimisation | {"noise_maps": False})
    assert [a.get_title() for a in fig.axes] == ["latent (w only) optimisation"]
    assert len(figures.gan_curves(None).axes) == 1


def test_variant_scores(tmp_path):
    table = {
        "oracle": {"two_way": 0.9, "pixcorr": 0.3, "ssim": 0.4},
        "predicted": {"two_way": 0.7, "pixcorr": 0.1, "ssim": 0.35},
        "tuned": {"two_way": 0.75, "pixcorr": -0.05, "ssim": 0.38},
    }
    ratios = {"ratio": [0.0, 0.5, 1.0], "oracle": [0.6, 0.8, 0.9], "predicted": [0.55, 0.65, 0.7]}
    fig = figures.variant_scores(table, {"two_way": 0.5}, ratios)
    _saved(fig, tmp_path)
    assert [ax.get_title() for ax in fig.axes] == [
        "two_way",
        "pixcorr",
        "ssim",
        "perturbation ratio at inference",
    ]
    for ax, key in zip(fig.axes[:3], ("two_way", "pixcorr", "ssim"), strict=True):
        vals = [table[v][key] for v in table]
        assert [b.get_height() for b in _bars(ax)] == vals
        assert _ticklabels(ax) == list(table)
        assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in vals]
        lo, hi = ax.get_ylim()
        assert lo <= min(0, *vals) and hi >= max(vals)  # every bar whole
    two_way, pixcorr = fig.axes[:2]
    assert two_way.get_ylim() == (0, 1.1)
    assert _legend(two_way) == ["chance"] and list(two_way.lines[0].get_ydata()) == [0.5, 0.5]
    assert _legend(pixcorr) == [] and not pixcorr.lines
    ratio_ax = fig.axes[3]
    assert _legend(ratio_ax) == ["oracle", "predicted"]
    for line, name in zip(ratio_ax.lines[:2], ("oracle", "predicted"), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), ratios["ratio"])
        np.testing.assert_array_equal(line.get_ydata(), ratios[name])
    assert list(ratio_ax.lines[2].get_ydata()) == [0.5, 0.5]
    assert len(figures.variant_scores(table, {}).axes) == 3


def test_variant_scores_all_negative_metric_shows_its_bars():
    fig = figures.variant_scores({"a": {"pixcorr": -0.2}, "b": {"pixcorr": -0.1}}, {})
    lo, hi = fig.axes[0].get_ylim()
    assert lo <= -0.2 and hi >= 0


# ----------------------------------------------------------------------------------------------------------
# 04 leave-one-out


def test_roi_effects(tmp_path):
    names = ["V1", "nsdgeneral", "floc-faces"]
    group_mean = dict(zip(names, (0.02, 0.3, 0.005), strict=True))
    group_sem = dict(zip(names, (0.001, 0.01, 0.0005), strict=True))
    voxel_mean = dict(zip(names, (1e-4, 2e-5, 5e-5), strict=True))
    n_voxels = dict(zip(names, (50, 300, 20), strict=True))
    fig = figures.roi_effects(group_mean, group_sem, voxel_mean, n_voxels)
    _saved(fig, tmp_path)
    left, right = fig.axes
    assert (
        left.get_title() == "leave the ROI group out"
        and right.get_title() == "single voxels (mean per group)"
    )
    assert left.get_xscale() == "log" and right.get_xscale() == "linear"
    assert [b.get_width() for b in _bars(left)] == list(group_mean.values())
    assert [b.get_width() for b in _bars(right)] == list(voxel_mean.values())
    colours = [_colour(c) for c in ("#1f77b4", "0.35", "#e377c2")]
    assert [_colour(b.get_facecolor()) for b in _bars(right)] == colours
    for ax in fig.axes:
        assert _ticklabels(ax, "y") == ["V1 (50)", "nsdgeneral (300)", "floc-faces (20)"]
        assert ax.yaxis_inverted()
    bars = next(c for c in left.containers if isinstance(c, matplotlib.container.BarContainer))
    err = bars.errorbar.lines[2][0].get_segments()
    expected = [[m - e, m + e] for m, e in zip(group_mean.values(), group_sem.values(), strict=True)]
    np.testing.assert_allclose([seg[:, 0] for seg in err], expected)


def test_effect_maps(tmp_path):
    rng = np.random.default_rng(7)
    maps = rng.uniform(0, 1, (3, 6, 8))
    prf = np.array([[1.0, 2.0], [7.0, 5.0], [10.0, 1.0]])  # the third off the map
    centres = np.array([[2.0, 2.0], [6.0, 4.0], [4.0, 3.0]])
    titles = ["voxel 1 (early)", "voxel 9 (early)", "voxel 4 (higher)"]
    fig = figures.effect_maps(maps, titles, prf, centres, ncols=2)
    _saved(fig, tmp_path)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4 and len(fig.axes) == 4 + 3  # one colour bar per map
    for i, ax in enumerate(panels[:3]):
        np.testing.assert_array_equal(ax.images[0].get_array(), maps[i])
        assert ax.images[0].get_extent() == [0, 8, 6, 0]
        assert ax.get_title() == titles[i]
        assert [ax.lines[0].get_xdata()[0], ax.lines[0].get_ydata()[0]] == list(prf[i])
        assert [ax.lines[1].get_xdata()[0], ax.lines[1].get_ydata()[0]] == list(centres[i])
        assert ax.get_xlim() == (0, 8) and ax.get_ylim() == (6, 0)
    assert not panels[3].axison and not panels[3].images
    fig = figures.effect_maps(maps[:2], titles[:2])
    assert not any(ax.lines for ax in fig.axes)


def test_loo_agreement(tmp_path):
    rng = np.random.default_rng(8)
    a = rng.uniform(0.01, 1, 20)
    b = a * rng.uniform(0.5, 2, 20)
    groups = {"V1": np.arange(10), "floc-faces": np.arange(10, 20)}
    fig = figures.loo_agreement(a, b, groups, "LOO", "saliency", "LOO vs saliency")
    _saved(fig, tmp_path)
    ax = fig.axes[0]
    rho = stats.spearmanr(a, b)[0]
    assert ax.get_title() == f"LOO vs saliency: Spearman {rho:.2f}"
    assert ax.get_xlabel() == "LOO" and ax.get_ylabel() == "saliency"
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert _legend(ax) == list(groups)
    for coll, (name, cols) in zip(ax.collections, groups.items(), strict=True):
        np.testing.assert_allclose(coll.get_offsets(), np.c_[a[cols], b[cols]])
        assert _colour(coll.get_facecolor()[0])[:3] == _colour("#1f77b4" if name == "V1" else "#e377c2")[:3]


def test_prf_check(tmp_path):
    prf = np.array([[2.0, 3.0], [10.0, 4.0], [8.0, 12.0], [5.0, 5.0]])
    centres = {"generated": prf + 1.0, "read-out": prf[::-1].copy()}
    checks = {
        "generated": {"median_error": 1.41, "chance_median_error": 6.0, "p_value": 0.001},
        "read-out": {"median_error": 7.2, "chance_median_error": 6.5, "p_value": 0.6},
    }
    imgs = _images(3, size=16)
    fig = figures.prf_check(prf, centres, checks, 16, imgs)
    _saved(fig, tmp_path)
    assert len(fig.axes) == 2
    for ax, (name, c) in zip(fig.axes, centres.items(), strict=True):
        e = checks[name]
        assert ax.get_title() == (
            f"{name}\nmedian error {e['median_error']:.1f} px, chance {e['chance_median_error']:.1f} "
            f"(p = {e['p_value']:.3f})"
        )
        for line, p0, p1 in zip(ax.lines[:4], prf, c, strict=True):  # true pRF centre joined to its effect
            np.testing.assert_array_equal(line.get_xdata(), [p0[0], p1[0]])
            np.testing.assert_array_equal(line.get_ydata(), [p0[1], p1[1]])
        np.testing.assert_array_equal(np.c_[ax.lines[4].get_xdata(), ax.lines[4].get_ydata()], prf)
        np.testing.assert_array_equal(np.c_[ax.lines[5].get_xdata(), ax.lines[5].get_ydata()], c)
        np.testing.assert_array_equal(ax.images[0].get_array(), imgs.mean(0).astype(np.uint8))
        assert ax.images[0].get_extent() == [0, 16, 16, 0]
        assert ax.get_xlim() == (0, 16) and ax.get_ylim() == (16, 0)
    assert _legend(fig.axes[0]) == ["true pRF centre", "effect centre"] and _legend(fig.axes[1]) == []
    fig = figures.prf_check(prf, {"generated": centres["generated"]}, checks, 16)
    assert len(fig.axes) == 1 and not fig.axes[0].images


# ----------------------------------------------------------------------------------------------------------
# 05 evaluation


def _published() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["MindEye 1", "Brain-Diffuser"],
            "PixCorr": [0.31, np.nan],
            "SSIM": [0.32, 0.36],
            "set": "x",
        }
    )


def test_metric_family(tmp_path):
    table = {"oracle": {"PixCorr": 0.3, "SSIM": None}, "ridge": {"PixCorr": 0.2, "SSIM": 0.4}}
    chance = {"PixCorr": 0.05, "SSIM": 0.1}
    fig = figures.metric_family(table, ["PixCorr", "SSIM"], "low-level", _published(), chance)
    _saved(fig, tmp_path)
    ax = fig.axes[0]
    assert ax.get_title() == "low-level" and ax.get_ylabel() == "higher is better"
    assert _ticklabels(ax) == ["PixCorr", "SSIM"]
    heights = [b.get_height() for b in _bars(ax)]
    assert heights == [0, 0, 0.3, 0.2, 0.4]  # two legend handles, then the values (oracle's SSIM missing)
    x = [b.get_x() + b.get_width() / 2 for b in _bars(ax)[2:]]
    np.testing.assert_allclose(x, [-0.2, 0.2, 1.2])
    assert [t.get_text() for t in ax.texts] == ["n/a"] and ax.texts[0].get_position()[0] == pytest.approx(0.8)
    chance_y = [seg[0, 1] for coll in ax.collections for seg in coll.get_segments()]
    assert chance_y == [0.05, 0.1]
    published = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines]
    assert published == [([0.46], [0.31]), ([1.46], [0.32]), ([1.46], [0.36])]  # NaN rows dropped
    assert sorted(_legend(ax)) == sorted(["oracle", "ridge", "chance", "published on NSD (not comparable)"])
    fig = figures.metric_family(table, ["PixCorr"], "distance", lower_better=True)
    assert fig.axes[0].get_ylabel() == "lower is better" and not fig.axes[0].lines
    empty = {"oracle": {"CLIP": None}, "ridge": {}}
    fig = figures.metric_family(empty, ["CLIP"], "2-way")
    assert "no pretrained weights for these metrics here" in _texts(fig)
    assert [t.get_text() for t in fig.axes[0].texts].count("n/a") == 2
    assert _legend(fig.axes[0]) == ["oracle", "ridge"]


def test_metric_family_legend_when_first_metric_lacks_chance_and_published():
    table = {"ridge": {"EffNet-B": 0.9, "SSIM": 0.4}}
    fig = figures.metric_family(table, ["EffNet-B", "SSIM"], "t", _published(), {"SSIM": 0.1})
    assert sorted(_legend(fig.axes[0])) == sorted(["ridge", "chance", "published on NSD (not comparable)"])


def test_readback_table(tmp_path):
    chance = {"colour": 0.25, "shape": 0.5}
    table = {"stimuli": {"colour": 0.95, "shape": 0.9}, "oracle": {"colour": 0.5, "shape": 0.4}}
    fig = figures.readback_table(table, chance, "attribute read-back")
    _saved(fig, tmp_path)
    ax = fig.axes[0]
    assert ax.get_title() == "attribute read-back"
    assert _ticklabels(ax) == ["colour\n(chance 0.25)", "shape\n(chance 0.50)"]
    assert _ticklabels(ax, "y") == ["stimuli", "oracle"]
    assert [t.get_text() for t in ax.texts] == ["0.95", "0.90", "0.50", "0.40"]
    assert [t.get_position() for t in ax.texts] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    lift = np.array(
        [[(0.95 - 0.25) / 0.75, (0.9 - 0.5) / 0.5], [(0.5 - 0.25) / 0.75, 0.0]]
    )  # below chance: 0
    np.testing.assert_allclose(ax.images[0].get_array(), lift)


def test_intervals_are_drawn_as_error_bars_around_each_value(tmp_path):
    from matplotlib.collections import LineCollection

    def spans(ax, axis):  # (low, high) of every error bar segment along ``axis``
        k = 1 if axis == "y" else 0
        return sorted(tuple(sorted(seg[:, k])) for c in ax.collections if isinstance(c, LineCollection)
                      for seg in c.get_segments() if seg[0, 1 - k] == seg[1, 1 - k])  # fmt: skip

    table = {"oracle": {"PixCorr": 0.3}, "ridge": {"PixCorr": 0.2}}
    iv = {"oracle": {"PixCorr": [0.25, 0.36]}, "ridge": {"PixCorr": [0.1, 0.22]}}
    fig = figures.metric_family(table, ["PixCorr"], "low-level", intervals=iv)
    _saved(fig, tmp_path)
    assert spans(fig.axes[0], "y") == [(0.1, 0.22), (0.25, 0.36)]
    assert "95% interval (test images)" in _legend(fig.axes[0])
    measures = ("img_retrieval_top1", "category_accuracy", "layout_r")
    results = {
        "nsdgeneral": dict.fromkeys(measures, 0.5) | {"n_voxels": 9},
        "V1": dict.fromkeys(measures, 0.3) | {"n_voxels": 3},
    }
    roi_iv = {"nsdgeneral": dict.fromkeys(measures, [0.4, 0.6]), "V1": dict.fromkeys(measures, [0.2, 0.45])}
    fig = figures.roi_comparison(results, None, dict.fromkeys(measures, 0.1), intervals=roi_iv)
    for ax in fig.axes:
        assert spans(ax, "x") == [(0.2, 0.45), (0.4, 0.6)]
    fig = figures.readback_table(
        {"oracle": {"colour": 0.5}}, {"colour": 0.25}, intervals={"oracle": {"colour": [0.4, 0.61]}}
    )
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.50\n[0.40, 0.61]"]
    panels = {"probe": {"a": {"colour": 0.7}}}
    fig = figures.knn_bars(panels, {"colour": 0.25}, intervals={"probe": {"a": {"colour": [0.6, 0.8]}}})
    assert spans(fig.axes[0], "y") == [(0.6, 0.8)]
