"""NSD's pRF maps: conventions (lib.data.prf), the reader (NSD.prf), the files `make fetch` plans, and the pRF table
(lib.data.prf.PRF). mini-NSD's pRF files are checked against its truth in test_simulate.py, the comparison
statistics (lib.analysis.prf_check) in tests/analysis/test_prf_check.py.

Expected pixel positions are written out from NSD's documented convention (../shared/docs/lowlevel_and_prf.md):
angle counter-clockwise from the right horizontal meridian with y up, so 45 degrees lies right of and ABOVE the
image centre (row < H / 2); an image spans 8.4 degrees.
"""

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy.io import savemat

from lib import paths
from lib.analysis import prf_check
from lib.data import fetch, prf
from lib.data.nsd import NSD, NSDError

X, Y, Z, T = 4, 3, 2, 750
R = 2.1 * np.sqrt(2)  # eccentricity whose x and y are both 2.1 degrees = a quarter of the 8.4 degree field
# (voxel, angle, eccentricity, expected (column, row) in a 100 x 100 image)
QUADRANTS = [
    ((1, 0, 0), 45.0, R, (75.0, 25.0)),  # right, above
    ((1, 1, 0), 135.0, R, (25.0, 25.0)),  # left, above
    ((2, 0, 1), 225.0, R, (25.0, 75.0)),  # left, below
    ((2, 2, 1), 315.0, R, (75.0, 75.0)),  # right, below
    ((3, 0, 0), 0.0, 4.2, (100.0, 50.0)),  # right edge, on the horizontal meridian
    ((3, 1, 1), 90.0, 2.1, (50.0, 25.0)),  # upper vertical meridian
]
CENTRE = (3, 2, 0)  # eccentricity exactly 0: NSD writes NaN for the angle
NO_DATA = (1, 2, 1)  # inside the ROI, NaN in every pRF file


def code(i, j, k):
    return i * 100 + j * 10 + k


def _nsd_tree(root, with_prf: bool = True):
    """A miniature NSD copy: design, one betas session (HDF5, (T, Z, Y, X), value = voxel code), ROI volumes and
    the four pRF files, written with h5py, nibabel and scipy only."""
    func = root / "nsddata/ppdata/subj01/func1pt8mm"
    (func / "roi").mkdir(parents=True)
    bdir = root / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    bdir.mkdir(parents=True)
    k, j, i = np.meshgrid(np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    with h5py.File(bdir / "betas_session01.hdf5", "w") as f:
        f.create_dataset("betas", data=np.broadcast_to(code(i, j, k), (T, Z, Y, X)).astype(np.int16))
    exp = root / "nsddata/experiments/nsd"
    exp.mkdir(parents=True)
    savemat(exp / "nsd_expdesign.mat", {"masterordering": np.ones((1, T)), "subjectim": np.ones((1, 10)),
                                        "sharedix": np.ones((1, 1))})  # fmt: skip
    # ROIs: nsdgeneral = every voxel with i >= 1; prf-visualrois V1v (1) on the quadrant voxels and two more
    gen = np.where(np.arange(X)[:, None, None] >= 1, 1.0, -1.0) * np.ones((X, Y, Z))
    vis = np.zeros((X, Y, Z))
    for v in [q[0] for q in QUADRANTS] + [CENTRE, NO_DATA]:
        vis[v] = 1
    vis[2, 1, 0] = 2  # a V1d voxel outside the quadrant set
    for name, vol in {"nsdgeneral": gen, "prf-visualrois": vis}.items():
        nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), func / "roi" / f"{name}.nii.gz")
    label = root / "nsddata/freesurfer/subj01/label"
    label.mkdir(parents=True)
    (label / "prf-visualrois.mgz.ctab").write_text("0 Unknown\n1 V1v\n2 V1d\n")
    (label / "nsdgeneral.mgz.ctab").write_text("0 Unknown\n1 nsdgeneral\n")
    if with_prf:
        angle = np.full((X, Y, Z), np.nan, np.float32)
        ecc = np.full((X, Y, Z), np.nan, np.float32)
        ecc[1:] = 1.0  # nsdgeneral voxels outside V1v: somewhere, angle 0
        angle[1:] = 0.0
        for v, a, e, _ in QUADRANTS:
            angle[v], ecc[v] = a, e
        angle[CENTRE], ecc[CENTRE] = np.nan, 0.0
        angle[NO_DATA], ecc[NO_DATA] = np.nan, np.nan
        size = np.where(np.isfinite(ecc), 0.5 + ecc / 4, np.nan).astype(np.float32)
        r2 = np.fromfunction(code, (X, Y, Z)).astype(np.float32)  # the voxel's code: checks the order
        for name, vol in {
            "prf_angle": angle,
            "prf_eccentricity": ecc,
            "prf_size": size,
            "prf_R2": r2,
        }.items():
            nib.save(nib.Nifti1Image(vol, np.eye(4)), func / f"{name}.nii.gz")
    return root


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    return NSD(_nsd_tree(tmp_path_factory.mktemp("nsd_prf")))


