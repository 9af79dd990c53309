"""Data preparation: per-session z-scoring, repeat averaging, the shared-image train/test split, and its cache."""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lib.data.nsd import NSD, NSDError, parse_subject
from lib.data.rois import resolve
from lib.fileio import atomic_path, content_key, file_fingerprint
from lib.metrics import pearson_per_column

#: the options of :func:`prepare` and their defaults (cache keys see every option with its value)
PREP_DEFAULTS = {"zscore": True, "average_train": False, "average_test": True, "nonfinite": "error"}
NONFINITE = ("error", "drop")  # NaN/inf betas: an error naming the session file, or drop those voxels
PREP_VERSION = 1  # bump when the preparation changes, so old caches are never reused


class PrepError(ValueError):
    """A prepared split that breaks one of the checks every split must pass."""


def is_test_image(ds: NSD, ids: np.ndarray) -> np.ndarray:
    """The project's one train/test rule: an image is a test image if and only if it is one of NSD's shared
    images (seen by every subject); boolean mask over ``ids`` (0-based nsdIds)."""
    return np.isin(ids, ds.shared_ids())


def stimulus_split(ds: NSD, subject: int | str, sessions=None) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, test ids) among the images ``subject`` saw in ``sessions`` (default: all), sorted, by
    :func:`is_test_image`. Embedding models and generators train on the first set only."""
    s = parse_subject(subject)
    seen = np.unique(ds.trial_images(s, ds.check_sessions(s, sessions)))
    test = is_test_image(ds, seen)
    return seen[~test], seen[test]


def zscore_sessions(betas: np.ndarray, session_of_trial: np.ndarray) -> np.ndarray:
    """Z-score each voxel within each session (over that session's trials), in place; returns ``betas``.

    A voxel constant within a session (e.g. invalid there, all zeros in NSD) becomes 0 for that session.
    """
    for s in np.unique(session_of_trial):
        rows = session_of_trial == s
        block = betas[rows]
        mu = block.mean(0, dtype=np.float64)
        sd = block.std(0, dtype=np.float64)
        betas[rows] = ((block - mu) / np.where(sd > 0, sd, np.inf)).astype(betas.dtype)
    return betas


def average_repeats(x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of the rows of ``x`` sharing an id: (means, sorted unique ids, repeats per id)."""
    uniq, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    sums = np.zeros((len(uniq), x.shape[1]), np.float64)
    np.add.at(sums, inv, x)
    return (sums / counts[:, None]).astype(x.dtype), uniq, counts


@dataclass
class Prepared:
    """The arrays every later notebook starts from (one subject, one ROI)."""

    x_train: np.ndarray  # (n_train, V) float32
    train_ids: np.ndarray  # (n_train,) 0-based nsdId
    x_test: np.ndarray  # (n_test, V) float32, repeats averaged
    test_ids: np.ndarray  # (n_test,) sorted nsdIds
    test_reps: np.ndarray  # (n_test,) repeats averaged per test image
    voxel_ijk: np.ndarray  # (V, 3) NIfTI voxel indices
    meta: dict = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        return self.x_train.shape[1]

    def save(self, path: str | Path) -> Path:
        """Write as ``.npz`` atomically (the meta dict as JSON)."""
        with atomic_path(path, suffix=".npz") as tmp:
            arrays = {k: v for k, v in asdict(self).items() if k != "meta"}
            np.savez(tmp, meta=np.array(json.dumps(self.meta)), **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Prepared:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                kw = {k: z[k] for k in z.files if k != "meta"}
                meta = json.loads(str(z["meta"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise NSDError(f"{path}: not a prepared-data file ({e})") from None
        return cls(**kw, meta=meta)


def read_betas(ds: NSD, subject: int | str, roi, sessions, nonfinite: str = "error",
               progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """(betas (trials, V), voxel_ijk (V, 3), voxels dropped) of ``roi``; ``nonfinite="drop"`` leaves out every
    voxel with a NaN or inf beta in any trial of ``sessions`` (``"error"``: refused, naming the session file)."""
    if nonfinite not in NONFINITE:
        raise NSDError(f"nonfinite={nonfinite!r}: expected one of {NONFINITE}")
    s = parse_subject(subject)
    betas = ds.betas(
        s, roi=roi, sessions=sessions, progress=progress, nonfinite="keep" if nonfinite == "drop" else "error"
    )
    ijk = ds.voxel_indices(s, roi)
    keep = np.isfinite(betas).all(axis=0) if nonfinite == "drop" else None
    if keep is None or keep.all():
        return betas, ijk, 0
    if not keep.any():
        raise NSDError(f"subject {s}: every one of the {len(ijk)} voxels of {roi!r} holds NaN or inf betas")
    return np.ascontiguousarray(betas[:, keep]), ijk[keep], int((~keep).sum())


def prepare(ds: NSD, subject: int | str, roi="nsdgeneral", sessions=None, *, zscore: bool = True,
            average_train: bool = False, average_test: bool = True, nonfinite: str = "error",
            progress: bool = True) -> Prepared:  # fmt: skip
    """Betas of ``roi`` -> per-session z-score -> split on the shared images -> average test repeats.

    Training trials stay single (the field's default for deep encoders) unless ``average_train``; test trials are
    averaged per image unless ``average_test`` is False (then ``test_reps`` is 1 for every row). NaN or inf betas
    (float betas files) are an error naming the session file, or with ``nonfinite="drop"`` their voxels are left
    out (``voxel_ijk`` lists the kept ones; ``meta["n_dropped_nonfinite"]`` counts the others).
    """
    s = parse_subject(subject)
    sessions = ds.check_sessions(s, sessions)
    betas, ijk, dropped = read_betas(ds, s, roi, sessions, nonfinite, progress)
    ids = ds.trial_images(s, sessions)
    sess = np.repeat(sessions, ds.trials_per_session)
    if zscore:
        zscore_sessions(betas, sess)
    test = is_test_image(ds, ids)
    if average_test:
        x_test, test_ids, reps = average_repeats(betas[test], ids[test])
    else:
        x_test, test_ids, reps = betas[test], ids[test], np.ones(int(test.sum()), np.int64)
    x_train, train_ids = betas[~test], ids[~test]
    if average_train:
        x_train, train_ids, _ = average_repeats(x_train, train_ids)
    meta = {
        "subject": s, "roi": roi, "sessions": sessions, "zscore": zscore, "average_train": average_train,
        "average_test": average_test, "nonfinite": nonfinite, "n_dropped_nonfinite": dropped,
        "n_train_trials": int((~test).sum()), "n_test_trials": int(test.sum()), "prep_version": PREP_VERSION,
    }  # fmt: skip
    return Prepared(x_train, train_ids, x_test, test_ids, reps, ijk, meta)


def cache_key(ds: NSD, subject, roi, sessions, **options) -> str:
    """A key from every input: request, options, code version, and the identity (size, mtime) of each file read."""
    s = parse_subject(subject)
    sessions = ds.check_sessions(s, sessions)
    unknown = sorted(set(options) - set(PREP_DEFAULTS))
    if unknown:
        raise ValueError(f"prepare option(s) {unknown}: expected some of {sorted(PREP_DEFAULTS)}")
    options = PREP_DEFAULTS | options  # a default passed explicitly or left out is the same request
    selections = [roi] if isinstance(roi, str) else list(roi)
    files = [ds.design_path, *(ds.session_path(s, x) for x in sessions)]
    files += sorted((ds.func_dir(s) / "roi").glob("*.nii.gz"))  # ROI volumes ...
    files += sorted((ds.root / f"nsddata/freesurfer/subj{s:02d}/label").glob("*.ctab"))  # ... and label names
    if (ds.root / "MINI_NSD.json").is_file():
        files.append(ds.root / "MINI_NSD.json")  # mini-NSD's trials per session
    return content_key(
        {
            "subject": s, "roi": selections, "sessions": sessions, "options": options, "version": PREP_VERSION,
            "space": ds.space, "betas_version": ds.betas_version, "files": [file_fingerprint(p) for p in files],
        }
    )  # fmt: skip


def prepare_cached(ds: NSD, subject, roi="nsdgeneral", sessions=None, *, cache_dir: str | Path | None = None,
                   progress: bool = True, compute: bool = True, **options) -> tuple[Prepared, Path, bool]:  # fmt: skip
    """:func:`prepare`, cached under ``cache_dir`` (default ``<root>/derived/prep``) by :func:`cache_key`.

    Returns (data, cache file, whether it came from the cache). The file is written atomically. Later notebooks
    pass ``compute=False``: a missing cache is then an error that names notebook 00, which makes it.
    """
    s = parse_subject(subject)
    key = cache_key(ds, s, roi, sessions, **options)
    name = roi if isinstance(roi, str) else "+".join(roi)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = Path(cache_dir) if cache_dir else ds.root / "derived" / "prep"
    path = path / f"subj{s:02d}_{safe}_{key}.npz"
    if path.is_file():
        return Prepared.load(path), path, True
    if not compute:
        raise FileNotFoundError(
            f"{path} is missing: prepared data for subject {s}, roi {roi!r}, sessions {sessions or 'all'}, "
            f"options {options} is made by notebooks/00_data_prep.ipynb (python -m lib.pipeline --only 00)"
        )
    data = prepare(ds, s, roi, sessions, progress=progress, **options)
    data.meta["cache_key"] = key
    data.save(path)
    return data, path, False


def training_sessions(ds: NSD, subject: int | str, data: Prepared) -> np.ndarray:
    """The session of each training row of ``data`` (single trials, as :func:`prepare` leaves them), so that a
    model can train on a subject's first sessions only; an averaged split, whose rows mix sessions, is refused."""
    s = parse_subject(subject)
    sessions = ds.check_sessions(s, data.meta.get("sessions"))
    ids = ds.trial_images(s, sessions)
    sess = np.repeat(sessions, ds.trials_per_session)
    train = ~is_test_image(ds, ids)
    if data.meta.get("average_train") or not np.array_equal(ids[train], data.train_ids):
        raise PrepError(f"subject {s}: the prepared training rows are not the single trials of sessions "
                        f"{sessions[0]}-{sessions[-1]} (averaged, or another split): no session per row")  # fmt: skip
    return sess[train]


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score each column with the training rows' mean and standard deviation; the same transform applied to
    ``others`` (constant columns become 0). Returns [train, *others] as float32."""
    mu = train.mean(0, dtype=np.float64)
    sd = train.std(0, dtype=np.float64)
    sd = np.where(sd > 0, sd, np.inf)
    return [((a - mu) / sd).astype(np.float32) for a in (train, *others)]


def first_repeat(x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first row of each id, ordered by id: a single-trial test set with one trial per image."""
    uniq, first = np.unique(ids, return_index=True)
    return x[first], uniq


def _count(name: str, n, most: int, what: str) -> None:
    """``n`` must be a whole number from 1 to ``most``: else a :class:`PrepError` naming ``name`` and ``what``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= most:
        raise PrepError(f"{name}={n!r}: expected a whole number from 1 to {most} ({what})")


def draw_ids(
    pool: np.ndarray, n: int, rng: np.random.Generator, name: str, what: str, *, keep: int = 0
) -> np.ndarray:
    """``n`` distinct entries of ``pool`` drawn by ``rng`` (``rng.choice`` without replacement), leaving at least
    ``keep`` undrawn; a count out of range is a :class:`PrepError` naming the parameter ``name`` and the range."""
    _count(name, n, len(pool) - keep, what)
    return rng.choice(pool, n, replace=False)


def example_ids(test_ids: np.ndarray, train_ids: np.ndarray, n: int, rng: np.random.Generator,
                name: str = "n_example_images") -> np.ndarray:  # fmt: skip
    """``n`` example stimuli, ``n // 2`` of the test images and the rest of the distinct training images; a count
    the split cannot supply is a :class:`PrepError` naming ``name`` and the largest it allows."""
    train = np.unique(train_ids)
    most = min(2 * len(test_ids) + 1, 2 * len(train))  # n // 2 <= tests and n - n // 2 <= training images
    _count(name, n, most, f"half of them from the {len(test_ids)} test images, half from the {len(train)} "
                          "training images")  # fmt: skip
    return np.concatenate(
        [rng.choice(test_ids, n // 2, replace=False), rng.choice(train, n - n // 2, replace=False)]
    )


def group_columns(ds: NSD, subject, voxel_ijk: np.ndarray, groups) -> dict[str, np.ndarray]:
    """{group: column indices of the prepared voxels (``voxel_ijk``) that lie in the ROI group}; groups whose ROI
    file the subject lacks are left out. Voxels of a group outside the prepared ROI are not counted."""

    available = ds.roi_files(subject)
    ijk = tuple(np.asarray(voxel_ijk).T)
    out = {}
    for g in groups:
        try:
            resolve(g, available)
        except KeyError:
            continue
        out[g] = np.flatnonzero(ds.roi_mask(subject, g)[ijk])
    return out


def voxel_counts(ds: NSD, subject, groups) -> dict[str, int]:
    """Voxels of each ROI group the subject has (groups whose ROI file is missing are left out)."""

    available = ds.roi_files(subject)
    out = {}
    for g in groups:
        try:
            resolve(g, available)
        except KeyError:  # this subject lacks the ROI file the group needs
            continue
        out[g] = int(ds.roi_mask(subject, g).sum())
    return out


def split_half_reliability(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-voxel Pearson r, across images shown at least twice, between their first and second presentation."""
    first, second = {}, {}
    for row, i in enumerate(ids):
        if i not in first:
            first[i] = row
        elif i not in second:
            second[i] = row
    keys = sorted(second)
    if len(keys) < 3:
        raise ValueError(f"split-half reliability needs >= 3 images shown twice, got {len(keys)}")

    return pearson_per_column(x[[first[k] for k in keys]], x[[second[k] for k in keys]])


def zscore_effect(ds: NSD, subject, roi="nsdgeneral", sessions=None, nonfinite: str = "error") -> dict:
    """What per-session z-scoring does to the data: raw voxel means per session (sessions x V) and the split-half
    reliability of test-image responses without and with it (``nonfinite`` as in :func:`prepare`)."""
    s = parse_subject(subject)
    sessions = ds.check_sessions(s, sessions)
    betas = read_betas(ds, s, roi, sessions, nonfinite)[0]
    ids = ds.trial_images(s, sessions)
    sess = np.repeat(sessions, ds.trials_per_session)
    means = np.stack([betas[sess == x].mean(0) for x in sessions])
    test = is_test_image(ds, ids)
    raw = split_half_reliability(betas[test], ids[test])
    zscore_sessions(betas, sess)
    z = split_half_reliability(betas[test], ids[test])
    return {"session_means": means, "reliability": {"raw": raw, "z-scored per session": z}}


def describe(data: Prepared) -> dict:
    """The sizes of a prepared split, as the metrics record them."""
    return {
        "n_voxels": int(data.n_voxels),
        "n_train_images": int(len(np.unique(data.train_ids))),
        "n_test_images": int(len(data.test_ids)),
        "n_train_trials": int(data.meta["n_train_trials"]),
        "n_test_trials": int(data.meta["n_test_trials"]),
        "n_voxels_dropped_nonfinite": int(data.meta.get("n_dropped_nonfinite", 0)),
    }


def check_prepared(ds: NSD, subject: int | str, data: Prepared, sessions=None) -> None:
    """The checks every prepared split must pass, each failure a :class:`PrepError` naming it: shapes agree with
    the voxels, float32 and finite, no test image among the training trials, every test image a shared one, and
    with every session of the design on disk, every shared image seen 3 times."""
    v = len(data.voxel_ijk)
    if data.x_train.shape != (len(data.train_ids), v) or data.x_test.shape != (len(data.test_ids), v):
        raise PrepError(
            f"x_train {data.x_train.shape}, x_test {data.x_test.shape}: expected (trials, {v} voxels)"
        )
    for name in ("x_train", "x_test"):
        x = getattr(data, name)
        if x.dtype != np.float32 or not np.isfinite(x).all():
            raise PrepError(
                f"{name}: expected finite float32, got {x.dtype} with non-finite values or another type"
            )
    if set(data.train_ids.tolist()) & set(data.test_ids.tolist()):
        raise PrepError("a test image leaked into the training trials")
    if not is_test_image(ds, data.test_ids).all():
        raise PrepError("a test image is not one of the shared images")
    s = parse_subject(subject)
    design_sessions = len(ds.design["masterordering"]) // ds.trials_per_session
    if not sessions and len(ds.sessions(s)) == design_sessions:
        n_shared = len(ds.shared_ids())
        if len(data.test_ids) != n_shared or not (data.test_reps == 3).all():
            raise PrepError(f"every session is on disk, yet not every one of the {n_shared} shared images was "
                            f"seen 3 times ({len(data.test_ids)} test images)")  # fmt: skip
