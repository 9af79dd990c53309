"""The notebook pipeline: run the numbered notebooks in order with papermill and a parameter profile.

    python -m lib.pipeline [--profile quick|mini|nsd] [--only 00 [--only 01]] [--set name=value] [--prepare-only]

Profiles live in ``params/<profile>.yaml``: ``defaults`` go to every notebook that declares the name, and
``notebooks: {"00": {...}}`` to one notebook. Every name is checked against the notebook's ``parameters`` cell
(papermill only warns about unknown names; here they are errors). Executed copies go to ``build/<profile>/``;
each notebook's wall time and peak memory (largest resident set of the kernel or runner) are printed and saved
to ``build/<profile>/pipeline_run.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

from lib import fileio, paths
from lib.fileio import Busy, exclusive, write_json
from lib.runtime import die_with_parent, progress, quiet
from lib.stage import profile as profiles


class PipelineError(ValueError):
    """A problem with a profile, a parameter or a notebook run; the message names it."""


class PipelineInterrupted(PipelineError):
    """The runner got SIGINT or SIGTERM: the notebook's papermill process and kernel were stopped."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class _Signal(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


#: the folder (in build/<profile>/) that holds a running notebook's temporary files
KERNEL_TMP = ".kernel-tmp"


def _raise_signal(signum, frame) -> None:
    raise _Signal(signum)


