"""The scene generator (lib.data.scenes): the anti-aliased rendering against a closed form, and the attribute
table against the scenes and the places their captions name."""

import numpy as np
import pytest

from lib.data import prep, scenes
from lib.data import scenes as sc


def test_antialiased_circle_area_matches_closed_form():
    scene = sc.Scene("plain", "grey", [sc.SceneObject("circle", "red", "large", 0.5, 0.5, 0.3, 0.0)])
    _, cov = sc.render(scene, 128)
    area = cov.sum()
    assert area == pytest.approx(np.pi * (0.3 * 128) ** 2, rel=0.01)
    assert ((cov > 0) & (cov < 1)).any()  # edges are partial: anti-aliased


def test_scene_attributes(tiny):
    _, test = prep.stimulus_split(tiny, 1)
    sc = tiny.scenes(test[:5])
    assert [s["nsdId"] for s in sc] == list(test[:5])
    table = scenes.attribute_table(sc)
    for s, (_, row) in zip(sc, table.iterrows(), strict=True):
        big = max(s["objects"], key=lambda o: o["radius"])
        assert row["shape"] == big["shape"] and row["count"] == len(s["objects"])
        # the position cell is the one the captions name for this object ("in the top left", "at the bottom")
        phrase = scenes._where(scenes.SceneObject(**big))
        assert phrase.split(" ", 2)[2] == row["position"], (phrase, row["position"])
