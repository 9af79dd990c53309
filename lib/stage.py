"""The one setup call at the top of every notebook: seed, device, dataset (simulated on first use for the
simulated profiles), where the notebook's figures and metrics go, and the hand-off store of its profile."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from lib import artifacts, io, paths, runtime


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

    def figure(self, fig, name: str) -> Path:
        """Save a report figure of this notebook (``name``, e.g. ``02_roi_comparison.png``). It waits in the
        profile's pending folder and reaches the figure folder with the metrics (:meth:`save_metrics`), so a run
        that fails its checks leaves the last good run's figures and metrics together. Returns where it will be."""
        from lib.report import figures

        if not name.startswith(self.name[:3]):
            raise ValueError(f"figure {name!r}: a figure of {self.name} is named {self.name[:3]}*.png")
        figures.save(fig, self.pending / name)
        return self.out_dir / name

    def save_metrics(self, metrics: dict) -> Path:
        """This notebook's metrics JSON (with the profile, seed and device of the run), written after its
        figures move from the pending folder into the figure folder: call it last, once every check passed."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for fig in sorted(self.pending.glob("*.png")) if self.pending.is_dir() else []:
            io.move(fig, self.out_dir / fig.name)
        shutil.rmtree(self.pending, ignore_errors=True)
        return io.save_metrics(
            self.metrics_path, {"profile": self.profile, "seed": self.seed, "device": self.device, **metrics}
        )

    @property
    def pending(self) -> Path:
        """Figures of this run not yet published (cleared by :func:`setup`)."""
        return paths.BUILD_DIR / self.profile / "pending" / self.name


def setup(name: str, profile: str, data_root: str = "", seed: int = 0, device: str = "auto") -> Stage:
    """Seed everything, choose the device (``auto``: CUDA when present), open the dataset of ``profile`` at
    ``data_root`` (empty: ``data/<profile>``, or ``$NSD_ROOT`` for real data; simulated there on first use; a path
    given must exist, :func:`lib.paths.check_data_root`), and
    print one line saying so. ``name`` is the notebook (e.g. ``02_fmri_encoder``)."""
    from lib.data import simulate
    from lib.data.nsd import NSD

    if name not in artifacts.STAGES:
        raise ValueError(f"stage {name!r}: expected one of {', '.join(artifacts.STAGES)}")
    rng = runtime.seed_everything(seed)
    dev = runtime.pick_device(device)
    root, seconds = simulate.ensure(paths.data_root(profile, data_root or None), profile, seed=seed)
    ds = NSD(root)
    st = Stage(name, profile, seed, dev, rng, ds, paths.output_dir(profile),
               paths.metrics_dir(profile) / f"{name}.json", artifacts.Store(profile), seconds)  # fmt: skip
    shutil.rmtree(st.pending, ignore_errors=True)  # an earlier run's figures that never passed its checks
    print(
        f"{name} | {ds} | profile {profile}, seed {seed}, device {dev} | figures -> {paths.display(st.out_dir)}"
    )
    return st