def _stop_tree(pid: int) -> None:
    """Terminate a process and every process under it (papermill, its kernel, the kernel's workers); kill what
    has not ended after 5 s."""

    try:
        top = psutil.Process(pid)
        procs = top.children(recursive=True) + [top]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def notebooks() -> list[Path]:
    """The numbered notebooks, in execution order."""
    return sorted(paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def select(only: list[str] | None) -> list[Path]:
    nbs = notebooks()
    if not only:
        return nbs
    chosen = []
    for key in (k.strip() for item in only for k in str(item).split(",") if k.strip()):  # "02" or "01,02"
        match = [p for p in nbs if p.name[:2] == key.zfill(2) or p.stem == key]
        if not match:
            raise PipelineError(
                f"--only {key}: no notebook numbered {key!r} (have {[p.name[:2] for p in nbs]})"
            )
        chosen += [m for m in match if m not in chosen]
    return sorted(chosen)


def load_profile(profile: str) -> dict:
    """``params/<profile>.yaml`` (:func:`lib.stage.profile.load`); a problem with it is a :class:`PipelineError`."""
    try:
        return profiles.load(profile)
    except profiles.ProfileError as e:
        raise PipelineError(str(e)) from None


def declared_parameters(nb: Path) -> dict:
    """{name: papermill's description} of the notebook's ``parameters`` cell."""
    import papermill  # lazy: papermill: the Jupyter stack

    return papermill.inspect_notebook(str(nb))


def parse_overrides(items: list[str]) -> dict:
    """``["n=3", "roi=V1"]`` -> {"n": 3, "roi": "V1"} (values parsed as YAML scalars)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise PipelineError(f"--set {item!r}: expected name=value")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def resolve_parameters(profile: str, nbs: list[Path], overrides: dict | None = None) -> dict[Path, dict]:
    """Parameters for each notebook; an unknown name anywhere is an error naming it and where it came from.

    A name a notebook declares goes to that notebook. A common parameter (:class:`lib.stage.profile.Common`) or a
    hyperparameter (``section.field``) given with ``--set`` goes into the ``overrides`` dict of every notebook that
    declares ``overrides``; in the profile, ``defaults`` and ``hyperparameters`` are read by each notebook's
    :func:`lib.stage.setup` itself, so a notebook run from JupyterLab gets the same values."""
    cfg = load_profile(profile)
    overrides = overrides or {}
    declared = {nb: declared_parameters(nb) for nb in notebooks()}
    every = set().union(*declared.values()) if declared else set()
    for name in cfg["defaults"]:
        if name not in every and name not in profiles.COMMON:
            raise PipelineError(f"{cfg['path']}: unknown parameter {name!r}: neither a common parameter "
                                f"({', '.join(profiles.COMMON)}) nor declared by a notebook (declared: {sorted(every)})")  # fmt: skip
    routed = {k: v for k, v in overrides.items() if k not in every}
    for name in routed:
        if name not in profiles.COMMON and "." not in name:
            raise PipelineError(f"--set: unknown parameter {name!r}: no notebook declares it, and it is neither a "
                                f"common parameter ({', '.join(profiles.COMMON)}) nor a hyperparameter section.field")  # fmt: skip
    try:
        profiles.split_overrides(routed, "--set")
        profiles.resolve_common(cfg, routed)
    except profiles.ProfileError as e:
        raise PipelineError(str(e)) from None
    numbers = {nb.name[:2]: nb for nb in declared}
    for key, params in cfg["notebooks"].items():
        if key not in numbers:
            raise PipelineError(f"{cfg['path']}: notebooks.{key}: no notebook numbered {key}")
        bad = set(params) - set(declared[numbers[key]])
        if bad:
            raise PipelineError(
                f"{cfg['path']}: notebooks.{key}: unknown parameter(s) {sorted(bad)} for {numbers[key].name} "
                f"(declared: {sorted(declared[numbers[key]])})"
            )
    out = {}
    for nb in nbs:
        names = declared[nb]
        layers = ((f"{cfg['path']} (defaults)", cfg["defaults"]),
                  (f"{cfg['path']} (notebooks.{nb.name[:2]})", cfg["notebooks"].get(nb.name[:2], {})),
                  ("--set", overrides))  # fmt: skip
        for where, values in layers:
            for k, v in values.items():
                if k in names:
                    _check_type(where, nb, k, v, names[k].get("inferred_type_name"))
        p = {k: v for k, v in cfg["defaults"].items() if k in names}
        p.update(cfg["notebooks"].get(nb.name[:2], {}))
        p.update({k: v for k, v in overrides.items() if k in names})
        if routed and "overrides" in names:
            p["overrides"] = {**p.get("overrides", {}), **routed}
        if "profile" in names:
            p["profile"] = profile
        data_root = p.get("data_root") or routed.get("data_root")
        if data_root:  # a mistyped path fails here, before anything runs, instead of being simulated
            try:
                paths.check_data_root(profile, data_root)
            except ValueError as e:
                raise PipelineError(f"{nb.name}: {e}") from None
        out[nb] = p
    return out


def _check_type(where: str, nb: Path, name: str, value, declared: str | None) -> None:
    """A parameter value against the type its notebook's parameters cell declares (:func:`lib.stage.profile.type_ok`;
    an undeclared type is not checked)."""
    if not profiles.type_ok(value, declared):
        raise PipelineError(f"{where}: {name}={value!r} is {type(value).__name__}, but {nb.name} declares "
                            f"{name}: {declared}")  # fmt: skip


def _execute(
    nb: Path, out: Path, params: dict, log_output: bool, nproc: int = 1
) -> tuple[int, float, float, str]:
    """Run papermill on one notebook in a child process: (exit code, seconds, peak RSS in MiB, the last line of
    its error output when it failed, e.g. the notebook's exception). ``nproc``: the processes each trainer of the
    notebook launches (:mod:`lib.distributed`, through ``LIB_NPROC``)."""
    cmd = [sys.executable, "-m", "papermill", str(nb), str(out), "-y", yaml.safe_dump(params), "--kernel", "python3",
           "--cwd", str(out.parent)]  # fmt: skip
    if not log_output:
        cmd.append("--no-progress-bar")
    t0 = time.perf_counter()
    # the kernel's temporary files (its connection file among them) in a folder of the run, emptied before and after
    # each notebook: a kernel stopped by a signal leaves nothing in the system's temporary folder
    tmp = out.parent / KERNEL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = {**os.environ, paths.NPROC_ENV: str(int(nproc)), "TMPDIR": str(tmp)}
    # papermill dies with this runner, even killed outright (kill -9), and its kernel follows within a second
    # (ipykernel's parent poller): no orphan goes on writing caches, figures and metrics beside a rerun
    proc = subprocess.Popen(cmd, stdout=None if log_output else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=die_with_parent)  # fmt: skip
    try:
        err = proc.stderr.read() if proc.stderr else ""
        _, status, usage = os.wait4(proc.pid, 0)  # resource usage of the child and the kernel it reaped
    except _Signal:
        _stop_tree(proc.pid)  # the kernel too: it would go on writing caches, figures and metrics
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = [line.strip() for line in err.splitlines() if line.strip()][-1:] if proc.returncode else []
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024, tail[0] if tail else ""


def metric_differences(before: dict, after: dict, where: str = "") -> list[str]:
    """Where two metrics files differ, as ``path: before != after`` lines; timings (any key naming seconds) are
    left out, since they differ on every run."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [d for k in sorted(set(before) | set(after), key=str) if "second" not in str(k)
                for d in metric_differences(before.get(k), after.get(k), f"{where}.{k}" if where else str(k))]  # fmt: skip
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (a, b) in enumerate(zip(before, after, strict=True))
                for d in metric_differences(a, b, f"{where}[{i}]")]  # fmt: skip
    return [] if before == after else [f"{where}: {before!r} != {after!r}"]


