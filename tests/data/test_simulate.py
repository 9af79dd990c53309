"""mini-NSD (lib.data.simulate): layout, determinism, design, its pRF files, and that the data carry the ground
truth the simulator built in (and that it is read back: noise-free signals, voxel truth)."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lib import paths
from lib.data import prep, simulate
from lib.data import scenes as sc
from lib.data import simulate as sim
from lib.data.nsd import NSD
from tests.conftest import TINY


def test_same_seed_same_bytes_whatever_the_thread_count(tmp_path, tiny_root):
    """A second run, in another process limited to one BLAS thread, writes the same bytes (MINI_NSD.json aside:
    it records the generation time)."""
    again = tmp_path / "again"
    code = (
        "from lib.data.simulate import simulate; from tests.conftest import TINY; "
        f"simulate({str(again)!r}, profile='tiny', n_subjects=2, seed=3, config=TINY)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=paths.PROJ_ROOT)
    assert sim.manifest(again) == sim.manifest(tiny_root)
    other = tmp_path / "other"
    sim.simulate(other, profile="tiny", n_subjects=1, seed=4, config=TINY)
    a, b = sim.manifest(other), sim.manifest(tiny_root)
    key = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    assert a[key] != b[key]


def test_nsd_layout_and_betas_format(tiny, tiny_root):
    s = tiny.simulation
    assert s["profile"] == "tiny" and s["subjects"] == 2 and tiny.subjects == [1, 2]
    assert tiny.sessions(1) == [1, 2, 3]
    for rel in ("nsddata/experiments/nsd/nsd_stim_info_merged.csv",
                "nsddata_stimuli/stimuli/nsd/annotations/captions_train2017.json",
                "nsddata/ppdata/subj02/behav/responses.tsv",
                "nsddata/ppdata/subj01/func1pt8mm/roi/lh.floc-faces.nii.gz",
                "nsddata/freesurfer/subj01/label/streams.mgz.ctab",
                "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/ncsnr.nii.gz"):  # fmt: skip
        assert (tiny_root / rel).is_file(), rel
    shape = tiny.roi_volume(1, "nsdgeneral").shape
    with h5py.File(tiny.session_path(1, 2)) as f:
        d = f["betas"]
        assert d.dtype == np.int16 and d.shape == (TINY.trials_per_session, *shape[::-1])
        assert d.chunks == (TINY.trials_per_session, 1, 1, 1) and d.compression is None
    with h5py.File(tiny.stimuli_path) as f:
        assert f["imgBrick"].shape == (TINY.n_shared + 2 * TINY.n_unique, 16, 16, 3)
        assert f["imgBrick"].dtype == np.uint8


def test_design_follows_nsd_scheme(tiny):
    d = tiny.design
    assert d["masterordering"].min() == 1 and d["masterordering"].max() == TINY.n_shared + TINY.n_unique
    np.testing.assert_array_equal(d["subjectim"][:, : TINY.n_shared], np.tile(d["sharedix"], (2, 1)))
    for s in (1, 2):
        ids = tiny.trial_images(s)
        counts = pd.Series(ids).value_counts()
        shared = set(tiny.shared_ids())
        assert all(counts[i] == 3 for i in shared)
        own = counts[[i for i in counts.index if i not in shared]]
        assert len(own) == TINY.n_unique and own.between(1, 3).all()
    # the two subjects' own images do not overlap
    assert not set(d["subjectim"][0, TINY.n_shared :]) & set(d["subjectim"][1, TINY.n_shared :])


def test_stim_table_and_responses_agree_with_design(tiny, tiny_root):
    info = tiny.stim_info
    for s in (1, 2):
        ids = tiny.trial_images(s)
        for r in range(3):
            col = info[f"subject{s}_rep{r}"].to_numpy()
            shown = np.flatnonzero(col > 0)
            # rep r of an image is its (r+1)-th trial, 1-based over all of the subject's trials
            for i in shown[:25]:
                assert ids[col[i] - 1] == i
                assert (ids[: col[i] - 1] == i).sum() == r
    assert info["shared1000"].sum() == TINY.n_shared
    assert set(info.index[info["shared1000"]]) == set(tiny.shared_ids())
    beh = pd.read_csv(tiny_root / "nsddata/ppdata/subj01/behav/responses.tsv", sep="\t")
    np.testing.assert_array_equal(beh["73KID"].to_numpy() - 1, tiny.trial_images(1))
    assert beh.groupby("SESSION").size().eq(TINY.trials_per_session).all()
    # NSD numbers trials within each run, 1..n
    for _, run in beh.groupby(["SESSION", "RUN"]):
        assert run["TRIAL"].tolist() == list(range(1, len(run) + 1))
    assert beh["ISOLD"].sum() == len(beh) - beh["73KID"].nunique()


def test_captions_name_every_object(tiny, tiny_root):
    scenes = json.loads((tiny_root / "mininsd/scenes.json").read_text())
    caps = tiny.captions(range(len(scenes)))
    for scene, cs in zip(scenes, caps, strict=True):
        assert len(cs) == TINY.n_captions
        for c in cs:
            for o in scene["objects"]:
                assert o["colour"] in c
                assert any(w in c for w in sc._SHAPE_WORDS[o["shape"]]), (c, o["shape"])


def test_ncsnr_file_is_nsds_formula_and_tracks_the_truth(tiny):
    """ncsnr.nii.gz equals NSD's formula computed here from the betas; with 12 test images it only roughly
    follows each voxel's true ncsnr (the notebooks check r > 0.7 on the quick and mini profiles)."""
    sessions = tiny.sessions(1)
    b = tiny.betas(1, "nsdgeneral").astype(np.float64)
    ids = tiny.trial_images(1)
    for k in range(len(sessions)):
        rows = slice(k * TINY.trials_per_session, (k + 1) * TINY.trials_per_session)
        b[rows] = (b[rows] - b[rows].mean(0)) / b[rows].std(0)
    three = [i for i in np.unique(ids) if (ids == i).sum() == 3]
    v2 = np.mean([b[ids == i].var(0, ddof=1) for i in three], axis=0)
    expected = np.sqrt(np.maximum(0, 1 - v2)) / np.sqrt(v2)
    np.testing.assert_allclose(tiny.ncsnr(1, "nsdgeneral"), expected, rtol=1e-4, atol=1e-5)
    assert sim.ncsnr_recovery(tiny, 1) > 0.3


