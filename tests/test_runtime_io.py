"""Device choice, seeding, quiet progress, atomic writes and content keys."""

import os

import numpy as np
import pytest

from lib import io, runtime


def test_pick_device():
    import torch

    assert runtime.pick_device("cpu") == "cpu"
    assert runtime.pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device='tpu'"):
        runtime.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            runtime.pick_device("cuda")


def test_seed_everything_repeats_numpy_and_torch():
    import torch

    a = (runtime.seed_everything(5).random(3), np.random.random(2), torch.rand(2))
    b = (runtime.seed_everything(5).random(3), np.random.random(2), torch.rand(2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert torch.equal(a[2], b[2])


def test_quiet_follows_environment(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("LIB_QUIET", "0")
    assert not runtime.quiet()
    monkeypatch.setenv("CI", "true")
    assert runtime.quiet() and runtime.progress(range(3)).disable


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with io.atomic_path(target) as tmp:
        tmp.write_text("ok")
        assert not target.exists()
    assert target.read_text() == "ok"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "ok" and sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_content_key_ignores_key_order_and_sees_values():
    assert io.content_key({"a": 1, "b": [1, 2]}) == io.content_key({"b": [1, 2], "a": 1})
    assert io.content_key({"a": 1}) != io.content_key({"a": 2})
    assert io.content_key({"a": np.int64(1)}) == io.content_key({"a": 1})
