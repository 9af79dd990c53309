"""The embedding probes (lib.analysis.probes): the k-NN and linear probe table reads a coded attribute, and the
scratch-training seed spread retrains per seed without touching the store."""

import numpy as np
import pandas as pd
import pytest

from lib.analysis import probes
from lib.analysis import probes as probe_lib
from lib.data import scenes
from lib.models import contrastive, embedding
from tests.conftest import _tiny_data


def test_dino_probe_table_reads_a_coded_attribute():
    attrs = pd.DataFrame({"colour": ["red", "blue"] * 30, "shape": ["a"] * 45 + ["b"] * 15})
    coded = np.stack([(attrs["colour"] == "red").to_numpy(), np.zeros(60)], 1).astype(np.float32)
    coded += np.random.default_rng(0).normal(0, 0.01, coded.shape).astype(np.float32)
    test = np.arange(60) % 3 == 0
    out = probes.probe_table({"coded": coded}, test, attrs, k=5)
    assert out["knn"]["coded"]["colour"] == 1.0 and out["linear"]["coded"]["colour"] == 1.0
    assert out["majority"] == {a: float(attrs[test][a].value_counts(normalize=True).iloc[0]) for a in attrs}
    with pytest.raises(ValueError, match="test mask"):
        probes.probe_table({"coded": coded}, test[:10], attrs)


def test_scratch_seed_spread_retrains_per_seed_and_keeps_the_store_untouched(tmp_path):
    from types import SimpleNamespace

    imgs, caps = _tiny_data(30)
    rng = np.random.default_rng(5)  # _tiny_data's scenes
    table = scenes.attribute_table([scenes.sample_scene(rng).to_dict() for _ in range(30)])
    store = SimpleNamespace(work_dir=lambda name: tmp_path / name, save_embedder=None)  # no save may happen
    cfg = contrastive.ClipTrainConfig(steps=2, batch_size=8, eval_every=0, seed=7)
    out = probe_lib.scratch_seed_spread([7, 8], "mini-rn16", cfg, store, imgs[:20], caps[:20], imgs[20:], caps[20:],
                                          table.iloc[:20], table.iloc[20:].reset_index(drop=True), 32, "cpu")  # fmt: skip
    row = out["spread"]["scratch"]
    assert out["seeds"] == [7, 8] and {"img2txt_top1", "txt2img_top1", "shape"} <= set(row)
    # seed 7 by hand: the same training, the same probes
    emb = embedding.create("mini-rn16", 32, "cpu", 7)
    contrastive.train_clip(emb, imgs[:20], caps[:20], cfg, state_dir=tmp_path / "by_hand")
    probes = probe_lib.compare({"scratch": emb}, imgs[:20], imgs[20:], table.iloc[:20],
                               table.iloc[20:].reset_index(drop=True), caps[20:])  # fmt: skip
    assert row["img2txt_top1"]["values"][0] == probes["scratch"]["img2txt_top1"]
    assert row["shape"]["values"][0] == probes["scratch"]["linear_probe"]["shape"]


def test_probe_table_hits_are_the_scores_behind_each_accuracy():
    rng = np.random.default_rng(3)
    attrs = pd.DataFrame({"colour": rng.choice(["red", "blue", "green"], 90)})
    feats = {"half": np.eye(3)[pd.factorize(attrs["colour"])[0]] + rng.normal(0, 0.8, (90, 3))}
    test = np.arange(90) % 3 == 0
    out = probes.probe_table(feats, test, attrs, k=5)
    for probe in ("knn", "linear"):
        hits = out["hits"][probe]["half"]["colour"]
        assert hits.shape == (30,) and set(np.unique(hits)) <= {0.0, 1.0}
        assert hits.mean() == out[probe]["half"]["colour"]