def test_retinotopy_is_smooth_and_contralateral(tiny):
    gt = sim.load_ground_truth(tiny.ground_truth_path(1))
    early = gt["area"] == "early"
    ijk, x, y = gt["ijk"][early], gt["prf_x"][early], gt["prf_y"][early]
    xyz = ijk @ tiny.affine(1)[:3, :3].T + tiny.affine(1)[:3, 3]
    centre = TINY.image_size / 2
    left = xyz[:, 0] < 0
    assert (x[left] > centre).mean() > 0.95 and (x[~left] < centre).mean() > 0.95  # contralateral field
    d_brain = np.linalg.norm(ijk[:, None] - ijk[None], axis=-1)
    d_field = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    same_hemi = left[:, None] == left[None]
    near = (d_brain == 1) & same_hemi
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(x), (2000, 2))
    assert np.median(d_field[near]) < 0.5 * np.median(d_field[pairs[:, 0], pairs[:, 1]])
    vis = tiny.roi_volume(1, "prf-visualrois")[tuple(ijk.T)]
    # ventral V1 maps the upper visual field (smaller image rows), dorsal V1 the lower field
    assert (y[vis == 1] <= centre + 1e-6).all() and (y[vis == 2] >= centre - 1e-6).all()


def test_face_area_prefers_round_shapes_in_the_betas(tiny, tiny_root):
    """From the data alone: floc-faces voxels respond more to images with circles or rings than without."""
    scenes = json.loads((tiny_root / "mininsd/scenes.json").read_text())
    round_ = np.array([any(o["shape"] in ("circle", "ring") for o in s["objects"]) for s in scenes])
    for s in (1, 2):
        from lib.data.prep import prepare

        data = prepare(tiny, s, "floc-faces+floc-bodies+floc-places", progress=False)
        faces = tiny.roi_mask(s, "floc-faces")[tuple(data.voxel_ijk.T)]
        x = np.concatenate([data.x_train, data.x_test])
        ids = np.concatenate([data.train_ids, data.test_ids])
        resp = x[:, faces].mean(1)
        assert resp[round_[ids]].mean() - resp[~round_[ids]].mean() > 0.2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="profile='huge'"):
        sim.simulate(tmp_path / "a", profile="huge")
    with pytest.raises(ValueError, match="subjects=9"):
        sim.simulate(tmp_path / "a", profile="quick", n_subjects=9)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for force in (False, True):  # not a mini-NSD: never replaced, and no advice to force it
        with pytest.raises(FileExistsError, match="not empty and holds no mini-NSD") as e:
            sim.simulate(tmp_path / "full", profile="quick", force=force)
        assert "force" not in str(e.value) and (tmp_path / "full" / "x").is_file()
    assert sim.main(["--out", str(tmp_path / "full"), "--profile", "quick"]) == 2
    with pytest.raises(ValueError, match=r"ncsnr=9.0: expected a value in \(0, 5\]"):
        sim.simulate(tmp_path / "b", profile="quick", config=sim.dataclasses.replace(TINY, ncsnr=9.0))
    assert sim.main(["--out", str(tmp_path / "c"), "--profile", "quick", "--ncsnr", "0"]) == 2
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_interrupted_simulation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(sim, "_simulate_subject", boom)
    with pytest.raises(RuntimeError):
        sim.simulate(tmp_path / "ds", profile="tiny", config=TINY)
    assert [p.name for p in tmp_path.iterdir()] == [".ds.lock"]  # the lock stays, empty and unheld


