"""Training on two processes (torchrun, gloo on CPU) against one process: the MLP trainer with per-process batch B
ends with the weights one process reaches with batch 2B; ranks holding different numbers of rows do not hang; an
interrupted two-process run resumes to the uninterrupted result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lib import distributed
from lib.models.mlp import MLPConfig, train_mlp

ROOT = Path(__file__).resolve().parents[2]


def _data(n=96, v=40, d=8, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6))
    x = z @ rng.normal(size=(6, v)) + 0.3 * rng.normal(size=(n, v))
    y = z @ rng.normal(size=(6, d))
    return x.astype(np.float32), (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def _weights(enc) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in enc.model.state_dict().items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def test_two_processes_with_batch_b_train_as_one_with_batch_2b(tmp_path):
    x, y = _data()
    # BiMixCo for the first epoch, then SoftCLIP: both contrastive terms see the whole 16-row batch, gathered
    # from the two processes; dropout off, since each process draws its own masks
    cfg = dict(
        width=32, depth=1, proj_width=16, epochs=3, lr=1e-3, dropout=0.0, patience=0, bimixco_frac=1 / 3
    )
    one, h_one = train_mlp(x, y, MLPConfig(batch_size=16, **cfg), device="cpu")
    two, h_two = train_mlp(x, y, MLPConfig(batch_size=8, **cfg), device="cpu", state_dir=tmp_path, nproc=2)
    assert h_two["done"] and len(h_two["loss"]) == 3 and "bimixco" in h_two["terms"][0]
    # float32 sums in another order (all-reduce, gathered halves): 18 AdamW steps keep the weights within
    # 1e-5 of each other (a step moves them by about lr = 1e-3; a wrong batch split moves them by that much)
    assert _max_diff(_weights(one), _weights(two)) < 1e-5
    np.testing.assert_allclose(h_two["loss"], h_one["loss"], rtol=1e-5)
    # the same run with a per-process batch of 16 (global 32) is a different run: the check can fail
    other, _ = train_mlp(x, y, MLPConfig(batch_size=16, **cfg), device="cpu", state_dir=tmp_path, nproc=2)
    assert _max_diff(_weights(one), _weights(other)) > 1e-4


def test_accumulating_two_micro_batches_equals_one_batch_twice_the_size():
    x, y = _data()
    # squared error only (its gradient is a mean over rows; contrastive terms see their micro-batch's negatives)
    cfg = dict(width=32, depth=1, proj_width=16, epochs=2, lr=1e-3, dropout=0.0, patience=0, softclip=0.0,
               bimixco=0.0)  # fmt: skip
    big, _ = train_mlp(x, y, MLPConfig(batch_size=16, **cfg), device="cpu")
    acc, _ = train_mlp(x, y, MLPConfig(batch_size=8, **cfg), device="cpu", accumulate=2)
    assert _max_diff(_weights(big), _weights(acc)) < 1e-5


def test_an_interrupted_two_process_run_resumes_to_the_uninterrupted_result(tmp_path):
    x, y = _data()
    cfg = MLPConfig(
        width=32, depth=1, proj_width=16, epochs=3, batch_size=8, lr=1e-3, dropout=0.2, patience=0
    )
    full, h_full = train_mlp(x, y, cfg, device="cpu", state_dir=tmp_path / "full", nproc=2)
    part, h_part = train_mlp(x, y, cfg, device="cpu", state_dir=tmp_path / "cut", stop_after=1, nproc=2)
    assert not h_part["done"] and len(h_part["loss"]) == 1
    with pytest.raises(RuntimeError, match="saved by 2 processes; resume it with 2 \\(this is 1\\)"):
        train_mlp(x, y, cfg, device="cpu", state_dir=tmp_path / "cut", nproc=2, _launch=False)  # one process
    again, h_again = train_mlp(x, y, cfg, device="cpu", state_dir=tmp_path / "cut", nproc=2)
    assert (
        h_again["done"] and h_again["loss"] == h_full["loss"]
    )  # dropout included: each rank's stream resumed
    assert _max_diff(_weights(again), _weights(full)) == 0.0


def test_ranks_with_different_row_counts_finish_instead_of_hanging(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "util" / "_dist_unequal.py"), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}  # its logs
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:  # subprocess.run kills the launcher (and so its workers)
        pytest.fail("two ranks with 100 and 70 rows hung")
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    # 70 rows at 10 per rank make 7 steps, so both ranks stop there; the gradients are averaged, so both end
    # with the same weights and the same last loss (rank 0's own rows give it the same value only by chance)
    assert all(d.startswith("2 epochs") for d in done)


def test_launch_reports_the_failing_ranks_error():
    bad = {
        "x_train": np.zeros((4, 3), np.float32),
        "y_train": np.zeros((5, 2), np.float32),
        "cfg": MLPConfig(),
    }
    with pytest.raises(distributed.DistributedError, match=r"train_mlp on 2 processes failed \(exit 1\): .*"
                       r"EncoderError: x_train \(4, 3\) and y_train \(5, 2\)"):  # fmt: skip
        distributed.launch(train_mlp, 2, bad)


def test_one_process_is_not_a_world():
    w = distributed.world()
    assert (w.rank, w.size, w.main, w.active) == (0, 1, True, False)
    t = torch.ones(3, requires_grad=True)
    assert distributed.gather(t) is t and distributed.smallest(7) == 7 and distributed.agree("x") == "x"
    assert list(range(10))[distributed.local_part(10)] == list(range(10))


def test_gan_on_two_processes_with_batch_b_trains_as_one_with_batch_2b(tmp_path):
    from lib.models import embedding, gan

    emb = embedding.create("mini-rn16", image_size=32, device="cpu", seed=0)
    images = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    feats = emb.embed_images(images)
    # R1 at step 0, both contrastive terms, L1, random crops and noise maps, minibatch-stddev groups of 4
    tiny = dict(z_dim=8, w_dim=16, channel_base=64, channel_max=16, fts_hidden=16, steps=3, itd=1.0, rec=1.0,
                beta1=0.9, crop_min=0.5, r1_interval=2)  # fmt: skip
    # two micro-batches per step on both sides: the global batch is batch_size x processes x accumulate
    G1, D1, h1 = gan.train_gan(images, feats, gan.GANConfig(batch_size=8, **tiny), emb, "cpu", accumulate=2)
    G2, D2, h2 = gan.train_gan(images, feats, gan.GANConfig(batch_size=4, **tiny), emb, "cpu",
                               state_dir=tmp_path, nproc=2, accumulate=2)  # fmt: skip
    assert h2["done"] and len(h2["loss_g"]) == 3
    for one, two in ((G1, G2), (D1, D2)):
        diff = _max_diff(_weights(SimpleNamespace(model=one)), _weights(SimpleNamespace(model=two)))
        assert diff < 1e-4, diff
    np.testing.assert_allclose(h2["loss_g"], h1["loss_g"], rtol=1e-4)
    np.testing.assert_allclose(h2["r1"], h1["r1"], rtol=1e-4)


def _captioned(n=24):
    from lib.data import scenes

    rng = np.random.default_rng(5)
    sc = [scenes.sample_scene(rng) for _ in range(n)]
    return np.stack([scenes.render(s, 32)[0] for s in sc]), [scenes.captions(s, rng, 3) for s in sc]


def test_clip_on_two_processes_with_batch_b_trains_as_one_with_batch_2b(tmp_path):
    from lib.models import contrastive, embedding

    imgs, caps = _captioned()
    # mini-vit: a ViT image tower, no BatchNorm (whose statistics are each process's own on CPU)
    cfg = dict(steps=3, lr=1e-3, checkpoint_every=10, eval_every=0)
    one = embedding.create("mini-vit", 32, "cpu", seed=1)
    h_one = contrastive.train_clip(one, imgs, caps, contrastive.ClipTrainConfig(batch_size=8, **cfg))
    two = embedding.create("mini-vit", 32, "cpu", seed=1)
    h_two = contrastive.train_clip(two, imgs, caps, contrastive.ClipTrainConfig(batch_size=4, **cfg),
                                   state_dir=tmp_path, nproc=2)  # fmt: skip
    assert h_two["done"] and len(h_two["loss"]) == 3
    np.testing.assert_allclose(h_two["loss"], h_one["loss"], rtol=1e-5)
    a, b = _weights(SimpleNamespace(model=one.model)), _weights(SimpleNamespace(model=two.model))
    # attention's key bias has an exactly zero gradient (softmax ignores a constant added to every logit): its
    # float rounding noise, divided by Adam's tiny second moment, moves it by up to lr either way; left out here
    for name in a:
        if name.endswith("in_proj_bias"):
            w = len(a[name]) // 3
            a[name], b[name] = np.delete(a[name], slice(w, 2 * w)), np.delete(b[name], slice(w, 2 * w))
    assert _max_diff(a, b) < 1e-5


def test_dino_on_two_processes_keeps_one_centre_and_resumes_exactly(tmp_path):
    from lib.models import dino

    imgs, _ = _captioned(16)
    x = dino.normalise(imgs)
    # with the masked-patch term: the patch outputs are gathered with the image vectors' (lib.models.dino._views)
    cfg = dino.DinoConfig(steps=3, batch_size=4, out_dim=16, n_local=2, global_size=32, local_size=32,
                          checkpoint_every=1, width=8, stride=16, patch_weight=1.0)  # fmt: skip
    _, t_full, h_full = dino.train_dino(
        x, cfg, state_dir=tmp_path / "full", device="cpu", nproc=2, accumulate=2
    )
    assert h_full["done"] and np.isfinite(h_full["loss"]).all() and min(h_full["patch_loss"]) > 0
    state = torch.load(next((tmp_path / "full").glob("dino-state-*.pt")), weights_only=True)
    c0, c1 = (s["center"] for s in state["loss"])  # each process's centre, updated from the gathered batch
    assert torch.equal(c0, c1) and float(c0.abs().sum()) > 0
    dino.train_dino(x, cfg, state_dir=tmp_path / "cut", device="cpu", stop_after=1, nproc=2, accumulate=2)
    _, t_res, h_res = dino.train_dino(x, cfg, state_dir=tmp_path / "cut", device="cpu", nproc=2, accumulate=2)
    assert h_res["loss"] == h_full["loss"]
    assert _max_diff(_weights(SimpleNamespace(model=t_full)), _weights(SimpleNamespace(model=t_res))) == 0.0


def test_pretraining_stages_on_two_processes_resume_exactly(tmp_path):
    import dataclasses

    from lib.data import corpus as cp
    from lib.models.pretrained import train as pretrain

    cfg = dataclasses.replace(
        pretrain.PROFILES["quick"], clip_steps=4, clip_batch=16, gan_steps=3, gan_adv_steps=2
    )
    corp = cp.Corpus(cfg.seed, cfg.image_size, hard_negatives=cfg.hard_negatives, exclude=frozenset())
    whole, h1 = pretrain.train_embedding(cfg, corp, tmp_path / "a", "cpu", nproc=2)
    assert h1["done"] and h1["scenes"] == cfg.clip_steps * cfg.clip_batch * 2  # each process its own scenes
    pretrain.train_embedding(cfg, corp, tmp_path / "b", "cpu", stop_after=2, nproc=2)
    resumed, h2 = pretrain.train_embedding(cfg, corp, tmp_path / "b", "cpu", nproc=2)
    assert h1["clip"] == h2["clip"]  # each process's caption and noise draws resumed
    assert (
        _max_diff(
            _weights(SimpleNamespace(model=whole.model)), _weights(SimpleNamespace(model=resumed.model))
        )
        == 0
    )
    G, g = pretrain.train_generator(cfg, corp, whole, tmp_path / "a", "cpu", nproc=2, init=None)
    assert g["done"] and np.isfinite(g["l1"]).all() and g["scenes"] == cfg.gan_steps * cfg.gan_batch * 2
