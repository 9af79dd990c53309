"""Run by tests/util/test_distributed.py under torchrun: each process holds a different number of rows (rank r drops
30 x r of them); the MLP trainer must finish on every rank instead of waiting on a collective another never calls."""

import os
import sys
from pathlib import Path

import numpy as np

from lib import distributed
from lib.models.mlp import MLPConfig, train_mlp

rank = int(os.environ["RANK"])
rng = np.random.default_rng(0)
x = rng.normal(size=(100, 20)).astype(np.float32)
y = rng.normal(size=(100, 6)).astype(np.float32)
keep = 100 - 30 * rank
cfg = MLPConfig(width=16, depth=1, proj_width=8, epochs=2, batch_size=10, patience=0)
enc, hist = train_mlp(x[:keep], y[:keep], cfg, device="cpu")
Path(sys.argv[1], f"rank{rank}.txt").write_text(f"{len(hist['loss'])} epochs, {hist['loss'][-1]:.6f}")
distributed.finish()
