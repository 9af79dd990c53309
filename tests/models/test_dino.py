"""DINO (lib.models.dino): the teacher's EMA update in closed form, the head, multi-crop views, the patch tokens,
masks, KoLeo and the masked-patch term by hand, object-centred crops against the scene generator's object
coverage, configuration errors, backbone files, and training that resumes exactly."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from lib import fileio
from lib.data import corpus as cp
from lib.models import dino, losses
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


def test_stride_16_backbone_keeps_a_4x4_grid_of_patch_tokens():
    net = dino.ResNetBackbone(width=8, stride=16).eval()
    x = torch.randn(2, 3, 64, 64)
    tokens = net.tokens(x)
    assert tokens.shape == (2, net.dim, 4, 4)
    assert torch.allclose(net(x), tokens.mean((2, 3)), atol=1e-6)
    grid = net.grid(x)  # 2 x 2 cells, each the mean of its 2 x 2 tokens
    cell = tokens[:, :, 2:, :2].mean((2, 3))  # bottom-left: the third cell of the row-major grid
    assert torch.allclose(grid.view(2, net.dim, 4)[:, :, 2], cell, atol=1e-6)
    assert dino.ResNetBackbone(width=8).eval().tokens(x).shape[-1] == 2
    with pytest.raises(ValueError, match="stride=8"):
        dino.ResNetBackbone(width=8, stride=8)


def test_patch_masks_and_apply_masks():
    gen = torch.Generator().manual_seed(0)
    masks = dino.patch_masks(500, 4, (0.1, 0.5), gen)
    hidden = masks.flatten(1).sum(1)
    assert masks.shape == (500, 4, 4) and hidden.min() >= 1 and hidden.max() <= 8  # 0.5 * 16
    assert 1 <= hidden.float().mean() <= 8 and len(set(hidden.tolist())) > 3
    crops = torch.randn(500, 3, 64, 64)
    out = dino.apply_masks(crops, masks)
    up = masks.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, None].expand_as(crops)
    assert torch.all(out[up] == 0) and torch.equal(out[~up], crops[~up])


def test_koleo_closed_form():
    # four unit vectors at the corners of a square: each one's nearest other is sqrt(2) away
    z = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]) * 3  # the estimator normalises the rows
    assert torch.isclose(dino.koleo(z), torch.tensor(-0.5 * math.log(2.0)), atol=1e-6)
    # moving two points together lowers the nearest distances, which raises the loss
    squeezed = torch.tensor([[1.0, 0], [0.99, 0.141], [-1, 0], [0, -1]])
    assert dino.koleo(squeezed) > dino.koleo(z)


def test_colour_rarity_counts_each_images_colour_shares():
    x = torch.zeros(2, 3, 8, 8)
    x[0, 0, :2, :] = 1.0  # image 0: a quarter of the pixels in a second colour
    x[1, 1, 0, 0] = 1.0  # image 1: one pixel of a second colour
    r = dino.colour_rarity(x)
    assert torch.allclose(r[0, 0, 0], torch.tensor(0.25)) and torch.allclose(r[0, 7, 7], torch.tensor(0.75))
    assert torch.allclose(r[1, 0, 0], torch.tensor(1 / 64)) and torch.allclose(
        r[1, 5, 5], torch.tensor(63 / 64)
    )


def test_object_centres_land_on_objects_far_above_their_share_of_the_image():
    """Against the scene generator's object coverage, which the centres never see."""
    b = cp.Corpus(0, 64).take(128, start=9_000_000)
    x = dino.normalise(b.images)
    gen = torch.Generator().manual_seed(0)
    c = dino.object_centres(x, 4, 1.0, gen)
    rows = torch.arange(4 * 128) % 128
    cover = torch.as_tensor(b.objects)[rows, c[:, 1].long().clamp(0, 63), c[:, 0].long().clamp(0, 63)]
    assert (cover > 0.5).float().mean() > 3 * b.objects.mean()  # about 0.45 against 0.09
    free = dino.object_centres(x, 4, 0.0, gen)
    assert torch.isnan(free).all()
    # a crop is placed on its centre where the image allows, else anywhere
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(4, 1, 64, 64).contiguous()
    where = torch.tensor([[10.0, 32], [54, 32], [float("nan"), float("nan")], [32, 32]])
    crops = dino.multicrop(
        ramp, 1, 32, (0.1, 0.1), torch.Generator().manual_seed(0), flip=False, centres=where
    )
    mid = crops[:, 0, 16, 16] * 63  # the ramp's value is the x position
    assert abs(mid[0] - 10) < 2 and abs(mid[1] - 54) < 2 and abs(mid[3] - 32) < 2


