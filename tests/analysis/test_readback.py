"""The attribute read-back judge and the reconstruction baselines, against the simulator's truth and closed forms."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from lib.analysis import readback
from lib.data import corpus as cp
from lib.data import scenes


@pytest.fixture(scope="module")
def data():
    corp = cp.Corpus(seed=9, image_size=32, exclude=frozenset())
    b = corp.take(700, batch_size=350)
    scene_list = [s for i in range(2) for s in corp.scenes(i, 350)[0]]
    return b.images, scenes.attribute_table([s.to_dict() for s in scene_list])


def test_judge_trained_on_stimuli_reads_held_out_scenes(data):
    images, table = data
    judge = readback.train(images[:500], table.iloc[:500], epochs=8, seed=0, device="cpu")
    acc = judge.accuracy(images[500:], table.iloc[500:].reset_index(drop=True))
    chance = readback.majority(table.iloc[500:])
    assert acc["background"] > 0.9 and acc["bg_colour"] > 0.9
    assert acc["colour"] > chance["colour"] + 0.2
    per = judge.per_image(images[500:], table.iloc[500:].reset_index(drop=True))
    assert np.isclose(per["background"].mean(), acc["background"])
    with pytest.raises(readback.ReadbackError, match="uint8"):
        judge.predict(images.astype(np.float32))
    with pytest.raises(readback.ReadbackError, match="missing attribute columns"):
        readback.train(images[:10], table.drop(columns="shape").iloc[:10], epochs=1)


def test_score_adds_the_composites_as_per_image_means(monkeypatch):
    hits = {"background": [1, 1, 0, 0], "bg_colour": [1, 0, 0, 0], "colour": [1, 1, 1, 0], "shape": [0, 1, 0, 0],
            "position": [1, 0, 0, 1]}  # fmt: skip
    judge = readback.Readback.__new__(readback.Readback)
    monkeypatch.setattr(
        judge, "per_image", lambda images, table: {k: np.array(v, bool) for k, v in hits.items()}
    )
    acc, per = judge.score({"x": np.zeros((4, 8, 8, 3), np.uint8)}, None)
    np.testing.assert_allclose(per["x"]["main object"], [2 / 3, 2 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(per["x"]["mean"], [0.8, 0.6, 0.2, 0.2])
    assert acc["x"]["colour"] == 0.75 and acc["x"]["mean"] == pytest.approx(
        np.mean(list(map(np.mean, hits.values())))
    )


def test_nearest_training_image_matches_scikit_learn():
    rng = np.random.default_rng(0)
    train_e, query = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    imgs = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    nn = NearestNeighbors(n_neighbors=1, metric="cosine").fit(train_e)
    want = imgs[nn.kneighbors(query, return_distance=False)[:, 0]]
    assert np.array_equal(readback.nearest_training(query, train_e, imgs), want)


def test_mean_image_and_majority():
    imgs = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (0, 10, 50)])
    assert np.array_equal(readback.mean_image(imgs, 4), np.full((4, 2, 2, 3), 20, np.uint8))
    import pandas as pd

    t = pd.DataFrame({a: ["x", "x", "y", "z"] for a in readback.READ})
    assert readback.majority(t) == {a: 0.5 for a in readback.READ}
