"""``make test``'s last step: the pipeline runner killed outright (``kill -9``) during a notebook's training on the
quick profile, then run again with ``--expect-same``. It passes only if the rerun's metrics equal those of the run
before the kill (the suite's nbval run; timings aside), the kernel the runner started did not outlive it, and the
killed run left no temporary file behind the rerun.

    python tests/kill_pipeline.py [--profile quick] [--notebook 01] [--state clip-state-*.pt]

Exit status 0 when all of that holds; otherwise 1 with one line saying what did not."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib import paths  # noqa: E402
from lib.pipeline import select  # noqa: E402


def _step(path: Path) -> tuple[int, bool]:
    """(step, finished) of a saved training state; (0, False) while it is being replaced."""
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return int(blob.get("step", 0)), bool((blob.get("history") or {}).get("done"))
    except Exception:  # noqa: BLE001 - renamed over while reading: look again
        return 0, False


def kill_during_training(profile: str, notebook: str, state: str, timeout: float = 300) -> str:
    """Run ``notebook`` from a clean work folder and SIGKILL the runner once a training state matching ``state``
    holds a step; returns what was killed (for the log). Raises ``RuntimeError`` with the reason otherwise."""
    (nb,) = select([notebook])
    work = paths.BUILD_DIR / profile / "results" / nb.stem
    if not (paths.metrics_dir(profile) / f"{nb.stem}.json").is_file():
        raise RuntimeError(
            f"{nb.stem}: no metrics of a previous {profile} run to compare with; run it once first"
        )
    shutil.rmtree(
        work, ignore_errors=True
    )  # its training starts from nothing, so the kill lands mid-training
    cmd = [sys.executable, "-m", "lib.pipeline", "--profile", profile, "--only", notebook]
    env = {**os.environ, "LIB_QUIET": "1"}
    runner = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    t0, seen = time.monotonic(), None
    try:
        while seen is None:
            if runner.poll() is not None:
                raise RuntimeError(f"{nb.stem} ended (exit {runner.returncode}) before any {state} held a step: "
                                   f"{(runner.stderr.read() or '').strip()[-300:]}")  # fmt: skip
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"no {state} under {paths.display(work)} within {timeout:.0f} s")
            for f in work.glob(state) if work.is_dir() else []:
                step, finished = _step(f)
                if step > 0 and not finished:
                    seen = f"{f.name} at step {step}"
            time.sleep(0.01)
        family = psutil.Process(runner.pid).children(recursive=True)  # papermill and the kernel
        runner.send_signal(signal.SIGKILL)
        runner.wait(30)
    finally:
        if runner.poll() is None:
            runner.kill()
    _, alive = psutil.wait_procs(family, timeout=30)  # ipykernel's parent poller ends an orphaned kernel
    if alive:
        for p in alive:
            p.kill()
        raise RuntimeError(
            f"{len(alive)} process(es) of the killed runner still ran 30 s later: {alive[0].cmdline()}"
        )
    return f"runner killed {time.monotonic() - t0:.1f} s in, {seen}, {len(family)} child process(es) gone with it"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--notebook", default="01")
    ap.add_argument(
        "--state", default="clip-state-*.pt", help="the training state whose first save is the cue"
    )
    a = ap.parse_args(argv)
    try:
        said = kill_during_training(a.profile, a.notebook, a.state)
    except RuntimeError as e:
        print(f"kill_pipeline: {e}", file=sys.stderr)
        return 1
    print(f"kill_pipeline: {said}")
    again = [
        sys.executable,
        "-m",
        "lib.pipeline",
        "--profile",
        a.profile,
        "--only",
        a.notebook,
        "--expect-same",
    ]
    code = subprocess.run(again, cwd=ROOT, env={**os.environ, "LIB_QUIET": "1"}).returncode
    left = sorted(p.name for p in (paths.BUILD_DIR / a.profile).rglob(".*.tmp"))
    if code == 0 and left:
        print(f"kill_pipeline: the rerun left temporary files of the killed run: {left[:3]}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
