"""One reader for the Natural Scenes Dataset and mini-NSD: betas of ROI voxels, design, stimuli, captions, ROIs.

    ds = NSD(root)
    ds.betas(1, roi="nsdgeneral", sessions=[1, 2])   # float32 (trials, voxels), NIfTI voxel order
    ds.trial_images(1, sessions=[1, 2])             # 0-based nsdId per trial
    ds.prf(1, roi="V1")                             # NSD's pRF maps at those voxels (lib.data.prf)

Paths below ``root`` are NSD's own (see ../shared/docs/nsd_format.md and data_manifests/nsd_files.csv).
"""

from __future__ import annotations

import functools
import hashlib
import json
import numbers
import re
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from scipy.io import loadmat

from lib.data import prf as prf_lib
from lib.data import rois as roi_lib
from lib.data.remote import RangeFile
from lib.fileio import atomic_path
from lib.runtime import progress as bar

BETAS_VERSIONS = ("betas_fithrf_GLMdenoise_RR", "betas_fithrf", "betas_assumehrf")
#: the experimental design file, relative to a dataset root: what makes a folder an NSD copy
DESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
#: how many voxels one read gathers before converting to float (bounds the reader's extra memory)
_BLOCK_VOXELS = 2048


def volume_affine(img) -> np.ndarray:
    """The voxel -> world (RAS+ mm) affine of an NSD NIfTI image. A file with an sform or qform keeps it. NSD's own
    files have neither (both codes 0), where nibabel falls back to a left-right flipped (LAS) default; NSD
    documents its volumes as LPI (the first voxel left, posterior, inferior) with the origin at the volume centre,
    so voxel axes i, j, k run to the right, front and top: a diagonal of voxel sizes, centred."""
    hdr = img.header
    if int(hdr.get("sform_code", 0)) > 0 or int(hdr.get("qform_code", 0)) > 0:
        return np.asarray(img.affine, float)
    zooms = np.asarray(hdr.get_zooms()[:3], float)
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -(np.asarray(img.shape[:3]) - 1) / 2 * zooms
    return affine


class NSDError(ValueError):
    """A problem with the dataset on disk or with a request to it; the message names the file or value."""


def parse_subject(subject: int | str) -> int:
    """``1``, ``"1"``, ``"01"`` or ``"subj01"`` -> 1; anything else is an error naming the value."""
    m = re.fullmatch(r"(?:subj)?0*([1-8])", str(subject).strip())
    if not m:
        raise NSDError(f"subject={subject!r}: expected 1..8 or 'subj01'..'subj08'")
    return int(m.group(1))


