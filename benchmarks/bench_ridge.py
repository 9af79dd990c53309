"""Benchmark: cross-validated ridge at NSD scale, lib.ridge.RidgeEncoder against scikit-learn and himalaya.

    python benchmarks/bench_ridge.py [--n 24980 --p 15724 --t 512 --n-alphas 10 --test-rows 300]
                                     [--methods ours,ours_cv5,sklearn,himalaya,himalaya_kernel] [--timeout 1800]

Makes once, under data/bench/, a synthetic data set of NSD's size (by default 24,980 trials x 15,724 voxels ->
512 targets, float32; ``--seed`` fixes it): a few dozen latent stimulus features drive each voxel weakly (signal
fractions drawn per voxel, most voxels near the noise floor), shared nuisance components and independent noise make
the rest, with per-voxel offsets and scales; the targets are a noisy linear function of the same latent features
(a CLIP embedding's low-rank structure), so the alpha that cross-validation picks lies inside the grid (logspace
over 6 decades, scaled with n). ``--test-rows`` held-out rows are drawn the same way for the predictions.

Methods, each in its own process, so that its peak resident memory (the kernel's VmHWM, reset just before the fit,
minus the resident set then, with X and Y already loaded) is its own:

- ``ours``: RidgeEncoder(cv=None), exact leave-one-out (generalised CV) from one eigen-decomposition;
- ``ours_cv5``: RidgeEncoder(cv=5), K folds (``--folds``), like-for-like with himalaya;
- ``sklearn``: sklearn.linear_model.RidgeCV (default: efficient leave-one-out / GCV, float64);
- ``himalaya``: himalaya.ridge.RidgeCV(cv=5, one alpha for all targets) (the "bench" extra);
- ``himalaya_kernel``: himalaya.kernel_ridge.KernelRidgeCV(kernel="linear", cv=5, one alpha for all targets);
  both with the torch backend (faster than numpy on CPU here; ``--himalaya-backend``) and one alpha at a time
  (``n_alphas_batch=1``: same work, a tenth of the memory).

All fit an intercept and choose one alpha for all targets by the mean squared error. Prints each method's fit +
predict time, its ratio to ours (the method's time / ours' time: leave-one-out methods against ``ours``, K-fold
ones against ``ours_cv5``), the alphas chosen, the max relative prediction difference against scikit-learn on the
held-out rows (max |a - b| / max |b|), and the peak memory added over the input matrix (n * p * 4 bytes). Goals:
>= 3x faster than scikit-learn, at least as fast as himalaya, predictions equal to scikit-learn's to 1e-4
relative, peak memory <= 2x the input matrix. A method that runs past ``--timeout`` seconds is killed and reported
as "> timeout" (its ratio is then a lower bound). Each child logs its progress (eigen-decompositions, folds,
alphas) to build/bench/bench_ridge_<method>.log, shown in the summary, so that a killed method shows how far it got.
Writes the results to build/bench/bench_ridge.json; ``--keep`` carries over from it the results of the methods not
run now (same data and folds), e.g. to rerun only ours against baselines that take an hour. Run one at a time: the
logs and the saved predictions (data/bench/*_pred_<method>.npy) are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _memory import reset_peak, status_kib

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "data" / "bench"
RESULT = ROOT / "build" / "bench" / "bench_ridge.json"
METHODS = ("ours", "ours_cv5", "sklearn", "himalaya", "himalaya_kernel")
LOO_METHODS = ("ours", "sklearn")  # the others use K folds
N_LATENT = 48  # latent stimulus features shared by voxels and targets
N_NUISANCE = 12  # shared noise components (global signal, motion, drifts)
GEN_ROWS = 1024  # rows generated per random stream (fixes the data for a seed, whatever the memory)


# ================================================================================================================
# data


def _paths(n: int, p: int, t: int, test_rows: int, seed: int) -> dict[str, Path]:
    stem = f"ridge_n{n}_p{p}_t{t}_test{test_rows}_s{seed}"
    return {k: BENCH / f"{stem}_{k}.npy" for k in ("X", "Y", "Xtest", "Ytest")}


def _model(p: int, t: int, seed: int) -> dict[str, np.ndarray]:
    """The fixed generative model: tuning, nuisance loadings, offsets and scales (float64)."""
    rng = np.random.default_rng([seed, 0])
    signal = rng.beta(0.7, 6.0, p)  # fraction of each voxel's variance driven by the stimulus (mean ~0.1)
    tuning = rng.standard_normal((N_LATENT, p))
    tuning *= np.sqrt(signal) / np.linalg.norm(tuning, axis=0)
    nuisance = rng.standard_normal((N_NUISANCE, p))
    nuisance *= np.sqrt(0.3 * (1 - signal)) / np.linalg.norm(nuisance, axis=0)  # 30% of the noise is shared
    return {
        "tuning": tuning,
        "nuisance": nuisance,
        "noise_sd": np.sqrt(0.7 * (1 - signal)),
        "x_scale": np.exp(rng.normal(0, 0.3, p)),
        "x_offset": rng.normal(0, 1, p),
        "readout": rng.standard_normal((N_LATENT, t)) / np.sqrt(N_LATENT),
        "y_offset": rng.normal(0, 0.5, t),
    }


def _rows(model: dict[str, np.ndarray], rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = rng.standard_normal((rows, N_LATENT))
    x = s @ model["tuning"] + rng.standard_normal((rows, N_NUISANCE)) @ model["nuisance"]
    x += rng.standard_normal((rows, x.shape[1]), dtype=np.float32) * model["noise_sd"]
    x = x * model["x_scale"] + model["x_offset"]
    y = (
        s @ model["readout"]
        + 0.5 * rng.standard_normal((rows, model["readout"].shape[1]))
        + model["y_offset"]
    )
    return x.astype(np.float32), y.astype(np.float32)


def make_data(n: int, p: int, t: int, test_rows: int, seed: int) -> dict[str, Path]:
    """Write X (n, p), Y (n, t), Xtest, Ytest as float32 .npy under data/bench/ once; return their paths."""
    from lib.fileio import atomic_path

    paths = _paths(n, p, t, test_rows, seed)
    if all(f.exists() for f in paths.values()):
        return paths
    BENCH.mkdir(parents=True, exist_ok=True)
    model = _model(p, t, seed)
    t0 = time.perf_counter()
    for split, rows, stream in (("", n, 1), ("test", test_rows, 2)):
        xp, yp = paths["X" + split], paths["Y" + split]
        with atomic_path(xp, suffix=".npy") as xtmp, atomic_path(yp, suffix=".npy") as ytmp:
            xs = np.lib.format.open_memmap(xtmp, mode="w+", dtype=np.float32, shape=(rows, p))
            ys = np.lib.format.open_memmap(ytmp, mode="w+", dtype=np.float32, shape=(rows, t))
            for c, i in enumerate(range(0, rows, GEN_ROWS)):
                m = min(GEN_ROWS, rows - i)
                xs[i : i + m], ys[i : i + m] = _rows(model, m, np.random.default_rng([seed, stream, c]))
            xs.flush()
            ys.flush()
            del xs, ys
    print(
        f"wrote {n} + {test_rows} synthetic rows under {BENCH} in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return paths


def alpha_grid(n: int, n_alphas: int) -> np.ndarray:
    """Log-spaced alphas over 6 decades, scaled with the number of trials (the noise eigenvalues grow with n)."""
    return n * np.logspace(-3, 3, n_alphas)


# ================================================================================================================
# one method, in a child process


def _estimator(method: str, alphas: np.ndarray, folds: int, himalaya_backend: str):
    if method in ("ours", "ours_cv5"):
        from lib.models.ridge import RidgeEncoder

        return RidgeEncoder(alphas=tuple(alphas), cv=None if method == "ours" else folds, device="cpu")
    if method == "sklearn":
        from sklearn.linear_model import RidgeCV

        return RidgeCV(
            alphas=alphas
        )  # cv=None: efficient leave-one-out (GCV); mean squared error over targets
    from himalaya.backend import set_backend

    set_backend(himalaya_backend, on_error="raise")
    # one alpha for all targets, as the others; one alpha at a time, or its (alphas, voxels, trials) resolution
    # matrices alone take 12.6 GB at NSD scale
    params = {"local_alpha": False, "n_alphas_batch": 1}
    if method == "himalaya":
        from himalaya.ridge import RidgeCV

        return RidgeCV(alphas=alphas, fit_intercept=True, cv=folds, solver_params=params)
    from himalaya.kernel_ridge import KernelRidgeCV

    return KernelRidgeCV(alphas=alphas, kernel="linear", fit_intercept=True, cv=folds, solver_params=params)


def _alpha(method: str, est) -> float:
    if method.startswith("himalaya"):
        from himalaya.backend import get_backend

        a = np.unique(np.asarray(get_backend().to_numpy(est.best_alphas_), dtype=np.float64))
        return float(a[0]) if len(a) == 1 else float("nan")
    return float(est.alpha_)


_T0 = [0.0]


def _progress(label: str) -> None:
    """One progress event on stderr (the driver keeps the child's stderr in a log): seconds since the fit began."""
    print(f"progress {time.perf_counter() - _T0[0]:.1f} {label}", file=sys.stderr, flush=True)


def _instrument(method: str) -> None:
    """Wrap each method's decomposition / per-alpha steps to log progress (what a killed method had reached)."""

    def after(owner, name: str, label: str) -> None:
        orig, count = getattr(owner, name), [0]

        def wrapped(*args, **kw):
            out = orig(*args, **kw)
            count[0] += 1
            _progress(f"{label} {count[0]}")
            return out

        setattr(owner, name, wrapped)

    def generator(
        owner, name: str, label: str
    ) -> None:  # himalaya's decompositions are generators over alphas
        orig, count = getattr(owner, name), [0]

        def wrapped(*args, **kw):
            count[0] += 1
            yield from orig(*args, **kw)
            _progress(f"{label} {count[0]}")

        setattr(owner, name, wrapped)

    if method.startswith("ours"):
        import lib.models.ridge as enc

        after(enc, "_eigh", "eigh")
        after(enc._Decomposition, "__init__", "decomposition")
        after(enc._Decomposition, "loo_sse", "leave-one-out")
    elif method == "sklearn":
        from sklearn.linear_model._ridge import _RidgeGCV

        for name in ("_eigen_decompose_covariance", "_eigen_decompose_gram", "_svd_decompose_design_matrix"):
            after(_RidgeGCV, name, "decomposition")
        for name in ("_solve_eigen_covariance", "_solve_eigen_gram", "_solve_svd_design_matrix"):
            after(_RidgeGCV, name, "alpha")
    elif method == "himalaya":
        import himalaya.ridge._random_search as rs

        generator(rs, "_decompose_ridge", "fold or refit")
    else:
        import himalaya.kernel_ridge._random_search as krs

        generator(krs, "_decompose_kernel_ridge", "fold or refit")


def child(a: argparse.Namespace) -> None:
    """Fit and predict with one method in this process; save the predictions; print JSON with times and memory."""
    paths = _paths(a.n, a.p, a.t, a.test_rows, a.seed)
    x, y, xtest = (
        np.load(paths["X"]),
        np.load(paths["Y"]),
        np.load(paths["Xtest"]),
    )  # resident before the mark
    est = _estimator(a.child, alpha_grid(a.n, a.n_alphas), a.folds, a.himalaya_backend)
    _instrument(a.child)
    base = reset_peak()
    t0 = _T0[0] = time.perf_counter()
    est.fit(x, y)
    t1 = time.perf_counter()
    pred = est.predict(xtest)
    t2 = time.perf_counter()
    peak = status_kib("VmHWM") - base
    if a.child.startswith("himalaya"):
        from himalaya.backend import get_backend

        pred = get_backend().to_numpy(pred)
    np.save(BENCH / f"{paths['X'].stem[:-2]}_pred_{a.child}.npy", np.asarray(pred, dtype=np.float32))
    out = {"fit_s": t1 - t0, "predict_s": t2 - t1, "peak_kib": peak, "alpha": _alpha(a.child, est)}
    print(json.dumps(out))


# ================================================================================================================
# driver


def run_method(method: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--n", str(a.n), "--p", str(a.p), "--t", str(a.t),
           "--n-alphas", str(a.n_alphas), "--test-rows", str(a.test_rows), "--seed", str(a.seed),
           "--folds", str(a.folds), "--himalaya-backend", a.himalaya_backend]  # fmt: skip
    env = dict(os.environ, LIB_QUIET="1")
    load = os.getloadavg()[0]
    log = RESULT.parent / f"bench_ridge_{method}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as err:
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=a.timeout, env=env)
        except subprocess.TimeoutExpired:
            r = None
    res = {"wall_s": time.perf_counter() - t0, "load_before": load, "load_after": os.getloadavg()[0]}
    lines = log.read_text().splitlines()
    res["progress"] = [
        (float(t), what) for _, t, what in (ln.split(" ", 2) for ln in lines if ln.startswith("progress "))
    ]
    if r is None:
        return {**res, "status": "timeout"}
    if r.returncode != 0:
        tail = [ln for ln in lines if not ln.startswith("progress ")][-5:] or r.stdout.strip().splitlines()[
            -5:
        ]
        return {**res, "status": f"failed (exit {r.returncode})", "error": "\n".join(tail)}
    return {**res, "status": "ok", **json.loads(r.stdout.strip().splitlines()[-1])}


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def summarise(res: dict, a: argparse.Namespace, preds: dict[str, np.ndarray]) -> list[str]:
    input_gb = a.n * a.p * 4 / 1e9
    ref = "sklearn" if "sklearn" in preds else ("ours" if "ours" in preds else None)
    vs = f"maxrel vs {ref or '-'}"
    lines = [
        f"data: {a.n} trials x {a.p} voxels -> {a.t} targets (float32, seed {a.seed}), {a.n_alphas} alphas "
        f"{alpha_grid(a.n, a.n_alphas)[0]:.3g} .. {alpha_grid(a.n, a.n_alphas)[-1]:.3g}, {a.test_rows} test rows; "
        f"input matrix {input_gb:.2f} GB; {os.cpu_count()} CPUs; himalaya backend {a.himalaya_backend!r}",
        f"{'method':<16} {'alpha':>10} {'fit s':>9} {'pred s':>7} {'total s':>9} {'x ours':>8} "
        f"{'peak GB':>8} {'x input':>8} {vs:>18}  load",
    ]  # fmt: skip
    for m, r in res.items():
        if r["status"] != "ok":
            shown = f"> {r.get('timeout_s', a.timeout):.0f}" if r["status"] == "timeout" else r["status"]
            lines.append(
                f"{m:<16} {'':>10} {'':>9} {'':>7} {shown:>9}" + ("  (kept)" if r.get("kept") else "")
            )
            continue
        base = "ours" if m in LOO_METHODS else "ours_cv5"
        ratio = res.get(base, {}).get("time_s")
        ratio = f"{r['time_s'] / ratio:8.2f}" if ratio and m != base else f"{'':>8}"
        diff = f"{r['maxrel']:18.2e}" if "maxrel" in r else f"{'':>18}"
        lines.append(f"{m:<16} {r['alpha']:10.4g} {r['fit_s']:9.1f} {r['predict_s']:7.2f} {r['time_s']:9.1f} "
                     f"{ratio} {r['peak_gb']:8.2f} {r['peak_x_input']:8.2f} {diff}  "
                     f"{r['load_before']:.1f}->{r.get('load_after', float('nan')):.1f}"
                     + ("  (kept)" if r.get("kept") else ""))  # fmt: skip
    lines.append(
        "x ours: the method's time / ours' (leave-one-out methods against ours, K-fold ones against ours_cv5)"
    )
    for m, other, goal in (
        ("ours", "sklearn", 3.0),
        ("ours_cv5", "himalaya", 1.0),
        ("ours_cv5", "himalaya_kernel", 1.0),
    ):
        if m not in res or other not in res:
            continue
        mine, o = res[m], res[other]
        t_mine = mine["time_s"] if mine["status"] == "ok" else mine.get("timeout_s", a.timeout)
        t_other = o["time_s"] if o["status"] == "ok" else o.get("timeout_s", a.timeout)
        if mine["status"] not in ("ok", "timeout") or o["status"] not in ("ok", "timeout"):
            continue
        if mine["status"] == "timeout" and o["status"] == "timeout":
            lines.append(f"speed-up {m} vs {other}: unknown (both ran past their timeouts)")
            continue
        bound = "> " if o["status"] == "timeout" else "< " if mine["status"] == "timeout" else ""
        alphas = (
            f"; alphas {mine['alpha']:.4g} vs {o['alpha']:.4g}"
            if "ok" == mine["status"] == o["status"]
            else ""
        )
        lines.append(f"speed-up {m} vs {other}: {bound}{t_other / t_mine:.2f}x (goal >= {goal:g}){alphas}")
    for m, r in res.items():
        if r.get("progress"):
            lines.append(
                f"progress of {m} (s since the fit began): "
                + ", ".join(f"{w} @ {t:.0f}" for t, w in r["progress"])
            )
    if "ours" in res and res["ours"]["status"] == "ok":
        r = res["ours"]
        lines.append(f"ours: peak memory {r['peak_x_input']:.2f}x the input matrix (goal <= 2)"
                     + (f", max relative difference to sklearn {r['maxrel']:.2e} (goal <= 1e-4)"
                        if ref == "sklearn" else ""))  # fmt: skip
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=24980, help="training trials")
    ap.add_argument("--p", type=int, default=15724, help="voxels")
    ap.add_argument("--t", type=int, default=512, help="targets")
    ap.add_argument("--n-alphas", type=int, default=10)
    ap.add_argument("--test-rows", type=int, default=300)
    ap.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}"
    )
    ap.add_argument("--folds", type=int, default=5, help="folds of ours_cv5 and himalaya")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per method before it is killed")
    ap.add_argument("--himalaya-backend", default="torch", choices=["numpy", "torch"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true",
                    help="keep the previous results (build/bench/bench_ridge.json, same data and folds) of the "
                         "methods not run now, e.g. to rerun only ours against hour-long baselines")  # fmt: skip
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return 0
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if bad := sorted(set(methods) - set(METHODS)):
        ap.error(f"unknown methods {bad}: choose from {', '.join(METHODS)}")
    paths = make_data(a.n, a.p, a.t, a.test_rows, a.seed)
    stem = paths["X"].stem[:-2]
    same = ("n", "p", "t", "n_alphas", "test_rows", "seed", "folds", "himalaya_backend")
    res = {}
    if a.keep and RESULT.exists():
        old = json.loads(RESULT.read_text())
        if all(old["args"].get(k) == getattr(a, k) for k in same):
            res = {m: {**r, "kept": True} for m, r in old["results"].items() if m not in methods}
            print(f"kept from {RESULT}: {', '.join(res) or 'nothing'}")
        else:
            print(f"not keeping {RESULT}: it was run with other data or folds")
    for m in methods:
        print(f"running {m} ...", flush=True)
        (BENCH / f"{stem}_pred_{m}.npy").unlink(missing_ok=True)
        res[m] = r = run_method(m, a)
        r["timeout_s"], r["finished"] = a.timeout, time.strftime("%Y-%m-%d %H:%M:%S")
        if r["status"] == "ok":
            r["time_s"] = r["fit_s"] + r["predict_s"]
            r["peak_gb"] = r["peak_kib"] * 1024 / 1e9
            r["peak_x_input"] = r["peak_kib"] * 1024 / (a.n * a.p * 4)
            print(
                f"  {m}: {r['time_s']:.1f} s, alpha {r['alpha']:.4g}, peak +{r['peak_gb']:.2f} GB", flush=True
            )
        else:
            print(f"  {m}: {r['status']} {r.get('error', '')}", flush=True)
    res = {m: res[m] for m in METHODS if m in res}
    preds = {m: np.load(BENCH / f"{stem}_pred_{m}.npy") for m in res if res[m]["status"] == "ok"}
    ref = "sklearn" if "sklearn" in preds else "ours" if "ours" in preds else None
    for m in preds:
        if ref and m != ref:
            res[m]["maxrel"] = _max_rel(preds[m], preds[ref])
    lines = summarise(res, a, preds)
    print("\n".join(lines))
    from lib.fileio import write_json

    args = {k: v for k, v in vars(a).items() if k != "child"}
    write_json(RESULT, {"args": args, "alphas": alpha_grid(a.n, a.n_alphas).tolist(), "reference": ref,
                        "input_gb": a.n * a.p * 4 / 1e9, "cpus": os.cpu_count(), "results": res,
                        "summary": lines})  # fmt: skip
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