def test_ensure_refuses_a_dataset_of_other_settings(tiny_root):
    with pytest.raises(ValueError, match=r"seed 3 .*differs in \['config', 'profile', 'seed'\]"):
        sim.ensure(tiny_root, "quick", seed=0)


def test_ensure_leaves_an_incomplete_nsd_copy_alone(tmp_path):
    (tmp_path / "nsddata_betas" / "ppdata").mkdir(parents=True)
    for profile in ("quick", "nsd"):  # a simulated profile would otherwise try to write its dataset there
        with pytest.raises(FileNotFoundError, match="incomplete NSD copy, no nsddata/"):
            sim.ensure(tmp_path, profile)
    assert [p.name for p in tmp_path.iterdir()] == ["nsddata_betas"]


def test_shared_noise_keeps_the_true_ncsnr(tiny):
    """Noise variance is exactly 1/ncsnr^2 in signal units: the noise around each image's mean response, in the
    betas of one session, over the true signal variance."""
    gt = sim.load_ground_truth(tiny.ground_truth_path(1))
    b = tiny.betas(1, "nsdgeneral", sessions=[1]).astype(np.float64)
    ids = tiny.trial_images(1, sessions=[1])
    sig = gt["signal"][ids]
    # b = g (base + amp (signal + noise/ncsnr)) + off: regress signal out per voxel, compare residual / slope
    sc_ = sig - sig.mean(0)
    slope = (sc_ * (b - b.mean(0))).sum(0) / (sc_ * sc_).sum(0)
    resid = (b - b.mean(0)) - slope * sc_
    est = np.abs(slope) / resid.std(0)
    assert np.median(est / gt["ncsnr"]) == pytest.approx(1.0, abs=0.1)


