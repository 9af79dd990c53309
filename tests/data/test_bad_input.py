"""Bad input to the NSD reader (lib.data.nsd) and preparation (lib.data.prep): one line naming what and where,
and no partial cache left behind."""

import shutil

import pytest

from lib.data import prep
from lib.data.nsd import NSD, NSDError
from tests.conftest import one_line


@pytest.fixture
def damaged(tiny_root, tmp_path):
    """A copy of the tiny dataset whose session 2 of subject 1 is truncated."""
    root = tmp_path / "nsd"
    shutil.copytree(tiny_root, root)
    ds = NSD(root)
    path = ds.session_path(1, 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return ds, path


def test_truncated_hdf5_names_the_file_and_leaves_no_cache(damaged, tmp_path):
    ds, path = damaged
    cache = tmp_path / "cache"
    with pytest.raises(NSDError) as e:
        prep.prepare_cached(ds, 1, "nsdgeneral", cache_dir=cache, progress=False)
    assert str(path) in one_line(e) and "HDF5" in str(e.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_request_errors_are_one_line(tiny, tmp_path):
    cases = [
        (lambda: NSD(tmp_path / "missing"), "missing: no such folder"),
        (lambda: tiny.betas(5), "subject 5: no betas_sessionNN files"),
        (lambda: tiny.betas(1, roi="V5"), "unknown ROI 'V5'"),
        (lambda: tiny.betas(1, sessions=[0, 4]), "sessions [0, 4] out of range (on disk: 1..3)"),
        (lambda: tiny.betas("subj10"), "subject='subj10'"),
        (lambda: tiny.images([10_000]), "image ids out of range"),
        (lambda: tiny.betas(1, roi=None), "roi=None: expected an ROI name (e.g. 'nsdgeneral'), a union"),
        (lambda: tiny.betas(1, roi=5), "roi=5: expected an ROI name"),
        (
            lambda: prep.prepare(tiny, 1, sessions=[], progress=False),
            "sessions=[]: expected None (all) or a non",
        ),
        (
            lambda: tiny.betas(1, sessions=[1.7]),
            "sessions=[1.7]: expected None (all) or a list of whole session",
        ),
        (lambda: tiny.betas(1, sessions="1"), "sessions='1': expected None (all) or a list of whole session"),
        (
            lambda: prep.prepare(tiny, 1, nonfinite="skip", progress=False),
            "nonfinite='skip': expected one of",
        ),
    ]
    for call, text in cases:
        with pytest.raises(NSDError) as e:
            call()
        assert text in one_line(e)


def test_whole_float_session_numbers_are_accepted(tiny):
    import numpy as np

    np.testing.assert_array_equal(tiny.betas(1, sessions=[2.0]), tiny.betas(1, sessions=[2]))


@pytest.fixture
def copy(tiny_root, tmp_path):
    root = tmp_path / "nsd"
    shutil.copytree(tiny_root, root)
    return NSD(root)


def _rewrite(path, make):
    """Replace a NIfTI file by ``make(array, image)``."""
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    nib.save(make(np.asarray(img.dataobj), img), path)


def test_bad_roi_volumes_name_the_file_and_what_was_expected(copy):
    import nibabel as nib
    import numpy as np

    roi = copy.func_dir(1) / "roi"
    _rewrite(roi / "prf-visualrois.nii.gz", lambda a, img: nib.Nifti1Image(np.stack([a, a], -1), img.affine))
    with pytest.raises(NSDError) as e:
        copy.betas(1, roi="V1")  # it used to blame the betas file's shape
    assert one_line(e) == (f"{roi / 'prf-visualrois.nii.gz'}: an ROI volume of shape (19, 12, 13, 2); expected a "
                           "3-D label volume (X, Y, Z)")  # fmt: skip
    _rewrite(roi / "prf-visualrois.nii.gz", lambda a, img: nib.Nifti1Image(a[:-1, ..., 0], img.affine))
    fresh = NSD(copy.root)
    for call in (
        lambda: fresh.betas(1, roi="V1+nsdgeneral"),
        lambda: fresh.roi_mask(1, ["nsdgeneral", "V1"]),
    ):
        with pytest.raises(NSDError) as e:
            call()
        assert one_line(e) == (f"{roi / 'prf-visualrois.nii.gz'}: an ROI volume of shape (18, 12, 13), but "
                               "nsdgeneral.nii.gz has (19, 12, 13); expected every ROI volume of subject 1 on the "
                               "same func1pt8mm grid")  # fmt: skip
    # a float volume (say, resampled by interpolation) whose labels round to 0: no silently empty selection
    _rewrite(roi / "floc-faces.nii.gz", lambda a, img: nib.Nifti1Image((a > 0) * np.float32(0.3), img.affine))
    with pytest.raises(NSDError) as e:
        fresh.betas(1, roi="floc-faces")
    n = int((nib.load(roi / "floc-faces.nii.gz").get_fdata() > 0).sum())
    assert one_line(e) == (f"{roi / 'floc-faces.nii.gz'}: {n} voxels hold non-integer labels (e.g. 0.3); expected "
                           "integer labels (-1, 0, 1..N): was it resampled with interpolation instead of nearest "
                           "neighbour?")  # fmt: skip
    _rewrite(roi / "floc-faces.nii.gz", lambda a, img: nib.Nifti1Image(np.zeros_like(a), img.affine))
    with pytest.raises(NSDError) as e:
        NSD(copy.root).betas(1, roi="floc-faces")
    assert one_line(e) == "subject 1: roi 'floc-faces' selects no voxels; expected at least one"


def test_nifti_betas_of_the_wrong_dimension_or_trial_count_name_the_file(copy):
    import h5py
    import nibabel as nib
    import numpy as np

    path = copy.session_path(1, 1)
    with h5py.File(path) as f:
        vol = np.transpose(f["betas"][()], (3, 2, 1, 0))  # (X, Y, Z, trials), as NSD's NIfTI betas
    path.unlink()
    nifti = path.with_suffix(".nii.gz")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), nifti)
    assert copy.betas(1, sessions=[1]).shape == (
        40,
        int(copy.roi_mask(1, "nsdgeneral").sum()),
    )  # the good twin
    nib.save(nib.Nifti1Image(vol[..., 0], np.eye(4)), nifti)
    with pytest.raises(NSDError) as e:
        copy.betas(1, sessions=[1])
    assert one_line(e) == f"{nifti}: a 3-D volume (19, 12, 13); expected 4-D betas (X, Y, Z, trials)"
    nib.save(nib.Nifti1Image(np.concatenate([vol, vol, vol], -1)[..., :100], np.eye(4)), nifti)
    with pytest.raises(NSDError) as e:
        copy.betas(1, sessions=[1])
    assert one_line(e) == f"{nifti}: holds 100 trials, expected 40 (trials per session)"


