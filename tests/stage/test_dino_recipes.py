"""The DINO recipe ablation (lib.stage.dino_recipes): the recipes differ by one change each, the comparison's
accuracies and paired differences follow the per-image hits, and a missing or foreign file is said, not hidden."""

import json

import numpy as np
import pytest

from lib import paths
from lib.models.pretrained import train as pretrain
from lib.stage import dino_recipes as dr


def test_the_shipped_recipe_is_in_the_ablation_and_each_changes_the_one_before():
    shipped = pretrain.dino_config(pretrain.PROFILES["full"])
    names = list(dr.RECIPES)
    assert dr.recipe_config(dr.SHIPPED, shipped.steps) == shipped
    assert dr.recipe_config(names[0], 10).stride == 32 and dr.recipe_config(names[0], 10).patch_weight == 0
    for a, b in zip(names, names[1:], strict=False):
        assert dr.recipe_config(a, 10) != dr.recipe_config(b, 10), f"{b} changes nothing over {a}"


def _record(hits: dict) -> dict:
    """A recipe file with the given 0/1 hits {recipe: {"mine": [...], "random": [...]}} for one attribute."""
    rec = {"format": dr.FORMAT, "recipes": {}}
    for name, h in hits.items():
        per = {}
        for pool in dr.POOLINGS:
            per[f"{name} · {pool}"] = {"shape": dr._packed(np.array(h["mine"]))}
            per[f"random init ({name}) · {pool}"] = {"shape": dr._packed(np.array(h["random"]))}
        rec["recipes"][name] = {"hits": {"knn": per, "linear": per}}
    return rec


def test_comparison_follows_the_hits():
    names = list(dr.RECIPES)[:2]
    rec = _record({names[0]: {"mine": [1, 0, 0, 0] * 10, "random": [0, 0, 0, 0] * 10},
                   names[1]: {"mine": [1, 1, 1, 0] * 10, "random": [1, 0, 0, 0] * 10}})  # fmt: skip
    out = dr.comparison(rec, resamples=200)
    first, second = (out["knn"]["image vector"][n]["shape"] for n in names)
    assert first["accuracy"] == 0.25 and second["accuracy"] == 0.75
    assert first["vs_random"]["diff"] == pytest.approx(0.25) and first["vs_previous"] is None
    assert second["vs_random"]["diff"] == pytest.approx(0.5) and second["vs_previous"][
        "diff"
    ] == pytest.approx(0.5)
    assert second["vs_previous"]["low"] > 0  # 20 of 40 images gained, none lost


def test_saved_reads_the_profile_file_and_says_when_there_is_none(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paths, "metrics_dir", lambda profile: tmp_path)
    assert dr.saved() is None
    assert "python -m lib.stage.dino_recipes" in capsys.readouterr().out
    names = list(dr.RECIPES)[:1]
    (tmp_path / dr.NAME).write_text(
        json.dumps(_record({names[0]: {"mine": [1, 0] * 5, "random": [0, 0] * 5}}))
    )
    panels = dr.panels(dr.saved(), 100)
    assert set(panels) == set(dr.PANELS.values()) and panels["k-NN (k = 20), image vector"][names[0]]["shape"]
    (tmp_path / dr.NAME).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match=r"01_dino_recipes.json: not a lib.dino.recipes/1 recipe file"):
        dr.saved()
    with pytest.raises(ValueError, match=r"--only \['nope'\]"):
        dr.run(only=("nope",))


def test_run_trains_probes_and_writes_every_recipe(tmp_path, monkeypatch, tiny_root):
    params = tmp_path / "params"  # a profile of the test's own (as tests/stage/test_setup.py)
    params.mkdir()
    for shipped in paths.PARAMS_DIR.glob("*.yaml"):
        (params / shipped.name).write_text(shipped.read_text())
    (params / "tinyprofile.yaml").write_text("defaults:\n  seed: 3\n")
    monkeypatch.setattr(paths, "PARAMS_DIR", params)
    """Two steps of every recipe on the quick corpus, probed on the tiny mini-NSD's stimuli: the file holds each
    recipe's hits for every feature set, one per test stimulus, and reads back through the comparison."""
    monkeypatch.setattr(paths, "metrics_dir", lambda profile: tmp_path)
    monkeypatch.setattr(paths, "BUILD_DIR", tmp_path / "build")
    rec = dr.run(
        "tinyprofile", steps=2, corpus="quick", overrides={"data_root": str(tiny_root), "device": "cpu"}
    )
    assert list(rec["recipes"]) == list(dr.RECIPES) and rec["n_test"] > 0
    for name, r in rec["recipes"].items():
        for probe in ("knn", "linear"):
            sets = r["hits"][probe]
            assert set(sets) == {f"{n} · {p}" for n in (name, f"random init ({name})") for p in dr.POOLINGS}
            assert all(len(bits) == rec["n_test"] for by_attr in sets.values() for bits in by_attr.values())
        assert all(0 <= v <= 1 for v in r["prototype_nmi"].values()) and r["prototypes_used"] >= 1
    # a run of another length than the ablation's keeps its own file
    assert not (tmp_path / dr.NAME).exists() and dr.file_name(2) == "01_dino_recipes_2steps.json"
    assert json.loads((tmp_path / dr.file_name(2)).read_text())["steps"] == 2
    assert "prototypes; NMI with" in dr.describe_prototypes(rec)
    assert set(dr.panels(dr.saved("tinyprofile", steps=2), 100)) == set(dr.PANELS.values())
