"""Benchmark: memory of the residual-MLP encoder at NSD scale (15,724 voxels -> 4,096 x 4 residual blocks -> 512).

    python benchmarks/bench_mlp_memory.py [--batch 64] [--steps 3] [--device auto]

Runs in a child process: builds the model and AdamW, then times a few training steps (MSE + BiMixCo, the heavier
phase) at the given batch size and measures the peak resident memory they add (the kernel's VmHWM after a reset,
minus the resident set before the model existed); on CUDA, torch's peak allocated GPU memory. Prints the parameter
count, the memory an fp32 AdamW run needs in theory (weights, gradients, two moments: 16 bytes per parameter), the
measured peak, and its ratio to the 16 GB goal (MindEye's model needs a 40 GB A100).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _memory import reset_peak, status_kib

GOAL_GB = 16.0


def child(batch: int, steps: int, device: str, voxels: int, width: int, depth: int, out_dim: int) -> dict:
    import numpy as np
    import torch

    from lib import runtime
    from lib.models import mlp

    base = reset_peak()
    dev = torch.device(runtime.pick_device(device))
    cfg = mlp.MLPConfig(
        width=width, depth=depth, proj_width=2048, batch_size=batch, bimixco=1.0, softclip=0.0
    )
    model = mlp.ResidualMLP(voxels, out_dim, width, depth, cfg.dropout, True, cfg.proj_width).to(dev)
    opt = runtime.adamw_for(model, cfg.lr, cfg.weight_decay)
    rng = np.random.default_rng(0)
    x = torch.randn(batch, voxels, device=dev)
    y = torch.randn(batch, out_dim, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if dev.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        ):
            loss, _ = mlp.mlp_loss(model, x, y, cfg, mix=True, rng=rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {
        "device": str(dev),
        "params": sum(p.numel() for p in model.parameters()),
        "peak_rss_gb": (status_kib("VmHWM") - base) / 2**20,
        "step_seconds": times,
    }
    if dev.type == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--voxels", type=int, default=15724)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--out-dim", type=int, default=512)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    args = [str(v) for v in (a.batch, a.steps, a.device, a.voxels, a.width, a.depth, a.out_dim)]
    if a.child:
        print(json.dumps(child(a.batch, a.steps, a.device, a.voxels, a.width, a.depth, a.out_dim)))
        return 0
    flags = ["--batch", "--steps", "--device", "--voxels", "--width", "--depth", "--out-dim"]
    cmd = [sys.executable, __file__, "--child"] + [x for pair in zip(flags, args, strict=True) for x in pair]
    r = json.loads(
        subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    )
    theory = r["params"] * 16 / 2**30
    peak = r.get("peak_gpu_gb", r["peak_rss_gb"])
    print(
        f"MLP {a.voxels} -> {a.width} x {a.depth} blocks -> {a.out_dim} (+ projector), batch {a.batch}, {r['device']}"
    )
    print(f"parameters: {r['params']:,} ({r['params'] * 4 / 2**30:.2f} GB fp32); weights + grads + AdamW moments "
          f"in theory {theory:.2f} GB")  # fmt: skip
    print(f"measured peak of {a.steps} training steps: {peak:.2f} GB "
          f"({'GPU allocated' if 'peak_gpu_gb' in r else 'resident, CPU'}); ratio to the {GOAL_GB:.0f} GB goal: "
          f"{peak / GOAL_GB:.2f} (goal <= 1); median step {sorted(r['step_seconds'])[len(r['step_seconds']) // 2]:.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
