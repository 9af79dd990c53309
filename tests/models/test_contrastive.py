"""Contrastive (CLIP) training (lib.models.contrastive): it resumes exactly where it stopped, reloads a finished
run, and learns the image-caption pairs."""

import numpy as np
import torch

from lib import metrics
from lib.models import contrastive, embedding
from tests.conftest import _tiny_data


def test_clip_training_resumes_exactly_and_reloads_when_finished(tmp_path):
    imgs, caps = _tiny_data()
    cfg = contrastive.ClipTrainConfig(steps=6, batch_size=8, lr=1e-3, checkpoint_every=2, eval_every=0)
    whole = embedding.create("mini-rn16", 32, "cpu", seed=1)
    h_whole = contrastive.train_clip(whole, imgs, caps, cfg)
    part = embedding.create("mini-rn16", 32, "cpu", seed=1)
    contrastive.train_clip(part, imgs, caps, cfg, state_dir=tmp_path, stop_after=3)
    resumed = embedding.create("mini-rn16", 32, "cpu", seed=1)  # a fresh process would start like this
    h_res = contrastive.train_clip(resumed, imgs, caps, cfg, state_dir=tmp_path)
    assert h_res["loss"] == h_whole["loss"]
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # finished: a second call loads the state and does not train again
    again = embedding.create("mini-rn16", 32, "cpu", seed=1)
    h_again = contrastive.train_clip(again, imgs, caps, cfg, state_dir=tmp_path)
    assert h_again["seconds"] == h_res["seconds"] and len(list(tmp_path.glob("clip-state-*.pt"))) == 1
    # another configuration gets its own state file
    contrastive.train_clip(embedding.create("mini-rn16", 32, "cpu", seed=1), imgs, caps,
                           contrastive.ClipTrainConfig(steps=2, batch_size=8, eval_every=0), state_dir=tmp_path)  # fmt: skip
    assert len(list(tmp_path.glob("clip-state-*.pt"))) == 2


def test_clip_training_learns_the_pairs():
    imgs, caps = _tiny_data(32)
    emb = embedding.create("mini-rn16", 32, "cpu", seed=0)
    before = emb.embed_images(imgs), emb.embed_captions(caps)[0]
    cfg = contrastive.ClipTrainConfig(steps=40, batch_size=16, lr=2e-3, eval_every=0)
    hist = contrastive.train_clip(emb, imgs, caps, cfg)
    after = emb.embed_images(imgs), emb.embed_captions(caps)[0]
    assert np.mean(hist["loss"][-5:]) < 0.7 * np.mean(hist["loss"][:5])
    assert sum(metrics.paired_top1(*after)) > sum(metrics.paired_top1(*before)) + 0.3
