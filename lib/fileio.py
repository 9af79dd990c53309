"""Atomic file writes, content keys for caches, and the metrics JSON each notebook records."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io as _io
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import numpy as np

UMASK = os.umask(0)
os.umask(UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it onto ``path`` only if the block succeeds.

    An interrupted or failing writer leaves nothing under the final name (and removes its temporary file), so a
    later run never trusts a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_finite(name: str, x, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` with one line naming ``name`` and how many of its values are NaN or infinite, if any are
    (checked in row blocks, without a mask the size of ``x``)."""
    a = np.asarray(x)
    if a.dtype.kind not in "fc":
        return
    flat = a.reshape(len(a), -1) if a.ndim > 1 else a.reshape(-1, 1)
    bad = sum(int((~np.isfinite(flat[i : i + 4096])).sum()) for i in range(0, len(flat), 4096))
    if bad:
        raise error(f"{name}: {bad} of {a.size} values are NaN or infinite; expected finite numbers")


class Busy(RuntimeError):
    """Another process holds the lock on what this one wants to change."""


@contextlib.contextmanager
def exclusive(lock: str | os.PathLike, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold an OS file lock on ``lock`` for the block (the OS releases it if the process dies); if another process
    holds it for longer than ``wait`` seconds (0: at once), raise :class:`Busy`, naming ``what`` it guards and the
    holder's PID, host and start time (kept beside the lock, in ``<lock>.owner``)."""

    lock = Path(lock)
    owner = lock.with_name(lock.name + ".owner")
    lock.parent.mkdir(parents=True, exist_ok=True)
    held = filelock.FileLock(str(lock), thread_local=False)
    try:
        held.acquire(timeout=wait)
    except filelock.Timeout:
        try:
            o = json.loads(owner.read_text())
            who = f"process {o['pid']} on {o['host']} since {o['since']}"
        except (OSError, ValueError, KeyError):
            who = "another process"
        waited = f" (waited {wait:g} s)" if wait else ""
        raise Busy(f"{what}: in use by {who}{waited}; wait for it to finish (lock {lock.name})") from None
    try:
        write_json(owner, {"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")})  # fmt: skip
        yield
    finally:
        owner.unlink(missing_ok=True)
        held.release()


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)$")  # atomic_path's names


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Remove the temporary files :func:`atomic_path` left under ``folder`` when its process was killed (only
    names it makes: ``.<name>.<8 characters><.tmp or name's own suffix>``); returns how many. Call it only where
    no writer runs (under the folder's lock)."""
    n = 0
    for p in Path(folder).rglob(".*"):
        m = _TEMPORARY.match(p.name)
        if m and p.is_file() and (m["suffix"] == ".tmp" or m["name"].endswith(m["suffix"])):
            p.unlink(missing_ok=True)
            n += 1
    return n


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NumPy scalars and arrays converted)."""
    return write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode())


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def content_key(obj: Any, n: int = 16) -> str:
    """A short hex key for any JSON-able description of inputs (sorted keys, so order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def array_key(*arrays, n: int = 16) -> str:
    """Content hash of arrays (dtype, shape and bytes of each), read in place without a copy when contiguous."""

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:n]


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Identity of a file for cache keys: path, size and modification time (cheap; no full read)."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_sha256(path: str | os.PathLike, n: int = 16) -> str:
    """Content hash of a file (streamed), for keys that must survive copies and moves."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:n]


def move(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Move a file into place atomically (a rename; a copy under a temporary name, then one, across file
    systems)."""
    src, dst = Path(src), Path(dst)
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        with atomic_path(dst, suffix=dst.suffix) as tmp:
            shutil.copyfile(src, tmp)
        src.unlink()
    return dst


def save_metrics(path: str | os.PathLike, metrics: dict) -> Path:
    """Record a notebook's key numbers; the report and reviewers read these files."""
    return write_json(path, metrics)


def torch_bytes(obj: Any) -> bytes:
    """``obj`` serialised by ``torch.save`` (tensors, dicts, lists, numbers and strings only)."""
    import torch  # lazy: only where a model file is read or written (fetch starts fast)

    buf = _io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def training_state(
    state_dir: str | os.PathLike | None, prefix: str, fmt: str, key: str
) -> tuple[Path | None, dict | None]:
    """(path, saved state or None) of a resumable training run: ``<state_dir>/<prefix>-<key>.pt``, read with
    ``weights_only=True``. A file there that is not a state of format ``fmt`` and this key is an error."""
    import torch  # lazy: only where a model file is read or written (fetch starts fast)

    if state_dir is None:
        return None, None
    path = Path(state_dir) / f"{prefix}-{key}.pt"
    if not path.exists():
        return path, None

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is the same user error
        raise ValueError(
            f"{path}: unreadable training state ({type(e).__name__}); delete it to retrain"
        ) from None
    if not isinstance(state, dict) or state.get("format") != fmt or state.get("key") != key:
        raise ValueError(f"{path}: not a {fmt} training state with key {key}; delete it to retrain")
    return path, state


def cast_floats(state: dict, dtype) -> dict:
    """``state`` with its floating-point tensors cast to ``dtype`` (float16 to store, float32 to load), others as
    they are."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def safetensors_bytes(state: dict, metadata: dict[str, str], half: bool = False) -> bytes:
    """A state dict (tensors moved to the CPU, made contiguous; floating ones as float16 with ``half``) and
    string ``metadata`` serialised as safetensors, for :func:`write_bytes`."""
    import torch  # lazy: only where a model file is read or written (fetch starts fast)
    from safetensors.torch import save  # lazy: as torch

    out = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return save(cast_floats(out, torch.float16) if half else out, metadata=metadata)


def read_safetensors(
    path: str | os.PathLike, error: type[Exception] = ValueError
) -> tuple[dict, dict[str, str]]:
    """(tensors, header metadata) of a safetensors file; an unreadable file raises ``error`` naming it."""
    from safetensors import safe_open  # lazy: as torch

    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise error(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