def run(profile: str = paths.EMBEDDED_PROFILE, only: list[str] | None = None, overrides: dict | None = None,
        prepare_only: bool = False, nproc: int = 1, expect_same: bool = False) -> list[dict]:  # fmt: skip
    """Execute (or, with ``prepare_only``, only parameterise) the chosen notebooks; returns one record each.
    ``nproc``: processes per trainer (:mod:`lib.distributed`; ``batch_size`` is per process). ``expect_same``:
    a reproducibility check, failing unless every notebook's metrics equal those its previous run wrote (timings
    aside; same machine, seed and thread count)."""
    if int(nproc) < 1:
        raise PipelineError(f"--nproc {nproc}: expected 1 or more processes per trainer")
    nbs = select(only)
    params = resolve_parameters(profile, nbs, overrides)
    build = paths.BUILD_DIR / profile
    out_dir = build / "nbval" if prepare_only else build
    out_dir.mkdir(parents=True, exist_ok=True)
    main_thread = threading.current_thread() is threading.main_thread()
    saved = (
        {sig: signal.signal(sig, _raise_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        if main_thread
        else {}
    )
    try:  # one run per profile at a time: they share build/<profile>/ (executed notebooks, pipeline_run.json)
        with exclusive(build / ".pipeline.lock", f"build/{profile} (a pipeline run of profile {profile})"):
            fileio.remove_stale_temporaries(build)  # of a run that was killed outright (SIGKILL, power)
            before = _previous_metrics(nbs, profile) if expect_same else {}
            records = _run_locked(nbs, params, profile, build, out_dir, prepare_only, nproc)
            if expect_same:
                _compare(before, _previous_metrics(nbs, profile), profile)
            return records
    except Busy as e:
        raise PipelineError(str(e)) from None
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _previous_metrics(nbs: list[Path], profile: str) -> dict[str, dict]:
    """The metrics files of ``nbs`` as they are now (a missing one is an error for ``expect_same``)."""
    out = {}
    for nb in nbs:
        path = paths.metrics_dir(profile) / f"{nb.stem}.json"
        if not path.is_file():
            raise PipelineError(
                f"--expect-same: {paths.display(path)} is missing; run the notebook once first"
            )
        out[nb.stem] = json.loads(path.read_text())
    return out


def _compare(before: dict[str, dict], after: dict[str, dict], profile: str) -> None:
    diffs = [f"{stem}: {d}" for stem in before for d in metric_differences(before[stem], after[stem])]
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise PipelineError(f"--expect-same: profile {profile} gave other metrics on this run: "
                            f"{'; '.join(d[:200] for d in diffs[:3])}{more}")  # fmt: skip
    print(f"--expect-same: the metrics of {len(before)} notebook(s) equal the previous run's (timings aside)")


def _run_locked(nbs, params, profile, build, out_dir, prepare_only, nproc) -> list[dict]:
    import papermill  # lazy: papermill: the Jupyter stack

    records = []
    bar = progress(nbs, desc=f"pipeline ({profile})", unit="notebook", disable=prepare_only or quiet())
    for nb in bar:
        out = out_dir / nb.name
        if prepare_only:
            papermill.execute_notebook(
                str(nb), str(out), parameters=params[nb], prepare_only=True, progress_bar=False
            )
            records.append({"notebook": nb.name, "parameters": params[nb], "output": str(out)})
            continue
        bar.set_postfix_str(nb.name)
        run = {
            "notebook": nb.name,
            "parameters": params[nb],
            "output": str(out),
            "processes_per_trainer": int(nproc),
        }
        try:
            code, seconds, peak, error = _execute(nb, out, params[nb], log_output=False, nproc=nproc)
        except _Signal as e:
            name = signal.Signals(e.signum).name
            records.append(run | {"ok": False, "interrupted": name})
            write_json(build / "pipeline_run.json", records)
            removed = fileio.remove_stale_temporaries(build)
            raise PipelineInterrupted(f"{nb.name} interrupted by {name} (profile {profile}): its kernel was "
                                      f"stopped, {removed} temporary file(s) removed; rerun to finish",
                                      e.signum) from None  # fmt: skip
        rec = run | {"ok": code == 0, "seconds": round(seconds, 1), "peak_rss_mib": round(peak)}
        records.append(rec)
        bar.write(
            f"{nb.name:<28} {'ok' if code == 0 else 'FAILED':<6} {seconds:7.1f} s  peak {peak:7.0f} MiB"
        )
        if code != 0:
            write_json(build / "pipeline_run.json", records)
            raise PipelineError(
                f"{nb.name} failed (profile {profile}): {error or 'no error output'}; the executed copy: {out}"
            )
    if not prepare_only:
        write_json(build / "pipeline_run.json", records)
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--profile", default=paths.EMBEDDED_PROFILE, help="params/<profile>.yaml (default: %(default)s)"
    )
    ap.add_argument("--only", action="append", help="notebook number(s) to run: 02, or 01,02 (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a parameter")
    ap.add_argument(
        "--prepare-only", action="store_true", help="write parameterised notebooks to build/<profile>/nbval"
    )
    ap.add_argument("--list", action="store_true", help="list notebooks and their parameters, then exit")
    ap.add_argument("--expect-same", action="store_true",
                    help="fail unless the metrics equal the previous run's (timings aside): a reproducibility check")  # fmt: skip
    ap.add_argument(
        "--nproc", type=int, default=1, help="processes per trainer (torchrun; batch_size is per process)"
    )
    a = ap.parse_args(argv)
    try:
        if a.list:
            for nb, p in resolve_parameters(a.profile, notebooks()).items():
                print(f"{nb.name}: {p}")
            return 0
        t0 = time.perf_counter()
        records = run(a.profile, a.only, parse_overrides(a.set), a.prepare_only, a.nproc, a.expect_same)
    except PipelineInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return 128 + e.signum
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.prepare_only:
        print(f"{len(records)} notebook(s), profile {a.profile}, {time.perf_counter() - t0:.1f} s; "
              f"figures in {paths.output_dir(a.profile)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
