"""One self-contained HTML report per profile: every figure of notebooks 00-05 with a paragraph each, the key
tables from their metrics files, and the published results beside ours; images are embedded, so the page is one
file. ``python -m lib.report --profile mini [--screenshot]`` rebuilds it (notebook 05 does at its end), and
``--screenshot`` renders it in headless Chromium to check it displays."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from lib import paths
from lib.analysis import stats
from lib.analysis.variants import NEAREST, ORACLE
from lib.fileio import atomic_path, write_bytes, write_json
from lib.report import labels, results
from lib.report.results import FewSessions, JointEmbedding, LeaveOneOut

PUBLISHED = paths.PROJ_ROOT / "data_manifests" / "published_results.csv"

SECTIONS = {
    "00": ("Data preparation", "NSD betas of one subject become the voxels of an ROI group: z-scored per session, "
           "repeats of the shared test images averaged, train and test split on the shared images."),
    "01": ("Joint embedding", "The CLIP-style image and caption space the encoders predict (the pretrained "
           "mini-world model of models/, a real CLIP checkpoint, or one learned here from the training stimuli), "
           "probed on the test stimuli beside a random-init network, and DINO self-supervised features."),
    "02": ("fMRI encoders", "Ridge and a residual MLP map the voxels to the embedding; retrieval and 2-way "
           "identification on the test images, against a noise-free ceiling; and the spatial pathway, a "
           "low-resolution image decoded from early visual cortex."),
    "03": ("Generator", "A CLIP-conditioned StyleGAN2 as in LAFITE draws images from embeddings: the pretrained "
           "mini-world generator (or a LAFITE checkpoint, or one trained here), tuned on fMRI predictions, and "
           "refined by latent optimisation."),
    "04": ("Leave-one-out", "Every voxel and ROI group left out in turn: how each moves the predicted embedding, "
           "the spatial pathway's image (exact) and the reconstruction, mapped on the brain and checked against "
           "the simulator's truth and the pRF files."),
    "05": ("Evaluation", "The field's metrics for every reconstruction variant and for the baselines (nearest "
           "training image, mean image), judged also by networks no model was trained on (EffNet-Lite0, the "
           "attribute read-back), with the published NSD results beside them (a different dataset: not comparable)."),
    "06": ("Few sessions, several subjects", "A new subject decoded from its first sessions: alone (ridge, the "
           "residual MLP) and through an encoder shared with the other subjects (MindEye2's design: a linear map "
           "per subject into one space, one backbone), pretrained on them and fine-tuned on the new subject."),
}  # fmt: skip

#: one paragraph per figure; tests/report/test_document.py checks that every figure a notebook writes has one
FIGURES = {
    "00_roi_map.png": "The ROI groups on the subject's anatomy: nsdgeneral, the early visual areas (V1-hV4), "
    "the streams and the category-selective (floc) regions.",
    "00_ncsnr.png": "Noise-ceiling SNR per voxel (NSD's ncsnr, from the repeated images) and its distribution per "
    "ROI group; it bounds how well any encoder can predict a voxel.",
    "00_stimuli.png": "Example stimuli with their captions: what the subject saw and what the joint embedding "
    "learns to align.",
    "00_zscore_effect.png": "Per-session means before and after z-scoring, and test-retest reliability with and "
    "without it: session drifts dominate raw betas.",
    "00_voxel_counts.png": "Voxels per ROI group, the input sizes of the encoders.",
    "01_training_curves.png": "Contrastive and DINO training losses, with held-out retrieval during training.",
    "01_similarity.png": "Image-caption cosine similarity on held-out pairs: a strong diagonal means matching "
    "pairs are found.",
    "01_retrieval_examples.png": "Caption-to-image retrieval examples from held-out stimuli.",
    "01_dino_knn.png": "k-nearest-neighbour and linear probes of the DINO teacher's image vector and patch grid "
    "against the known scene attributes, beside the same network at random initialisation and the CLIP embedding.",
    "01_dino_recipes.png": "The DINO recipe ablation: each recipe (one change at a time, 300 steps each) on the test "
    "stimuli, coloured by its difference from random initialisation, with the change from the recipe before it.",
    "01_embedding_probes.png": "Linear probes of the image embedding on the test stimuli (fitted on the training "
    "stimuli): this embedding against the same architecture trained from scratch here and at random initialisation.",
    "01_embedding_2d.png": "A 2-D projection of the image embeddings coloured by scene attributes.",
    "02_roi_comparison.png": "Retrieval, category and layout decoded from each ROI group, with 95% bootstrap "
    "intervals over test images, against the noise-free ceiling and chance.",
    "02_learning_curves.png": "MLP training curves and ridge accuracy against the number of training trials.",
    "02_voxel_accuracy.png": "Per-voxel accuracy of the encoding direction on the brain.",
    "02_predicted_vs_true.png": "Predicted against true embedding values on the test images.",
    "02_lowlevel.png": "The spatial pathway: the low-resolution image ridge decodes from early visual voxels alone "
    "(MindEye's blurry reconstruction), upsampled, beside the stimulus.",
    "03_reconstructions.png": "Test stimuli and their reconstructions: the oracle (true embedding), the plain fMRI "
    "reconstruction, the fMRI-tuned generator, latent optimisation, the spatial pathway alone and both pathways "
    "combined (latent optimisation toward the predicted embedding and the decoded layout).",
    "03_training_curves.png": "Generator training when trained here (adversarial losses, conditioning alignment), fMRI tuning and latent "
    "optimisation.",
    "03_scores.png": "2-way identification, PixCorr and SSIM per variant, and the effect of the perturbation ratio.",
    "04_importance_brain.png": "Leave-one-voxel-out importance (mean 1 - cos change of the predicted embedding) on "
    "the brain, glass brain and slices on the MNI template.",
    "04_roi_effects.png": "Leaving out whole ROI groups against the mean single-voxel effect in each group.",
    "04_effect_maps.png": "Image-space effect of single voxels: mean change of the generated image; + the true "
    "pRF centre, o the map's centre.",
    "04_loo_vs_saliency.png": "Leave-one-out against gradient x input saliency, per voxel.",
    "04_lowlevel_maps.png": "Each early voxel's exact effect on the spatial pathway's image (ridge: its weight "
    "image times the mean change of its activity); + the voxel's pRF centre, o the map's centre.",
    "04_combined_maps.png": "Single voxels left out of the combined reconstruction, early voxels (first) beside "
    "higher-area voxels: mean change of the image over test samples; + pRF centre, o the map's centre.",
    "04_roi_only.png": "ROI-only reconstructions: one group's activity, every other voxel at its training mean.",
    "04_validation.png": "LOO importance against each voxel's true weight in the ideal linear read-out of the "
    "embedding, computed from the simulator's truth.",
    "04_prf_check.png": "Where single early voxels move the image, against their true pRF centres, through the "
    "generator, through the embedding's layout read-out, through the spatial pathway (exact) and through the "
    "combined reconstruction, with chance from re-paired centres.",
    "05_low_level.png": "PixCorr and SSIM per variant (MindEye's definitions at 425 px), published NSD values as "
    "grey markers.",
    "05_two_way.png": "2-way identification on network features per variant (chance 0.5); n/a where the "
    "pretrained weights are not on this machine.",
    "05_distance.png": "Feature correlation distance (lower is better); n/a where weights are absent.",
    "05_retrieval.png": "Top-1 retrieval among 300 test samples of the 02 encoders, both directions.",
    "05_roi_groups.png": "ROI-only reconstructions scored per ROI group, with 95% intervals over test images; the "
    "table of paired comparisons says which groups differ from all voxels.",
    "05_readback.png": "Attribute read-back: what a CNN trained on the stimuli (never on reconstructions) reads "
    "from each reconstruction and baseline, and the shape judge pretrained on the scene corpus, beside their "
    "accuracy on the stimuli themselves and chance.",
    "06_few_sessions.png": "A subject decoded from its first k sessions: image and brain retrieval of the "
    "single-subject ridge and MLP, the shared ridge baseline, and the shared encoder (only the new subject's map "
    "fitted, then everything fine-tuned) pretrained on the other subjects, with 95% intervals over the test "
    "images; right, each subject as the target (dots) and their mean (bars), at one session.",
    "06_reconstructions.png": "The first target's test images drawn by 03's generator (not tuned on fMRI) from the "
    "true embedding and from each decoder's prediction with one session and with all sessions; under each image "
    "its PixCorr. The table below judges every test image as 05 does.",
}

CAVEATS = (
    "NSD's train and test images share semantic clusters: CLIP-guided reconstructions are partly classification "
    "plus hallucination and degrade on category-disjoint splits (arXiv 2405.10078). PixCorr, SSIM and the AlexNet "
    "scores track human judgement poorly. Published numbers come from NSD at 425 px on 982-1,000 test images; "
    "the embedded default is mini-NSD, a simulator with a known ground truth: its numbers show that the pipeline "
    "works, not how it would score on NSD."
)


def published_table(path: str | Path = PUBLISHED) -> pd.DataFrame:
    """The published NSD results (data_manifests/published_results.csv): method, set, source and one column per
    metric as a fraction (2-way and retrieval 0-1; EffNet-B and SwAV are distances, lower is better)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the published results table is missing")
    table = pd.read_csv(path)
    missing = {"method", "set", "source"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: expected columns method, set and source (missing {sorted(missing)})")
    return table


def _results(folder: Path) -> dict[str, object]:
    """Each notebook's results in the metrics ``folder``, read through its type (:mod:`lib.report.results`)."""
    found = {stage: results.load(folder, stage) for stage in results.TYPES} if folder.is_dir() else {}
    return {stage: r for stage, r in found.items() if r is not None}


def _fmt(v, interval=None) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if interval is not None and isinstance(v, int | float):
        return f"{v:.3f} <small>[{interval[0]:.3f}, {interval[1]:.3f}]</small>"
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _table(rows: dict[str, dict], caption: str = "", intervals: dict[str, dict] | None = None) -> str:
    """An HTML table of {row: {column: value}}; ``intervals`` ({row: {column: [low, high]}}) are printed beside
    their values."""
    cols: list[str] = []
    for r in rows.values():
        cols += [c for c in r if c not in cols]
    iv = intervals or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th>"
        + "".join(f"<td>{_fmt(r.get(c), iv.get(k, {}).get(c))}</td>" for c in cols)
        + "</tr>"
        for k, r in rows.items()
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _comparisons(comps: dict[str, dict], caption: str) -> str:
    """Paired comparisons {"a − b": {metric: {diff, low, high, p}}} as a table of "difference [interval]"; a
    difference :func:`lib.analysis.stats.differs` accepts (95% interval excludes 0, permutation p < 0.05) is marked
    with * (only those are differences the report claims)."""

    rows = {}
    for pair, by_metric in comps.items():
        rows[pair] = {m: f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]{' *' if stats.differs(c) else ''}"
                      for m, c in by_metric.items()}  # fmt: skip
    return _table(rows, f"{caption} (a − b on the same test images, 95% paired bootstrap interval; * a difference: "
                        "the interval excludes 0 and the sign-flip p < 0.05)")  # fmt: skip


