"""Run-time choices made once per run: compute device, seeds, and progress bars that CI can silence."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
from tqdm import tqdm

log = logging.getLogger("lib")

#: Set to 1 to silence every progress bar (CI sets CI=true, which does the same).
QUIET_ENV = "LIB_QUIET"


#: the least seconds between two periodic saves of a trainer that saves every epoch (:meth:`lib.trainer.Run.checkpoint`)
SAVE_SECONDS_ENV, SAVE_SECONDS = "LIB_SAVE_SECONDS", 15.0


def save_seconds() -> float:
    """``$LIB_SAVE_SECONDS`` (0: save every epoch, as the kill tests need), else :data:`SAVE_SECONDS`."""
    raw = os.environ.get(SAVE_SECONDS_ENV, "")
    try:
        value = float(raw) if raw else SAVE_SECONDS
    except ValueError:
        raise ValueError(f"${SAVE_SECONDS_ENV}={raw!r}: expected a number of seconds >= 0") from None
    if not value >= 0:
        raise ValueError(f"${SAVE_SECONDS_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def quiet() -> bool:
    """True when progress bars should stay silent (``$LIB_QUIET=1`` or ``$CI`` set)."""
    return os.environ.get(QUIET_ENV, "") not in ("", "0") or os.environ.get("CI", "") not in (
        "",
        "0",
        "false",
    )


def progress(iterable=None, **kwargs):
    """tqdm progress bar, disabled when :func:`quiet`."""

    kwargs.setdefault("disable", quiet())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def progress_write(line: str) -> None:
    """One line to stderr that does not break the progress bars (printed even when they are quiet)."""
    tqdm.write(line, file=sys.stderr)


def die_with_parent() -> None:
    """Ask the OS to SIGKILL this process when the one that started it dies (Linux; elsewhere nothing): for a child
    that must not outlive a runner killed outright, as a pool worker or the notebook executor."""
    try:
        import ctypes  # lazy: Linux's prctl, called by child processes only
        import signal  # lazy: as ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def pick_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; any other value is checked and returned."""
    import torch  # lazy: torch: data-only commands start without it

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was asked for but torch sees no CUDA device (use 'auto' or 'cpu')"
        )
    elif not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda[:N]'")
    log.info("device: %s", device)
    return device


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and (when imported) torch; return a NumPy Generator for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch  # lazy: torch: data-only commands start without it

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency, but seeding must not need it
        pass
    log.info("seed: %d", seed)
    return np.random.default_rng(seed)


def autocast(device):
    """bfloat16 autocast on a CUDA ``device`` (a torch.device), a no-op context elsewhere: the one mixed-precision
    policy of every trainer."""
    import torch  # lazy: torch: data-only commands start without it

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def adamw(decay: list, no_decay: list, lr: float, weight_decay: float):
    """AdamW (fused: one kernel for every parameter, about 3x faster per step on CPU than the multi-tensor form)
    with weight decay on ``decay`` only (weights; not biases, norms or temperatures)."""
    import torch  # lazy: torch: data-only commands start without it

    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def adamw_for(module, lr: float, weight_decay: float, no_decay: tuple[str, ...] = ()):
    """:func:`adamw` over the trainable parameters of ``module``: weight decay on matrices and kernels, none on
    vectors and scalars (biases, norms, temperatures) or on parameters whose name contains one of ``no_decay``."""
    decay, flat = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (flat if p.ndim < 2 or any(s in name for s in no_decay) else decay).append(p)
    return adamw(decay, flat, lr, weight_decay)
