"""The HTML report (lib.report.document): a paragraph for every figure the notebooks write, self-contained pages with every figure and
table, the published table, and (where Debian's chromium is installed) a real browser rendering it."""

from __future__ import annotations

import dataclasses
import html
import json
import re
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lib import paths  # noqa: E402
from lib.report import document, results  # noqa: E402

COMMITTED = paths.metrics_dir(paths.EMBEDDED_PROFILE)  # figures/metrics, before any test moves it


def committed(stage: str, **fields):
    """The committed mini results of ``stage`` with ``fields`` replaced: a whole record, as a notebook writes it."""
    return dataclasses.replace(results.load(COMMITTED, stage), **fields)


def write(folder, stage: str, **fields) -> None:
    record = results.as_record(committed(stage, **fields), {"profile": "test", "seed": 0, "device": "cpu"})
    (folder / f"{stage}.json").write_text(json.dumps(record))


def _written_figures() -> set[str]:
    """Every figure file a notebook names, itself or through its stage module or 05's report labels."""
    names = set()
    lib = paths.PROJ_ROOT / "lib"
    for source in [
        *paths.NOTEBOOKS_DIR.glob("*.ipynb"),
        *(lib / "stage").glob("*.py"),
        lib / "report" / "labels.py",
    ]:
        names |= set(re.findall(r"(\d\d_[a-z0-9_]+\.png)", source.read_text()))
    return names


def test_every_figure_a_notebook_writes_has_a_paragraph_and_no_paragraph_is_stale():
    written = _written_figures()
    assert len(written) >= 25
    assert written == set(document.FIGURES)


def test_the_published_table_has_its_sources_and_fractions():
    pub = document.published_table()
    assert {"MindEye 1", "Brain-Diffuser", "MindEye 2, 40 sessions"} <= set(pub["method"])
    assert pub["source"].notna().all()
    values = pub.drop(columns=["method", "set", "source"]).to_numpy(float)
    assert np.nanmin(values) > 0 and np.nanmax(values) <= 1
    with pytest.raises(FileNotFoundError, match="published results"):
        document.published_table("/nonexistent.csv")


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.open, self.imgs, self.tables = [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        elif tag not in ("meta",):
            self.open.append(tag)
        self.tables += tag == "table"

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes {self.open[-1:]}"


@pytest.fixture
def small_report(tmp_path, monkeypatch):
    figs, mets = tmp_path / "figures", tmp_path / "metrics"
    figs.mkdir()
    mets.mkdir()
    for name in ("00_roi_map.png", "05_low_level.png"):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [1, 0])
        fig.savefig(figs / name)
        plt.close(fig)
    table = {
        "ridge · plain": {"PixCorr": 0.123, "Alex(2)": None},
        "oracle": {"PixCorr": 0.5, "Alex(2)": None},
    }
    write(mets, "05_evaluation", table=table, unavailable={"Alex(2)": "no file"}, chance={}, uncertainty={},
          roi_table={}, readback={})  # fmt: skip
    monkeypatch.setattr(document.paths, "output_dir", lambda profile: figs)
    monkeypatch.setattr(document.paths, "metrics_dir", lambda profile: mets)
    return document.build("test", tmp_path / "report.html")


def test_the_report_embeds_every_figure_and_table(small_report):
    page = small_report.read_text()
    tags = _Tags()
    tags.feed(page)
    assert tags.open == []  # well nested
    assert len(tags.imgs) == 2 and all(s.startswith("data:image/png;base64,") for s in tags.imgs)
    assert tags.tables == 3  # our table, the unavailable metrics, the published one
    assert "0.123" in page and "n/a" in page and "MindEye 1" in page and "not comparable" in page
    assert html.escape(document.FIGURES["00_roi_map.png"]) in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_the_committed_copy_links_the_figures_beside_it(small_report, tmp_path, monkeypatch):
    figs = small_report.parent / "figures"
    monkeypatch.setattr(document.paths, "FIGURES_DIR", figs)
    monkeypatch.setattr(document.paths, "BUILD_DIR", tmp_path / "build")
    monkeypatch.setattr(document.paths, "EMBEDDED_PROFILE", "test")
    built = document.build("test")
    embedded, linked = _Tags(), _Tags()
    embedded.feed(built.read_text())
    linked.feed((figs / "report.html").read_text())
    assert built == tmp_path / "build" / "test" / "report.html"
    assert all(s.startswith("data:image/png;base64,") for s in embedded.imgs) and len(embedded.imgs) == 2
    assert sorted(linked.imgs) == ["00_roi_map.png", "05_low_level.png"]
    assert all((figs / s).is_file() for s in linked.imgs)
    strip = re.compile(r"src='[^']*'")
    assert strip.sub("", built.read_text()) == strip.sub("", (figs / "report.html").read_text())


NO_BROWSER = "no chromium on PATH: apt-get install chromium (Debian's package; .ci/run installs it)"


@pytest.mark.skipif(document.browser() is None, reason=NO_BROWSER)
def test_the_report_opens_in_headless_chromium_every_figure_loaded_every_table_drawn(small_report, tmp_path):
    tags = _Tags()
    tags.feed(small_report.read_text())
    seen = document.inspect(small_report)
    assert len(seen["imgs"]) == len(tags.imgs) == 2 and all(i["ok"] and i["shown"] for i in seen["imgs"]), (
        seen
    )
    assert len(seen["tables"]) == tags.tables == 3 and all(
        t["rows"] > 1 and t["shown"] for t in seen["tables"]
    )
    assert seen["console"] == []
    # the committed report links the figures beside it: every one loads, every table is drawn
    committed = document.inspect(paths.FIGURES_DIR / "report.html")
    linked = _Tags()
    linked.feed((paths.FIGURES_DIR / "report.html").read_text())
    assert len(committed["imgs"]) == len(linked.imgs) >= 10, len(committed["imgs"])
    assert [i["src"] for i in committed["imgs"] if not i["ok"]] == [] and committed["console"] == []
    assert len(committed["tables"]) == linked.tables and all(t["rows"] > 1 for t in committed["tables"])
    # and a figure that is not there, or a script error, is seen as such
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><img src='gone.png'><table><tr><td>1</td></tr></table>"
                      "<script>console.error('boom')</script></body></html>")  # fmt: skip
    bad = document.inspect(broken)
    assert [i["ok"] for i in bad["imgs"]] == [False] and any('"boom"' in c for c in bad["console"])


@pytest.mark.skipif(document.browser() is None, reason=NO_BROWSER)
def test_the_report_renders_in_headless_chromium(small_report):
    png = document.screenshot(small_report, small_report.with_suffix(".png"), width=900, height=1200)
    img = plt.imread(png)[..., :3]
    assert img.shape[:2] == (1200, 900)
    assert img.std() > 0.05  # not a blank page
    assert (img.mean(-1) < 0.3).mean() > 0.001  # dark pixels: text and lines drawn


