"""The reader against a miniature NSD tree written by hand (h5py, nibabel, scipy.io), independent of lib.data.simulate.

Every value is computed here from NSD's documented conventions (../shared/docs/nsd_format.md): betas int16 = %
signal change x 300 in h5py shape (750, Z, Y, X), NIfTI twin (X, Y, Z, 750) with h5[t] == nifti[..., t].T, 1-based
design indices, ROI values -1/0/labels with ctab names, voxel order = NIfTI order (brain-diffuser, MindEye).
"""

import json
import shutil

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.io import savemat

from lib.data.nsd import NSD, NSDError

X, Y, Z, T = 5, 4, 3, 750
N_IMAGES = 40
SUBJ_IMAGES = 30  # images per subject; the first 10 are the shared ones


def beta_code(t, x, y, z):
    """The int16 value stored for trial t of voxel (x, y, z): unique per voxel, varying with the trial."""
    return (x * 100 + y * 10 + z) * 10 + (t % 7) - 3000


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd_by_hand")
    rng = np.random.default_rng(0)
    func = root / "nsddata/ppdata/subj01/func1pt8mm"
    bdir = root / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    bdir.mkdir(parents=True)
    (func / "roi").mkdir(parents=True)
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    t, z, y, x = np.meshgrid(np.arange(T), np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    for sess in (1, 2):
        data = beta_code(t, x, y, z).astype(np.int16) + np.int16(sess)
        with h5py.File(bdir / f"betas_session{sess:02d}.hdf5", "w") as f:
            f.create_dataset("betas", data=data, chunks=(T, 1, 1, 1))
    # session 3 only as NIfTI (X, Y, Z, T), the transposed layout
    data3 = (beta_code(t, x, y, z).astype(np.int16) + np.int16(3)).transpose(3, 2, 1, 0)
    nib.save(nib.Nifti1Image(data3, affine), bdir / "betas_session03.nii.gz")
    ncsnr = rng.random((X, Y, Z)).astype(np.float32)
    nib.save(nib.Nifti1Image(ncsnr, affine), bdir / "ncsnr.nii.gz")

    # ROIs: prf-visualrois with V1v=1, V1d=2, hV4=7; nsdgeneral everything but the first x-plane; -1 outside
    vis = np.zeros((X, Y, Z), np.float32)
    vis[0] = -1
    vis[1, :2, :] = 1
    vis[2, 1, 1] = 2
    vis[4, 3, 2] = 7
    gen = np.where(np.arange(X)[:, None, None] > 0, 1, -1) * np.ones((X, Y, Z))
    gen[3, 0, 0] = 0
    for name, vol in {"prf-visualrois": vis, "nsdgeneral": gen}.items():
        nib.save(nib.Nifti1Image(vol.astype(np.float32), affine), func / "roi" / f"{name}.nii.gz")
    label = root / "nsddata/freesurfer/subj01/label"
    label.mkdir(parents=True)
    (label / "prf-visualrois.mgz.ctab").write_text(
        "  0  Unknown\n  1  V1v\n  2  V1d\n  3  V2v\n  4  V2d\n  5  V3v\n  6  V3d\n  7  hV4\n"
    )
    (label / "nsdgeneral.mgz.ctab").write_text("0 Unknown\n1 nsdgeneral\n")

    # design: 1-based everywhere
    shared = np.sort(rng.choice(N_IMAGES, 10, replace=False)) + 1
    own = rng.permutation(np.setdiff1d(np.arange(1, N_IMAGES + 1), shared))[: SUBJ_IMAGES - 10]
    subjectim = np.concatenate([shared, own])[None, :]
    masterordering = rng.integers(1, SUBJ_IMAGES + 1, size=3 * T)
    exp = root / "nsddata/experiments/nsd"
    exp.mkdir(parents=True)
    savemat(
        exp / "nsd_expdesign.mat",
        {"masterordering": masterordering[None, :].astype(float), "subjectim": subjectim.astype(float),
         "sharedix": shared[None, :].astype(float)},
    )  # fmt: skip
    coco = 5000 + np.arange(N_IMAGES)[::-1]
    pd.DataFrame({"cocoId": coco, "cocoSplit": "train2017", "nsdId": np.arange(N_IMAGES)}).to_csv(
        exp / "nsd_stim_info_merged.csv"
    )
    stim = root / "nsddata_stimuli/stimuli/nsd"
    (stim / "annotations").mkdir(parents=True)
    brick = (np.arange(N_IMAGES)[:, None, None, None] * np.ones((1, 6, 6, 3))).astype(np.uint8)
    with h5py.File(stim / "nsd_stimuli.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=brick)
    ann = [
        {"id": k, "image_id": int(c), "caption": f"image of coco {c} #{k % 2}"}
        for k, c in enumerate(np.repeat(coco, 2))
    ]
    (stim / "annotations/captions_train2017.json").write_text(json.dumps({"images": [], "annotations": ann}))
    return {
        "root": root, "vis": vis, "gen": gen, "ncsnr": ncsnr, "masterordering": masterordering,
        "subjectim": subjectim, "shared": shared, "coco": coco,
    }  # fmt: skip


def test_betas_scaling_axis_order_and_voxel_order(handmade):
    ds = NSD(handmade["root"])
    assert not ds.is_simulated and ds.subjects == [1] and ds.sessions(1) == [1, 2, 3]
    got = ds.betas(1, roi="nsdgeneral", sessions=[1, 2])
    mask = handmade["gen"] > 0
    ijk = [(i, j, k) for i in range(X) for j in range(Y) for k in range(Z) if mask[i, j, k]]  # x slowest
    assert got.shape == (2 * T, len(ijk)) and got.dtype == np.float32
    for col, (i, j, k) in enumerate(ijk):
        for sess in (1, 2):
            expected = (beta_code(np.arange(T), i, j, k) + sess) / 300
            np.testing.assert_allclose(got[(sess - 1) * T : sess * T, col], expected, rtol=1e-6)
    # the order brain-diffuser and MindEye use: transpose the h5 array to (T, X, Y, Z), then mask
    with h5py.File(ds.session_path(1, 1)) as f:
        ref = np.transpose(f["betas"][()], (0, 3, 2, 1))[:, mask].astype(np.float32) / np.float32(300)
    np.testing.assert_array_equal(got[:T], ref)


def test_nifti_session_equals_hdf5_layout(handmade):
    ds = NSD(handmade["root"])
    got = ds.betas(1, roi="V1", sessions=[3])
    v1 = np.isin(handmade["vis"], (1, 2))
    expected = np.stack([beta_code(np.arange(T), i, j, k) + 3 for i, j, k in np.argwhere(v1)], 1) / 300
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_design_is_one_based(handmade):
    ds = NSD(handmade["root"])
    mo, sim = handmade["masterordering"], handmade["subjectim"]
    got = ds.trial_images(1, sessions=[2, 3])
    expected = [sim[0, mo[g] - 1] - 1 for g in range(T, 3 * T)]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(ds.shared_ids(), handmade["shared"] - 1)


def test_roi_labels_ctab_names_groups_and_hemispheres(handmade):
    ds = NSD(handmade["root"])
    vis = handmade["vis"]
    assert ds.roi_files(1)["prf-visualrois"][7] == "hV4"
    np.testing.assert_array_equal(ds.roi_mask(1, "V1"), (vis == 1) | (vis == 2))
    np.testing.assert_array_equal(ds.roi_mask(1, "V1d"), vis == 2)
    np.testing.assert_array_equal(ds.roi_mask(1, "prf-visualrois:hV4"), vis == 7)
    np.testing.assert_array_equal(ds.roi_mask(1, "V1-hV4"), vis > 0)
    np.testing.assert_array_equal(ds.roi_mask(1, "V1v+hV4"), (vis == 1) | (vis == 7))
    np.testing.assert_array_equal(ds.roi_mask(1, ["V1d", "hV4"]), (vis == 2) | (vis == 7))
    gen = ds.roi_mask(1, "nsdgeneral")
    assert gen.sum() == (handmade["gen"] > 0).sum() and not gen[3, 0, 0] and not gen[0].any()
    np.testing.assert_array_equal(ds.voxel_indices(1, "V1d"), np.argwhere(vis == 2))
    np.testing.assert_allclose(ds.ncsnr(1, "V1"), handmade["ncsnr"][(vis == 1) | (vis == 2)])


def test_images_and_captions_by_nsd_id(handmade):
    ds = NSD(handmade["root"])
    imgs = ds.images([7, 2, 7])
    assert imgs.shape == (3, 6, 6, 3) and imgs.dtype == np.uint8
    assert [int(im[0, 0, 0]) for im in imgs] == [7, 2, 7]
    caps = ds.captions([0, 39])
    assert caps == [[f"image of coco {handmade['coco'][0]} #0", f"image of coco {handmade['coco'][0]} #1"],
                    [f"image of coco {handmade['coco'][39]} #0", f"image of coco {handmade['coco'][39]} #1"]]  # fmt: skip


def test_generic_chunking_reads_the_same(handmade, tmp_path):
    """A session file with another chunk layout (here contiguous) goes through the slab reader, same values."""
    from lib.data.nsd import read_session

    src = NSD(handmade["root"]).session_path(1, 1)
    with h5py.File(src) as f:
        data = f["betas"][()]
    other = tmp_path / "betas_session01.hdf5"
    with h5py.File(other, "w") as f:
        f.create_dataset("betas", data=data)  # contiguous
    ijk = np.argwhere(handmade["gen"] > 0)
    a = read_session(src, ijk, (X, Y, Z))
    b = read_session(other, ijk, (X, Y, Z))
    np.testing.assert_array_equal(a, b)


def test_missing_pieces_give_one_line_errors(handmade, tmp_path):
    ds = NSD(handmade["root"])
    with pytest.raises(NSDError, match=r"subject 2: no betas_sessionNN files"):
        ds.betas(2)
    with pytest.raises(NSDError, match=r"sessions \[4\] out of range \(on disk: 1\.\.3\)"):
        ds.betas(1, sessions=[4])
    with pytest.raises(NSDError, match=r"unknown ROI 'FFA-9'"):
        ds.roi_mask(1, "FFA-9")
    with pytest.raises(NSDError, match=r"subject=9"):
        ds.betas(9)
    with pytest.raises(NSDError, match=r"no such folder"):
        NSD(tmp_path / "nowhere")
    with pytest.raises(NSDError, match=r"expected an NSD copy"):
        NSD(tmp_path)


def test_mat_named_hdf5_sessions_and_a_pickle_only_stimulus_table(handmade, tmp_path):
    """Older copies name the HDF5 betas betas_sessionNN.mat; a copy with only the stimulus table's .pkl is told
    which CSV to fetch, and the pickle is never opened."""
    root = tmp_path / "copy"
    shutil.copytree(handmade["root"], root)
    bdir = root / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    (bdir / "betas_session02.hdf5").rename(bdir / "betas_session02.mat")
    ds, ref = NSD(root), NSD(handmade["root"])
    assert ds.sessions(1) == [1, 2, 3]
    np.testing.assert_array_equal(ds.betas(1, roi="V1", sessions=[2]), ref.betas(1, roi="V1", sessions=[2]))
    info = root / "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
    info.unlink()
    info.with_suffix(".pkl").write_bytes(b"not to be unpickled")
    with pytest.raises(
        NSDError, match=r"stimulus table missing \(the \.pkl beside it is not read.*--what stiminfo"
    ):
        _ = NSD(root).stim_info


def test_behaviour_agrees_with_the_design_and_a_mismatch_is_named(tiny, tmp_path):
    beh = tiny.behaviour(1, sessions=[1, 2])
    np.testing.assert_array_equal(beh["73KID"].to_numpy() - 1, tiny.trial_images(1, [1, 2]))
    assert set(beh["SESSION"]) == {1, 2}
    root = tmp_path / "copy"
    shutil.copytree(tiny.root, root, ignore=shutil.ignore_patterns("*.hdf5", "derived"))
    tsv = root / "nsddata/ppdata/subj01/behav/responses.tsv"
    table = pd.read_csv(tsv, sep="\t")
    table.loc[5, "73KID"] += 1
    table.to_csv(tsv, sep="\t", index=False)
    ds = NSD(root)
    ds.sessions = lambda s: tiny.sessions(s)  # the betas were not copied
    with pytest.raises(
        NSDError, match=r"73KID - 1 disagrees with the design's trial images .*first difference at trial 5"
    ):
        ds.behaviour(1, sessions=[1])
    tsv.unlink()
    with pytest.raises(NSDError, match="behaviour file missing; fetch it with .*--what behaviour"):
        ds.behaviour(1)