# ---------------------------------------------------------------------------------------------------- conventions
def test_quadrants_convert_to_the_expected_pixels_and_back():
    angle = np.array([q[1] for q in QUADRANTS])
    ecc = np.array([q[2] for q in QUADRANTS])
    want = np.array([q[3] for q in QUADRANTS])
    got = prf.prf_to_pixels(angle, ecc, 100)
    np.testing.assert_allclose(got, want, atol=1e-9)
    # the convention itself: 45 deg right and above, 135 left and above, 225 left and below, 315 right and below
    right, above = got[:4, 0] > 50, got[:4, 1] < 50
    assert right.tolist() == [True, False, False, True] and above.tolist() == [True, True, False, False]
    # a wrong convention would fail: y not flipped, or angle clockwise, both put 45 deg below the centre
    unflipped = np.column_stack([(ecc * np.cos(np.deg2rad(angle)) / 8.4 + 0.5) * 100,
                                 (0.5 + ecc * np.sin(np.deg2rad(angle)) / 8.4) * 100])  # fmt: skip
    assert not np.allclose(unflipped, want, atol=1)
    assert not np.allclose(prf.prf_to_pixels(-angle, ecc, 100), want, atol=1)
    # non-square: x scales with the width, y with the height
    np.testing.assert_allclose(prf.prf_to_pixels([45.0], [R], 200, 100), [[150.0, 25.0]], atol=1e-9)
    back_angle, back_ecc = prf.pixels_to_prf(want, 100)
    np.testing.assert_allclose(back_angle, angle, atol=1e-9)
    np.testing.assert_allclose(back_ecc, ecc, atol=1e-9)
    a0, e0 = prf.pixels_to_prf([[50.0, 50.0]], 100)  # the centre: eccentricity 0, angle NaN as in NSD's files
    assert e0[0] == 0 and np.isnan(a0[0])
    np.testing.assert_allclose(prf.prf_to_pixels([np.nan], [0.0], 64), [[32.0, 32.0]])
    assert np.isnan(prf.prf_to_pixels([np.nan], [1.0], 64)).all()
    # sizes: 8.4 degrees span the width
    np.testing.assert_allclose(prf.size_to_pixels([4.2, 0.84], 425), [212.5, 42.5])
    np.testing.assert_allclose(prf.pixels_to_size([212.5], 425), [4.2])
    np.testing.assert_allclose(prf.degrees_to_pixels([[-4.2, -4.2]], 64), [[0.0, 64.0]])  # bottom-left corner


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: prf.prf_to_pixels([45.0], [1.0], 0), r"^width=0: expected a positive"),
        (lambda: prf.prf_to_pixels([45.0], [1.0], 64, -1), r"^height=-1: expected a positive"),
        (lambda: prf.prf_to_pixels([45.0, 1.0], [1.0], 64), r"^angle: 2 values, expected 1"),
        (lambda: prf.prf_to_pixels([45.0], [-1.0], 64), r"^eccentricity: 1 negative values"),
        (lambda: prf.pixels_to_prf([1.0, 2.0, 3.0], 64), r"^xy_px: shape \(3,\), expected \(N, 2\)"),
        (lambda: prf.size_to_pixels([[1.0]], 64), r"^size: shape \(1, 1\)"),
        (lambda: prf.pixels_to_size([-2.0], 64), r"^sigma_px: 1 negative"),
        (lambda: prf_check.compare(np.zeros((3, 3)), [0] * 3, [1] * 3, 64), r"^centres_px: shape \(3, 3\)"),
        (lambda: prf_check.compare(np.zeros((3, 2)), [0] * 2, [1] * 3, 64), r"^angle: shape \(2,\)"),
        (lambda: prf_check.compare(np.zeros((3, 2)), [0] * 3, [-1] * 3, 64), r"^eccentricity: 3 negative"),
        (lambda: prf_check.compare(np.zeros((3, 2)), [0] * 3, [1] * 3, "big"), r"^image_size='big'"),
        (lambda: prf_check.compare(np.zeros((3, 2)), [0] * 3, [1] * 3, 64, n_perm=0), r"^n_perm=0"),
        (lambda: prf_check.compare(np.zeros((3, 2)), [0, 0, np.nan], [1] * 3, 64), r"2 voxels with a finite"),
    ],
)
def test_bad_inputs_are_one_line_errors_naming_the_parameter(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------- reader
def test_reader_gives_the_rois_voxels_in_the_betas_order(handmade):
    ds = handmade
    for roi in ("V1v", "prf-visualrois", "nsdgeneral"):
        p = ds.prf(1, roi)
        ijk = ds.voxel_indices(1, roi)
        np.testing.assert_array_equal(p.ijk, ijk)
        betas = ds.betas(1, roi, sessions=[1])[0]  # value = voxel code / 300, in the betas' column order
        np.testing.assert_array_equal(p.r2, np.round(betas * 300))
        np.testing.assert_array_equal(p.r2, [code(*v) for v in ijk.tolist()])
    p = ds.prf(1, "V1v")
    rows = {tuple(v): n for n, v in enumerate(p.ijk.tolist())}
    xy = p.centres_px(100)
    for v, a, e, want in QUADRANTS:
        assert p.angle[rows[v]] == pytest.approx(a) and p.eccentricity[rows[v]] == pytest.approx(e)
        np.testing.assert_allclose(xy[rows[v]], want, atol=1e-4)  # float32 files
    np.testing.assert_allclose(xy[rows[CENTRE]], [50.0, 50.0])
    assert np.isnan(p.angle[rows[CENTRE]]) and p.eccentricity[rows[CENTRE]] == 0
    assert np.isnan(p.eccentricity[rows[NO_DATA]]) and np.isnan(xy[rows[NO_DATA]]).all()
    assert p.valid.sum() == len(p) - 1 and not p.valid[rows[NO_DATA]]
    np.testing.assert_allclose(p.sigma_px(84)[rows[QUADRANTS[4][0]]], (0.5 + 4.2 / 4) * 10, rtol=1e-6)


def test_missing_or_misshapen_pRF_file_is_a_one_line_error(tmp_path):
    root = _nsd_tree(tmp_path / "a", with_prf=False)
    with pytest.raises(
        NSDError, match=r"prf_angle\.nii\.gz: pRF file missing; fetch it with make fetch"
    ) as e:
        NSD(root).prf(1, "V1v")
    assert "\n" not in str(e.value)
    assert NSD(root).prf(1, "V1v", missing="none") is None  # an analysis that uses the files where present
    with pytest.raises(NSDError, match="missing='skip'"):
        NSD(root).prf(1, "V1v", missing="skip")
    root = _nsd_tree(tmp_path / "b")
    path = root / "nsddata/ppdata/subj01/func1pt8mm/prf_size.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((X, Y, Z + 1), np.float32), np.eye(4)), path)
    with pytest.raises(NSDError, match=r"prf_size\.nii\.gz: a volume of shape \(4, 3, 3\), but the ROI"):
        NSD(root).prf(1, "V1v")


# ---------------------------------------------------------------------------------------------------- fetching
def test_make_fetch_plans_the_four_pRF_files_by_default():
    keys = [key.format(subj="03", space="func1pt8mm") for what, key in fetch.manifest() if what == "prf"]
    assert keys == [f"nsddata/ppdata/subj03/func1pt8mm/{name}" for name in prf.FILES.values()]
    assert "prf" in fetch.DEFAULT_WHAT
    make = (paths.PROJ_ROOT / "Makefile").read_text()
    assert f"WHAT ?= {','.join(fetch.DEFAULT_WHAT)}\n" in make


# ----------------------------------------------------------------------------------------------- the PRF table
def test_prf_at_reorders_by_voxel_and_fills_unknown_voxels_with_nan():
    p = prf.PRF(np.array([[0, 0, 0], [1, 2, 3], [4, 5, 6]]), np.array([10.0, 20, 30]), np.array([1.0, 2, 3]),
                np.array([0.5, 0.6, 0.7]), np.array([50.0, 60, 70]))  # fmt: skip
    sub = p.at(np.array([[4, 5, 6], [9, 9, 9], [0, 0, 0]]))
    np.testing.assert_array_equal(sub.angle, [30.0, np.nan, 10.0])
    np.testing.assert_array_equal(sub.r2, [70.0, np.nan, 50.0])
    assert sub.valid.tolist() == [True, False, True]
