"""Benchmark: the convolutions of the generator, EfficientNet-Lite0 and the read-back judge with their activations in
NCHW (PyTorch's default) against NHWC (``channels_last``, as the library runs them), in one run.

    python benchmarks/bench_nhwc.py [--batch 64] [--repeats 5]

Times, each the median of ``--repeats`` after a warm-up: the shipped generator's synthesis forward and backward at
``--batch``; EfficientNet-Lite0's pooled features (batch norm folded) of 32 images at 224 px; one training step of
the read-back judge (forward, backward, AdamW) at ``--batch`` images of 64 px. The NCHW runs call the same modules
with the library's conversion undone. Prints seconds, the speed-ups and the largest absolute output differences;
writes build/bench/bench_nhwc.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from lib import fileio
from lib.analysis import perceptual, readback
from lib.models import pretrained

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def nchw():
    """``Tensor.contiguous(memory_format=channels_last)`` as a plain ``contiguous()``: the library's NHWC undone."""
    real = torch.Tensor.contiguous

    def plain(self, memory_format=torch.contiguous_format):
        return real(self)

    torch.Tensor.contiguous = plain
    try:
        yield
    finally:
        torch.Tensor.contiguous = real


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    G = pretrained.load_generator(device="cpu").requires_grad_(True)
    ws = G.mapping(torch.zeros(a.batch, G.z_dim), None).detach()
    fts = F.normalize(torch.randn(a.batch, G.f_dim), dim=-1)

    def generator():
        w = ws.clone().requires_grad_(True)
        img = G.synthesis(w, fts, noise_mode="const")
        img.square().mean().backward()
        return img.detach()

    eff = perceptual.EfficientNetLite0().eval().requires_grad_(False).fuse_()
    x224 = torch.randn(32, 3, 224, 224)

    def effnet():
        with torch.no_grad():
            return eff.pool(x224.contiguous(memory_format=torch.channels_last))

    classes = {"a": 5, "b": 8, "c": 6, "d": 4, "e": 9}
    x64 = torch.rand(a.batch, 3, 64, 64) * 2 - 1

    def judge_step(net, opt):
        def step():
            out = net(x64)
            loss = sum(F.cross_entropy(v, torch.zeros(len(v), dtype=torch.long)) for v in out.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()

        return step

    rows = {}
    for name, make in (("generator forward+backward", lambda: generator),
                       ("EfficientNet-Lite0 features", lambda: effnet)):  # fmt: skip
        with nchw():
            base, ref = timed(make(), a.repeats)
        fast, out = timed(make(), a.repeats)
        rows[name] = {"nchw_s": base, "nhwc_s": fast, "speedup": base / fast,
                      "max_abs_diff": float((ref - out).abs().max())}  # fmt: skip
    for fmt in ("nchw", "nhwc"):  # same initial weights: one step each from the same state
        torch.manual_seed(1)
        net = readback._Net(classes)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
        if fmt == "nchw":
            with nchw():
                t, _ = timed(judge_step(net, opt), a.repeats)
        else:
            t, _ = timed(judge_step(net, opt), a.repeats)
        rows.setdefault("read-back judge step", {})[f"{fmt}_s"] = t
    jr = rows["read-back judge step"]
    jr["speedup"] = jr["nchw_s"] / jr["nhwc_s"]
    for name, r in rows.items():
        diff = f", largest difference {r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""
        print(f"{name:<30} NCHW {r['nchw_s']:.3f} s  NHWC {r['nhwc_s']:.3f} s  {r['speedup']:.2f}x{diff}")
    out = ROOT / "build" / "bench" / "bench_nhwc.json"
    fileio.write_json(
        out, {"batch": a.batch, "repeats": a.repeats, "threads": torch.get_num_threads(), **rows}
    )
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