class NSD:
    """Read NSD (or mini-NSD) from ``root``; every call takes explicit arguments and returns arrays."""

    def __init__(self, root: str | Path, space: str = "func1pt8mm", betas_version: str = BETAS_VERSIONS[0],
                 annotations: str | Path | None = None, stimuli: str | None = None,
                 stimuli_endpoint: str | None = None):  # fmt: skip
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise NSDError(f"data root {self.root}: no such folder (set NSD_ROOT or pass a dataset root)")
        self.design_path = self.root / DESIGN
        if not self.design_path.is_file():
            raise NSDError(
                f"data root {self.root}: no {DESIGN}; expected an NSD copy or a "
                f"mini-NSD (python -m lib.data.simulate --out {self.root})"
            )
        self.space = space
        self.betas_version = betas_version
        self.annotations = (
            Path(annotations) if annotations else self.root / "nsddata_stimuli/stimuli/nsd/annotations"
        )
        # s3:// URL of nsd_stimuli.hdf5, read by byte ranges when the local file is absent (lib.data.remote)
        self.stimuli_url, self.stimuli_endpoint, self._remote = stimuli, stimuli_endpoint, None
        marker = self.root / "MINI_NSD.json"
        self.simulation: dict | None = json.loads(marker.read_text()) if marker.is_file() else None

    def __repr__(self) -> str:
        kind = f"mini-NSD {self.simulation['profile']}" if self.simulation else "NSD"
        return f"NSD({str(self.root)!r}, {kind}, subjects={self.subjects})"

    @property
    def is_simulated(self) -> bool:
        return self.simulation is not None

    # ------------------------------------------------------------------------------------------------ layout
    def func_dir(self, subject: int | str) -> Path:
        return self.root / f"nsddata/ppdata/subj{parse_subject(subject):02d}/{self.space}"

    def betas_dir(self, subject: int | str) -> Path:
        return (
            self.root
            / f"nsddata_betas/ppdata/subj{parse_subject(subject):02d}/{self.space}/{self.betas_version}"
        )

    def session_path(self, subject: int | str, session: int) -> Path:
        """The session's HDF5 file (``.hdf5``, or ``.mat`` as older copies name the same HDF5 file), or its NIfTI
        twin when only that is present."""
        h5 = self.betas_dir(subject) / f"betas_session{session:02d}.hdf5"
        if h5.exists():
            return h5
        for twin in (
            h5.with_suffix(".mat"),
            h5.with_suffix(".nii.gz"),
        ):  # older copies name the HDF5 file .mat
            if twin.exists():
                return twin
        return h5

    @property
    def subjects(self) -> list[int]:
        """Subjects with at least one betas session file."""
        return [s for s in range(1, 9) if self._session_numbers(s)]

    def _session_numbers(self, subject: int) -> list[int]:
        d = self.betas_dir(subject)
        if not d.is_dir():
            return []
        found = {
            int(m.group(1))
            for p in d.iterdir()
            if (m := re.fullmatch(r"betas_session(\d+)\.(?:hdf5|mat|nii\.gz)", p.name))
        }
        return sorted(found)

    def sessions(self, subject: int | str) -> list[int]:
        """1-based session numbers on disk for ``subject`` (an error if it has none)."""
        s = parse_subject(subject)
        found = self._session_numbers(s)
        if not found:
            raise NSDError(
                f"subject {s}: no betas_sessionNN files in {self.betas_dir(s)} (subjects with data: {self.subjects})"
            )
        return found

    def check_sessions(self, subject: int | str, sessions) -> list[int]:
        """Validate a list of 1-based sessions (None = all on disk)."""
        have = self.sessions(subject)
        if sessions is None:
            return have
        given = sessions
        if isinstance(given, str | bytes) or not all(
            isinstance(x, numbers.Integral) or (isinstance(x, float | np.floating) and float(x).is_integer())
            for x in np.atleast_1d(given).tolist()
        ):
            raise NSDError(
                f"sessions={given!r}: expected None (all) or a list of whole session numbers, e.g. [1, 2]"
            )
        sessions = [int(x) for x in np.atleast_1d(given).tolist()]
        if not sessions:
            raise NSDError(f"sessions={given!r}: expected None (all) or a non-empty list of session numbers")
        bad = [x for x in sessions if x not in have]
        if bad:
            on_disk = f"{have[0]}..{have[-1]}" if have == list(range(have[0], have[-1] + 1)) else str(have)
            raise NSDError(
                f"subject {parse_subject(subject)}: sessions {bad} out of range (on disk: {on_disk})"
            )
        if len(set(sessions)) != len(sessions):
            raise NSDError(f"sessions {sessions}: each session may appear once")
        return sessions

    # ------------------------------------------------------------------------------------------------ design
    @functools.cached_property
    def design(self) -> dict[str, np.ndarray]:
        """``masterordering`` (n_trials,), ``subjectim`` (n_subjects, n_images), ``sharedix`` (n_shared,): 1-based."""

        try:
            mat = loadmat(self.design_path)
        except Exception as e:  # noqa: BLE001 - any parse failure is reported as the file's
            raise NSDError(f"{self.design_path}: not a readable MAT file ({e})") from None
        out = {}
        for k in ("masterordering", "subjectim", "sharedix"):
            if k not in mat:
                raise NSDError(f"{self.design_path}: variable {k!r} missing")
            out[k] = np.asarray(mat[k]).astype(np.int64)
        out["masterordering"] = out["masterordering"].ravel()
        out["sharedix"] = out["sharedix"].ravel()
        return out

    @property
    def trials_per_session(self) -> int:
        """750 for NSD; mini-NSD records its own."""
        if self.simulation:
            return int(self.simulation["config"]["trials_per_session"])
        return 750

    def trial_images(self, subject: int | str, sessions=None) -> np.ndarray:
        """0-based nsdId of each trial of ``sessions`` (in trial order), NSD's
        ``subjectim[subj-1, masterordering[g]-1] - 1``."""
        s = parse_subject(subject)
        sessions = self.check_sessions(s, sessions)
        d, T = self.design, self.trials_per_session
        if s > d["subjectim"].shape[0]:
            raise NSDError(f"subject {s}: {self.design_path} lists {d['subjectim'].shape[0]} subjects")
        g = np.concatenate([np.arange((x - 1) * T, x * T) for x in sessions])
        return d["subjectim"][s - 1, d["masterordering"][g] - 1] - 1

    def shared_ids(self) -> np.ndarray:
        """0-based nsdIds of the shared images (the test set), sorted."""
        return np.sort(self.design["sharedix"] - 1)

    def behaviour(self, subject: int | str, sessions=None) -> pd.DataFrame:
        """``responses.tsv`` of ``subject``: one row per trial (SESSION, RUN, TRIAL, 73KID, ... RT, ISCORRECT,
        MISSINGDATA as NSD has them), for ``sessions`` (default: those on disk), checked against the design: row k
        shows image ``73KID - 1`` = ``trial_images(subject, sessions)[k]`` (MindEye2's cross-check)."""
        s = parse_subject(subject)
        path = self.root / f"nsddata/ppdata/subj{s:02d}/behav/responses.tsv"
        if not path.is_file():
            raise NSDError(f"{path}: behaviour file missing; fetch it with python -m lib.data.fetch --subject {s} "
                           f"--root {self.root} --what behaviour")  # fmt: skip
        beh = pd.read_csv(path, sep="\t")
        need = {"SESSION", "RUN", "TRIAL", "73KID"}
        if not need <= set(beh.columns):
            raise NSDError(f"{path}: columns {sorted(need - set(beh.columns))} missing")
        sessions = self.check_sessions(s, sessions)
        beh = beh[beh["SESSION"].isin(sessions)].sort_values(["SESSION", "RUN", "TRIAL"], kind="stable")
        expected = self.trial_images(s, sessions)
        got = beh["73KID"].to_numpy() - 1
        if len(got) != len(expected) or not np.array_equal(got, expected):
            n = min(len(got), len(expected))
            differ = np.flatnonzero(got[:n] != expected[:n])
            bad = int(differ[0]) if len(differ) else n
            raise NSDError(f"{path}: 73KID - 1 disagrees with the design's trial images ({len(got)} rows, "
                           f"{len(expected)} trials; first difference at trial {bad})")  # fmt: skip
        return beh.reset_index(drop=True)

    @functools.cached_property
    def stim_info(self) -> pd.DataFrame:
        """``nsd_stim_info_merged.csv`` indexed by nsdId."""
        path = self.root / "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
        if not path.is_file():
            pkl = (
                " (the .pkl beside it is not read: it would run code)"
                if path.with_suffix(".pkl").is_file()
                else ""
            )
            raise NSDError(f"{path}: stimulus table missing{pkl}; fetch it with "
                           f"python -m lib.data.fetch --subject 1 --root {self.root} --what stiminfo")  # fmt: skip
        return pd.read_csv(path, index_col=0).set_index("nsdId", drop=False)

    # ------------------------------------------------------------------------------------------------ ROIs
    def roi_files(self, subject: int | str) -> dict[str, dict[int, str]]:
        """{ROI file: {label: name}} for every ROI volume of the subject (names from ``.ctab`` when present)."""
        return self._roi_files(parse_subject(subject))

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one dataset object, few subjects
    def _roi_files(self, s: int) -> dict[str, dict[int, str]]:
        roi_dir = self.func_dir(s) / "roi"
        if not roi_dir.is_dir():
            raise NSDError(f"subject {s}: no ROI folder {roi_dir}")
        out = {}
        for p in sorted(roi_dir.glob("*.nii.gz")):
            name = p.name[: -len(".nii.gz")]
            if name.startswith(("lh.", "rh.")):
                continue
            ctab = self.root / f"nsddata/freesurfer/subj{s:02d}/label/{name}.mgz.ctab"
            if ctab.is_file():
                out[name] = roi_lib.parse_ctab(ctab.read_text(), str(ctab))
            else:
                labels = np.unique(self._roi_volume(s, name, None))
                out[name] = {int(k): f"{name}_{int(k)}" for k in labels if k > 0}
        return out

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _roi_volume(self, s: int, file: str, hemi: str | None) -> np.ndarray:

        path = self.func_dir(s) / "roi" / (f"{hemi}.{file}.nii.gz" if hemi else f"{file}.nii.gz")
        if not path.is_file():
            raise NSDError(f"subject {s}: ROI file {path} missing")
        try:
            raw = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        except Exception as e:  # noqa: BLE001
            raise NSDError(f"{path}: not a readable NIfTI file ({e})") from None
        if raw.ndim == 4 and raw.shape[3] == 1:
            raw = raw[..., 0]  # some writers keep a singleton 4th axis
        if raw.ndim != 3:
            raise NSDError(
                f"{path}: an ROI volume of shape {raw.shape}; expected a 3-D label volume (X, Y, Z)"
            )
        off = np.abs(raw - np.rint(raw)) > 1e-3
        if off.any():
            raise NSDError(
                f"{path}: {int(off.sum())} voxels hold non-integer labels (e.g. {raw[off][0]:g}); expected integer "
                "labels (-1, 0, 1..N): was it resampled with interpolation instead of nearest neighbour?"
            )
        vol = np.rint(raw).astype(np.int16)
        ref = self.func_dir(s) / "roi" / "nsdgeneral.nii.gz"  # every ROI volume shares nsdgeneral's grid
        if (
            path != ref
            and ref.is_file()
            and vol.shape != (want := self._roi_volume(s, "nsdgeneral", None).shape)
        ):
            raise NSDError(f"{path}: an ROI volume of shape {vol.shape}, but {ref.name} has {want}; expected every "
                           f"ROI volume of subject {s} on the same {self.space} grid")  # fmt: skip
        vol.setflags(write=False)
        return vol

    def roi_volume(self, subject: int | str, file: str, hemi: str | None = None) -> np.ndarray:
        """The label volume (X, Y, Z) of one ROI file: -1 not cortex, 0 unlabelled, 1..N labels."""
        return self._roi_volume(parse_subject(subject), file, hemi)

    def roi_mask(
        self, subject: int | str, roi: str | list[str] | tuple[str, ...], hemi: str | None = None
    ) -> np.ndarray:
        """Boolean mask (X, Y, Z), NIfTI orientation, of an ROI name, group, ``file:label``, union or list."""
        s = parse_subject(subject)
        if not (isinstance(roi, str) or (isinstance(roi, list | tuple) and roi)):
            raise NSDError(f"roi={roi!r}: expected an ROI name (e.g. 'nsdgeneral'), a union ('V1+V2') or a non-empty "
                           "list of names")  # fmt: skip
        names = [roi] if isinstance(roi, str) else list(roi)
        available = self.roi_files(s)
        mask = None
        for name in names:
            try:
                selections = roi_lib.resolve(name, available, hemi)
            except (KeyError, ValueError) as e:
                raise NSDError(f"subject {s}: {e.args[0]}") from None
            for sel in selections:
                vol = self._roi_volume(s, sel.file, sel.hemi)
                m = vol > 0 if sel.labels is None else np.isin(vol, sel.labels)
                if mask is not None and m.shape != mask.shape:
                    raise NSDError(f"subject {s}: roi {roi!r} joins volumes of shapes {mask.shape} and {m.shape} "
                                   f"({sel.file}); expected one grid")  # fmt: skip
                mask = m if mask is None else mask | m
        return mask

    def voxel_indices(self, subject: int | str, roi) -> np.ndarray:
        """(V, 3) voxel coordinates (i, j, k) of an ROI in NIfTI voxel order (the column order of :meth:`betas`)."""
        return np.argwhere(self.roi_mask(subject, roi))

    def affine(self, subject: int | str) -> np.ndarray:
        """Voxel -> world (RAS+ mm) affine of the subject's functional space, from ``nsdgeneral.nii.gz`` by
        :func:`volume_affine`: MNI for mini-NSD; for real NSD, whose files carry no qform/sform, the documented
        LPI voxel order with the origin at the volume centre (mm offsets from the centre, not scanner space)."""

        s = parse_subject(subject)
        return volume_affine(nib.load(self.func_dir(s) / "roi/nsdgeneral.nii.gz"))

    def ncsnr(self, subject: int | str, roi=None) -> np.ndarray:
        """Noise-ceiling SNR: the volume (X, Y, Z), or the ROI's voxels in NIfTI order."""

        path = self.betas_dir(subject) / "ncsnr.nii.gz"
        if not path.is_file():
            raise NSDError(f"{path}: ncsnr file missing")
        vol = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        return vol if roi is None else vol[self.roi_mask(subject, roi)]

    def prf(self, subject: int | str, roi="nsdgeneral", missing: str = "error") -> prf_lib.PRF | None:
        """NSD's pRF maps (``prf_angle``, ``prf_eccentricity``, ``prf_size``, ``prf_R2`` in the functional folder)
        at the voxels of ``roi``, in NIfTI order (the columns of :meth:`betas` for the same ROI); NaN kept. Units
        and conversion to image pixels: :mod:`lib.data.prf`. A missing file is an error, or with
        ``missing="none"`` the answer None (an analysis that uses the files where present)."""

        if missing not in ("error", "none"):
            raise NSDError(f"missing={missing!r}: expected 'error' or 'none'")
        s = parse_subject(subject)
        if missing == "none" and not all((self.func_dir(s) / n).is_file() for n in prf_lib.FILES.values()):
            return None
        mask = self.roi_mask(s, roi)
        values = {}
        for field, name in prf_lib.FILES.items():
            path = self.func_dir(s) / name
            if not path.is_file():
                raise NSDError(f"{path}: pRF file missing; fetch it with make fetch SUBJECT={s} NSD_ROOT={self.root} "
                               "WHAT=prf (a mini-NSD gets it from lib.data.simulate.ensure)")  # fmt: skip
            try:
                vol = np.asarray(nib.load(path).dataobj, dtype=np.float64)
            except Exception as e:  # noqa: BLE001
                raise NSDError(f"{path}: not a readable NIfTI file ({str(e).splitlines()[0]})") from None
            if vol.ndim == 4 and vol.shape[3] == 1:
                vol = vol[..., 0]
            if vol.shape != mask.shape:
                raise NSDError(f"{path}: a volume of shape {vol.shape}, but the ROI volumes have {mask.shape}; "
                               f"expected subject {s}'s pRF maps on the same {self.space} grid")  # fmt: skip
            values[field] = vol[mask]
        return prf_lib.PRF(ijk=np.argwhere(mask), **values)

    # ------------------------------------------------------------------------------------------------ betas
    def betas(
        self,
        subject: int | str,
        roi="nsdgeneral",
        sessions=None,
        progress: bool = False,
        nonfinite: str = "error",
    ) -> np.ndarray:
        """Single-trial betas of ``roi`` for ``sessions`` (None = all): float32 (trials, voxels), percent signal
        change (int16 / 300), voxels in NIfTI order. One read per session file. NaN or inf (float betas files
        only) are an error naming the session file (``nonfinite="error"``) or kept (``"keep"``, for a caller that
        drops those voxels: :func:`lib.data.prep.prepare`)."""
        if nonfinite not in ("error", "keep"):
            raise NSDError(f"nonfinite={nonfinite!r}: expected 'error' or 'keep'")
        s = parse_subject(subject)
        sessions = self.check_sessions(s, sessions)
        mask = self.roi_mask(s, roi)
        ijk = np.argwhere(mask)
        if not len(ijk):
            raise NSDError(f"subject {s}: roi {roi!r} selects no voxels; expected at least one")
        T = self.trials_per_session
        out = np.empty((T * len(sessions), len(ijk)), np.float32)

        for n, x in enumerate(bar(sessions, desc=f"subj{s:02d} betas") if progress else sessions):
            block = out[n * T : (n + 1) * T]
            read_session(self.session_path(s, x), ijk, mask.shape, out=block)
            bad = ~np.isfinite(block).all(axis=0)  # float betas files can hold NaN or inf; int16 ones cannot
            if nonfinite == "error" and bad.any():
                raise NSDError(f"{self.session_path(s, x)}: {int(bad.sum())} of the {len(ijk)} voxels of {roi!r} "
                               "hold NaN or infinite betas; expected finite values")  # fmt: skip
        return out

    # ------------------------------------------------------------------------------------------------ stimuli
    @property
    def stimuli_path(self) -> Path:
        return self.root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"

    def images(self, ids) -> np.ndarray:
        """uint8 (n, H, W, 3): rows ``ids`` (0-based nsdId) of ``imgBrick``, in the order asked. Without the local
        stimulus file and with ``stimuli=`` an s3:// URL, the rows are read remotely by byte ranges and cached
        under ``<root>/derived/stimuli/<url hash>/`` (one ``.npy`` per image), so each image crosses the network
        once."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        path = self.stimuli_path
        if not path.is_file() and self.stimuli_url:
            return self._remote_images(ids)
        with _open_h5(path) as f:
            if "imgBrick" not in f:
                raise NSDError(f"{path}: dataset 'imgBrick' missing")
            brick = f["imgBrick"]
            _check_ids(ids, brick.shape[0], path)
            uniq, inv = np.unique(ids, return_inverse=True)
            return brick[uniq][inv] if len(uniq) else np.zeros((0, *brick.shape[1:]), np.uint8)

    def _remote_images(self, ids: np.ndarray) -> np.ndarray:

        cache = self.root / "derived" / "stimuli" / hashlib.sha256(self.stimuli_url.encode()).hexdigest()[:12]
        uniq, inv = np.unique(ids, return_inverse=True)
        rows: dict[int, np.ndarray] = {}
        for i in uniq:
            f = cache / f"{int(i):05d}.npy"
            if f.is_file():
                rows[int(i)] = np.load(f)
        missing = [int(i) for i in uniq if int(i) not in rows]
        if missing:
            if self._remote is None:
                self._remote = RangeFile(self.stimuli_url, self.stimuli_endpoint)
            with h5py.File(self._remote, "r") as h:
                if "imgBrick" not in h:
                    raise NSDError(f"{self.stimuli_url}: dataset 'imgBrick' missing")
                brick = h["imgBrick"]
                _check_ids(np.asarray(missing), brick.shape[0], self.stimuli_url)
                for i in missing:
                    rows[i] = brick[i]
                    with atomic_path(cache / f"{i:05d}.npy", suffix=".npy") as tmp:
                        np.save(tmp, rows[i])
        if not len(uniq):
            return np.zeros((0, 0, 0, 3), np.uint8)
        return np.stack([rows[int(i)] for i in uniq])[inv]

    @functools.cached_property
    def _captions(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        files = sorted(self.annotations.glob("captions_*2017.json"))
        if not files:
            raise NSDError(
                f"{self.annotations}: no COCO caption files captions_train2017.json / captions_val2017.json"
            )
        for p in files:
            try:
                data = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise NSDError(f"{p}: not valid JSON ({e})") from None
            anns = data.get("annotations") if isinstance(data, dict) else None
            if not isinstance(anns, list):
                raise NSDError(f"{p}: no 'annotations' list; expected a COCO captions file")
            for n, a in enumerate(anns):
                if not (isinstance(a, dict) and "image_id" in a and isinstance(a.get("caption"), str)):
                    raise NSDError(f"{p}: annotation {n} lacks 'image_id' or a 'caption' string; expected COCO "
                                   "caption entries")  # fmt: skip
                out.setdefault(int(a["image_id"]), []).append(a["caption"].strip())
        return out

    def captions(self, ids) -> list[list[str]]:
        """Captions of each 0-based nsdId, looked up by its cocoId in the COCO caption JSON."""
        info = self.stim_info
        coco = info["cocoId"].to_numpy()
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(ids) and (ids.min() < 0 or ids.max() >= len(coco)):
            raise NSDError(f"image ids out of range 0..{len(coco) - 1} of the stimulus table")
        return [list(self._captions.get(int(coco[i]), [])) for i in ids]

    @functools.cached_property
    def _scenes(self) -> list[dict]:
        if not self.is_simulated:
            raise NSDError(f"{self.root}: a real NSD copy has no scene descriptions (mini-NSD only)")
        path = self.root / "mininsd/scenes.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise NSDError(f"{path}: cannot read the scene descriptions ({e})") from None

    def scenes(self, ids) -> list[dict]:
        """mini-NSD only: the generating description (background, objects) of each 0-based nsdId."""
        scenes = self._scenes
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(ids) and (ids.min() < 0 or ids.max() >= len(scenes)):
            raise NSDError(f"image ids out of range 0..{len(scenes) - 1} of mininsd/scenes.json")
        return [scenes[i] for i in ids]

    def ground_truth_path(self, subject: int | str) -> Path:
        """mini-NSD only: the ground-truth file of the subject (see data_manifests/mini_nsd.md)."""
        if not self.is_simulated:
            raise NSDError(f"{self.root}: a real NSD copy has no simulator ground truth")
        return self.root / f"mininsd/groundtruth_subj{parse_subject(subject):02d}.hdf5"


def noise_ceiling(ncsnr: np.ndarray, n: int | np.ndarray = 1) -> np.ndarray:
    """NSD's noise ceiling in % of variance for data averaged over ``n`` trials: 100 ncsnr^2 / (ncsnr^2 + 1/n).

    ``n`` may also be the repeats per image of a test set; then 1/n is replaced by the mean of 1/n over images,
    NSD's formula for a mix of 3-, 2- and 1-trial images.
    """
    inv_n = float(np.mean(1.0 / np.asarray(n, dtype=np.float64)))
    s2 = np.asarray(ncsnr, dtype=np.float64) ** 2
    return 100 * s2 / (s2 + inv_n)


# ---------------------------------------------------------------------------------------------------- low level
def _check_ids(ids: np.ndarray, n: int, where) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() >= n):
        raise NSDError(f"image ids out of range 0..{n - 1} of {where}")


def _open_h5(path: Path) -> h5py.File:
    if not Path(path).is_file():
        raise NSDError(f"{path}: file missing")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        msg = str(e).splitlines()[0]
        raise NSDError(f"{path}: not a readable HDF5 file ({msg})") from None


def read_session(
    path: Path, ijk: np.ndarray, vol_shape: tuple[int, int, int], out: np.ndarray | None = None
) -> np.ndarray:
    """Betas of the voxels ``ijk`` (V, 3) from one session file as float32 (trials, V), int16 / 300.

    NSD's HDF5 layout (one uncompressed chunk per voxel holding its trials) is read chunk by chunk, only the
    voxels asked for, in blocks, so extra memory stays a small fraction of the output. Other chunkings are read
    slab by slab over the mask's bounding box; ``.nii.gz`` sessions through nibabel.
    """
    path = Path(path)
    if path.name.endswith(".nii.gz"):
        return _read_session_nifti(path, ijk, vol_shape, out)
    with _open_h5(path) as f:
        if "betas" not in f:
            raise NSDError(f"{path}: dataset 'betas' missing")
        d = f["betas"]
        if d.ndim != 4 or tuple(d.shape[1:]) != tuple(vol_shape[::-1]):
            raise NSDError(
                f"{path}: betas shape {d.shape}, expected (trials, {', '.join(map(str, vol_shape[::-1]))}) to match the ROI volume"
            )
        T = d.shape[0]
        if out is None:
            out = np.empty((T, len(ijk)), np.float32)
        elif out.shape != (T, len(ijk)):
            raise NSDError(f"{path}: holds {T} trials, expected {out.shape[0]}")
        try:
            if (
                d.chunks == (T, 1, 1, 1)
                and d.compression is None
                and not d.shuffle
                and not d.fletcher32
                and d.scaleoffset is None
            ):
                _read_voxel_chunks(d, ijk, out)
            else:
                _read_slabs(d, ijk, out)
        except OSError as e:
            raise NSDError(
                f"{path}: read failed, file damaged or truncated ({str(e).splitlines()[0]})"
            ) from None
    return out


def _read_voxel_chunks(d: h5py.Dataset, ijk: np.ndarray, out: np.ndarray) -> None:
    T = d.shape[0]
    dtype = d.dtype
    buf = np.empty((min(_BLOCK_VOXELS, max(len(ijk), 1)), T), dtype)
    raw = buf.view(np.uint8)  # read_direct_chunk fills bytes
    dsid = d.id
    for start in range(0, len(ijk), buf.shape[0]):
        block = ijk[start : start + buf.shape[0]]
        for n, (i, j, k) in enumerate(block):
            try:
                dsid.read_direct_chunk((0, int(k), int(j), int(i)), out=raw[n])
            except RuntimeError:  # chunk never written: HDF5's fill value
                buf[n] = d.fillvalue
        np.divide(buf[: len(block)].T, 300, out=out[:, start : start + len(block)], dtype=np.float32)


def _read_slabs(d: h5py.Dataset, ijk: np.ndarray, out: np.ndarray) -> None:
    if not len(ijk):
        return
    lo, hi = ijk.min(0), ijk.max(0) + 1
    T = d.shape[0]
    # slabs along Z (the file's slowest spatial axis), each at most about half the output's size
    per_z = T * (hi[1] - lo[1]) * (hi[0] - lo[0]) * d.dtype.itemsize
    step = max(1, int(out.nbytes // max(per_z, 1)) // 2)
    for z0 in range(lo[2], hi[2], step):
        z1 = min(z0 + step, hi[2])
        sel = np.flatnonzero((ijk[:, 2] >= z0) & (ijk[:, 2] < z1))
        if not len(sel):
            continue
        slab = d[:, z0:z1, lo[1] : hi[1], lo[0] : hi[0]]  # (T, z, y, x)
        v = ijk[sel]
        out[:, sel] = slab[:, v[:, 2] - z0, v[:, 1] - lo[1], v[:, 0] - lo[0]] / np.float32(300)


def _read_session_nifti(path: Path, ijk: np.ndarray, vol_shape, out: np.ndarray | None) -> np.ndarray:

    try:
        img = nib.load(path)
        if tuple(img.shape[:3]) != tuple(vol_shape):
            raise NSDError(
                f"{path}: volume {img.shape[:3]}, expected {tuple(vol_shape)} to match the ROI volume"
            )
        if img.ndim != 4:
            raise NSDError(f"{path}: a {img.ndim}-D volume {img.shape}; expected 4-D betas (X, Y, Z, trials)")
        if out is not None and img.shape[3] != out.shape[0]:
            raise NSDError(
                f"{path}: holds {img.shape[3]} trials, expected {out.shape[0]} (trials per session)"
            )
        data = np.asarray(img.dataobj)
    except NSDError:
        raise
    except Exception as e:  # noqa: BLE001
        raise NSDError(f"{path}: not a readable NIfTI file ({str(e).splitlines()[0]})") from None
    vals = data[ijk[:, 0], ijk[:, 1], ijk[:, 2], :].T
    if out is None:
        out = np.empty(vals.shape, np.float32)
    np.divide(vals, 300, out=out, dtype=np.float32)
    return out
