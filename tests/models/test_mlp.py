"""The residual MLP encoder (lib.models.mlp): shapes, the loss by hand, learning, an exact resume, early
stopping, configurations refused before training, and non-finite inputs (the GAN trainer's too)."""

import numpy as np
import pytest
import torch

from lib import metrics
from lib.models.mlp import MLPConfig, MLPEncoder, ResidualMLP, mlp_loss, train_mlp
from lib.models.ridge import EncoderError
from tests.conftest import _brain, one_line


def test_mlp_shapes_and_bad_arguments():
    m = ResidualMLP(30, 8, width=16, depth=3, dropout=0.0, projector=True, proj_width=12)
    e, p = m(torch.zeros(5, 30))
    assert e.shape == p.shape == (5, 8)
    n_lin = sum(isinstance(x, torch.nn.Linear) for x in m.modules())
    assert n_lin == 1 + 3 + 1 + 2  # stem, blocks, head, projector
    with pytest.raises(EncoderError, match="dropout=1.5"):
        ResidualMLP(30, 8, dropout=1.5)
    with pytest.raises(EncoderError, match="loss weights"):
        MLPConfig(mse=0, softclip=0, bimixco=0).check()


def test_mlp_loss_regression_terms_by_hand():
    torch.manual_seed(0)
    m = ResidualMLP(6, 3, width=8, depth=1, dropout=0.0, projector=False)
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    cfg = MLPConfig(mse=2.0, cosine=0.5, softclip=0.0, bimixco=0.0, clip=0.0)
    loss, terms = mlp_loss(m, x, y, cfg, mix=False, rng=np.random.default_rng(0))
    e = m(x)[0].detach().numpy().astype(np.float64)
    yy = y.numpy().astype(np.float64)
    mse = np.mean([np.sum((e[i] - yy[i]) ** 2) for i in range(4)])
    cos = np.mean([1 - e[i] @ yy[i] / np.linalg.norm(e[i]) / np.linalg.norm(yy[i]) for i in range(4)])
    assert set(terms) == {"mse", "cosine"}
    np.testing.assert_allclose([terms["mse"], terms["cosine"]], [mse, cos], rtol=1e-5)
    np.testing.assert_allclose(float(loss.detach()), 2 * mse + 0.5 * cos, rtol=1e-5)


def test_mlp_learns_and_beats_chance():
    x, y, x_img, y_img = _brain()
    cfg = MLPConfig(width=64, depth=1, proj_width=32, epochs=30, batch_size=32, lr=3e-3, patience=0)
    enc, hist = train_mlp(x, y, cfg, x_img, y_img, device="cpu")
    ret = metrics.retrieval(enc.retrieval_space(x_img), y_img)
    assert ret["image"] > 10 * ret["chance"], ret
    terms = hist["terms"]
    assert "bimixco" in terms[0] and "softclip" not in terms[0]  # BiMixCo first, then SoftCLIP (MindEye)
    assert "softclip" in terms[-1] and "bimixco" not in terms[-1]
    assert sum("bimixco" in t for t in terms) == 10
    assert hist["loss"][-1] < hist["loss"][0]


def test_mlp_resume_equals_uninterrupted_and_save_load(tmp_path):
    x, y, x_img, y_img = _brain(n_img=60)
    cfg = MLPConfig(width=32, depth=1, proj_width=16, epochs=6, batch_size=20, lr=1e-3, patience=0)
    full, h_full = train_mlp(x, y, cfg, x_img, y_img, device="cpu")
    part, h_part = train_mlp(x, y, cfg, x_img, y_img, device="cpu", state_dir=tmp_path, stop_after=2)
    assert not h_part["done"] and len(h_part["loss"]) == 2
    again, h_again = train_mlp(x, y, cfg, x_img, y_img, device="cpu", state_dir=tmp_path)
    assert h_again["done"] and h_again["loss"] == h_full["loss"]
    np.testing.assert_array_equal(again.predict(x_img), full.predict(x_img))
    back = MLPEncoder.load(full.save(tmp_path / "mlp.pt"), device="cpu")
    np.testing.assert_array_equal(back.project(x_img), full.project(x_img))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(EncoderError, match="junk.pt"):
        MLPEncoder.load(tmp_path / "junk.pt")


def test_mlp_early_stopping_returns_best_epoch():
    x, y, x_img, y_img = _brain(n_img=60)
    cfg = MLPConfig(width=32, depth=1, proj_width=16, epochs=40, batch_size=20, lr=1e-2, patience=3)
    enc, hist = train_mlp(x, y, cfg, x_img, y_img, device="cpu")
    scores = hist["val_img_retrieval_top1"]
    best = int(np.argmax(scores))
    if hist["stopped_early"]:
        assert len(scores) == best + 1 + 3
    got = metrics.retrieval(enc.retrieval_space(x_img), y_img, draws=5, seed=cfg.seed)["image"]
    assert got == pytest.approx(scores[best])


def test_mlp_bad_validation_and_config_are_refused_before_training():
    x, y, x_img, y_img = _brain(n_img=30)
    cfg = MLPConfig(width=8, depth=1, proj_width=8, epochs=1, batch_size=10)
    with pytest.raises(EncoderError, match="x_val and y_val"):
        train_mlp(x, y, cfg, x_img, None, device="cpu")
    with pytest.raises(EncoderError, match=r"x_val \(30, 59\)"):
        train_mlp(x, y, cfg, x_img[:, :-1], y_img, device="cpu")
    for bad in ({"val_every": 0}, {"patience": -1}, {"pct_start": 0.0}, {"lr": -1.0}):
        with pytest.raises(EncoderError, match=next(iter(bad))):
            MLPConfig(**bad).check()


def test_trainers_refuse_non_finite_inputs_and_a_one_step_warm_up_trains():
    import numpy as np

    from lib.models import gan
    from lib.models.mlp import MLPConfig, train_mlp
    from lib.models.ridge import EncoderError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 12)).astype(np.float32), rng.normal(size=(80, 4)).astype(np.float32)
    bad = x.copy()
    bad[3, 2], bad[7, 1] = np.nan, -np.inf
    cfg = MLPConfig(width=8, depth=1, proj_width=4, epochs=2, batch_size=16, pct_start=0.1, patience=0)
    with pytest.raises(EncoderError) as e:
        train_mlp(bad, y, cfg, device="cpu")
    assert one_line(e) == "x_train: 2 of 960 values are NaN or infinite; expected finite numbers"
    _, hist = train_mlp(x, y, cfg, device="cpu")  # 10 steps, a warm-up of one: OneCycleLR divided by zero
    assert hist["done"] and np.isfinite(hist["loss"]).all()
    feats = np.full((8, 4), np.nan, np.float32)
    with pytest.raises(gan.GANError, match=r"^features: 32 of 32 values are NaN or infinite"):
        gan.train_gan(np.zeros((8, 32, 32, 3), np.uint8), feats, gan.GANConfig(batch_size=4), None, "cpu")
