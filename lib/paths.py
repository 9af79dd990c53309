"""Every path of the project, resolved from one root anchor (never from the working directory)."""

from __future__ import annotations

import os
from pathlib import Path

PROJ_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = PROJ_ROOT / "notebooks"
PARAMS_DIR = PROJ_ROOT / "params"
FIGURES_DIR = PROJ_ROOT / "figures"
BUILD_DIR = PROJ_ROOT / "build"
DATA_DIR = PROJ_ROOT / "data"

#: The profile whose figures are committed under figures/ (the "embedded default").
EMBEDDED_PROFILE = "mini"
#: Profiles that run on a simulated dataset, generated on first use.
SIMULATED_PROFILES = ("quick", "mini")
#: Environment variable naming the data root of a real NSD copy (or any other dataset root).
ROOT_ENV = "NSD_ROOT"
NPROC_ENV = (
    "LIB_NPROC"  # processes per trainer (lib.distributed; lib.pipeline --nproc, make pipeline NPROC=N)
)


def data_root(profile: str, override: str | os.PathLike | None = None) -> Path:
    """The dataset root for ``profile``: ``override`` if given, else ``$NSD_ROOT``, else ``data/<profile>``.

    ``$NSD_ROOT`` applies to profiles that are not simulated, so that a shell pointed at a real NSD copy never
    mixes it with the quick/mini simulations.
    """
    if override:
        return check_data_root(profile, override)
    if profile not in SIMULATED_PROFILES:
        env = os.environ.get(ROOT_ENV)
        if not env:
            raise ValueError(
                f"profile {profile!r} reads a real dataset: set ${ROOT_ENV} to the NSD root (or pass data_root)"
            )
        return Path(env).expanduser().resolve()
    return DATA_DIR / profile


def check_data_root(profile: str, data_root: str | os.PathLike) -> Path:
    """A ``data_root`` given explicitly must exist: a mistyped path is an error, not a new simulation there. To
    simulate mini-NSD at a path of one's choosing (a simulated profile), create the empty folder first."""
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        ask = (f", or an empty folder to simulate mini-NSD profile {profile!r} in (mkdir -p {display(root)})"
               if profile in SIMULATED_PROFILES else "")  # fmt: skip
        raise ValueError(f"data_root {display(root)}: no such folder; expected an NSD copy{ask}")
    return root


def output_dir(profile: str) -> Path:
    """Where a profile's report figures go: figures/ for the embedded default, build/<profile>/figures else."""
    return FIGURES_DIR if profile == EMBEDDED_PROFILE else BUILD_DIR / profile / "figures"


def metrics_dir(profile: str) -> Path:
    """Where a profile's metrics JSON files go (figures/metrics/ for the embedded default)."""
    return FIGURES_DIR / "metrics" if profile == EMBEDDED_PROFILE else BUILD_DIR / profile / "metrics"


def results_dir(profile: str) -> Path:
    """Git-ignored folder for a profile's intermediate results (arrays handed from one notebook to the next)."""
    return BUILD_DIR / profile / "results"


def display(path: str | os.PathLike) -> str:
    """``path`` as a message or a committed file should show it: relative to the repository when inside it,
    ``~/...`` under the home folder, else unchanged (no machine's absolute path in committed metrics)."""
    p = Path(path).expanduser()
    full, home = p.resolve(), Path.home().resolve()
    if full.is_relative_to(PROJ_ROOT):
        return str(full.relative_to(PROJ_ROOT))
    if full.is_relative_to(home):
        return str(Path("~") / full.relative_to(home))
    return str(p)


def rerun(producer: str, profile: str) -> str:
    """The notebook that makes a file and the command that runs it, for error messages."""
    return f"notebooks/{producer}.ipynb (python -m lib.pipeline --profile {profile} --only {producer[:2]})"


def require(path: str | os.PathLike, producer: str, profile: str) -> Path:
    """``path`` if it exists; else an error saying which notebook makes it and how to run it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: it is made by {rerun(producer, profile)}")
    return path
