"""File handling (lib.fileio): atomic writes, the exclusive lock, content and array keys, safetensors files."""

import os

import numpy as np
import pytest

from lib import fileio


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with fileio.atomic_path(target) as tmp:
        tmp.write_text("ok")
        assert not target.exists()
    assert target.read_text() == "ok"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), fileio.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "ok" and sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_exclusive_refuses_a_second_holder_naming_the_first_and_frees_on_exit(tmp_path):
    lock = tmp_path / "d" / ".x.lock"
    with fileio.exclusive(lock, "folder d"):
        assert (tmp_path / "d" / ".x.lock.owner").is_file()
        with pytest.raises(
            fileio.Busy, match=rf"folder d: in use by process {os.getpid()} on .* since .*; wait"
        ):
            with fileio.exclusive(lock, "folder d"):
                pass
    assert not (tmp_path / "d" / ".x.lock.owner").exists()
    with fileio.exclusive(lock, "folder d"):  # released: the next holder gets it
        pass
    import threading
    import time

    got = []
    with fileio.exclusive(lock, "folder d"):
        t = threading.Thread(target=lambda: got.append(_waited(lock)))
        t.start()
        time.sleep(0.3)
        assert not got  # still waiting for the holder
    t.join(5)
    assert got and got[0] >= 0.25  # it got the lock when the holder let go


def _waited(lock) -> float:
    import time

    t0 = time.perf_counter()
    with fileio.exclusive(lock, "folder d", wait=10):
        return time.perf_counter() - t0


def test_content_key_ignores_key_order_and_sees_values():
    assert fileio.content_key({"a": 1, "b": [1, 2]}) == fileio.content_key({"b": [1, 2], "a": 1})
    assert fileio.content_key({"a": 1}) != fileio.content_key({"a": 2})
    assert fileio.content_key({"a": np.int64(1)}) == fileio.content_key({"a": 1})


def test_array_key_sees_content_dtype_and_shape():
    import numpy as np

    from lib.fileio import array_key

    a = np.arange(12, dtype=np.float32)
    assert array_key(a) == array_key(a.copy()) == array_key(a[::-1][::-1])
    b = a.copy()
    b[3] += 1
    assert len({array_key(a), array_key(b), array_key(a.reshape(3, 4)), array_key(a.astype(np.float64))}) == 4
    assert array_key(a, a) != array_key(a)


def test_safetensors_round_trip_half_and_a_one_line_error(tmp_path):
    import torch

    from lib import fileio

    state = {"w": torch.linspace(0, 1, 7), "n": torch.arange(3)}
    p = fileio.write_bytes(tmp_path / "m.safetensors", fileio.safetensors_bytes(state, {"k": "v"}, half=True))
    got, meta = fileio.read_safetensors(p)
    assert meta == {"k": "v"} and got["w"].dtype == torch.float16 and torch.equal(got["n"], state["n"])
    assert torch.allclose(got["w"].float(), state["w"], atol=1e-3)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(KeyError, match=r"bad.safetensors: not a readable safetensors file"):
        fileio.read_safetensors(tmp_path / "bad.safetensors", KeyError)
