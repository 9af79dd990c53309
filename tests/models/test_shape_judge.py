"""The shipped shape judge against the scene generator's truth: fresh corpus scenes, one-attribute edits, bad input,
and its pretraining stage (deterministic, exact resume)."""

import dataclasses

import numpy as np
import pytest
import torch

from lib.data import corpus as cp
from lib.data import scenes
from lib.models import pretrained, shape_judge
from lib.models.pretrained import train as pretrain


@pytest.fixture(scope="module")
def judge():
    return pretrained.load_shape_judge(device="cpu")


@pytest.fixture(scope="module")
def fresh():
    """Scenes of a corpus seed the judge never trained on (it trained on seed 0), and their attribute table."""
    corp = cp.Corpus(seed=7, image_size=64, exclude=frozenset())
    b = corp.batch(0, 300)
    return b.images, scenes.attribute_table([s.to_dict() for s in corp.scenes(0, 300)[0]])


def test_shipped_judge_reads_fresh_scenes_far_above_chance(judge, fresh):
    images, table = fresh
    assert table["shape"].isin(shape_judge.SHAPES).all()  # the table's labels are the judge's class names
    chance = table["shape"].value_counts(normalize=True).iloc[0]
    hits = np.array([p == t for p, t in zip(judge.predict_names(images), table["shape"], strict=True)])
    assert chance < 0.25 and hits.mean() > 0.8
    small = shape_judge.resample(images, 32)  # a quick-profile image, upsampled by the judge
    assert judge.accuracy(small, table) > 0.7
    assert judge.accuracy(shape_judge.resample(images, 16), table) > chance + 0.2


def test_score_per_image_and_accuracy_agree_for_names_codes_and_tables(judge, fresh):
    images, table = fresh
    images, table = images[:40], table.iloc[:40]
    codes = np.array([shape_judge.SHAPES.index(s) for s in table["shape"]])
    per = judge.per_image(images, table["shape"])
    assert per.dtype == bool and per.shape == (40,)
    assert np.array_equal(per, judge.predict(images) == codes)
    assert np.array_equal(per, judge.per_image(images, codes))
    assert np.array_equal(per, judge.per_image(images, table))
    assert judge.accuracy(images, codes) == per.mean()
    flipped = images[:, ::-1].copy()
    acc, hits = judge.score({"as drawn": images, "flipped": flipped}, table)
    assert acc["as drawn"] == {shape_judge.LABEL: per.mean()}
    assert np.array_equal(hits["flipped"][shape_judge.LABEL], (judge.predict(flipped) == codes).astype(float))


def _one_object(shape: str, colour: str, bg: str = "grey", background: str = "plain") -> scenes.Scene:
    return scenes.Scene(background, bg, [scenes.SceneObject(shape, colour, "large", 0.45, 0.55, 0.2, 10.0)])


def test_prediction_follows_the_shape_and_ignores_the_colour(judge):
    colours = ["red", "green", "blue", "yellow", "white", "black"]
    grid = [_one_object(s, c) for s in scenes.SHAPES for c in colours]
    images = np.stack([scenes.render(s, 64)[0] for s in grid])
    pred = judge.predict_names(images).reshape(len(scenes.SHAPES), len(colours))
    assert (pred == np.array(scenes.SHAPES)[:, None]).mean() >= 0.95
    # one-attribute edits of the largest object of random scenes (the corpus's hard negatives): shape edits change
    # the reading, colour edits mostly leave it (a colour close to the background's can hide an edge)
    rng = np.random.default_rng(1)
    base = [scenes.sample_scene(rng) for _ in range(120)]
    changed = {}
    for attribute in ("shape", "colour"):
        pairs = [(s, cp.vary(s, attribute, rng)) for s in base]
        pairs = [(a, b) for a, b in pairs if b is not None]
        assert len(pairs) > 100
        a, b = (np.stack([scenes.render(p[i], 64)[0] for p in pairs]) for i in (0, 1))
        changed[attribute] = (judge.predict(a) != judge.predict(b)).mean()
    assert changed["shape"] >= 0.85 and changed["colour"] <= 0.2


def test_bad_input_is_a_one_line_error(judge):
    good = np.zeros((2, 32, 32, 3), np.uint8)
    for bad in (good.astype(np.float32), good[..., :2], good[0], np.zeros((2, 0, 32, 3), np.uint8)):
        with pytest.raises(shape_judge.ShapeJudgeError, match=r"expected uint8 \(N, H, W, 3\)") as e:
            judge.predict(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(shape_judge.ShapeJudgeError, match="one label per image"):
        judge.accuracy(good, ["circle"])
    with pytest.raises(shape_judge.ShapeJudgeError, match="expected names of"):
        judge.accuracy(good, ["circle", "hexagon"])
    with pytest.raises(shape_judge.ShapeJudgeError, match=r"expected 0\.\.6"):
        judge.accuracy(good, np.array([0, 7]))
    assert judge.predict(good[:0]).shape == (0,)


def test_judge_stage_is_seeded_and_resumes_exactly(tmp_path):
    cfg = dataclasses.replace(pretrain.PROFILES["quick"], judge_steps=4, checkpoint_every=1)
    corp = cp.Corpus(cfg.seed, cfg.image_size, hard_negatives=cfg.hard_negatives, exclude=frozenset())
    whole, h1 = pretrain.train_judge(cfg, corp, tmp_path / "a", "cpu")
    pretrain.train_judge(cfg, corp, tmp_path / "b", "cpu", stop_after=2)
    resumed, h2 = pretrain.train_judge(cfg, corp, tmp_path / "b", "cpu")
    assert h1["loss"] == h2["loss"] and h2["done"] and h2["scenes"] == 4 * cfg.judge_batch
    for (k, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    f = shape_judge.save(tmp_path / "j.safetensors", whole.net)
    again = shape_judge.load(f, "cpu")
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.allclose(again.logits(x), whole.logits(x), atol=0.05)  # float16 storage
