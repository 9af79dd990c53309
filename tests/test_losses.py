"""Losses and schedules against small cases computed by hand (plain NumPy loops), and k-NN against scikit-learn."""

import math

import numpy as np
import pytest
import torch

from lib.models import dino, losses


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


def test_knn_predict_matches_scikit_learn():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(3)
    train, test = rng.normal(size=(200, 6)), rng.normal(size=(50, 6))
    labels = np.array(list("abcd"))[rng.integers(4, size=200)]
    labels[train[:, 0] > 0.5] = "e"  # some structure
    T = 0.07
    ref = KNeighborsClassifier(n_neighbors=20, metric="cosine", weights=lambda d: np.exp((1 - d) / T))
    want = ref.fit(train, labels).predict(test)
    assert (dino.knn_predict(train, labels, test, k=20, temperature=T) == want).all()


def test_probes_find_a_linearly_coded_attribute_and_not_a_random_one():
    import pandas as pd

    rng = np.random.default_rng(4)
    f = rng.normal(size=(400, 10))
    table = pd.DataFrame({"coded": np.where(f[:, 3] > 0, "yes", "no"), "random": rng.integers(3, size=400)})
    tr, te = slice(0, 300), slice(300, 400)
    lin = dino.linear_probe_accuracy(f[tr], f[te], table[tr], table[te])
    assert lin["coded"] > 0.9 and lin["random"] < 0.55
    knn = dino.knn_accuracy(f[tr], f[te], table[tr], table[te], k=10)
    assert knn["random"] < 0.55
