"""Benchmark: 05's scoring of reconstructions, the library's way against the straightforward way, in one run.

    python benchmarks/bench_scoring.py [--sets 8] [--images 300] [--size 64]

PixCorr and SSIM (MindEye's definitions at 425 px) of ``--sets`` image sets against the same targets:
"per set" scores each set on its own as the definitions read (both images resized for each metric, the five SSIM maps
blurred by a 23-tap grouped convolution); "shared" is ``lib.metrics.low_level_per_image`` (each chunk of targets
resized, greyed and blurred once for every set, the blur as two products with a banded matrix). EfficientNet-Lite0's
pooled features of the same images: batch norm as separate layers against folded into the convolutions
(``EfficientNetLite0.fuse_``). Prints seconds, the speed-ups and the largest absolute differences; writes
build/bench/bench_scoring.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib import fileio, metrics
from lib.analysis import perceptual

ROOT = Path(__file__).resolve().parents[1]


def per_set(recons: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PixCorr and SSIM of one set, each metric resizing both images itself, SSIM's blur a grouped convolution."""
    size, radius = metrics.METRIC_SIZE, 5
    g = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / 1.5) ** 2)
    g = (g / g.sum()).float()
    gx, gy = g.view(1, 1, 1, -1).repeat(5, 1, 1, 1), g.view(1, 1, -1, 1).repeat(5, 1, 1, 1)
    grey = torch.tensor([0.2125, 0.7154, 0.0721]).view(1, 3, 1, 1)

    def pairs():
        for i in range(0, len(targets), 32):
            r, t = (metrics.resize(metrics._images(a[i : i + 32], "x"), size) for a in (recons, targets))
            yield r, t

    pix = np.concatenate([metrics._pixcorr(r, t) for r, t in pairs()])
    out = []
    for r, t in pairs():
        x, y = (r * grey).sum(1, keepdim=True), (t * grey).sum(1, keepdim=True)
        both = torch.cat([x, y, x * x, y * y, x * y], 1)
        mx, my, xx, yy, xy = F.conv2d(F.conv2d(both, gx, groups=5), gy, groups=5).split(1, dim=1)
        vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
        c1, c2 = 0.01**2, 0.03**2
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out.append(s.double().mean(dim=[1, 2, 3]).numpy())
    return pix, np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", type=int, default=8)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    sets = {f"set {i}": np.clip(targets + rng.normal(0, 30 + 10 * i, targets.shape), 0, 255).astype(np.uint8)
            for i in range(args.sets)}  # fmt: skip
    t0 = time.perf_counter()
    want = {v: per_set(r, targets) for v, r in sets.items()}
    t_per_set = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = metrics.low_level_per_image(sets, targets)
    t_shared = time.perf_counter() - t0
    diff_low = max(
        float(np.abs(got[v][m] - want[v][j]).max()) for v in sets for j, m in enumerate(("PixCorr", "SSIM"))
    )
    images = np.concatenate(list(sets.values())[:2])
    with torch.no_grad():
        net = perceptual.FeatureNet("efficientnet_lite0", ["pool"], device="cpu")
        plain = perceptual.FeatureNet._build("efficientnet_lite0", None, False).eval()
        t0 = time.perf_counter()
        fused = net(images, 224)["pool"]
        t_fused = time.perf_counter() - t0
        net.extract = lambda x: {"pool": plain.pool(x)}
        t0 = time.perf_counter()
        unfused = net(images, 224)["pool"]
        t_unfused = time.perf_counter() - t0
    out = {
        "sets": args.sets, "images": args.images, "size": args.size, "threads": torch.get_num_threads(),
        "low_level_seconds": {"per set": t_per_set, "shared": t_shared}, "low_level_speedup": t_per_set / t_shared,
        "low_level_max_abs_diff": diff_low, "effnet_images": len(images),
        "effnet_seconds": {"batch norm layers": t_unfused, "folded": t_fused}, "effnet_speedup": t_unfused / t_fused,
        "effnet_max_abs_diff": float(np.abs(fused - unfused).max()),
    }  # fmt: skip
    print(f"PixCorr + SSIM, {args.sets} sets x {args.images} images: per set {t_per_set:.1f} s, shared "
          f"{t_shared:.1f} s ({out['low_level_speedup']:.2f}x), largest difference {diff_low:.1e}")  # fmt: skip
    print(f"EfficientNet-Lite0, {len(images)} images at 224 px: batch norm layers {t_unfused:.1f} s, folded "
          f"{t_fused:.1f} s ({out['effnet_speedup']:.2f}x), largest difference {out['effnet_max_abs_diff']:.1e}")  # fmt: skip
    path = ROOT / "build" / "bench" / "bench_scoring.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_json(path, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
