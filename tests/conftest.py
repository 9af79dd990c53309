"""Shared fixtures and helpers: a tiny mini-NSD (two subjects) simulated once per test session; a tiny embedding
model, a small linear "world" for the spatial pathway, toy brain data and captioned scenes for the tests of
several modules (tests/models/, tests/analysis/), and the one-line error check."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LIB_QUIET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lib.data import scenes  # noqa: E402
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


# pytest -n: each worker gets its own temporary folder, so that the check below sees only what its own tests leave
if os.environ.get("PYTEST_XDIST_WORKER"):
    import tempfile

    _WORKER_TMP = Path(tempfile.gettempdir()) / f"lib-tests-{os.environ['PYTEST_XDIST_WORKER']}-{os.getpid()}"
    _WORKER_TMP.mkdir()
    os.environ["TMPDIR"] = tempfile.tempdir = str(_WORKER_TMP)


def pytest_sessionfinish(session):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import shutil

        shutil.rmtree(_WORKER_TMP, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption(
        "--kill-pipeline", action="store_true", help="after the notebooks under nbval (build/<profile>/nbval): "
        "tests/kill_pipeline.py (kill -9 of the pipeline runner during 03's training, then 02-03 rerun with "
        "--expect-same), in the notebooks' own pytest-xdist worker")  # fmt: skip


def pytest_collection_modifyitems(session, config, items):
    """``--kill-pipeline`` appends its check right after the notebooks whose metrics it compares with."""
    if config.getoption("--kill-pipeline"):
        notebooks = [i for i in items if i.path.suffix == ".ipynb"]
        if not {"02", "03"} <= {i.path.name[:2] for i in notebooks}:
            raise pytest.UsageError(
                "--kill-pipeline: expected notebooks 02 and 03 under nbval (build/<profile>/nbval)"
            )
        kill = _KillPipeline.from_parent(session, name="kill_pipeline")
        kill.profile = notebooks[0].path.parent.parent.name
        items.insert(items.index(notebooks[-1]) + 1, kill)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: absent with -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs the unit tests and the notebooks (nbval) in one pytest-xdist session: the notebooks, in
    order, and ``--kill-pipeline``'s check after them are one unit of work, kept on one worker while the other takes
    unit tests one by one. (pytest-xdist's own ``xdist_group`` does not group under pytest 9.2: the node id it
    rewrites is no longer the one pytest reports, pytest-xdist issue 1386.)"""
    if not (config.getoption("nbval", False) or config.getoption("nbval_lax", False)):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "notebooks" if ".ipynb::" in nodeid or nodeid == "::kill_pipeline" else nodeid

    return NotebooksTogether(config, log)


class _KillPipeline(pytest.Item):
    """``tests/kill_pipeline.py`` as a test item: passes when that script exits 0, else shows what it said."""

    profile = "quick"

    def runtest(self):
        import subprocess
        import sys

        cmd = [sys.executable, str(Path(__file__).with_name("kill_pipeline.py")), "--profile", self.profile,
               "--notebook", "03", "--rerun", "02,03"]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True)
        print(r.stdout, r.stderr)
        if r.returncode:
            raise AssertionError(f"{' '.join(cmd[1:])}: exit {r.returncode}: {(r.stderr or r.stdout)[-800:]}")

    def reportinfo(self):
        return (
            self.path,
            None,
            f"kill -9 during 03's training on {self.profile}, then 02-03 rerun: same metrics",
        )


#: what the project's own code and its launchers put in the system's temporary folder (pytest's tmp_path aside);
#: partial downloads are dotfiles, which glob matches only when the pattern starts with a dot
LEFT_BEHIND = ("torchelastic_*", "lib_launch_*", "tmp*", "papermill*", ".*.partial")


def _ours_in_tmp() -> set[str]:
    import glob
    import tempfile

    return {Path(p).name for pat in LEFT_BEHIND for p in glob.glob(os.path.join(tempfile.gettempdir(), pat))}


@pytest.fixture(autouse=True)
def nothing_left_in_tmp():
    """Every test leaves the system's temporary folder as it found it (torchrun's torchelastic_* logs included)."""
    before = _ours_in_tmp()
    yield
    left = sorted(_ours_in_tmp() - before)
    if left:
        pytest.fail(f"left in the temporary folder: {left[:5]} ({len(left)} entries); expected none")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini") / "nsd"
    simulate(root, profile="tiny", n_subjects=2, seed=3, config=TINY)
    return root


@pytest.fixture(scope="session")
def tiny(tiny_root):
    from lib.data.nsd import NSD

    return NSD(tiny_root)


@pytest.fixture(scope="module")
def emb():
    """A tiny, untrained embedding model (32 px images)."""
    from lib.models import embedding

    return embedding.create("mini-rn16", image_size=32, device="cpu", seed=0)


@pytest.fixture(scope="module")
def data(emb):
    """24 random 32 px images and their ``emb`` embeddings (the GAN and variant tests)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    return images, emb.embed_images(images)


@pytest.fixture(scope="module")
def world():
    """Images whose 4 x 4 area means each drive one voxel (plus noise), and 20 voxels that see nothing."""
    from skimage.measure import block_reduce

    rng = np.random.default_rng(0)
    n, size, s = 400, 16, 4
    low = rng.uniform(0.1, 0.9, (n, s, s, 3)).astype(np.float32)
    images = np.repeat(np.repeat(low, size // s, 1), size // s, 2)
    images = np.clip(images * 255 + rng.normal(0, 3, images.shape), 0, 255).round().astype(np.uint8)
    target = block_reduce(images.astype(np.float64) / 255, (1, size // s, size // s, 1), np.mean)
    signal = target.reshape(n, -1)  # one voxel per (row, column, channel) of the target
    x = np.concatenate([signal + rng.normal(0, 0.05, signal.shape), rng.normal(0, 1, (n, 20))], 1)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    return x, images, target


def _brain(n_img=120, reps=2, v=60, d=16, seed=0):
    """Images with latent features; voxels a noisy linear mix of them; targets a normalised projection."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_img, 8))
    y = z @ rng.normal(size=(8, d))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    mix = rng.normal(size=(8, v))
    ids = np.repeat(np.arange(n_img), reps)
    x = z[ids] @ mix + 0.5 * rng.normal(size=(len(ids), v))
    return x.astype(np.float32), y[ids].astype(np.float32), (z @ mix).astype(np.float32), y.astype(np.float32)


def _tiny_data(n=24):
    rng = np.random.default_rng(5)
    sc = [scenes.sample_scene(rng) for _ in range(n)]
    imgs = np.stack([scenes.render(s, 32)[0] for s in sc])
    caps = [scenes.captions(s, rng, 3) for s in sc]
    return imgs, caps


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg
