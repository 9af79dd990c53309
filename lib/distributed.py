"""Training on several processes (GPUs, or CPU cores with gloo) with ``torchrun`` and ``torch.distributed``.

A trainer runs unchanged in one process and under ``torchrun --nproc_per_node N`` (or ``accelerate launch
--num_processes N``, which sets the same environment): :func:`world` reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
and joins the process group once (NCCL on GPUs, gloo on CPU). Every rank holds the whole training set and draws the
same random numbers, so each step's global batch (``batch_size x ranks x accumulation``) is the same rows one
process would take; each rank computes its slice, the batch's outputs are gathered (:func:`gather`, with their
gradients) so that contrastive terms see every negative, and gradients are averaged in one coalesced all-reduce
(:func:`average_gradients`). DDP's reducer is not used because these losses run several forward passes per
backward (BiMixCo's mixed batch; the GAN's discriminator on fakes, reals and R1), which DDP's one-forward hooks
do not allow; the all-reduce computes what DDP would. Only rank 0 writes state files and shows progress bars;
every rank resumes from the same file, so a resumed run equals an uninterrupted one.

:func:`launch` runs a trainer under ``torchrun`` from a notebook or the pipeline (``make pipeline NPROC=2``): the
arguments go to a temporary folder, ``N`` worker processes train with rank 0 writing the run's state file, and
the caller then resumes from that finished state in its own process."""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist

from lib import fileio, paths

NPROC_ENV = paths.NPROC_ENV
TIMEOUT_S = 600  # collective timeout: a rank that waits longer on the others fails instead of hanging


class DistributedError(RuntimeError):
    """A distributed launch or collective that cannot go on."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's rank and the number of processes; joins the process group the first time under a
    launcher (NCCL when CUDA is visible, else gloo). One process without a launcher: ``World(0, 1, 0)``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device(requested: str) -> str:
    """The device of this rank: ``cuda:<local rank>`` under a launcher on GPUs, else ``requested``."""
    w = world()
    if w.active and requested.startswith("cuda"):
        return f"cuda:{w.local_rank}"
    return requested


class _Gather(torch.autograd.Function):
    """All-gather of every rank's rows of a batch (rank r holds rows r, r + size, ...) back into batch order; the
    backward pass sums each row's gradient over the processes (each computed a loss of the whole batch) and
    keeps this process's rows."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:

        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        ctx.rank, ctx.size = dist.get_rank(), dist.get_world_size()
        return torch.stack(parts, dim=1).reshape(-1, *t.shape[1:])  # row k * size + r is rank r's row k

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank :: ctx.size]


def gather(t: torch.Tensor) -> torch.Tensor:
    """The whole batch from every rank's rows of it (:func:`local_part`), in batch order, with gradients flowing
    back to each rank's own rows. One process: ``t``."""
    return _Gather.apply(t) if world().active else t


def mean(value: float) -> float:
    """The mean of a number over ranks (a loss for the history); one process: the number."""
    w = world()
    if not w.active:
        return float(value)

    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / w.size


def average_gradients(*modules: torch.nn.Module) -> None:
    """Average the parameters' gradients over ranks, in one all-reduce of a flat buffer (DDP's arithmetic)."""
    w = world()
    if not w.active:
        return

    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= w.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def average_buffers(module: torch.nn.Module) -> None:
    """Average a module's floating-point buffers over ranks (running statistics each rank updated with its own
    rows, e.g. StyleGAN2's ``w_avg``: a running mean, so the average is the whole batch's)."""
    w = world()
    if not w.active:
        return

    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= w.size


def agree(value):
    """Rank 0's ``value`` on every rank (a decision all must take together, e.g. early stopping)."""
    w = world()
    if not w.active:
        return value

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_every_rank(value) -> list:
    """Every rank's ``value`` (any picklable object), in rank order; one process: ``[value]``."""
    w = world()
    if not w.active:
        return [value]

    out = [None] * w.size
    dist.all_gather_object(out, value)
    return out


def all_same(value) -> bool:
    """Whether every rank holds the same ``value`` (e.g. the content key of its data)."""
    out = from_every_rank(value)
    return all(v == out[0] for v in out)


