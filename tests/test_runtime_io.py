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


def test_autocast_is_a_no_op_on_cpu():
    import torch

    a = torch.ones(4, 4)
    with runtime.autocast(torch.device("cpu")):  # float32 stays float32 (bfloat16 is for CUDA only)
        assert not torch.is_autocast_enabled("cpu") and (a @ a).dtype == torch.float32


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


def test_exclusive_refuses_a_second_holder_naming_the_first_and_frees_on_exit(tmp_path):
    lock = tmp_path / "d" / ".x.lock"
    with io.exclusive(lock, "folder d"):
        assert (tmp_path / "d" / ".x.lock.owner").is_file()
        with pytest.raises(io.Busy, match=rf"folder d: in use by process {os.getpid()} on .* since .*; wait"):
            with io.exclusive(lock, "folder d"):
                pass
    assert not (tmp_path / "d" / ".x.lock.owner").exists()
    with io.exclusive(lock, "folder d"):  # released: the next holder gets it
        pass
    import threading
    import time

    got = []
    with io.exclusive(lock, "folder d"):
        t = threading.Thread(target=lambda: got.append(_waited(lock)))
        t.start()
        time.sleep(0.3)
        assert not got  # still waiting for the holder
    t.join(5)
    assert got and got[0] >= 0.25  # it got the lock when the holder let go


def _waited(lock) -> float:
    import time

    t0 = time.perf_counter()
    with io.exclusive(lock, "folder d", wait=10):
        return time.perf_counter() - t0


def test_content_key_ignores_key_order_and_sees_values():
    assert io.content_key({"a": 1, "b": [1, 2]}) == io.content_key({"b": [1, 2], "a": 1})
    assert io.content_key({"a": 1}) != io.content_key({"a": 2})
    assert io.content_key({"a": np.int64(1)}) == io.content_key({"a": 1})


def test_array_key_sees_content_dtype_and_shape():
    import numpy as np

    from lib.io import array_key

    a = np.arange(12, dtype=np.float32)
    assert array_key(a) == array_key(a.copy()) == array_key(a[::-1][::-1])
    b = a.copy()
    b[3] += 1
    assert len({array_key(a), array_key(b), array_key(a.reshape(3, 4)), array_key(a.astype(np.float64))}) == 4
    assert array_key(a, a) != array_key(a)


def test_adamw_for_decays_matrices_only_and_named_exceptions():
    import torch

    from lib.runtime import adamw_for

    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Embedding(5, 4))
    m[1].weight.requires_grad_(False)
    opt = adamw_for(m, 1e-3, 0.1, no_decay=("2.",))
    decay, flat = (g["params"] for g in opt.param_groups)
    assert [p.shape for p in decay] == [(4, 3)] and opt.param_groups[0]["weight_decay"] == 0.1
    assert {tuple(p.shape) for p in flat} == {(4,), (5, 4)} and len(
        flat
    ) == 3  # biases + embedding, frozen left out


def test_safetensors_round_trip_half_and_a_one_line_error(tmp_path):
    import torch

    from lib import io

    state = {"w": torch.linspace(0, 1, 7), "n": torch.arange(3)}
    p = io.write_bytes(tmp_path / "m.safetensors", io.safetensors_bytes(state, {"k": "v"}, half=True))
    got, meta = io.read_safetensors(p)
    assert meta == {"k": "v"} and got["w"].dtype == torch.float16 and torch.equal(got["n"], state["n"])
    assert torch.allclose(got["w"].float(), state["w"], atol=1e-3)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(KeyError, match=r"bad.safetensors: not a readable safetensors file"):
        io.read_safetensors(tmp_path / "bad.safetensors", KeyError)
