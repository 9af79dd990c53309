"""``make test``'s check after the notebooks (``pytest --kill-pipeline``, tests/conftest.py): the pipeline
runner killed outright (``kill -9``) during a notebook's training on the quick profile, then run again with
``--expect-same``. It passes only if the rerun's metrics equal those of the run
before the kill (the suite's nbval run; timings aside), the kernel the runner started did not outlive it, and the
killed run left no temporary file behind the rerun.

    python tests/kill_pipeline.py [--profile quick] [--notebook 03] [--cell "stylegan2.tune("] [--rerun 02,03]
    python tests/kill_pipeline.py --notebook 01 --state "clip-state-*.pt"

The cue to kill: the executed notebook shows the cell containing ``--cell`` running (papermill marks it), or a
training state matching ``--state`` in the notebook's work folder holds a step.

Exit status 0 when all of that holds; otherwise 1 with one line saying what did not."""

from __future__ import annotations

import argparse
import json
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
from lib.trainer import saved_progress  # noqa: E402


def _running(out: Path, text: str) -> bool:
    """Whether papermill's copy ``out`` shows the code cell containing ``text`` as running."""
    try:
        cells = json.loads(out.read_text())["cells"]
    except (OSError, ValueError, KeyError):  # not written yet, or being written
        return False
    return any(text in "".join(c.get("source", "")) and c.get("metadata", {}).get("papermill", {}).get("status")
               == "running" for c in cells if c.get("cell_type") == "code")  # fmt: skip


def kill_during_training(profile: str, notebook: str, state: str | None, cell: str | None,
                         timeout: float = 300) -> str:  # fmt: skip
    """Run ``notebook`` from a clean work folder and SIGKILL the runner at the cue (the module docstring);
    returns what was killed (for the log). Raises ``RuntimeError`` with the reason otherwise."""
    (nb,) = select([notebook])
    work, out = paths.BUILD_DIR / profile / "results" / nb.stem, paths.BUILD_DIR / profile / nb.name
    if not (paths.metrics_dir(profile) / f"{nb.stem}.json").is_file():
        raise RuntimeError(
            f"{nb.stem}: no metrics of a previous {profile} run to compare with; run it once first"
        )
    shutil.rmtree(work, ignore_errors=True)  # everything it made is made again, its training from nothing
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "lib.pipeline", "--profile", profile, "--only", notebook]
    env = {**os.environ, "LIB_QUIET": "1"}
    runner = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    t0, seen = time.monotonic(), None
    try:
        while seen is None:
            if runner.poll() is not None:
                raise RuntimeError(f"{nb.stem} ended (exit {runner.returncode}) before the cue: "
                                   f"{(runner.stderr.read() or '').strip()[-300:]}")  # fmt: skip
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"no cue (cell {cell!r}, state {state!r}) within {timeout:.0f} s")
            if cell and _running(out, cell):
                seen = f"the cell with {cell!r} running"
            for f in work.glob(state) if state and work.is_dir() else []:
                step, finished = saved_progress(f)
                if step > 0 and not finished:
                    seen = f"{f.name} at step {step}"
            time.sleep(0.01)
        family = psutil.Process(runner.pid).children(recursive=True)  # papermill and the kernel
        time.sleep(1.0 if cell else 0.0)  # into that cell's training
        still = cell is None or _running(out, cell)
        runner.send_signal(signal.SIGKILL)
        runner.wait(30)
        killed = time.monotonic() - t0
    finally:
        if runner.poll() is None:
            runner.kill()
    if not still:
        raise RuntimeError(f"the cell with {cell!r} ended before the kill; expected the kill during it")
    t1 = time.monotonic()
    _, alive = psutil.wait_procs(family, timeout=10)  # papermill dies with it, the kernel within a second
    if alive:
        for p in alive:
            p.kill()
        raise RuntimeError(
            f"{len(alive)} process(es) of the killed runner still ran 10 s later: {alive[0].cmdline()}"
        )
    return (
        f"runner killed {killed:.1f} s in, at {seen}; its {len(family)} child process(es) ended "
        f"{time.monotonic() - t1:.1f} s later"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--notebook", default="03")
    ap.add_argument("--cell", default="stylegan2.tune(", help="kill while the cell containing this runs")
    ap.add_argument("--state", help="or once a training state matching this glob holds a step")
    ap.add_argument("--rerun", default="02,03", help="the notebooks run again with --expect-same")
    a = ap.parse_args(argv)
    try:
        said = kill_during_training(a.profile, a.notebook, a.state, None if a.state else a.cell)
    except RuntimeError as e:
        print(f"kill_pipeline: {e}", file=sys.stderr)
        return 1
    print(f"kill_pipeline: {said}")
    again = [sys.executable, "-m", "lib.pipeline", "--profile", a.profile, "--only", a.rerun, "--expect-same"]
    code = subprocess.run(again, cwd=ROOT, env={**os.environ, "LIB_QUIET": "1"}).returncode
    left = sorted(p.name for p in (paths.BUILD_DIR / a.profile).rglob(".*.tmp"))
    if code == 0 and left:
        print(f"kill_pipeline: the rerun left temporary files of the killed run: {left[:3]}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