def test_masked_patch_loss_by_hand():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    masks = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    crit = losses.MaskedPatchLoss(5, student_temp=0.1, center_momentum=0.9)
    got = crit(s, t, masks, 0.04)
    per_image = []
    for i in range(3):
        ce = [-(torch.softmax(t[i, p] / 0.04, -1) * torch.log_softmax(s[i, p] / 0.1, -1)).sum() for p in range(4)
              if masks[i, p]]  # fmt: skip
        per_image.append(torch.stack(ce).mean())
    assert torch.isclose(got, torch.stack(per_image).mean(), atol=1e-5)
    assert torch.allclose(crit.center, 0.1 * t.mean((0, 1), keepdim=True))


def test_every_term_trains_and_resumes_exactly(tmp_path):
    imgs, _ = _tiny_data(16)
    x = dino.normalise(imgs)
    cfg = dino.DinoConfig(steps=3, batch_size=4, out_dim=16, n_local=2, global_size=32, local_size=32,
                          checkpoint_every=1, width=8, stride=16, patch_weight=1.0, koleo_weight=0.1,
                          object_crops=0.5, colour_jitter=0.8, grey=0.2, pair_share=0.5)  # fmt: skip
    partners = np.r_[np.arange(8, 16), np.arange(8)]  # image i and i + 8 are a pair
    _, t_whole, h_whole = dino.train_dino(x, cfg, device="cpu", partners=partners)
    assert all(v > 0 for v in h_whole["patch_loss"]) and len(h_whole["koleo"]) == 3
    dino.train_dino(x, cfg, state_dir=tmp_path, device="cpu", stop_after=2, partners=partners)
    _, t_res, h_res = dino.train_dino(x, cfg, state_dir=tmp_path, device="cpu", partners=partners)
    assert h_res["loss"] == h_whole["loss"] and h_res["patch_loss"] == h_whole["patch_loss"]
    for a, b in zip(t_whole.state_dict().values(), t_res.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_backbone_files_round_trip_and_the_earlier_format_is_refused(tmp_path):
    net = dino.ResNetBackbone(width=8, stride=16).eval()
    stats = (np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.2, 0.2]))
    f = dino.save_backbone(tmp_path / "b.safetensors", net, stats)
    back, (mean, _) = dino.load_backbone(f)
    assert back.stride == 16 and np.allclose(mean, stats[0])
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(back.grid(x), net.grid(x), atol=2e-2)  # float16 weights
    state, _ = fileio.read_safetensors(f)
    old = fileio.safetensors_bytes(
        state, {"format": "lib.dino.backbone/1", "width": "8", "layers": "[1, 1, 1, 1]"}
    )
    fileio.write_bytes(tmp_path / "old.safetensors", old)
    with pytest.raises(
        ValueError, match=r"old.safetensors: a DINO backbone of the earlier recipe .*make pretrain"
    ):
        dino.load_backbone(tmp_path / "old.safetensors")
    with pytest.raises(ValueError, match="pooling='mean'"):
        dino.features(net, x, pooling="mean")


