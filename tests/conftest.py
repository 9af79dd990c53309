"""Shared fixtures: a tiny mini-NSD (two subjects) simulated once per test session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LIB_QUIET", "1")

import pytest  # noqa: E402

from lib.data.simulate import SimConfig, simulate  # noqa: E402

#: smaller than the quick profile, so that unit tests simulate in a couple of seconds
TINY = SimConfig(
    n_shared=12,
    n_unique=40,
    n_sessions=3,
    trials_per_session=40,
    runs_per_session=2,
    image_size=16,
    voxel_mm=8.0,
)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini") / "nsd"
    simulate(root, profile="tiny", n_subjects=2, seed=3, config=TINY)
    return root


@pytest.fixture(scope="session")
def tiny(tiny_root):
    from lib.data.nsd import NSD

    return NSD(tiny_root)
