"""06's steps (lib.stage.few_sessions): the session of every training row against the behavioural file, a
subject's first k sessions, the MLP's matched update budget, and the summaries (the issue's ratios, the spread
over targets, where two curves meet) against numbers computed by hand. The whole experiment runs on quick's three
subjects in the notebook tests (make test)."""

import numpy as np
import pytest

from lib.data import prep
from lib.data.nsd import NSD
from lib.models.mlp import MLPConfig
from lib.models.shared import SharedConfig
from lib.stage import few_sessions as fs


def test_training_sessions_follow_the_behavioural_file(tiny_root):
    ds = NSD(tiny_root)
    data = prep.prepare(ds, 2, progress=False)
    got = prep.training_sessions(ds, 2, data)
    beh = ds.behaviour(2)
    train = ~prep.is_test_image(ds, beh["73KID"].to_numpy() - 1)
    np.testing.assert_array_equal(got, beh["SESSION"].to_numpy()[train])
    subject = fs.Subject(2, data.x_train, data.train_ids, got, data.x_test, data.test_ids)
    assert subject.sessions == [1, 2, 3] and subject.first(0).all()
    np.testing.assert_array_equal(subject.first(2), got <= 2)
    averaged = prep.prepare(ds, 2, average_train=True, progress=False)
    with pytest.raises(
        prep.PrepError, match="subject 2: the prepared training rows are not the single trials"
    ):
        prep.training_sessions(ds, 2, averaged)


def test_the_mlp_gets_the_shared_stages_update_budget():
    shared = SharedConfig(tune_steps=200, tune_batch_size=32)
    m = fs.matched(MLPConfig(epochs=40, batch_size=128), shared, rows=240)  # 7 updates per epoch
    assert m.batch_size == 32 and m.epochs == 58 and m.epochs * (240 // 32) >= 400 > (m.epochs - 1) * 7
    assert shared.tuning(240).epochs == 29 and shared.tuning(3600, everything=True).lr == shared.tune_lr


def _experiment():
    """Two targets, hits by hand: at k=1 the shared encoder finds 6 of 10 images, ridge 3, the MLP 2."""

    def hits(n):
        return {
            "img_retrieval_top1": np.r_[np.ones(n), np.zeros(10 - n)],
            "brain_retrieval_top1": np.ones(10),
        }

    scores = {t: {fs.row("shared fine-tuned", 1): hits(6), fs.row("ridge", 1): hits(3), fs.row("mlp", 1): hits(2),
                  fs.row("ridge", 0): hits(8), fs.row("mlp", 0): hits(4 + t), fs.row("shared fine-tuned", 0): hits(8)}
              for t in (1, 2)}  # fmt: skip
    fitted = {t: None for t in (1, 2)}
    return fs.Experiment({}, {}, fitted, scores, {}, [1, 0])


def test_summaries_against_hand_counts():
    exp = _experiment()
    g = fs.goals(exp, resamples=500, seed=0)
    assert g["shared fine-tuned"] == 0.6 and g["ratio to ridge @ 1"] == pytest.approx(2.0)
    assert g["ratio to mlp @ 1"] == pytest.approx(3.0) and g["ratio to ridge @ all"] == pytest.approx(0.75)
    assert g["paired − mlp @ 1"]["diff"] == pytest.approx(0.4)
    across = fs.across_targets(exp)
    assert across[fs.row("mlp", 0)]["img_retrieval_top1"]["values"] == pytest.approx([0.5, 0.6])
    # 4 images found by the shared encoder alone, none by the MLP alone: a sign-flip p of 1/8, too few to claim
    # a difference, so the curves already meet at k=1; with the hits repeated 10 times the shared encoder is
    # clearly ahead at k=1 and at all sessions (8 against 5 of 10), so they never meet
    assert fs.meeting_point(exp, 1, "shared fine-tuned", "mlp") == 1
    for t in exp.scores:
        exp.scores[t] = {r: {m: np.tile(v, 10) for m, v in by.items()} for r, by in exp.scores[t].items()}
    assert fs.meeting_point(exp, 1, "shared fine-tuned", "mlp") is None
    with pytest.raises(fs.FewSessionsError, match=r"ks=\[1, 1\]"):
        fs.run(None, ks=[1, 1], targets=[], shared=SharedConfig(), mlp=MLPConfig(), alphas=[1.0], rank=0)


def test_reconstruction_summaries_against_hand_counts():
    exp = _experiment()
    exp.fitted = {1: fs.Fitted(1, {"ridge": {1: None}}, {}, 0.0, 0, 0.0)}  # only ridge fitted
    with pytest.raises(fs.FewSessionsError, match=r"'shared fine-tuned @ 1', 'mlp @ 1'.* were not fitted"):
        fs.reconstruct(None, exp)
    n = 20
    first, other = fs.row("shared fine-tuned", 1), fs.row("mlp", 1)
    per_image = {first: {"EffNet-Lite0 2-way": np.full(n, 0.8), "PixCorr": np.r_[np.full(10, 0.7), np.full(10, 0.3)]},
                 other: {"EffNet-Lite0 2-way": np.full(n, 0.6), "PixCorr": np.full(n, 0.1)},
                 "mismatched": {"EffNet-Lite0 2-way": None, "PixCorr": np.zeros(n)}}  # fmt: skip
    images = {v: np.zeros((n, 4, 4, 3), np.uint8) for v in (first, other)}
    rec = fs.Reconstruction(np.zeros((n, 4, 4, 3), np.uint8), images, per_image, {}, "G", 1.0, 0.0)
    assert set(rec.scores("PixCorr")) == {first, other}  # the chance row is not drawn
    out = fs.reconstruction_results(exp, rec, resamples=200, seed=0)
    assert out["table"][first] == {"EffNet-Lite0 2-way": pytest.approx(0.8), "PixCorr": pytest.approx(0.5)}
    assert list(out["goals"]) == [first]  # no combined variant drawn
    assert out["goals"][first]["EffNet-Lite0 2-way"]["met"] and out["goals"][first]["PixCorr"] == {
        "value": pytest.approx(0.5), "threshold": 0.55, "met": False}  # fmt: skip
    assert list(out["comparisons"]) == [f"{first} − {other}"]
    assert out["comparisons"][f"{first} − {other}"]["PixCorr"]["diff"] == pytest.approx(0.4)
    assert "EffNet-Lite0 2-way" not in out["table"]["mismatched"]
