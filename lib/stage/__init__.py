"""The one setup call at the top of every notebook: the common parameters resolved from the profile, seed,
device, dataset (simulated on first use for the simulated profiles), the notebook's hyperparameters, where its
figures and results go, and the hand-off store of its profile. One module per notebook beside this one holds
that notebook's steps (``lib.stage.fmri_encoder`` for 02, and so on)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from lib import artifacts, fileio, paths, runtime
from lib.data import simulate
from lib.data.nsd import NSD
from lib.report import figures, results
from lib.stage import profile as profiles
from lib.stage.profile import Common


@dataclasses.dataclass
class Stage:
    """What a notebook derives from its parameters; its figures and metrics are written through it."""

    name: str
    profile: str
    seed: int
    device: str
    rng: np.random.Generator
    ds: object  # lib.data.nsd.NSD
    out_dir: Path
    metrics_path: Path
    store: artifacts.Store
    simulate_seconds: float | None  # seconds spent simulating the dataset in this call (None: it was there)
    common: Common = dataclasses.field(default_factory=Common)
    settings: dict = dataclasses.field(default_factory=dict)  # the profile (lib.stage.profile.load)
    overrides: dict = dataclasses.field(default_factory=dict)

    @property
    def subject(self) -> int:
        return self.common.subject

    @property
    def roi(self) -> str:
        return self.common.roi

    @property
    def sessions(self) -> list[int] | None:
        """The sessions read (None: every session on disk)."""
        return self.common.session_list

    @property
    def nonfinite(self) -> str:
        return self.common.nonfinite

    def config(self, section: str, **fixed):
        """The configuration dataclass of hyperparameter ``section`` (:data:`lib.stage.configs.SECTIONS`): the
        profile's values and the overrides over its defaults; ``fixed``: fields the notebook sets (the seed)."""
        return profiles.resolve_config(self.settings, section, self.overrides, **fixed)

    def save_results(self, result) -> Path:
        """This notebook's results (its type in :mod:`lib.report.results`) as its metrics JSON, with the profile,
        seed and device of the run, written after its figures move from the pending folder into the figure
        folder: call it last, once every check passed."""
        if results.stage_of(result) != self.name:
            raise ValueError(
                f"{type(result).__name__}: the results of {results.stage_of(result)}, not {self.name}"
            )
        return self.save_metrics(dataclasses.asdict(result))

    def figure(self, fig, name: str) -> Path:
        """Save a report figure of this notebook (``name``, e.g. ``02_roi_comparison.png``). It waits in the
        profile's pending folder and reaches the figure folder with the metrics (:meth:`save_metrics`), so a run
        that fails its checks leaves the last good run's figures and metrics together. Returns where it will be."""

        if not name.startswith(self.name[:3]):
            raise ValueError(f"figure {name!r}: a figure of {self.name} is named {self.name[:3]}*.png")
        figures.save(fig, self.pending / name)
        return self.out_dir / name

    def save_metrics(self, metrics: dict) -> Path:
        """This notebook's metrics JSON (with the profile, seed and device of the run), written after its
        figures move from the pending folder into the figure folder: call it last, once every check passed."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for fig in sorted(self.pending.glob("*.png")) if self.pending.is_dir() else []:
            fileio.move(fig, self.out_dir / fig.name)
        shutil.rmtree(self.pending, ignore_errors=True)
        return fileio.save_metrics(
            self.metrics_path, {"profile": self.profile, "seed": self.seed, "device": self.device, **metrics}
        )

    @property
    def pending(self) -> Path:
        """Figures of this run not yet published (cleared by :func:`setup`)."""
        return paths.BUILD_DIR / self.profile / "pending" / self.name


def setup(name: str, profile: str = paths.EMBEDDED_PROFILE, overrides: dict | None = None) -> Stage:
    """Resolve the common parameters (:class:`lib.stage.profile.Common`) of ``profile`` and ``overrides`` (a common
    parameter, e.g. ``{"subject": 2}``, or a hyperparameter, ``{"mlp.epochs": 5}``), seed everything, choose the
    device (``auto``: CUDA when present), open the dataset (``data_root`` empty: ``data/<profile>``, or
    ``$NSD_ROOT`` for real data; simulated there on first use; a path given must exist), and print one line saying
    so. ``name`` is the notebook (e.g. ``02_fmri_encoder``)."""
    if name not in artifacts.STAGES:
        raise ValueError(f"stage {name!r}: expected one of {', '.join(artifacts.STAGES)}")
    overrides = dict(overrides or {})
    settings = profiles.load(profile)
    common = profiles.resolve_common(settings, overrides)
    rng = runtime.seed_everything(common.seed)
    dev = runtime.pick_device(common.device)
    root, seconds = simulate.ensure(paths.data_root(profile, common.data_root or None), profile, seed=common.seed,
                                    n_subjects=max(common.subject_list + [common.subject]))  # fmt: skip
    ds = NSD(root)
    st = Stage(name, profile, common.seed, dev, rng, ds, paths.output_dir(profile),
               paths.metrics_dir(profile) / f"{name}.json", artifacts.Store(profile), seconds, common, settings,
               overrides)  # fmt: skip
    shutil.rmtree(st.pending, ignore_errors=True)  # an earlier run's figures that never passed its checks
    print(f"{name} | {ds} | profile {profile}, subject {common.subject}, seed {common.seed}, device {dev} | "
          f"figures -> {paths.display(st.out_dir)}")  # fmt: skip
    return st