def smallest(n: int) -> int:
    """The smallest ``n`` over ranks: the step count every rank can make (ranks with fewer rows set it)."""
    w = world()
    if not w.active:
        return int(n)

    t = torch.tensor([int(n)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def barrier() -> None:
    if world().active:
        dist.barrier()


def local_part(rows: int) -> slice:
    """This process's rows of a global batch of ``rows``: every ``size``-th row from its rank on. Interleaved,
    not in blocks, so that StyleGAN2's minibatch-stddev groups (rows ``i, i + rows / 4, ...``) are the same
    groups one process forms, when the per-process batch is a multiple of 4."""
    w = world()
    return slice(w.rank, rows, w.size)


def spread(nproc: int | None) -> tuple[World, int]:
    """This process's world and the number of processes a trainer runs on: the launcher's under one, else
    ``nproc`` (None: :func:`nproc_default`)."""
    w = world()
    n = nproc_default() if nproc is None else int(nproc)
    return w, (w.size if w.active else max(1, n))


def nproc_default() -> int:
    """Processes per trainer asked for by the pipeline (``LIB_NPROC``), 1 by default or inside a launched run."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    try:
        n = int(os.environ.get(NPROC_ENV, "1"))
    except ValueError:
        raise DistributedError(
            f"{NPROC_ENV}={os.environ[NPROC_ENV]!r}: expected a whole number of processes"
        ) from None
    if n < 1:
        raise DistributedError(f"{NPROC_ENV}={n}: expected 1 or more processes")
    return n


# ================================================================================================================
# launching a trainer under torchrun from a notebook


@runtime_checkable
class Portable(Protocol):
    """An argument of a launched trainer that is neither an array, a module, a dataclass nor plain JSON says how
    it crosses to the worker processes: ``to_launch`` writes what it needs under ``folder`` and returns a JSON
    spec, and the class method ``from_launch(spec, folder)`` rebuilds it in each worker."""

    def to_launch(self, folder: Path, name: str) -> dict: ...

    @classmethod
    def from_launch(cls, spec: dict, folder: Path): ...


def _encode(value, folder: Path, name: str):
    if isinstance(value, Portable):  # it says itself how it crosses (an Embedder, a Corpus)
        cls = type(value)
        return {"portable": f"{cls.__module__}:{cls.__qualname__}", "spec": value.to_launch(folder, name)}
    if isinstance(value, torch.Tensor):
        np.save(folder / f"{name}.npy", value.detach().cpu().numpy(), allow_pickle=False)
        return {"tensor": f"{name}.npy"}
    if isinstance(value, torch.nn.Module):  # its weights (a trainer that starts from them reads state_dict())
        torch.save({k: v.detach().cpu() for k, v in value.state_dict().items()}, folder / f"{name}.pt")
        return {"weights": f"{name}.pt"}
    if isinstance(value, np.ndarray):
        np.save(folder / f"{name}.npy", value, allow_pickle=False)
        return {"array": f"{name}.npy"}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {"dataclass": f"{cls.__module__}:{cls.__qualname__}", "fields": dataclasses.asdict(value)}
    json.dumps(value)  # anything else must be plain JSON
    return {"value": value}


def _decode(spec: dict, folder: Path):
    if "portable" in spec:
        return _resolve(spec["portable"]).from_launch(spec["spec"], folder)
    if "array" in spec:
        return np.load(folder / spec["array"], allow_pickle=False)
    if "weights" in spec:
        return _Weights(torch.load(folder / spec["weights"], map_location="cpu", weights_only=True))
    if "tensor" in spec:
        return torch.from_numpy(np.load(folder / spec["tensor"], allow_pickle=False))
    if "dataclass" in spec:
        return _resolve(spec["dataclass"])(**spec["fields"])
    return spec["value"]


@dataclass(frozen=True)
class _Weights:
    """A module's weights as a launched trainer receives them: what ``state_dict()`` gave in the caller."""

    weights: dict

    def state_dict(self) -> dict:
        return self.weights


def _resolve(path: str):
    module, _, name = path.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def launch(fn, nproc: int, kwargs: dict, timeout: float | None = None, log: str | Path | None = None) -> None:
    """Run ``fn(**kwargs)`` (a module-level trainer; NumPy arrays, dataclass configurations and JSON values as
    arguments) in ``nproc`` processes under ``torchrun --standalone``; raises with the failing rank's last line.
    The trainer's state file (rank 0 writes it) is how the result comes back; ``log`` keeps the launcher's output."""
    target = f"{fn.__module__}:{fn.__qualname__}"
    with tempfile.TemporaryDirectory(prefix="lib_launch_") as tmp:
        folder = Path(tmp)
        spec = {"fn": target, "kwargs": {k: _encode(v, folder, k) for k, v in kwargs.items()}}
        (folder / "job.json").write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
               "-m", "lib.distributed", str(folder)]  # fmt: skip
        root = Path(__file__).resolve().parents[1]
        # the launcher's temporary files (torchrun's torchelastic_* logs) go with the folder
        (folder / "tmp").mkdir()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TMPDIR": str(folder / "tmp")}  # fmt: skip
        proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
        if log is not None:
            fileio.write_bytes(log, (proc.stdout + proc.stderr).encode())
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.splitlines()]
            errors = [
                ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln) and "ChildFailed" not in ln
            ]
            last = errors[-1] if errors else next((ln for ln in reversed(lines) if ln), "no output")
            where = f"; log: {log}" if log is not None else ""
            raise DistributedError(
                f"{target} on {nproc} processes failed (exit {proc.returncode}): {last}{where}"
            )


def launched(fn, ranks: int, kwargs: dict, state_dir, name: str):
    """Train ``fn(**kwargs)`` on ``ranks`` processes (:func:`launch`), then return ``fn``'s result in this process
    resumed from the state they saved, without running a step (``state_dir``, or a temporary folder). ``fn`` takes
    ``state_dir``, ``stop_after``, ``nproc`` and ``_launch``; ``name`` names the launch log in ``state_dir``."""
    with tempfile.TemporaryDirectory(prefix=f"{name}_") as tmp:
        folder = str(state_dir) if state_dir is not None else tmp
        log = Path(folder) / f"{name}-launch.log" if state_dir is not None else None
        launch(fn, ranks, kwargs | {"state_dir": folder, "nproc": ranks}, log=log)
        return fn(**(kwargs | {"state_dir": folder, "stop_after": 0, "nproc": ranks, "_launch": False}))


def _worker(folder: str) -> None:
    folder = Path(folder)
    spec = json.loads((folder / "job.json").read_text())
    fn = _resolve(spec["fn"])
    kwargs = {k: _decode(v, folder) for k, v in spec["kwargs"].items()}
    fn(**kwargs)  # a failure ends this process; torchrun then stops the others
    finish()


def finish() -> None:
    """End a process of a launched run: wait for every rank (rank 0's last state is written by then), leave the
    process group, and exit without the interpreter's teardown, where gloo's threads can abort the process
    ("terminate called without an active exception", about one exit in ten here) after its work is done."""
    if world().active:
        barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _worker(sys.argv[1])