def test_two_first_runs_at_once_simulate_once_and_delete_nothing(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "data" / "quick"
    (tmp_path / "data" / ".quick.k1ll3d_x").mkdir(parents=True)  # what a killed writer leaves
    (tmp_path / "data" / ".quick.backup").mkdir()  # not a name of ours: kept
    with ThreadPoolExecutor(2) as pool:  # two runs of a profile whose dataset does not exist yet
        got = list(pool.map(lambda _: sim.ensure(root, "quick"), range(2)))
    assert sorted(s is None for _, s in got) == [False, True]  # one wrote it; the other waited and used it
    assert not (tmp_path / "data" / ".quick.k1ll3d_x").exists()  # removed under the lock
    assert (tmp_path / "data" / ".quick.backup").is_dir()
    marker = json.loads((root / sim.MARKER).read_text())
    assert marker["profile"] == "quick" and (root / "nsddata/experiments/nsd/nsd_expdesign.mat").is_file()
    with pytest.raises(FileExistsError, match=r"holds a mini-NSD already \(pass force=True"):
        sim.simulate(root, profile="quick")  # the advice to force appears for our own dataset only


def test_mini_nsd_pRF_files_convert_back_to_the_truth(tiny):
    size = tiny.simulation["config"]["image_size"]
    for subject in (1, 2):
        p = tiny.prf(subject, "nsdgeneral")
        truth = sim.voxel_truth(tiny, subject, p.ijk)
        np.testing.assert_allclose(p.centres_px(size), truth["prf_xy"], atol=1e-4)
        gt = sim.load_ground_truth(tiny.ground_truth_path(subject))
        cols = sim.truth_columns(gt, p.ijk)
        np.testing.assert_allclose(p.sigma_px(size), gt["prf_sigma"][cols], rtol=1e-5)
        # angle and eccentricity straight from the truth's pixels, by the documented formula
        x = (gt["prf_x"][cols] / size - 0.5) * 8.4
        y = (0.5 - gt["prf_y"][cols] / size) * 8.4
        np.testing.assert_allclose(p.eccentricity, np.hypot(x, y), rtol=1e-5)
        wrapped = (p.angle - np.degrees(np.arctan2(y, x)) + 180) % 360 - 180
        assert np.abs(wrapped).max() < 1e-3
        assert ((p.angle >= 0) & (p.angle < 360)).all()
        m2 = gt["mix"][cols] ** 2
        s2 = gt["ncsnr"][cols] ** 2
        np.testing.assert_allclose(p.r2, 100 * m2[:, 0] / m2.sum(1) * s2 / (s2 + 1), rtol=1e-5)
        area = truth["area"]
        assert (
            np.median(p.r2[area == "early"]) > 10 > 5 * np.median(p.r2[np.isin(area, ["ventral", "lateral"])])
        )
        # NaN outside nsdgeneral, as NSD has for voxels without data
        vol = np.asarray(nib.load(tiny.func_dir(subject) / "prf_eccentricity.nii.gz").dataobj)
        inside = tiny.roi_mask(subject, "nsdgeneral")
        assert np.isfinite(vol[inside]).all() and np.isnan(vol[~inside]).all()
        early = tiny.prf(subject, "V1-V3")
        np.testing.assert_array_equal(early.ijk, tiny.voxel_indices(subject, "V1-V3"))


def test_an_older_mini_nsd_gets_the_same_pRF_files_and_nothing_else_changes(tiny_root, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_root, old)
    files = sorted(old.glob("nsddata/ppdata/subj*/func1pt8mm/prf_*.nii.gz"))
    assert len(files) == 8
    for f in files:
        f.unlink()
    before = sim.manifest(old)
    assert sim.ensure(old, "tiny") == (old, None)  # not a named profile: no settings check, files added
    after = sim.manifest(old)
    assert after == sim.manifest(tiny_root)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sim.add_prf_files(old) == []  # nothing left to add


def test_noise_free_for_reads_the_ground_truth(tiny):
    from lib.data import prep

    data = prep.prepare(tiny, 1, "V1", progress=False)
    ids = data.test_ids[:4]
    got = simulate.noise_free_for(tiny, 1, data.voxel_ijk, ids)
    gt = simulate.load_ground_truth(tiny.ground_truth_path(1))
    for c, v in enumerate(data.voxel_ijk[:5]):
        k = int(np.flatnonzero((gt["ijk"] == v).all(1))[0])
        np.testing.assert_array_equal(got[:, c], gt["signal"][ids, k])


def test_voxel_truth_joins_the_ground_truth_to_prepared_voxels(tiny):
    data = prep.prepare(tiny, 1, "V1-hV4", progress=False)
    truth = simulate.voxel_truth(tiny, 1, data.voxel_ijk)
    gt = simulate.load_ground_truth(tiny.ground_truth_path(1))
    for k, vox in enumerate(data.voxel_ijk[:5]):
        col = int(np.flatnonzero((gt["ijk"] == vox).all(1))[0])
        assert truth["area"][k] == gt["area"][col] and truth["ncsnr"][k] == gt["ncsnr"][col]
        assert tuple(truth["prf_xy"][k]) == (gt["prf_x"][col], gt["prf_y"][col])
        np.testing.assert_array_equal(truth["signal"][:, k], gt["signal"][:, col])


def test_adding_subjects_leaves_the_first_subjects_data_unchanged(tmp_path, tiny_root):
    """Subject 1's files are the same bytes with 1 subject as with 2 (the fixture); its images, captions and
    noise-free responses are the first rows of the larger dataset's; the later subject sees the shared images
    and images of its own, drawn past subject 1's."""
    one = tmp_path / "one"
    sim.simulate(one, profile="tiny", n_subjects=1, seed=3, config=TINY)
    a, b = sim.manifest(one), sim.manifest(tiny_root)
    mine = [k for k in a if "subj01" in k and "groundtruth" not in k]
    assert mine and all(a[k] == b[k] for k in mine)
    small, large = NSD(one), NSD(tiny_root)
    n = TINY.n_shared + TINY.n_unique
    ids = np.arange(n)
    assert np.array_equal(small.images(ids), large.images(ids)) and small.captions(ids) == large.captions(ids)
    g1 = sim.load_ground_truth(one / "mininsd/groundtruth_subj01.hdf5")
    g2 = sim.load_ground_truth(tiny_root / "mininsd/groundtruth_subj01.hdf5")
    assert np.array_equal(g1["signal"], g2["signal"][:n]) and np.array_equal(g1["ncsnr"], g2["ncsnr"])
    train2, test2 = prep.stimulus_split(large, 2)
    assert train2.min() >= n and np.array_equal(test2, prep.stimulus_split(large, 1)[1])
