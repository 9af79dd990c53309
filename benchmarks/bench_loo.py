"""Benchmark: a full leave-one-voxel-out sweep at nsdgeneral size, batched against a one-voxel-at-a-time loop.

    python benchmarks/bench_loo.py [--voxels 15724] [--samples 300] [--out-dim 512] [--naive-voxels 64]
                                   [--mlp-width 512] [--mlp-depth 2] [--device auto]

For a ridge encoder (random weights, voxels -> out-dim) and a residual MLP (the architecture notebook 02 trains on
mini-NSD, with nsdgeneral's voxel count), ``lib.analysis.loo.voxel_effects`` measures the change of the prediction when each
voxel in turn is replaced by its training mean, for every test sample. "batched" is the library's method (ridge: the
closed form from the weights; MLP: the first layer computed once and updated by one column per voxel, many voxels
per forward pass). "naive" runs the whole encoder on an edited copy of the input once per voxel; it runs on
``--naive-voxels`` evenly spaced voxels and its time is extrapolated to all voxels (said so in the output). Prints
times, the speed-up (goal >= 50x) and the largest absolute difference between the two on the naive subset
(goal <= 1e-5); writes build/bench/bench_loo.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lib import fileio, runtime
from lib.analysis import loo
from lib.models.mlp import MLPConfig, MLPEncoder, ResidualMLP
from lib.models.ridge import RidgeEncoder

ROOT = Path(__file__).resolve().parents[1]

GOAL_SPEEDUP, GOAL_DIFF = 50.0, 1e-5


def build_encoders(voxels: int, out_dim: int, width: int, depth: int, seed: int, device: str):
    rng = np.random.default_rng(seed)
    ridge = RidgeEncoder(alphas=[1.0])
    ridge.coef_ = (rng.standard_normal((out_dim, voxels)) / np.sqrt(voxels)).astype(np.float32)
    ridge.intercept_ = (0.1 * rng.standard_normal(out_dim)).astype(np.float32)
    ridge.alpha_ = 1.0
    torch.manual_seed(seed)
    cfg = MLPConfig(width=width, depth=depth)
    net = ResidualMLP(voxels, out_dim, width, depth, cfg.dropout, cfg.projector, cfg.proj_width)
    dev = runtime.pick_device(device)
    return {"ridge": ridge, "mlp": MLPEncoder(net.to(dev).eval(), cfg, voxels, out_dim, dev)}


def run(a: argparse.Namespace) -> dict:
    runtime.seed_everything(a.seed)
    rng = np.random.default_rng(a.seed)
    x = rng.standard_normal((a.samples, a.voxels), dtype=np.float32)
    x_train = rng.standard_normal((512, a.voxels), dtype=np.float32)
    r = loo.replacement(x_train, "mean", a.samples)
    subset = np.linspace(0, a.voxels - 1, a.naive_voxels).round().astype(np.int64)
    out = {"args": vars(a), "device": runtime.pick_device(a.device), "results": {}}
    for name, enc in build_encoders(a.voxels, a.out_dim, a.mlp_width, a.mlp_depth, a.seed, a.device).items():
        t0 = time.perf_counter()
        fast = loo.voxel_effects(enc, x, r, device=a.device)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = loo.voxel_effects(enc, x, r, voxels=subset, method="naive", device=a.device)
        t_naive_subset = time.perf_counter() - t0
        t_naive = t_naive_subset * a.voxels / len(subset)
        diff = max(float(np.abs(fast.cos_change[:, subset] - slow.cos_change).max()),
                   float(np.abs(fast.rel_change[:, subset] - slow.rel_change).max()))  # fmt: skip
        out["results"][name] = {
            "batched_s": t_fast, "naive_subset_s": t_naive_subset, "naive_subset_voxels": len(subset),
            "naive_extrapolated_s": t_naive, "speedup": t_naive / t_fast, "max_abs_diff": diff,
        }  # fmt: skip
        print(f"{name:>6}: batched {t_fast:8.2f} s for {a.voxels} voxels x {a.samples} samples; naive "
              f"{t_naive_subset:.2f} s for {len(subset)} voxels -> {t_naive:9.1f} s extrapolated; "
              f"speed-up {t_naive / t_fast:8.1f}x (goal >= {GOAL_SPEEDUP:.0f}x); max |diff| {diff:.1e} "
              f"(goal <= {GOAL_DIFF:.0e})", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=15724, help="nsdgeneral's voxel count (NSD subject 1)")
    ap.add_argument("--samples", type=int, default=300, help="test samples")
    ap.add_argument("--out-dim", type=int, default=512, help="embedding size (CLIP ViT-B/32: 512)")
    ap.add_argument("--naive-voxels", type=int, default=64, help="voxels the naive loop runs (extrapolated)")
    ap.add_argument("--mlp-width", type=int, default=512, help="notebook 02's mini width")
    ap.add_argument("--mlp-depth", type=int, default=2, help="notebook 02's mini depth")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if min(a.voxels, a.samples, a.out_dim, a.naive_voxels, a.mlp_width) < 1 or a.naive_voxels > a.voxels:
        ap.error("sizes must be positive and --naive-voxels at most --voxels")
    res = run(a)
    path = ROOT / "build" / "bench" / "bench_loo.json"
    fileio.write_json(path, res)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