def test_caption_files_without_coco_annotations_name_the_file(copy):
    import json

    path = sorted(copy.annotations.glob("captions_*2017.json"))[0]
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(NSDError) as e:
        NSD(copy.root).captions([0])
    assert one_line(e) == f"{path}: no 'annotations' list; expected a COCO captions file"
    path.write_text(json.dumps({"annotations": [{"id": 1, "image_id": 3}]}))
    with pytest.raises(NSDError) as e:
        NSD(copy.root).captions([0])
    assert (
        one_line(e)
        == f"{path}: annotation 0 lacks 'image_id' or a 'caption' string; expected COCO caption entries"
    )


def test_non_finite_betas_name_the_session_file_and_the_voxel_count(tiny_root, tmp_path):
    import h5py
    import numpy as np

    root = tmp_path / "nsd"
    shutil.copytree(tiny_root, root)
    ds = NSD(root)
    path = ds.session_path(1, 2)
    with h5py.File(path, "r") as f:
        data = f["betas"][()].astype(np.float32)
    k, j, i = np.argwhere(ds.roi_mask(1, "nsdgeneral"))[[0, 5]].T[::-1]  # two nsdgeneral voxels (z, y, x)
    data[3, k[0], j[0], i[0]] = np.nan
    data[:, k[1], j[1], i[1]] = np.inf
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("betas", data=data)  # float betas, as some exports write them
    with pytest.raises(NSDError) as e:
        prep.prepare(ds, 1, progress=False)
    assert one_line(e) == (f"{path}: 2 of the {ds.roi_mask(1, 'nsdgeneral').sum()} voxels of 'nsdgeneral' hold NaN "
                           "or infinite betas; expected finite values")  # fmt: skip


def test_dropping_non_finite_voxels_equals_leaving_them_out_of_the_clean_data(tiny_root, tiny, tmp_path):
    import h5py
    import numpy as np

    root = tmp_path / "nsd"
    shutil.copytree(tiny_root, root)
    ds = NSD(root)
    ijk = ds.voxel_indices(1, "nsdgeneral")
    for session, voxel in ((1, 4), (3, 9)):  # a NaN in one trial of session 1, an inf in session 3
        path = ds.session_path(1, session)
        with h5py.File(path, "r") as f:
            data = f["betas"][()].astype(np.float32)
        i, j, k = ijk[voxel]
        data[7, k, j, i] = np.nan if session == 1 else np.inf
        path.unlink()
        with h5py.File(path, "w") as f:
            f.create_dataset("betas", data=data)
    dropped = prep.prepare(ds, 1, nonfinite="drop", progress=False)
    clean = prep.prepare(tiny, 1, progress=False)  # the same betas before the damage
    keep = np.ones(len(ijk), bool)
    keep[[4, 9]] = False
    np.testing.assert_array_equal(dropped.voxel_ijk, ijk[keep])
    np.testing.assert_allclose(dropped.x_train, clean.x_train[:, keep], rtol=0, atol=1e-6)
    np.testing.assert_allclose(dropped.x_test, clean.x_test[:, keep], rtol=0, atol=1e-6)
    assert (
        dropped.meta["n_dropped_nonfinite"] == 2 and prep.describe(dropped)["n_voxels_dropped_nonfinite"] == 2
    )
    prep.check_prepared(ds, 1, dropped)
    key = prep.cache_key(ds, 1, "nsdgeneral", None, nonfinite="drop")
    assert key != prep.cache_key(ds, 1, "nsdgeneral", None)  # a cache never serves the other choice
