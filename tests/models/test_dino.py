"""DINO (lib.models.dino): the teacher's EMA update in closed form, the head, multi-crop views, configuration
errors, and training that resumes exactly."""

import dataclasses

import pytest
import torch

from lib.models import dino
from tests.conftest import _tiny_data


def test_ema_update_closed_form():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    dino.ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, 0.9 * wa + 0.1 * wb)


def test_dino_head_last_layer_has_unit_norm_rows_and_frozen_norm():
    head = dino.DINOHead(8, out_dim=16, hidden=12, bottleneck=5)
    w = head.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(16), atol=1e-6)
    assert not head.last_layer.parametrizations.weight.original0.requires_grad


def test_multicrop_shapes_order_and_flips():
    B = 3
    x = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 2, 40, 40).contiguous()
    out = dino.multicrop(x, n=4, size=16, scale=(0.1, 0.5), generator=torch.Generator().manual_seed(0))
    assert out.shape == (4 * B, 2, 16, 16)
    # view-major: crop k of image i is row k * B + i, and a crop of a constant image is that constant
    assert torch.allclose(out[:, 0, 0, 0], torch.arange(4 * B, dtype=torch.float32) % B)
    ramp = torch.linspace(0, 1, 40).view(1, 1, 1, 40).expand(64, 1, 40, 40).contiguous()
    crops = dino.multicrop(ramp, n=1, size=8, scale=(0.3, 0.6), generator=torch.Generator().manual_seed(1))
    rising = crops[:, 0, 4, -1] > crops[:, 0, 4, 0]
    assert 0.2 < rising.float().mean() < 0.8  # about half are mirrored


def test_dino_training_resumes_exactly(tmp_path):
    imgs, _ = _tiny_data(16)
    x = dino.normalise(imgs)
    cfg = dino.DinoConfig(steps=4, batch_size=4, out_dim=16, n_local=2, global_size=32, local_size=32,
                          checkpoint_every=1, width=8)  # fmt: skip
    _, t_whole, h_whole = dino.train_dino(x, cfg, device="cpu")
    dino.train_dino(x, cfg, state_dir=tmp_path, device="cpu", stop_after=2)
    _, t_res, h_res = dino.train_dino(x, cfg, state_dir=tmp_path, device="cpu")
    assert h_res["loss"] == h_whole["loss"] and h_res["momentum"] == h_whole["momentum"]
    for a, b in zip(t_whole.state_dict().values(), t_res.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    # after one step the teacher is exactly m * initial weights + (1 - m) * the student's, m = 0.996
    one = dataclasses.replace(cfg, steps=1)
    student, teacher, _ = dino.train_dino(x, one, device="cpu")
    init, _ = dino.build(one)
    for pt, ps, p0 in zip(teacher.parameters(), student.parameters(), init.parameters(), strict=True):
        assert torch.allclose(pt, 0.996 * p0 + 0.004 * ps, atol=1e-7)
    assert any(
        not torch.equal(ps, p0) for ps, p0 in zip(student.parameters(), init.parameters(), strict=True)
    )


def test_dino_config_errors():
    with pytest.raises(ValueError, match="local_size=16"):
        dino.DinoConfig(local_size=16).check()
    with pytest.raises(ValueError, match="global_scale"):
        dino.DinoConfig(global_scale=(0.5, 1.5)).check()
