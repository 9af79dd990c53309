"""The pretraining corpus: deterministic batches, disjoint from mini-NSD's stimuli, one-attribute hard negatives."""

import numpy as np
import pytest

from lib.data import corpus as cp
from lib.data import scenes, simulate


@pytest.fixture(scope="module")
def corp():
    # exclude nothing, so that these tests do not draw every profile's stimuli
    return cp.Corpus(seed=5, image_size=32, hard_negatives=0.25, exclude=frozenset())


def test_batches_are_deterministic_and_independent_of_order(corp):
    b3 = corp.batch(3, 16)
    corp.batch(0, 16)
    again = cp.Corpus(seed=5, image_size=32, hard_negatives=0.25, exclude=frozenset()).batch(3, 16)
    assert np.array_equal(b3.images, again.images) and b3.captions == again.captions
    assert b3.identities == again.identities
    assert b3.identities != corp.batch(4, 16).identities
    other_seed = cp.Corpus(seed=6, image_size=32, exclude=frozenset()).batch(3, 16)
    assert not set(other_seed.identities) & set(b3.identities)


def test_labels_are_the_scene_attributes(corp):
    scene_list, _, _ = corp.scenes(2, 12)
    b = corp.batch(2, 12)
    table = scenes.attribute_table([s.to_dict() for s in scene_list])
    for k, names in cp.LABELS.items():
        assert [str(names[i]) for i in b.labels[k]] == table[k].astype(str).tolist()


def test_hard_negatives_differ_in_exactly_one_attribute(corp):
    seen = set()
    for index in range(6):
        scene_list, partner, caps = corp.scenes(index, 24)
        assert (partner >= 0).sum() == 2 * 6  # a quarter of the batch are partners, each paired both ways
        for i, j in enumerate(partner):
            if j < 0 or j < i:
                continue
            a, b = scenes.attributes(scene_list[i]), scenes.attributes(scene_list[j])
            diff = [k for k in a if a[k] != b[k]]
            assert len(diff) == 1 and diff[0] in cp.VARY, diff
            seen.add(diff[0])
            if diff[0] == "colour":  # the partner's captions name its new colour
                assert all(b["colour"] in c for c in caps[j])
    assert len(seen) >= 4


@pytest.mark.parametrize("attribute", cp.VARY)
def test_vary_changes_only_the_attribute_asked(attribute):
    rng = np.random.default_rng(1)
    done = 0
    for _ in range(30):
        s = scenes.sample_scene(rng)
        v = cp.vary(s, attribute, rng)
        if v is None:
            continue
        a, b = scenes.attributes(s), scenes.attributes(v)
        assert [k for k in a if a[k] != b[k]] == [attribute]
        done += 1
    assert done >= 20
    with pytest.raises(cp.CorpusError, match="attribute='hue'"):
        cp.vary(s, "hue", rng)


def test_corpus_never_emits_an_excluded_scene():
    plain = cp.Corpus(seed=0, image_size=16, exclude=frozenset())
    first = plain.batch(0, 8).identities
    # exclude what batch 0 would draw: every one of those scenes must be redrawn
    strict = cp.Corpus(seed=0, image_size=16, exclude=frozenset(first[:4]))
    got = strict.batch(0, 8).identities
    assert not set(got) & set(first[:4]) and strict.redrawn == 4


def test_stimulus_scenes_are_the_simulated_stimuli(tiny, tiny_root):
    from tests.conftest import TINY

    drawn = simulate.stimulus_scenes("tiny", seed=3, n_subjects=2, config=TINY)
    ids = np.arange(len(drawn))
    on_disk = tiny.scenes(ids)
    assert [cp.scene_identity(s) for s, _ in drawn] == [cp.scene_identity(s) for s in on_disk]
    assert [c for _, c in drawn] == tiny.captions(ids)


def test_default_exclusion_covers_the_quick_and_mini_stimuli():
    ids = cp.stimulus_identities()
    quick = {cp.scene_identity(s) for s, _ in simulate.stimulus_scenes("quick", 0, 1)}
    assert quick <= ids and len(ids) > 4 * len(quick)
    b = cp.Corpus(seed=0, image_size=16).batch(0, 64)
    assert not set(b.identities) & ids
