"""A process killed outright (SIGKILL: no handler, no cleanup) and run again ends where an uninterrupted run
ends: the simulator's dataset byte for byte, and a trainer's weights and history bit for bit. Real processes,
bounded timeouts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lib import paths
from lib.data import simulate
from lib.trainer import saved_progress

ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "LIB_QUIET": "1",
    "LIB_SAVE_SECONDS": "0",
}

SIMULATE = """
import sys
from tests.conftest import TINY
from lib.data.simulate import simulate
simulate(sys.argv[1], profile="tiny", n_subjects=2, seed=3, config=TINY)
"""

TRAIN = """
import sys
import numpy as np
import torch
from lib.models.mlp import MLPConfig, train_mlp
torch.set_num_threads(1)
rng = np.random.default_rng(0)
x = rng.standard_normal((600, 96)).astype(np.float32)
y = (x[:, :24] @ rng.standard_normal((24, 12))).astype(np.float32)
cfg = MLPConfig(width=128, depth=2, proj_width=16, epochs=60, batch_size=20, lr=1e-3, patience=0)
enc, hist = train_mlp(x, y, cfg, x[:60], y[:60], device="cpu", state_dir=sys.argv[1])
np.savez(sys.argv[2], pred=enc.predict(x[:60]), loss=np.array(hist["loss"]), epochs=len(hist["loss"]))
"""


def _start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=paths.PROJ_ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 120) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> float:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; the seconds it ran. Fails if it ended first."""
    t0 = time.perf_counter()
    while not ready():
        assert proc.poll() is None, f"ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.perf_counter() - t0 < timeout, "never reached the point to kill it at"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "it finished before the kill arrived"
    return time.perf_counter() - t0


def test_a_simulation_killed_mid_write_and_run_again_writes_the_same_bytes(tiny_root, tmp_path):
    out = tmp_path / "nsd"
    hidden = re.compile(r"^\.nsd\.[a-z0-9_]{8}$")

    def writing():  # its hidden folder holds the first subject's betas: well into the write
        return any(hidden.match(p.name) and any(p.rglob("betas_session01.hdf5")) for p in tmp_path.iterdir())

    _kill_when(_start(SIMULATE, out), writing)
    assert not out.exists() and any(hidden.match(p.name) for p in tmp_path.iterdir())  # what the kill left
    _finish(_start(SIMULATE, out))
    assert simulate.manifest(out) == simulate.manifest(tiny_root)  # the fixture's uninterrupted simulation
    assert not any(hidden.match(p.name) for p in tmp_path.iterdir())  # the killed writer's folder is gone


def test_training_killed_mid_run_and_run_again_equals_an_uninterrupted_run(tmp_path):
    whole = _start(TRAIN, tmp_path / "whole", tmp_path / "whole.npz")  # in parallel with the killed one
    state = tmp_path / "killed"

    def trained_a_while():  # a few epochs saved, and the run not near its end
        files = list(state.glob("mlp-state-*.pt")) if state.is_dir() else []
        return bool(files) and saved_progress(files[0], "epoch")[0] >= 3

    ran = _kill_when(_start(TRAIN, state, tmp_path / "unused.npz"), trained_a_while)
    assert not (tmp_path / "unused.npz").exists()
    kept = saved_progress(next(state.glob("mlp-state-*.pt")), "epoch")[0]
    assert 3 <= kept < 60, kept
    _finish(_start(TRAIN, state, tmp_path / "resumed.npz"))
    _finish(whole)
    a, b = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "resumed.npz")
    assert int(a["epochs"]) == int(b["epochs"]) == 60
    np.testing.assert_array_equal(a["loss"], b["loss"])
    np.testing.assert_array_equal(a["pred"], b["pred"])
    print(f"killed after {ran:.1f} s at epoch {kept} of 60")


#: CLIP, DINO and the GAN, each trained from scratch on 16 tiny scenes in a process of its own (saving every step),
#: then its weights and losses written to an .npz
TRAINERS = """
import sys
import numpy as np
import torch
from tests.conftest import _tiny_data
torch.set_num_threads(1)
kind, state, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
imgs, caps = _tiny_data(16)
if kind == "clip":
    from lib.models import contrastive, embedding
    emb = embedding.create("mini-rn16", 32, "cpu", seed=1)
    cfg = contrastive.ClipTrainConfig(steps=steps, batch_size=8, lr=1e-3, checkpoint_every=1, eval_every=0)
    loss = contrastive.train_clip(emb, imgs, caps, cfg, state_dir=state)["loss"]
    net = emb.model
elif kind == "dino":
    from lib.models import dino
    cfg = dino.DinoConfig(steps=steps, batch_size=4, out_dim=16, n_local=2, global_size=32, local_size=32,
                          checkpoint_every=1, width=8)
    _, net, hist = dino.train_dino(dino.normalise(imgs), cfg, state_dir=state, device="cpu")
    loss = hist["loss"]
else:
    from lib.models import embedding, gan
    emb = embedding.create("mini-rn16", 32, "cpu", seed=0)
    cfg = gan.GANConfig(steps=steps, z_dim=8, w_dim=16, mapping_layers=2, channel_base=64, channel_max=16,
                        fts_hidden=16, batch_size=8, save_every=1, itd=1.0, rec=1.0, beta1=0.9, crop_min=0.5)
    net, _, hist = gan.train_gan(imgs, emb.embed_images(imgs), cfg, emb, "cpu", state_dir=state)
    loss = hist["loss_g"]
np.savez(out, loss=np.array(loss), **{k: v.detach().numpy() for k, v in net.state_dict().items()})
"""


@pytest.mark.parametrize(
    "kind,prefix,steps", [("clip", "clip", 24), ("dino", "dino", 16), ("gan", "gan", 16)]
)
def test_a_trainer_killed_mid_run_and_run_again_equals_an_uninterrupted_run(kind, prefix, steps, tmp_path):
    whole = _start(TRAINERS, kind, tmp_path / "whole", tmp_path / "whole.npz", steps)
    state = tmp_path / "killed"

    def trained_a_while():
        files = list(state.glob(f"{prefix}-state-*.pt")) if state.is_dir() else []
        return bool(files) and saved_progress(files[0])[0] >= 3

    _kill_when(_start(TRAINERS, kind, state, tmp_path / "unused.npz", steps), trained_a_while)
    kept = saved_progress(next(state.glob(f"{prefix}-state-*.pt")))[0]
    assert 3 <= kept < steps and not (tmp_path / "unused.npz").exists(), kept
    _finish(_start(TRAINERS, kind, state, tmp_path / "resumed.npz", steps))
    _finish(whole)
    a, b = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "resumed.npz")
    assert len(a["loss"]) == steps and a.files == b.files
    for k in a.files:  # the losses and every weight, bit for bit
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{kind}: {k}")
    print(f"{kind}: killed at step {kept} of {steps}")


@pytest.fixture(autouse=True)
def _bounded():
    t0 = time.perf_counter()
    yield
    assert time.perf_counter() - t0 < 240