def test_reconstruction_goals_compare_each_value_with_its_threshold():
    from lib.report import document as rp

    probes = {"this embedding": {"linear_probe": {"shape": 0.8, "position": 0.6, "colour": 0.95, "count": 0.9,
                                                  "background": 1.0}, "img2txt_top1": 0.97}}  # fmt: skip
    m01 = committed("01_joint_embedding", embedding_probes=probes, dino_knn={"shape": 0.3, "size": 0.6},
                    dino_knn_random_init={"shape": 0.2, "size": 0.65})  # fmt: skip
    m04 = committed("04_leave_one_out", prf_median_error_px=10.0, prf_chance_error_px=20.0)
    row = {"PixCorr": 0.8, "EffNet-Lite0 2-way": 0.9}
    table = {"oracle (true embedding)": row, "ridge · plain": {"PixCorr": 0.6, "EffNet-Lite0 2-way": 0.8},
             "ridge · fMRI-tuned": {"EffNet-Lite0 2-way": 0.79}, "nearest training image · ridge": {"PixCorr": 0.5}}  # fmt: skip
    rb = {a: 0.5 for a in ("background", "bg_colour", "colour", "shape", "position")}
    readback = {"oracle (true embedding)": {**rb, "colour": 0.75}, "ridge · plain": rb,
                "ridge · fMRI-tuned": {**rb, "shape": 0.6}, "nearest training image · ridge": {**rb, "colour": 0.8}}  # fmt: skip
    g = rp.reconstruction_goals(m01, m04, table, readback)
    met = {k: v["met"] for k, v in g.items()}
    assert met["embedding probe: shape"] and not met["embedding probe: position"]
    assert met["embedding probe: count"]  # at the threshold counts as met
    assert not any(v for k, v in met.items() if k.startswith("DINO"))  # size is below random init
    assert met["oracle PixCorr"] and met["oracle read-back: main-object colour"] and not met["ridge PixCorr"]
    assert met["ridge PixCorr above nearest training image (ridge)"]
    # main object: colour -0.3, shape 0, position 0 -> mean below the nearest image
    key = "ridge main-object read-back (colour, shape, position) above nearest training image"
    assert not met[key] and np.isclose(g[key]["value"], -0.1)
    assert not met["ridge · fMRI-tuned keeps or raises EffNet-Lite0 2-way over plain"]
    assert met["ridge · fMRI-tuned keeps or raises the mean read-back over plain"]
    assert (
        met["pRF check: median error / chance (at most 0.6)"]
        and g["pRF check: median error / chance (at most 0.6)"]["value"] == 0.5
    )


def test_goals_claim_a_difference_only_when_its_interval_excludes_zero():
    from lib.report import document as rp

    table = {"ridge · plain": {"PixCorr": 0.6, "EffNet-Lite0 2-way": 0.8}, "ridge · fMRI-tuned": {"EffNet-Lite0 2-way": 0.79},
             "nearest training image · ridge": {"PixCorr": 0.5}}  # fmt: skip
    rb = {a: 0.5 for a in ("background", "bg_colour", "colour", "shape", "position")}
    readback = {"ridge · plain": rb, "ridge · fMRI-tuned": rb, "nearest training image · ridge": rb}
    comps = {"ridge · plain − nearest training image · ridge": {"PixCorr": {"diff": 0.1, "low": -0.01, "high": 0.2}},
             "ridge · fMRI-tuned − ridge · plain": {"EffNet-Lite0 2-way": {"diff": -0.01, "low": -0.03, "high": 0.01}}}  # fmt: skip
    rb_comps = {"ridge · plain − nearest training image · ridge": {"main object": {"diff": 0.05, "low": 0.01, "high": 0.09}},
                "ridge · fMRI-tuned − ridge · plain": {"mean": {"diff": -0.04, "low": -0.07, "high": -0.01}}}  # fmt: skip
    g = rp.reconstruction_goals(None, None, table, readback, comps, rb_comps)
    above = g["ridge PixCorr above nearest training image (ridge)"]
    assert (
        not above["met"] and above["value"] == 0.1 and above["interval"] == [-0.01, 0.2]
    )  # 0 inside: no claim
    assert g["ridge main-object read-back (colour, shape, position) above nearest training image"]["met"]
    assert g["ridge · fMRI-tuned keeps or raises EffNet-Lite0 2-way over plain"][
        "met"
    ]  # a drop within the noise
    assert not g["ridge · fMRI-tuned keeps or raises the mean read-back over plain"]["met"]  # a clear drop


def test_comparison_tables_mark_only_intervals_that_exclude_zero():
    from lib.report import document as rp

    html_ = rp._comparisons({"a − b": {"x": {"diff": 0.1, "low": 0.02, "high": 0.2, "p": 0.01},
                                       "y": {"diff": 0.1, "low": -0.02, "high": 0.2, "p": 0.2}}}, "t")  # fmt: skip
    assert "+0.100 [+0.020, +0.200] *" in html_ and "+0.100 [-0.020, +0.200]</td>" in html_
    cells = rp._table({"r": {"m": 0.5}}, "c", {"r": {"m": [0.4, 0.6]}})
    assert "0.500 <small>[0.400, 0.600]</small>" in cells