def _spread(spread: dict, caption: str) -> str:
    rows = {
        r: {m: f"{v['mean']:.3f} ± {v['sd']:.3f}" for m, v in ms.items()}
        for r, ms in spread["spread"].items()
    }
    return _table(rows, f"{caption}: mean ± standard deviation over seeds {spread['seeds']}")


def _uncertain(r, key: str) -> tuple[dict, dict]:
    """(intervals, comparisons) that a notebook's results ``r`` record in field ``key`` (empty when absent)."""
    u = getattr(r, key) or {}
    return u.get("intervals") or {}, u.get("comparisons") or {}


def _tables(nb: str, m: dict[str, object], goals: dict | None = None) -> list[str]:
    """The key tables of notebook ``nb`` from the notebooks' results ``m`` (stage -> results object)."""
    out = []
    if nb == "02" and m.get("02_fmri_encoder"):
        r = m["02_fmri_encoder"]
        keys = ("two_way", "img_retrieval_top1", "brain_retrieval_top1", "cosine", "fraction_of_ceiling")
        iv, comps = _uncertain(r, "uncertainty")
        rows = {e: {k: row.get(k) for k in keys} for e, row in r.encoders.items()}
        out.append(_table(rows, "encoders on the test images [95% bootstrap interval over test images]", iv))
        if comps:
            out.append(_comparisons(comps, "encoders compared"))
        if len((r.seed_spread or {}).get("seeds", [])) > 1:
            out.append(_spread(r.seed_spread, "encoders retrained with other seeds"))
        roi_iv, roi_comps = _uncertain(r, "roi_uncertainty")
        if roi_comps:
            out.append(_comparisons(roi_comps, "each ROI group against the prepared ROI"))
    if nb == "01" and m.get("01_joint_embedding"):
        r = m["01_joint_embedding"]
        if _uncertain(r, "probe_uncertainty")[1]:
            out.append(
                _comparisons(_uncertain(r, "probe_uncertainty")[1], "embeddings compared by their probes")
            )
        if len((r.scratch_seed_spread or {}).get("seeds", [])) > 1:
            out.append(
                _spread(r.scratch_seed_spread, "the embedding trained here, retrained with other seeds")
            )
    if nb == "03" and m.get("03_stylegan2"):
        r = m["03_stylegan2"]
        out.append(_table(r.variants, "reconstruction variants (03's own scores)"))
        if len((r.tune_seed_spread or {}).get("seeds", [])) > 1:
            out.append(_spread(r.tune_seed_spread, "fMRI tuning rerun with other seeds (03's own scores)"))
    if nb == "04" and m.get("04_leave_one_out"):
        r = m["04_leave_one_out"]
        names = sorted(f.name for f in dataclasses.fields(r) if f.name.startswith(("spearman_", "prf_")))
        checks = {
            k: getattr(r, k)
            for k in names
            if getattr(r, k) is not None and not isinstance(getattr(r, k), dict)
        }
        out.append(_table({"validation": checks}, "leave-one-out checks against the truth"))
        cols = ("median_error_deg", "chance_median_error_deg", "ratio", "p_value", "n_voxels")
        rows = {
            name: {k: (getattr(r, key) or {}).get(k) for k in cols}
            for name, key in (("spatial pathway (exact)", "lowlevel_prf"), ("combined", "combined_prf"))
        }
        by_area = r.lowlevel_prf_by_area or {}
        rows |= {f"spatial pathway, {a}": {k: e.get(k) for k in cols} for a, e in by_area.items()}
        if r.lowlevel_prf:
            out.append(
                _table(rows, "effect centres against pRF centres, early voxels (degrees of visual angle)")
            )
        files = r.lowlevel_prf_files
        if files:
            stats_ = ("angle_error", "ecc_r", "distance", "hemifield")
            names = {"angle_error": "angle_error_deg", "ecc_r": "ecc_r", "distance": "distance_deg",
                     "hemifield": "hemifield_agreement"}  # fmt: skip
            frows = {st: {"observed": files.get(names[st]), "null median": files.get(f"{st}_null_median"),
                          "p": files.get(f"{st}_p")} for st in stats_}  # fmt: skip
            out.append(_table(frows, f"spatial pathway against the NSD-format pRF files ({files.get('n_used')} "
                                     "early voxels; null: pRFs permuted across them)"))  # fmt: skip
        loc = r.localisation
        if loc:
            out.append(_table({"early − higher": loc}, "localisation of the combined reconstruction's effects "
                                                       "(share of a mean effect map's energy near its centre)"))  # fmt: skip
    if nb == "06" and m.get("06_few_sessions"):
        r = m["06_few_sessions"]
        first = r.targets[0]
        out.append(_table(r.table[first], f"{first} from its first k sessions [95% interval over test images]",
                          r.intervals[first]))  # fmt: skip
        out.append(
            _comparisons(r.comparisons[first], f"{first}: the fine-tuned shared encoder against the others")
        )
        rows = {row: {m_: f"{v['mean']:.3f} [{v['min']:.3f}, {v['max']:.3f}]" for m_, v in by.items()}
                for row, by in r.across_targets.items()}  # fmt: skip
        out.append(_table(rows, f"every subject as the target ({', '.join(r.targets)}): mean [min, max]"))
        cost = {t: {"new subject (s)": r.new_subject_seconds[t], "its parameters": r.per_subject_parameters[t],
                    "pretraining on the others (s)": r.pretrain_seconds[t]} for t in r.targets}  # fmt: skip
        out.append(_table(cost, f"adding a subject (peak memory of the run {r.peak_memory_mb:.0f} MB)"))
        rec = r.reconstructions
        if rec:
            out.append(_table(rec["table"], f"{first}'s test images drawn by {rec['source']} from each decoder "
                                            "and judged as in 05 [95% interval] (mismatched: chance)",
                              rec["intervals"]))  # fmt: skip
            out.append(_comparisons(rec["comparisons"], "the shared encoder's 1-session reconstructions against "
                                                        "the others"))  # fmt: skip
            rows = {f"{v}: {m}": g for v, by in rec["goals"].items() for m, g in by.items()}
            out.append(_table(rows, "1-session reconstructions: the issue's goals"))
    if nb == "05" and m.get("05_evaluation"):
        r = m["05_evaluation"]
        rows = r.table | ({"chance": r.chance} if r.chance else {})
        iv, comps = _uncertain(r, "uncertainty")
        out.append(_table(rows, "every variant, every metric [95% bootstrap interval over test images] (n/a: "
                                "pretrained weights unavailable)", iv))  # fmt: skip
        if comps:
            out.append(_comparisons(comps, "variants compared, every metric"))
        if r.unavailable:
            out.append(_table({k: {"why": v} for k, v in r.unavailable.items()}, "unavailable metrics"))
        if r.roi_table:
            iv, comps = _uncertain(r, "roi_uncertainty")
            out.append(_table(r.roi_table, "ROI-only reconstructions per ROI group [95% interval]", iv))
            if comps:
                out.append(_comparisons(comps, "each ROI group against all voxels"))
        if r.readback:
            rows = r.readback | ({"chance (majority)": r.readback_chance} if r.readback_chance else {})
            iv, comps = _uncertain(r, "readback_uncertainty")
            out.append(_table(rows, "attribute read-back by a judge trained on stimuli [95% interval]", iv))
            if comps:
                out.append(_comparisons(comps, "read-back compared"))
        if goals:
            out.append(_table(goals, "goals of the pretrained-models work: measured value, threshold, met"))
        pub = published_table()
        rows = {f"{a} ({b})": {c: (None if pd.isna(v) else float(v)) for c, v in row.items()}
                for (a, b), row in pub.drop(columns="source").set_index(["method", "set"]).iterrows()}  # fmt: skip
        out.append(_table(rows, "published on NSD (different data, size and split: not comparable)"))
        out.append(f"<p class='caveat'>{html.escape(CAVEATS)}</p>")
    return out


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#444}
table{border-collapse:collapse;font-size:.8em;margin:1em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}thead th{background:#f3f3f3}
tbody th{text-align:left;white-space:nowrap}caption{text-align:left;font-weight:600;padding:.3em 0}
.caveat{background:#fff7e0;border-left:4px solid #e0a000;padding:.6em}"""


def build(profile: str, out: str | Path | None = None) -> Path:
    """Write the report of ``profile`` to ``out`` (default build/<profile>/report.html) from the figures and metrics
    files its notebooks wrote, every image embedded. For the embedded default, figures/report.html is the same page
    with each image linked to the PNG beside it, so that git does not hold every figure twice."""
    figs, mdir = paths.output_dir(profile), paths.metrics_dir(profile)
    m = _results(mdir)
    measured, goals_file = goals_of(m), mdir / f"{GOALS}.json"
    if measured:
        write_json(goals_file, measured)
    elif goals_file.is_file():  # the metrics it came from no longer give it
        goals_file.unlink()
    written = json.loads(goals_file.read_text()) if goals_file.is_file() else None  # as the file orders it
    parts: list[str | Path] = [  # a Path is a figure, rendered embedded or linked
        f"<h1>NSD reconstruction workbench: report, profile <code>{html.escape(profile)}</code></h1>",
        f"<p>Figures and tables regenerated by the notebooks (<code>make figures</code> for the embedded "
        f"default). {html.escape(CAVEATS)}</p>",
    ]
    for nb, (title, text) in SECTIONS.items():
        pngs = sorted(figs.glob(f"{nb}_*.png")) if figs.is_dir() else []
        tables = _tables(nb, m, written)
        if pngs or tables:
            parts += [f"<h2>{nb} · {html.escape(title)}</h2><p>{html.escape(text)}</p>", *tables, *pngs]

    def page(embed: bool) -> bytes:
        def figure(png: Path) -> str:
            src = (
                f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" if embed else png.name
            )
            caption = html.escape(FIGURES.get(png.name, png.stem))
            return (f"<figure><img alt='{png.stem}' src='{src}'>"
                    f"<figcaption><b>{png.name}</b>: {caption}</figcaption></figure>")  # fmt: skip

        body = "\n".join(figure(p) if isinstance(p, Path) else p for p in parts)
        return (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>NSD workbench report: "
            f"{html.escape(profile)}</title><style>{STYLE}</style></head><body>{body}</body></html>\n"
        ).encode()

    default = paths.BUILD_DIR / profile / "report.html"
    out = Path(out) if out else default
    write_bytes(out, page(embed=True))
    if out == default and profile == paths.EMBEDDED_PROFILE and figs == paths.FIGURES_DIR:
        write_bytes(paths.FIGURES_DIR / "report.html", page(embed=False))
    return out


def browser() -> str | None:
    """A headless-capable Chromium on PATH (Debian's ``chromium`` package), or None."""
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _chromium(page: str | Path, doing: str) -> tuple[str, Path]:
    """Chromium's path and ``page`` resolved, or a one-line error saying what is missing."""
    exe = browser()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH: install Debian's chromium package to check the report")
    page = Path(page).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no report to {doing} (python -m lib.report --profile ...)")
    return exe, page


def screenshot(
    page: str | Path, png: str | Path, width: int = 1200, height: int = 3000, timeout: int = 120
) -> Path:
    """Render ``page`` in headless Chromium and save a screenshot of the top ``height`` pixels to ``png``."""
    exe, page = _chromium(page, "render")
    png = Path(png)
    with atomic_path(png, ".png") as tmp:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={tmp}",
               f"--window-size={width},{height}", page.as_uri()]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not tmp.stat().st_size:
            raise RuntimeError(f"chromium could not render {page}: {done.stderr.strip()[-300:]}")
    return png


#: the page that opens a report in a frame and writes what it finds into its own DOM (read back by --dump-dom)
_INSPECTOR = """<!doctype html><meta charset="utf-8"><body><pre id="found">pending</pre>
<iframe id="page" src="{src}" style="width:1200px;height:3000px"></iframe>
<script>
const frame = document.getElementById("page");
frame.onload = () => {{
  const doc = frame.contentDocument;
  const imgs = [...doc.images].map(i => ({{src: i.getAttribute("src").slice(0, 80), ok: i.complete && i.naturalWidth > 0,
                                           shown: i.getBoundingClientRect().width > 0}}));
  const tables = [...doc.querySelectorAll("table")].map(t => ({{rows: t.rows.length,
                                                               shown: t.getBoundingClientRect().height > 0}}));
  document.getElementById("found").textContent = JSON.stringify({{imgs, tables}});
}};
</script>"""


def inspect(page: str | Path, timeout: int = 120) -> dict:
    """Open ``page`` in headless Chromium and report what it rendered: {"imgs": [{"src", "ok" (loaded, with a
    width), "shown"}], "tables": [{"rows", "shown"}], "console": [the page's console messages]}."""
    exe, page = _chromium(page, "open")
    with tempfile.TemporaryDirectory(prefix="lib_inspect_") as tmp:
        wrapper = Path(tmp) / "inspect.html"
        wrapper.write_text(_INSPECTOR.format(src=html.escape(page.as_uri())))
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
               "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp}/profile", "--virtual-time-budget=15000",
               "--dump-dom", wrapper.as_uri()]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    found = re.search(r'<pre id="found">(.*?)</pre>', done.stdout, re.S)
    if done.returncode != 0 or found is None or found.group(1) == "pending":
        raise RuntimeError(f"chromium could not open {page}: {done.stderr.strip()[-300:]}")
    out = json.loads(html.unescape(found.group(1)))
    # Chromium logs each console message (console.*, an uncaught error) as a ":CONSOLE" line
    out["console"] = [ln.strip() for ln in done.stderr.splitlines() if ":CONSOLE" in ln]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=paths.EMBEDDED_PROFILE)
    ap.add_argument("--screenshot", action="store_true", help="render it in headless Chromium to report.png")
    a = ap.parse_args(argv)
    path = build(a.profile)
    print(f"wrote {path}")
    if a.screenshot:
        try:
            print(f"rendered {screenshot(path, path.with_suffix('.png'))}")
        except (FileNotFoundError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


#: the reconstruction issue's goals on mini: (what, threshold); each measured by :func:`reconstruction_goals`
MAIN_OBJECT = ("colour", "shape", "position")


GOALS = "goals"  # the metrics file (stem) the report writes the goals into


def goals(profile: str) -> dict | None:
    """:func:`reconstruction_goals` from the metrics files of 01, 04 and 05 of ``profile``; None until all three
    exist and 05 holds the attribute read-back (a simulated dataset)."""
    return goals_of(_results(paths.metrics_dir(profile)))


def goals_of(m: dict[str, object]) -> dict | None:
    """:func:`goals` from the notebooks' results ``m`` (stage -> results object, :func:`_results`)."""
    needed = ("01_joint_embedding", "04_leave_one_out", "05_evaluation")
    if not all(m.get(s) for s in needed) or not m["05_evaluation"].readback:
        return None
    r = m["05_evaluation"]
    out = reconstruction_goals(m["01_joint_embedding"], m["04_leave_one_out"], r.table, r.readback,
                               _uncertain(r, "uncertainty")[1], _uncertain(r, "readback_uncertainty")[1])  # fmt: skip
    return out | (few_session_goals(m["06_few_sessions"]) if m.get("06_few_sessions") else {})


#: 06's goals: the shared encoder at one session against the single-subject MLP then (at least), and against the
#: best single-subject model with all sessions, ridge (at least)
FEW_SESSION_GOALS = {"mlp": 1.5, "ridge all": 0.75}


def few_session_goals(r: FewSessions) -> dict:
    """06's goals for its first target at its first k: the shared encoder's image retrieval against the MLP at
    that k (the ratio, and the paired difference that :func:`lib.analysis.stats.differs` accepts) and against ridge
    with all sessions, and its reconstructions' goals when made."""
    g, k = r.goals, r.goals["k"]
    name = f"06 shared fine-tuned, {k} session(s), image retrieval"
    paired = g[f"paired − mlp @ {k}"]
    out = {f"{name} / MLP at {k}": {"value": g[f"ratio to mlp @ {k}"], "threshold": FEW_SESSION_GOALS["mlp"],
                                    "met": g[f"ratio to mlp @ {k}"] >= FEW_SESSION_GOALS["mlp"]
                                    and stats.differs(paired) and paired["diff"] > 0,
                                    "interval": [round(paired["low"], 4), round(paired["high"], 4)]}}  # fmt: skip
    if "ratio to ridge @ all" in g:
        v = g["ratio to ridge @ all"]
        out[f"{name} / ridge with all sessions"] = {"value": v, "threshold": FEW_SESSION_GOALS["ridge all"],
                                                     "met": v >= FEW_SESSION_GOALS["ridge all"]}  # fmt: skip
    for variant, by_metric in (r.reconstructions or {}).get("goals", {}).items():
        for metric, v in by_metric.items():
            out[f"06 reconstructions from {variant}: {metric}"] = dict(v)
    return out


def reconstruction_goals(m01: JointEmbedding | None, m04: LeaveOneOut | None, table: dict[str, dict],
                         readback: dict[str, dict],
                         comparisons: dict | None = None, readback_comparisons: dict | None = None) -> dict:  # fmt: skip
    """Each goal of the pretrained-models work with its measured value, threshold and whether it is met, from 01's
    and 04's results (None: not run), 05's metric table and 05's attribute read-back (rows named as notebook 05 names them). A goal
    comparing two variants uses 05's paired comparison when given (``comparisons``, ``readback_comparisons``: "a −
    b" -> metric -> {diff, low, high, p}): "above" is met only for a difference above 0 that
    :func:`lib.analysis.stats.differs` accepts (interval excludes 0, p < 0.05), "keeps or raises" unless there is
    such a difference below 0; the interval is recorded with the goal."""
    goals: dict[str, dict] = {}

    comparisons, readback_comparisons = comparisons or {}, readback_comparisons or {}

    def goal(name: str, value, threshold, met: bool | None = None) -> None:
        ok = bool(value >= threshold) if met is None and value is not None else met
        goals[name] = {"value": value, "threshold": threshold, "met": ok}

    def difference(name: str, a: str, b: str, metric: str, fallback: float, keeps: bool = False,
                   source: dict | None = None) -> None:  # fmt: skip
        """A goal that ``a`` is above ``b`` on ``metric`` (``keeps``: not below it)."""
        c = (comparisons if source is None else source).get(f"{a} − {b}", {}).get(metric)
        if c is None:  # metrics written before paired comparisons: the bare difference
            goal(name, fallback, 0.0, met=fallback >= 0 if keeps else fallback > 0)
            return
        clear = stats.differs(c)  # the interval excludes 0 and the permutation test agrees
        goal(name, c["diff"], 0.0, met=not (clear and c["diff"] < 0) if keeps else clear and c["diff"] > 0)
        goals[name]["interval"] = [round(c["low"], 4), round(c["high"], 4)]

    probes = ((m01.embedding_probes if m01 else None) or {}).get("this embedding", {})
    for attr, thr in (
        ("shape", 0.7),
        ("position", 0.7),
        ("colour", 0.9),
        ("count", 0.9),
        ("background", 0.95),
    ):
        goal(f"embedding probe: {attr}", probes.get("linear_probe", {}).get(attr), thr)
    goal("embedding img->txt top-1", probes.get("img2txt_top1"), 0.95)
    knn, rnd = (m01.dino_knn or {}, m01.dino_knn_random_init or {}) if m01 else ({}, {})
    if knn:
        worst = min(knn, key=lambda a: knn[a] - rnd[a])
        goal(f"DINO k-NN above random init on every attribute (smallest margin: {worst})",
             knn[worst] - rnd[worst], 0.0, met=all(knn[a] > rnd[a] for a in knn))  # fmt: skip
    oracle, plain = table.get(ORACLE, {}), table.get("ridge · plain", {})
    goal("oracle PixCorr", oracle.get("PixCorr"), 0.75)
    goal("oracle EffNet-Lite0 2-way", oracle.get("EffNet-Lite0 2-way"), 0.85)
    goal(
        "oracle read-back: main-object colour",
        readback.get(ORACLE, {}).get("colour"),
        0.70,
    )
    goal("ridge PixCorr", plain.get("PixCorr"), 0.65)
    goal("ridge EffNet-Lite0 2-way", plain.get("EffNet-Lite0 2-way"), 0.75)
    near = NEAREST.format("ridge")
    nearest = table.get(near, {})
    difference("ridge PixCorr above nearest training image (ridge)", "ridge · plain", near, "PixCorr",
               (plain.get("PixCorr") or 0) - (nearest.get("PixCorr") or 0))  # fmt: skip
    rb_plain, rb_near = readback.get("ridge · plain", {}), readback.get(near, {})
    if rb_plain:
        margin = float(np.mean([rb_plain[a] - rb_near[a] for a in MAIN_OBJECT]))
        difference("ridge main-object read-back (colour, shape, position) above nearest training image",
                   "ridge · plain", near, "main object", margin, source=readback_comparisons)  # fmt: skip
        for v in ("ridge · fMRI-tuned", "ridge · optimised"):
            if v not in readback:
                continue
            d_eff = (table[v].get("EffNet-Lite0 2-way") or 0) - (plain.get("EffNet-Lite0 2-way") or 0)
            d_rb = float(
                np.mean([readback[v][a] - rb_plain[a] for a in MAIN_OBJECT + ("background", "bg_colour")])
            )
            difference(f"{v} keeps or raises EffNet-Lite0 2-way over plain", v, "ridge · plain",
                       "EffNet-Lite0 2-way", d_eff, keeps=True)  # fmt: skip
            difference(f"{v} keeps or raises the mean read-back over plain", v, "ridge · plain", "mean", d_rb,
                       keeps=True, source=readback_comparisons)  # fmt: skip
    if m04 is not None and m04.prf_median_error_px is not None:
        ratio = m04.prf_median_error_px / m04.prf_chance_error_px
        goal("pRF check: median error / chance (at most 0.6)", ratio, 0.6, met=ratio <= 0.6)
    _pathway_goals(goals, goal, difference, m04, table, readback, readback_comparisons)
    return goals


#: the spatial pathway's goals on mini (at most / at least)
PATHWAY_GOALS = {"spatial": 0.35, "combined": 0.5, "files_distance": 0.35, "hemifield": 0.9, "pixcorr": 0.80,
                 "position": 0.70, "judge": 0.80, "shape_fraction": 0.6}  # fmt: skip
COMBINED = "ridge · combined"


def _pathway_goals(
    goals: dict,
    goal,
    difference,
    m04: LeaveOneOut | None,
    table: dict,
    readback: dict,
    readback_comparisons: dict,
) -> None:
    """The goals of the spatial-pathway work: where each early voxel acts (04) and the combined reconstruction from
    ridge predictions (05)."""
    g = PATHWAY_GOALS

    def at_most(name: str, value, threshold: float) -> None:
        if value is not None:
            goal(f"{name} (at most {threshold})", value, threshold, met=value <= threshold)

    low, comb_prf = (m04.lowlevel_prf, m04.combined_prf) if m04 else (None, None)
    at_most(
        "early voxels, spatial pathway: median pRF error / chance", (low or {}).get("ratio"), g["spatial"]
    )
    at_most("early voxels, combined reconstruction: median pRF error / chance", (comb_prf or {}).get("ratio"),
            g["combined"])  # fmt: skip
    files = (m04.lowlevel_prf_files if m04 else None) or {}
    at_most("NSD-format pRF files: median centre distance / chance", files.get("distance_ratio"),
            g["files_distance"])  # fmt: skip
    if files.get("hemifield_agreement") is not None:
        goal(
            "NSD-format pRF files: hemifield agreement of early voxels",
            files["hemifield_agreement"],
            g["hemifield"],
        )
    loc = m04.localisation if m04 else None
    if loc:
        name = "localisation: early voxels above higher-area voxels (combined reconstruction)"
        goal(name, loc["diff"], 0.0, met=loc["low"] > 0 and loc["p"] < 0.05)
        goals[name]["interval"] = [round(loc["low"], 4), round(loc["high"], 4)]
    comb = table.get(COMBINED)
    if not comb:
        return
    goal(f"{COMBINED} PixCorr", comb.get("PixCorr"), g["pixcorr"])
    near = NEAREST.format("ridge")
    difference(f"{COMBINED} EffNet-Lite0 2-way above the nearest training image (ridge)", COMBINED, near,
               "EffNet-Lite0 2-way", (comb.get("EffNet-Lite0 2-way") or 0) - (table.get(near, {}).get(
                   "EffNet-Lite0 2-way") or 0))  # fmt: skip
    rb = readback.get(COMBINED)
    if not rb:
        return
    goal(f"{COMBINED} position read-back", rb.get("position"), g["position"])
    for attr in ("background", "bg_colour", "colour"):
        difference(f"{COMBINED} {attr} read-back not below ridge · plain", COMBINED, "ridge · plain", attr,
                   rb[attr] - readback.get("ridge · plain", {}).get(attr, 0), keeps=True, source=readback_comparisons)  # fmt: skip
    stimuli = readback.get(labels.STIMULI, {}).get("shape (judge)")
    if stimuli is not None:
        goal("shape judge reads the stimuli", stimuli, g["judge"])
        goal(f"{COMBINED} shape (judge) / the stimuli's", rb.get("shape (judge)", 0) / max(stimuli, 1e-9),
             g["shape_fraction"])  # fmt: skip
