"""The one training harness every trainer runs on (the CLIP, DINO, MLP and GAN trainers and the three pretraining
stages): the resumable state file of a run (``<state_dir>/<prefix>-<key>.pt``, written atomically, the key covering
configuration, data and device), the saved state of its models, optimisers, schedulers and random generators,
the step counter, history and progress bar, and early stopping. Mixed precision is :func:`lib.runtime.autocast`.
A resumed run equals an uninterrupted one: each trainer's tests check it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib import distributed, fileio, runtime


class TorchRNG:
    """torch's global CPU random generator as an object with a state."""

    def state_dict(self):
        return torch.get_rng_state()

    def load_state_dict(self, state) -> None:
        torch.set_rng_state(state)


class CudaRNG:
    """The global random generator of a CUDA ``device`` as an object with a state: None on any other device, so a
    state saved on a CPU restores on one without CUDA."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)

    def state_dict(self):
        return torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def load_state_dict(self, state) -> None:
        if state is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)


class Group:
    """Several stateful objects saved under one name (e.g. every random generator of a run as one dict)."""

    def __init__(self, **objects: Any):
        self.objects = objects

    def state_dict(self) -> dict:
        return {name: state_of(obj) for name, obj in self.objects.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, obj in self.objects.items():
            restore(obj, state[name])


def state_of(obj: Any) -> Any:
    """The saved state of a module, optimiser, scheduler, loss, :class:`TorchRNG` or :class:`Group` (their
    ``state_dict``), NumPy generator (its bit generator's state) or torch generator (``get_state``)."""
    if isinstance(obj, np.random.Generator):
        return obj.bit_generator.state
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    return obj.state_dict()


def restore(obj: Any, state: Any) -> None:
    """Put back what :func:`state_of` returned."""
    if isinstance(obj, np.random.Generator):
        obj.bit_generator.state = state
    elif isinstance(obj, torch.Generator):
        obj.set_state(state)
    else:
        obj.load_state_dict(state)


def saved_progress(path: str | Path, counter: str = "step") -> tuple[int, bool]:
    """How far a saved state got, read from outside its run (a watcher, a kill test): the ``counter`` it holds
    ("step", or "epoch") and whether it says the run finished (:attr:`Run.done`, or ``history["done"]``);
    (0, False) while the file is being replaced or cannot be read."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - renamed over while reading: look again
        return 0, False
    if not isinstance(blob, dict):
        return 0, False
    return int(blob.get(counter, 0)), bool(blob.get("done") or (blob.get("history") or {}).get("done"))


class Run:
    """One resumable training run of ``total`` steps.

    ``objects`` (name -> module, optimiser, generator, ...) are saved under their names; ``counter`` names the
    step count in the file ("step", or "epoch" for a trainer that counts epochs). Use::

        run = Run(state_dir, "mlp-state", FORMAT, key, cfg.epochs, "MLP encoder", {"model": model, ...})
        run.start(history, best=-1.0)           # fresh values; a saved state replaces them and the objects'
        for step in run.steps(stop_after):      # the index of the step about to run (0-based)
            ...
            run.advance()                       # the step is done: run.step is now step + 1
            if run.step % every == 0:
                run.save(best=best)

    Setting ``run.done`` (early stopping) ends the loop after the current step.
    """

    def __init__(self, state_dir: str | Path | None, prefix: str, fmt: str, key: str, total: int, desc: str,
                 objects: dict[str, Any], counter: str = "step", per_rank: tuple[str, ...] = ()):  # fmt: skip
        self.path, self._saved = fileio.training_state(state_dir, prefix, fmt, key)
        self.fmt, self.key, self.total, self.desc = fmt, key, int(total), desc
        self.objects, self.counter, self.per_rank = objects, counter, tuple(per_rank)
        self.world, self.saved_by = distributed.world(), None
        self.step, self.done, self.history, self.extra = 0, False, {}, {}
        self.bar = None
        self._saved_at = time.monotonic()  # the last save (or the start): :meth:`checkpoint` spaces saves
        self._end = self.total  # where the current :meth:`steps` call stops

    @property
    def resumed(self) -> bool:
        return self._saved is not None

    def start(self, history: dict, **extra: Any) -> bool:
        """Begin with ``history`` and the ``extra`` values (best score, patience count, ...), or, when a state with
        this key was saved, with its history, extras, step and the saved state of every object. Returns whether
        it resumed."""
        self.history, self.extra = history, dict(extra)
        s = self._saved
        if s is None:
            return False
        for name, obj in self.objects.items():
            state = s[name]
            if name in s.get("per_rank", ()):  # saved by several processes: this rank's own
                self.saved_by = len(state)
                state = state[self.world.rank if self.saved_by == self.world.size else 0]
            restore(obj, state)
        self.step, self.history = int(s[self.counter]), s["history"]
        self.extra = {k: s[k] for k in extra}
        self.done = bool(s.get("done", False))
        return True

    def save(self, **extra: Any) -> Path | None:
        """Write the whole state atomically (nothing without a state folder); ``extra`` values are kept for later
        saves too."""
        self.extra.update(extra)
        if self.path is None:
            return None
        objects = {name: state_of(obj) for name, obj in self.objects.items()}
        per_rank = list(self.per_rank) if self.world.active else []
        for name in per_rank:  # every rank's own state goes into rank 0's file (a collective: all ranks call)
            objects[name] = distributed.from_every_rank(objects[name])
        if not self.world.main:
            return None
        state = {"format": self.fmt, "key": self.key, self.counter: self.step, "history": self.history}
        state |= objects | self.extra
        state["per_rank"] = per_rank
        return fileio.write_bytes(self.path, fileio.torch_bytes(state))

    def checkpoint(self, **extra: Any) -> Path | None:
        """:meth:`save` after the last step, and otherwise when :func:`lib.runtime.save_seconds` have passed since
        the last save (rank 0's clock decides for every process): a trainer that ends each epoch here writes its
        state once in a while rather than every epoch (a killed run loses at most that much work). ``extra`` is
        kept either way."""
        self.extra.update(extra)
        every, last = runtime.save_seconds(), self.done or self.step >= self._end
        if not distributed.agree(last or time.monotonic() - self._saved_at >= every):
            return None
        self._saved_at = time.monotonic()
        return self.save()

    def steps(self, stop_after: int | None = None) -> Iterator[int]:
        """The remaining steps up to ``total`` (or ``stop_after`` more in this call), with a progress bar; each
        must end with :meth:`advance`. Stops after a step that set :attr:`done`."""
        end = self.total if stop_after is None else min(self.total, self.step + stop_after)
        self._end = end
        if end > self.step and self.saved_by not in (None, self.world.size):
            raise RuntimeError(f"{self.path}: saved by {self.saved_by} processes; resume it with {self.saved_by} "
                               f"(this is {self.world.size})")  # fmt: skip
        self.bar = runtime.progress(total=self.total, initial=self.step, desc=self.desc,
                                    disable=runtime.quiet() or not self.world.main)  # fmt: skip
        try:
            while not self.done and self.step < end:
                i = self.step
                yield i
                if self.step != i + 1:
                    raise RuntimeError(f"{self.desc}: step {i} ended without Run.advance()")
        finally:
            self.bar.close()

    def advance(self, **postfix: Any) -> int:
        """Count the step as done (and show ``postfix`` values on the progress bar); returns the new count."""
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(**postfix)
        return self.step
