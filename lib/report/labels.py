"""What the report of notebook 05 (the evaluation) shows and how it names it: the metric labels of each family
and the figure that draws the family, the published rows drawn beside ours, the rows 05 adds to its tables, and
the figures' titles. The metrics are computed under these labels by :mod:`lib.analysis.perceptual` (PixCorr,
SSIM, the networks' metrics, "CLIP") and :mod:`lib.stage.evaluation` (retrieval); the variants are named in
:mod:`lib.analysis.variants`."""

from __future__ import annotations

import pandas as pd

#: the families of metrics 05 draws, each a figure (lower is better only for the correlation distances)
LOW_LEVEL = ["PixCorr", "SSIM"]
TWO_WAY = ["Alex(2)", "Alex(5)", "Incep", "CLIP", "EffNet-Lite0 2-way"]
DISTANCE = ["EffNet-B", "SwAV", "EffNet-Lite0 dist"]
#: the retrieval columns, each a direction of :func:`lib.analysis.decoding.encoder_retrieval`
RETRIEVAL = {"image ret.": "image", "brain ret.": "brain"}

#: figure file -> (metric labels, title, lower is better); ``{n}`` in a title: the retrieval gallery's size
FAMILIES = {
    "05_low_level.png": (LOW_LEVEL, "low-level", False),
    "05_two_way.png": (TWO_WAY, "2-way identification", False),
    "05_distance.png": (DISTANCE, "feature correlation distance", True),
    "05_retrieval.png": (list(RETRIEVAL), "retrieval top-1 among {n} (02 encoders)", False),
}

#: the published methods drawn beside ours (:func:`lib.report.document.published_table`), and the sets left out
PUBLISHED_METHODS = ("MindEye 1", "Brain-Diffuser")
PUBLISHED_EXCLUDED_SET = "third"

#: the read-back table's row of the test stimuli themselves (what a perfect reconstruction would score)
STIMULI = "stimuli (the judge's ceiling)"
READBACK_TITLE = (
    "attribute read-back on {n} test images (judges never trained on a reconstruction; 95% intervals over test "
    "images)"
)

#: the ROI-group table: its metrics, its row of every voxel, the variant of the main table that row is, its title
ROI_LABELS = ["PixCorr", "SSIM", "CLIP", "EffNet-Lite0 2-way"]
ALL_VOXELS = "nsdgeneral (all voxels)"
ROI_VARIANT = "ridge · fMRI-tuned"
ROI_TITLE = "ROI-only reconstructions (ridge, fMRI-tuned)"


def published_reference(published: pd.DataFrame) -> pd.DataFrame:
    """The rows of the published table drawn beside ours: :data:`PUBLISHED_METHODS`, without the sets whose name
    holds :data:`PUBLISHED_EXCLUDED_SET`."""
    keep = published["method"].isin(PUBLISHED_METHODS)
    return published[keep & ~published["set"].str.contains(PUBLISHED_EXCLUDED_SET)]


def family_title(name: str, gallery: int) -> str:
    """The title of the family figure ``name`` (a key of :data:`FAMILIES`); ``gallery``: images retrieval ranks."""
    if name not in FAMILIES:
        raise ValueError(f"figure {name!r}: expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name][1].format(n=gallery)
