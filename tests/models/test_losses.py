"""Losses and schedules (lib.models.losses) against small cases computed by hand (plain NumPy loops)."""

import math

import numpy as np
import pytest
import torch

from lib.models import losses


def _logsoftmax(row):
    row = np.asarray(row, float)
    return row - np.log(np.exp(row).sum())


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_clip_loss_by_hand():
    img = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    txt = np.array([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    scale = 2.5
    # image i against every text j, then text j against every image i
    i2t = -np.mean([_logsoftmax([scale * img[i] @ txt[j] for j in range(3)])[i] for i in range(3)])
    t2i = -np.mean([_logsoftmax([scale * txt[j] @ img[i] for i in range(3)])[j] for j in range(3)])
    got = losses.clip_loss(torch.tensor(img), torch.tensor(txt), torch.tensor(scale))
    assert float(got) == pytest.approx((i2t + t2i) / 2, rel=1e-12)


def test_clip_loss_is_low_for_matched_pairs_and_log_n_for_identical_rows():
    x = torch.eye(4, dtype=torch.float64)
    assert float(losses.clip_loss(x, x, 100.0)) < 1e-30 + 4 * math.exp(-100) * 2
    same = torch.ones(4, 3, dtype=torch.float64) / math.sqrt(3)
    assert float(losses.clip_loss(same, same, 10.0)) == pytest.approx(math.log(4))


def test_soft_clip_loss_by_hand():
    rng = np.random.default_rng(0)
    pred, target = _unit(rng, 4, 3), _unit(rng, 4, 3)
    t = 0.3
    total_f = total_b = 0.0
    for i in range(4):
        soft = np.exp([target[i] @ target[j] / t for j in range(4)])
        soft /= soft.sum()
        total_f += -(soft * _logsoftmax([pred[i] @ target[j] / t for j in range(4)])).sum()
        # backward direction: row i of the transposed logits is target i against every prediction
        total_b += -(soft * _logsoftmax([pred[j] @ target[i] / t for j in range(4)])).sum()
    want = (total_f + total_b) / 8
    assert float(losses.soft_clip_loss(torch.tensor(pred), torch.tensor(target), t)) == pytest.approx(
        want, rel=1e-12
    )


def test_bimixco_without_mixing_is_infonce_and_by_hand_with_mixing():
    rng = np.random.default_rng(1)
    pred, target = torch.tensor(_unit(rng, 5, 4)), torch.tensor(_unit(rng, 5, 4))
    perm = torch.tensor([1, 0, 3, 4, 2])
    ones = torch.ones(5, dtype=torch.float64)
    t = 0.2
    assert float(losses.bimixco_loss(pred, target, perm, ones, t)) == pytest.approx(
        float(losses.clip_loss(pred, target, 1 / t)), rel=1e-12
    )
    b = torch.tensor([0.7, 1.0, 0.4, 0.9, 0.6], dtype=torch.float64)
    perm = torch.tensor([1, 0, 3, 4, 4])  # row 4 is mixed with itself: it stays itself, label 1
    p, q = pred.numpy(), target.numpy()
    lab = np.zeros((5, 5))
    for i in range(5):
        lab[i, i] += b[i].item()
        lab[i, perm[i].item()] += 1 - b[i].item()
    fwd = -np.mean([(lab[i] * _logsoftmax([p[i] @ q[j] / t for j in range(5)])).sum() for i in range(5)])
    bwd = -np.mean([(lab[:, j] * _logsoftmax([p[i] @ q[j] / t for i in range(5)])).sum() for j in range(5)])
    assert lab[4, 4] == 1 and float(losses.bimixco_loss(pred, target, perm, b, t)) == pytest.approx(
        (fwd + bwd) / 2, rel=1e-12
    )


def test_mixco_mixes_the_selected_rows_with_their_partner():
    x = torch.arange(2000, dtype=torch.float64).view(1000, 2)
    mixed, perm, b = losses.mixco(x, np.random.default_rng(0), beta=0.15, select_prob=0.5)
    want = b[:, None] * x + (1 - b[:, None]) * x[perm]
    assert torch.allclose(mixed, want)
    kept = b == 1
    assert torch.equal(mixed[kept], x[kept])
    assert 0.4 < kept.double().mean() < 0.6  # half the rows are left alone
    # Beta(0.15, 0.15) is U-shaped and symmetric: mixed weights pile up near 0 and 1, mean 1/2
    m = b[~kept]
    assert abs(float(m.mean()) - 0.5) < 0.05 and float(((m < 0.1) | (m > 0.9)).double().mean()) > 0.6


def test_dino_loss_by_hand_and_centre_update():
    rng = np.random.default_rng(2)
    B, K = 2, 3
    s = rng.normal(size=(3 * B, K))  # views: global 0, global 1, local 0
    t = rng.normal(size=(2 * B, K))
    crit = losses.DINOLoss(K, n_global=2, student_temp=0.1, teacher_temp=0.04)
    got = float(crit(torch.tensor(s), torch.tensor(t), step=0))
    total, pairs = 0.0, 0
    for iq in range(2):
        for iv in range(3):
            if iv == iq:
                continue
            for b in range(B):
                q = np.exp(t[iq * B + b] / 0.04)
                q /= q.sum()
                total += -(q * _logsoftmax(s[iv * B + b] / 0.1)).sum() / B
            pairs += 1
    assert pairs == 4
    assert got == pytest.approx(total / pairs, rel=1e-6)  # the loss runs in float32
    assert np.allclose(crit.center.numpy(), 0.1 * t.mean(0, keepdims=True))
    # the next call subtracts the centre before sharpening
    q = crit.teacher_probs(torch.tensor(t), step=0).numpy()
    e = np.exp((t - 0.1 * t.mean(0)) / 0.04)
    assert np.allclose(q, e / e.sum(1, keepdims=True), atol=1e-6)


def test_schedules():
    crit = losses.DINOLoss(4, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_steps=10)
    assert crit.teacher_temperature(0) == pytest.approx(0.04)
    assert crit.teacher_temperature(5) == pytest.approx(0.055)
    assert crit.teacher_temperature(10) == crit.teacher_temperature(99) == pytest.approx(0.07)
    assert losses.cosine_momentum(0, 100) == pytest.approx(0.996)
    assert losses.cosine_momentum(50, 100) == pytest.approx(0.998)
    assert losses.cosine_momentum(100, 100) == pytest.approx(1.0)
    assert losses.warmup_cosine(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert losses.warmup_cosine(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert losses.warmup_cosine(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert losses.warmup_cosine(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert float(losses.entropy(p)) == pytest.approx(math.log(2))


def test_sinkhorn_knopp_marginals_and_a_fixed_point():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(6, 4)) * 2)
    q = losses.sinkhorn_knopp(logits, 0.5, iterations=200).double()
    assert torch.allclose(q.sum(1), torch.ones(6, dtype=q.dtype), atol=1e-5)  # each sample a distribution
    assert torch.allclose(
        q.sum(0), torch.full((4,), 6 / 4, dtype=q.dtype), atol=1e-4
    )  # prototypes equal mass
    # a softmax whose prototypes already get equal mass (a circulant) is its own balanced form
    circ = torch.stack([torch.roll(torch.tensor([3.0, 1.0, 0.0, -1.0]), i) for i in range(4)])
    assert torch.allclose(losses.sinkhorn_knopp(circ, 0.7), torch.softmax(circ / 0.7, -1), atol=1e-6)
    # the loss uses it per global view; an unknown centring is refused by name
    crit = losses.DINOLoss(4, n_global=2, centering="sinkhorn")
    t = torch.tensor(rng.normal(size=(12, 4)))
    got = crit.teacher_probs(t, step=0)
    assert torch.allclose(got[:6], losses.sinkhorn_knopp(t[:6], 0.04)) and torch.allclose(
        got[6:], losses.sinkhorn_knopp(t[6:], 0.04)
    )
    for cls in (losses.DINOLoss, losses.MaskedPatchLoss):
        with pytest.raises(ValueError, match="centering='median'"):
            cls(4, centering="median")
