"""Benchmark: training throughput on 1 and 2 processes (torchrun, gloo on CPU; lib.distributed), same run.

    python benchmarks/bench_distributed.py [--voxels 4000 --rows 2048 --batch 64 --epochs 3] [--gan-steps 20]

Each configuration goes through the same launch path (lib.distributed.launched: torchrun workers train, the state
file comes back): the MindEye-style MLP encoder (``--voxels`` -> 512, width 1024, 2 residual blocks, MSE +
BiMixCo/SoftCLIP) with ``--batch`` rows per process, and the 32 px conditional GAN with 8 images per process.
Samples/s count the global batch over rank 0's training seconds (``history["seconds"]``: the epochs or steps
only, not the launch). Every process runs one BLAS thread; "1 x 2 threads" is the other way to use two cores.
The ratio 2 processes / 1 process is what this machine's cores can show; the GPU path (NCCL) is the same code.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _mlp(nproc: int, threads: int, a) -> float:
    from lib import distributed
    from lib.models.mlp import MLPConfig, train_mlp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.rows, a.voxels)).astype(np.float32)
    y = rng.normal(size=(a.rows, 512)).astype(np.float32)
    cfg = MLPConfig(width=1024, depth=2, epochs=a.epochs, batch_size=a.batch, patience=0)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        kw = {"x_train": x, "y_train": y, "cfg": cfg, "device": "cpu", "stop_after": None}
        _, hist = distributed.launched(train_mlp, nproc, kw, tmp, "mlp")
    steps = a.rows // (a.batch * nproc)
    return a.epochs * steps * a.batch * nproc / hist["seconds"]


def _gan(nproc: int, threads: int, a) -> float:
    from lib import distributed
    from lib.models import embedding, gan

    emb = embedding.create("mini-rn16", image_size=32, device="cpu", seed=0)
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    feats = emb.embed_images(images)
    cfg = gan.GANConfig(batch_size=8, steps=a.gan_steps, save_every=10**6)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        kw = {
            "images": images,
            "features": feats,
            "cfg": cfg,
            "embedder": emb,
            "device": "cpu",
            "stop_after": None,
        }
        _, _, hist = distributed.launched(gan.train_gan, nproc, kw, tmp, "gan")
    return a.gan_steps * 8 * nproc / hist["seconds"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voxels", type=int, default=4000)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64, help="MLP rows per process")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--gan-steps", type=int, default=20)
    a = ap.parse_args(argv)
    os.environ.setdefault("LIB_QUIET", "1")
    print(f"{os.cpu_count()} CPU cores; torchrun + gloo; samples/s over rank 0's training time")
    for name, fn in (("MLP encoder", _mlp), ("GAN 32 px", _gan)):
        t0 = time.perf_counter()
        rates = {label: fn(n, t, a) for label, n, t in (("1 process", 1, 1), ("1 x 2 threads", 1, 2),
                                                         ("2 processes", 2, 1))}  # fmt: skip
        cells = " | ".join(f"{k} {v:8.1f}" for k, v in rates.items())
        ratio = rates["2 processes"] / rates["1 process"]
        print(
            f"{name:>12}: {cells} samples/s | 2 / 1 processes {ratio:4.2f} x ({time.perf_counter() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main()