def test_the_report_writes_the_goals_from_the_metrics(tmp_path, monkeypatch):
    mets = tmp_path / "metrics"
    mets.mkdir()
    monkeypatch.setattr(document.paths, "metrics_dir", lambda profile: mets)
    monkeypatch.setattr(document.paths, "output_dir", lambda profile: tmp_path / "figs")
    assert document.goals("t") is None
    probes = {"this embedding": {"linear_probe": {"shape": 0.8}, "img2txt_top1": 0.9}}
    write(mets, "01_joint_embedding", embedding_probes=probes)
    write(mets, "04_leave_one_out", prf_median_error_px=5.0, prf_chance_error_px=10.0)
    table = {"oracle (true embedding)": {"PixCorr": 0.8}, "ridge · plain": {"PixCorr": 0.5}}
    rb = {"oracle (true embedding)": {"colour": 0.9}}
    write(mets, "05_evaluation", table=table, readback=rb, uncertainty={}, readback_uncertainty={})
    g = document.goals("t")
    assert g["oracle PixCorr"] == {"value": 0.8, "threshold": 0.75, "met": True}
    assert g["pRF check: median error / chance (at most 0.6)"]["value"] == 0.5
    assert g["embedding probe: shape"]["met"] and not g["embedding img->txt top-1"]["met"]
    document.build("t", tmp_path / "r.html")
    assert json.loads((mets / "goals.json").read_text()) == g


def test_the_spatial_pathway_goals_read_04s_and_05s_metrics_by_their_names():
    m04 = committed("04_leave_one_out", lowlevel_prf={"ratio": 0.3}, combined_prf={"ratio": 0.55},
                    lowlevel_prf_files={"distance_ratio": 0.2, "hemifield_agreement": 0.95},
                    localisation={"diff": 0.2, "low": 0.1, "high": 0.3, "p": 0.001})  # fmt: skip
    table = {"ridge · combined": {"PixCorr": 0.81, "EffNet-Lite0 2-way": 0.9},
             "nearest training image · ridge": {"EffNet-Lite0 2-way": 0.8}}  # fmt: skip
    rb = {"ridge · combined": {"position": 0.6, "background": 1.0, "bg_colour": 0.9, "colour": 0.8, "shape (judge)": 0.5},
          "ridge · plain": {"background": 1.0, "bg_colour": 0.9, "colour": 0.9, "shape": 0.2, "position": 0.5},
        "nearest training image · ridge": {"colour": 0.7, "shape": 0.2, "position": 0.4},
          "stimuli (the judge's ceiling)": {"shape (judge)": 0.9}}  # fmt: skip
    g = document.reconstruction_goals(None, m04, table, rb)
    met = {k: v["met"] for k, v in g.items()}
    assert met["early voxels, spatial pathway: median pRF error / chance (at most 0.35)"]
    assert not met["early voxels, combined reconstruction: median pRF error / chance (at most 0.5)"]
    assert met["NSD-format pRF files: hemifield agreement of early voxels"]
    assert met["localisation: early voxels above higher-area voxels (combined reconstruction)"]
    assert g["localisation: early voxels above higher-area voxels (combined reconstruction)"]["interval"] == [
        0.1,
        0.3,
    ]
    assert met["ridge · combined PixCorr"] and not met["ridge · combined position read-back"]
    assert met["ridge · combined EffNet-Lite0 2-way above the nearest training image (ridge)"]
    assert not met["ridge · combined colour read-back not below ridge · plain"]  # the bare difference, -0.1
    assert met["shape judge reads the stimuli"] and not met["ridge · combined shape (judge) / the stimuli's"]
    assert g["ridge · combined shape (judge) / the stimuli's"]["value"] == pytest.approx(0.5 / 0.9)
