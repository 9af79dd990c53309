"""ROI names (lib.data.rois): ctab parsing, groups, file:label, unions, the error for an unknown name, and the
warning for a label in several ROI files."""

import pytest

from lib.data import rois

AVAILABLE = {
    "prf-visualrois": {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"},
    "prf-eccrois": {1: "ecc0pt5", 2: "ecc1", 3: "ecc2", 4: "ecc4", 5: "ecc4+"},
    "streams": {
        1: "early",
        2: "midventral",
        3: "midlateral",
        4: "midparietal",
        5: "ventral",
        6: "lateral",
        7: "parietal",
    },
    "floc-faces": {1: "OFA", 2: "FFA-1", 3: "FFA-2"},
    "Kastner2015": {1: "V1v", 2: "V1d"},
}


def test_ctab_round_trip_and_errors():
    table = {1: "OFA", 2: "FFA-1"}
    text = rois.format_ctab(table)
    assert text.splitlines()[0].split() == ["0", "Unknown"]
    assert rois.parse_ctab(text) == {0: "Unknown", **table}
    assert rois.parse_ctab("# comment\n  3  V2v  10 20 30 0\n") == {3: "V2v"}
    with pytest.raises(ValueError, match=r"x.ctab:1: expected '<int> <name>'"):
        rois.parse_ctab("V1 1\n", "x.ctab")


def test_split_union_keeps_labels_with_plus():
    assert rois.split_union("V1+floc-faces") == ["V1", "floc-faces"]
    assert rois.split_union("ecc4+") == ["ecc4+"]
    assert rois.split_union("V1+ecc4+") == ["V1", "ecc4+"]
    assert rois.split_union("ecc4++hV4") == ["ecc4+", "hV4"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("V1", [rois.Selection("prf-visualrois", (1, 2))]),
        ("early", [rois.Selection("streams", (1,))]),
        ("higher", [rois.Selection("streams", (5, 6, 7))]),
        ("floc-faces", [rois.Selection("floc-faces", None)]),
        ("FFA-1", [rois.Selection("floc-faces", (2,))]),
        ("V1v", [rois.Selection("prf-visualrois", (1,))]),  # prf-visualrois wins over Kastner2015
        ("Kastner2015:V1v", [rois.Selection("Kastner2015", (1,))]),
        ("ecc4+", [rois.Selection("prf-eccrois", (5,))]),
        ("V1+ecc4+", [rois.Selection("prf-visualrois", (1, 2)), rois.Selection("prf-eccrois", (5,))]),
        (
            "V1+floc-faces:FFA-1",
            [rois.Selection("prf-visualrois", (1, 2)), rois.Selection("floc-faces", (2,))],
        ),
        (
            "prf-visualrois:V1v+hV4",
            [rois.Selection("prf-visualrois", (1,)), rois.Selection("prf-visualrois", (7,))],
        ),
    ],
)
def test_resolve(name, expected):
    assert rois.resolve(name, AVAILABLE) == expected


def test_resolve_errors_name_the_problem():
    with pytest.raises(KeyError, match="unknown ROI 'V7'"):
        rois.resolve("V7", AVAILABLE)
    with pytest.raises(KeyError, match="unknown ROI 'V7'"):
        rois.resolve("V1+V7", AVAILABLE)
    with pytest.raises(KeyError, match="ROI 'nsdgeneral:x': no ROI file 'nsdgeneral'"):
        rois.resolve("nsdgeneral:x", AVAILABLE)
    with pytest.raises(KeyError, match=r"label\(s\) \['FFA-9'\] not in floc-faces"):
        rois.resolve("floc-faces:FFA-9", AVAILABLE)
    with pytest.raises(ValueError, match="hemi='both'"):
        rois.resolve("V1", AVAILABLE, hemi="both")


def test_hemisphere_masks_split_the_roi(tiny):
    import numpy as np

    both = tiny.roi_mask(1, "V1")
    lh, rh = tiny.roi_mask(1, "V1", hemi="lh"), tiny.roi_mask(1, "V1", hemi="rh")
    assert not (lh & rh).any()
    np.testing.assert_array_equal(lh | rh, both)
    x = (np.argwhere(lh) @ tiny.affine(1)[:3, :3].T + tiny.affine(1)[:3, 3])[:, 0]
    assert (x < 0).all()


def test_a_label_in_several_roi_files_warns_with_their_names():
    from lib.data import rois

    available = {"prf-visualrois": {1: "V1v", 2: "hV4"}, "Kastner2015": {1: "V1v", 2: "IPS0"}}
    with pytest.warns(
        UserWarning, match=r"'V1v' is a label of several ROI files \(prf-visualrois, Kastner2015\)"
    ):
        sel = rois.resolve("V1v", available)
    assert sel[0].file == "prf-visualrois"
    sel = rois.resolve("Kastner2015:V1v", available)
    assert sel[0].file == "Kastner2015"
