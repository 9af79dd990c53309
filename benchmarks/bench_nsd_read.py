"""Benchmark: one NSD-size session read into a (750, voxels) float32 matrix, lib.data.nsd against a plain h5py read.

    python benchmarks/bench_nsd_read.py [--repeats 3]

Makes once, under data/bench/, a session file of NSD's size and layout (750 x 83 x 104 x 81 int16, one uncompressed
chunk per voxel, 1.05 GB) and an nsdgeneral-size mask (15,724 voxels). Each method runs in its own process, so
that its peak resident memory (the kernel's VmHWM, reset before each read, minus the resident set before it) is
its own. Prints both
times, their ratio (lib / plain, goal <= 1.0), and each one's peak memory over the output size (goal <= 1.5x).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _memory import reset_peak, status_kib

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "data" / "bench"
SESSION = BENCH / "betas_session01.hdf5"
MASK = BENCH / "nsdgeneral_mask.npy"
SHAPE_XYZ = (81, 104, 83)  # subj01 at 1.8 mm
TRIALS = 750
N_VOXELS = 15724


def make_inputs() -> None:
    import h5py

    from lib.fileio import atomic_path
    from lib.runtime import progress

    BENCH.mkdir(parents=True, exist_ok=True)
    X, Y, Z = SHAPE_XYZ
    if not MASK.exists():
        rng = np.random.default_rng(0)
        ijk = np.indices(SHAPE_XYZ).reshape(3, -1).T
        centre = np.array([X / 2, Y * 0.25, Z * 0.45])
        d = (((ijk - centre) / np.array([28, 22, 16])) ** 2).sum(1) + rng.normal(0, 0.05, len(ijk))
        mask = np.zeros(X * Y * Z, bool)
        mask[np.argsort(d)[:N_VOXELS]] = True
        with atomic_path(MASK, suffix=".npy") as tmp:
            np.save(tmp, mask.reshape(SHAPE_XYZ))
    if not SESSION.exists():
        rng = np.random.default_rng(1)
        with atomic_path(SESSION, suffix=".hdf5") as tmp:
            with h5py.File(tmp, "w") as f:
                d = f.create_dataset("betas", shape=(TRIALS, Z, Y, X), dtype="<i2", chunks=(TRIALS, 1, 1, 1))
                for z in progress(range(Z), desc="writing an NSD-size session (once)"):
                    d[:, z] = rng.normal(0, 600, (TRIALS, Y, X)).astype(np.int16)


def read_lib() -> np.ndarray:
    from lib.data.nsd import read_session

    mask = np.load(MASK)
    return read_session(SESSION, np.argwhere(mask), mask.shape)


def read_plain() -> np.ndarray:
    import h5py

    mask = np.load(MASK)
    with h5py.File(SESSION, "r") as f:
        whole = f["betas"][()]  # (750, Z, Y, X): the whole 1 GB
    return (np.transpose(whole, (0, 3, 2, 1))[:, mask] / np.float32(300)).astype(np.float32)


def child(method: str, repeats: int) -> None:
    """Run one method ``repeats`` times in this process; print JSON with times and the peak memory added."""
    import h5py  # noqa: F401 - imported before the baseline, as both methods use it

    import lib.data.nsd  # noqa: F401

    fn = {"lib": read_lib, "plain": read_plain}[method]
    times, added = [], []
    for _ in range(repeats):
        base = reset_peak()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        added.append(status_kib("VmHWM") - base)
        np.save(BENCH / f"out_{method}.npy", out[:, :500])  # a slice, for the equality check
        del out
    print(json.dumps({"times": times, "peak_kib": max(added)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["lib", "plain"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.repeats)
        return 0
    make_inputs()
    out_mib = TRIALS * N_VOXELS * 4 / 2**20
    res = {}
    for method in ("plain", "lib", "plain", "lib"):  # alternate, keep the second (warm page cache) of each
        r = subprocess.run([sys.executable, __file__, "--child", method, "--repeats", str(a.repeats)],
                           capture_output=True, text=True, check=True)  # fmt: skip
        res[method] = json.loads(r.stdout.strip().splitlines()[-1])
    a_lib, a_plain = np.load(BENCH / "out_lib.npy"), np.load(BENCH / "out_plain.npy")
    t_lib, t_plain = np.median(res["lib"]["times"]), np.median(res["plain"]["times"])
    m_lib, m_plain = res["lib"]["peak_kib"] / 1024, res["plain"]["peak_kib"] / 1024
    print(f"session file: {SESSION.stat().st_size / 1e9:.2f} GB, {TRIALS} trials, mask {N_VOXELS} voxels, "
          f"output {out_mib:.1f} MiB float32")  # fmt: skip
    print(
        f"plain h5py whole read + mask: {t_plain:6.2f} s  peak +{m_plain:7.1f} MiB ({m_plain / out_mib:5.2f}x output)"
    )
    print(
        f"lib.data.nsd.read_session:         {t_lib:6.2f} s  peak +{m_lib:7.1f} MiB ({m_lib / out_mib:5.2f}x output)"
    )
    print(f"time ratio lib / plain: {t_lib / t_plain:.3f} (goal <= 1.0); memory lib / output: "
          f"{m_lib / out_mib:.2f} (goal <= 1.5); first 500 columns identical: {np.array_equal(a_lib, a_plain)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