def test_new_config_errors():
    for bad, match in (({"stride": 8}, "stride=8"), ({"object_crops": 1.5}, "object_crops"),
                       ({"patch_weight": -1}, "patch_weight"), ({"mask_ratio": (0.2, 1.0)}, "mask_ratio"),
                       ({"patch_weight": 1.0, "stride": 32, "global_size": 48}, "global_size=48"),
                       ({"background_swap": 2.0}, "background_swap"), ({"centering": "median"}, "centering")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            dino.DinoConfig(**bad).check()


def test_colour_jitter_rotates_about_the_grey_axis():
    x = torch.randn(6, 3, 5, 5)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.allclose(dino.colour_jitter(x, 0.0, 0.5, 0.4, 0.0, gen()), x, atol=1e-6)  # p = 0: unchanged
    rot = dino.colour_jitter(x, 1.0, 0.5, 0.0, 0.0, gen())  # hue only: a rotation about (1, 1, 1)
    u = torch.ones(3) / math.sqrt(3)
    along = lambda t: torch.einsum("nchw,c->nhw", t, u)  # noqa: E731
    off = lambda t: (t - along(t)[:, None] * u.view(1, 3, 1, 1)).norm(dim=1)  # noqa: E731
    assert torch.allclose(along(rot), along(x), atol=1e-5) and torch.allclose(off(rot), off(x), atol=1e-5)
    assert not torch.allclose(rot, x, atol=1e-3)
    grey = dino.colour_jitter(
        x, 0.0, 0.5, 0.4, 1.0, gen()
    )  # every crop made grey: the projection on the axis
    assert torch.allclose(grey, along(x)[:, None] * u.view(1, 3, 1, 1), atol=1e-5)


def test_draw_batch_keeps_pairs_together():
    partners = np.full(100, -1)
    partners[:20], partners[20:40] = np.arange(20, 40), np.arange(20)  # rows 0-19 paired with 20-39
    rows = dino.draw_batch(np.random.default_rng(0), 100, 16, partners, pair_share=0.5)
    assert len(rows) == 16 and len(set(rows.tolist())) == 16
    pairs = sum(1 for r in rows if partners[r] >= 0 and partners[r] in rows) // 2
    assert pairs >= 4  # half of 16 rows come as pairs
    plain = dino.draw_batch(np.random.default_rng(0), 100, 16)
    assert np.array_equal(plain, np.random.default_rng(0).choice(100, 16, replace=False))
    imgs, _ = _tiny_data(8)
    cfg = dino.DinoConfig(
        steps=1, batch_size=4, out_dim=16, n_local=0, global_size=32, width=8, pair_share=0.5
    )
    with pytest.raises(ValueError, match="pair_share=0.5: needs partners"):
        dino.train_dino(dino.normalise(imgs), cfg, device="cpu")


def test_object_masks_against_the_generators_object_coverage():
    """Rare-colour pixels, opened: against the scene generator's object coverage, which the masks never see."""
    b = cp.Corpus(0, 64).take(128, start=9_000_000)
    m = dino.object_masks(torch.as_tensor(dino.normalise(b.images)))
    obj = torch.as_tensor(b.objects) > 0.5
    precision = float((m & obj).sum() / m.sum())
    recall = float((m & obj).sum() / obj.sum())
    assert precision > 4 * float(obj.float().mean()) and recall > 0.7  # about 0.55 against 0.09, and 0.9
    # the opening drops a one-pixel line of a rare colour and keeps a 4 x 4 square
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, 2, :] = 1.0
    x[0, 1, 8:12, 8:12] = 1.0
    got = dino.object_masks(x)[0]
    assert not got[2].any() and got[8:12, 8:12].all() and int(got.sum()) == 16


def test_swap_backgrounds_keeps_the_objects_over_another_images_background():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 8, 8).clone()  # image i is all i
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 2:4, 2:4] = True
    x[:, :, 2:4, 2:4] += 10  # each image's object
    out = dino.swap_backgrounds(x, masks, 1.0, gen)
    assert torch.equal(out[:, :, 2:4, 2:4], x[:, :, 2:4, 2:4])  # objects kept in place
    donors = out[:, 0, 0, 0]
    assert (donors != torch.arange(4.0)).all() and set(donors.tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert torch.equal(out[:, :, 4:, :], donors.view(4, 1, 1, 1).expand(4, 3, 4, 8))  # the donor's background
    assert torch.equal(dino.swap_backgrounds(x, masks, 0.0, gen), x)
    # a donor's own objects are filled with its background's median colour, not pasted along
    two = torch.zeros(2, 3, 8, 8)
    two[1] = 1.0
    two[0, :, 1:3, 1:3], two[1, :, 5:7, 5:7] = 10.0, 20.0
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 1:3, 1:3] = masks[1, 5:7, 5:7] = True
    out = dino.swap_backgrounds(two, masks, 1.0, gen)
    want = torch.stack([torch.ones(3, 8, 8), torch.zeros(3, 8, 8)])
    want[0, :, 1:3, 1:3], want[1, :, 5:7, 5:7] = 10.0, 20.0
    assert torch.equal(out, want)
