"""The shared-subject encoder (lib.models.shared): a new subject learned from few rows through a backbone
pretrained on others, beside a single-subject MLP on the same rows; the maps-only stage leaves the backbone as
it was; an exact resume; two processes train as one; what is refused."""

import numpy as np
import pytest
import torch

from lib import metrics
from lib.models import shared
from lib.models.mlp import MLPConfig, train_mlp
from lib.models.ridge import EncoderError

LATENT, D = 6, 12


def _world(seed: int = 0):
    """Subjects whose voxels are different linear mixtures (plus noise) of one latent scene code; the target is a
    fixed non-linear function of that code: what a shared backbone can learn once for all subjects."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(LATENT, D))
    mixes = {f"s{i}": rng.normal(size=(LATENT, v)) for i, v in enumerate((30, 40, 50))}

    def rows(subject, n, r):
        z = r.normal(size=(n, LATENT))
        x = z @ mixes[subject] + 0.5 * r.normal(size=(n, mixes[subject].shape[1]))
        return x.astype(np.float32), np.tanh(z @ w).astype(np.float32)

    return rows


CFG = dict(width=48, depth=1, proj_width=24, epochs=25, batch_size=32, lr=3e-3, patience=0)


def test_a_new_subject_learned_from_few_rows_through_a_pretrained_backbone():
    rows, r = _world(), np.random.default_rng(1)
    cfg = shared.SharedConfig(latent=24, **CFG)
    base, hist = shared.train_shared({"s0": rows("s0", 500, r), "s1": rows("s1", 500, r)}, cfg, device="cpu")
    assert hist["loss"][-1] < hist["loss"][0] and base.subjects == ["s0", "s1"]
    few, test = rows("s2", 60, r), rows("s2", 200, r)
    maps, _ = shared.train_shared({"s2": few}, cfg, start=base, train="maps", device="cpu")
    for k, v in base.model.backbone.state_dict().items():  # the maps-only stage never moves the backbone
        assert torch.equal(v, maps.model.backbone.state_dict()[k]), k
    assert torch.equal(base.model.maps["s0"].weight, maps.model.maps["s0"].weight)
    tuned, _ = shared.train_shared({"s2": few}, cfg, start=maps, train="all", device="cpu")
    single, _ = train_mlp(*few, MLPConfig(**CFG), device="cpu")
    top1 = {name: metrics.retrieval(f(test[0]), test[1], n=200, draws=1)["image"] for name, f in (
        ("maps", lambda x: maps.retrieval_space(x, "s2")), ("tuned", lambda x: tuned.retrieval_space(x, "s2")),
        ("single", single.retrieval_space))}  # fmt: skip
    # chance is 1/200; the subject's own 60 rows alone barely lift an MLP off it
    assert top1["tuned"] > 4 * top1["single"] and top1["maps"] > 4 * top1["single"] and top1["tuned"] > 0.2, (
        top1
    )
    assert maps.parameters_of("s2") == 50 * 24 + 24  # the new subject's own: its map


def test_shared_training_resumes_exactly(tmp_path):
    rows, r = _world(), np.random.default_rng(2)
    data = {"s0": rows("s0", 120, r), "s1": rows("s1", 100, r)}
    cfg = shared.SharedConfig(latent=16, **(CFG | {"epochs": 4}))
    whole, h_whole = shared.train_shared(data, cfg, device="cpu")
    _, h_cut = shared.train_shared(data, cfg, device="cpu", state_dir=tmp_path, stop_after=2)
    assert not h_cut["done"] and len(h_cut["loss"]) == 2
    again, h_again = shared.train_shared(data, cfg, device="cpu", state_dir=tmp_path)
    assert h_again["loss"] == h_whole["loss"]
    for a, b in zip(whole.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_two_processes_train_as_one_with_twice_the_batch(tmp_path):
    rows, r = _world(), np.random.default_rng(3)
    data = {"s0": rows("s0", 96, r), "s1": rows("s1", 96, r)}
    cfg = CFG | {"epochs": 2, "dropout": 0.0}
    one, h_one = shared.train_shared(
        data, shared.SharedConfig(latent=16, **(cfg | {"batch_size": 32})), device="cpu"
    )
    two, h_two = shared.train_shared(data, shared.SharedConfig(latent=16, **(cfg | {"batch_size": 16})), device="cpu",
                                     state_dir=tmp_path, nproc=2)  # fmt: skip
    np.testing.assert_allclose(h_two["loss"], h_one["loss"], rtol=1e-5)
    diff = max(float((a - b).abs().max()) for a, b in zip(one.model.state_dict().values(),
                                                             two.model.state_dict().values(), strict=True))  # fmt: skip
    assert diff < 1e-5


def test_what_is_refused():
    rows, r = _world(), np.random.default_rng(4)
    cfg = shared.SharedConfig(latent=8, **(CFG | {"epochs": 1}))
    x, y = rows("s0", 40, r)
    with pytest.raises(EncoderError, match="train='some'"):
        shared.train_shared({"s0": (x, y)}, cfg, train="some", device="cpu")
    with pytest.raises(EncoderError, match="same width"):
        shared.train_shared({"s0": (x, y), "s1": (x, y[:, :3])}, cfg, device="cpu")
    with pytest.raises(EncoderError, match="val_subject='s9'"):
        shared.train_shared({"s0": (x, y)}, cfg, val_subject="s9", x_val=x, y_val=y, device="cpu")
    enc, _ = shared.train_shared({"s0": (x, y)}, cfg, device="cpu")
    with pytest.raises(EncoderError, match="subject 's1'"):
        enc.predict(x, "s1")
    with pytest.raises(EncoderError, match=r"expected \(n, 30\) for s0"):
        enc.predict(x[:, :5], "s0")
    with pytest.raises(EncoderError, match="latent=0"):
        shared.SharedConfig(latent=0).check()
