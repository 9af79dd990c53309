"""The pretraining corpus: a deterministic stream of captioned scenes of mini-NSD's grammar, disjoint from every
mini-NSD stimulus (by scene identity), with hard negatives that differ from an anchor in exactly one attribute."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from lib.data import scenes as sc
from lib.data.simulate import stimulus_scenes

#: entropy that separates the corpus's random streams from the simulator's (which seeds SeedSequence(seed))
CORPUS_TAG = 0xC0_4B05
#: attributes a hard negative may change (of the largest object, or of the scene)
VARY = ("shape", "position", "colour", "size", "count", "background")
#: class names of every label a batch carries, in the order of their integer codes
LABELS = {
    "shape": list(sc.SHAPES),
    "colour": list(sc.COLOURS),
    "size": list(sc.SIZES),
    "position": list(sc.POSITIONS),
    "count": [1, 2, 3],
    "background": list(sc.BACKGROUNDS),
    "bg_colour": list(sc.BG_COLOURS),
}


class CorpusError(ValueError):
    """A corpus request that cannot be met."""


def scene_identity(scene: sc.Scene | dict) -> str:
    """A hash of what is drawn: background, and each object's shape, colour, size class, centre and radius
    (rounded to 1e-3 of the image side) and angle (to 0.1 degree), in drawing order."""
    d = scene.to_dict() if isinstance(scene, sc.Scene) else scene
    objs = [
        [o["shape"], o["colour"], o["size"], round(o["x"], 3), round(o["y"], 3), round(o["radius"], 3),
         round(o["angle"] % 360, 1)]
        for o in d["objects"]
    ]  # fmt: skip
    text = json.dumps([d["background"], d["bg_colour"], objs])
    return hashlib.sha1(text.encode()).hexdigest()[:20]


@functools.cache
def stimulus_identities(profiles: tuple[str, ...] = ("quick", "mini"), seeds: tuple[int, ...] = tuple(range(4)),
                        n_subjects: int = 8) -> frozenset[str]:  # fmt: skip
    """Identities of every stimulus mini-NSD draws for these profiles, simulator seeds and subject counts (the
    scene draws do not depend on rendering, so nothing is rendered)."""

    out: set[str] = set()
    for p in profiles:
        for s in seeds:
            out.update(scene_identity(scene) for scene, _ in stimulus_scenes(p, s, n_subjects))
    return frozenset(out)


def _largest(scene: sc.Scene) -> int:
    return int(np.argmax([o.radius for o in scene.objects]))


def _place(obj: sc.SceneObject, others: list[sc.SceneObject], rng: np.random.Generator,
           cell: int | None = None) -> bool:  # fmt: skip
    """Move ``obj`` to a random spot (in 3 x 3 ``cell`` when given) apart from ``others``; False if none found."""
    lo, hi = 0.12 + obj.radius * 0.6, 0.88 - obj.radius * 0.6
    for _ in range(40):
        if cell is None:
            x, y = rng.uniform(lo, hi, size=2)
        else:
            r, c = divmod(cell, 3)
            x = rng.uniform(max(lo, c / 3 + 0.01), min(hi, (c + 1) / 3 - 0.01))
            y = rng.uniform(max(lo, r / 3 + 0.01), min(hi, (r + 1) / 3 - 0.01))
        if all(np.hypot(x - o.x, y - o.y) > 0.8 * (obj.radius + o.radius) for o in others):
            obj.x, obj.y = float(x), float(y)
            return True
    return False


def vary(scene: sc.Scene, attribute: str, rng: np.random.Generator) -> sc.Scene | None:
    """A copy of ``scene`` whose :func:`lib.data.scenes.attributes` differ from the anchor's in ``attribute`` only
    (shape, colour, size and position of the largest object; object count; background kind), the rest of the
    drawing unchanged; None when no such scene was found in a few tries (e.g. no free cell)."""
    if attribute not in VARY:
        raise CorpusError(f"attribute={attribute!r}: expected one of {VARY}")
    want = sc.attributes(scene)
    for _ in range(10):
        new = copy.deepcopy(scene)
        k = _largest(new)
        big = new.objects[k]
        others = [o for i, o in enumerate(new.objects) if i != k]
        if attribute == "shape":
            big.shape = str(rng.choice([s for s in sc.SHAPES if s != big.shape]))
        elif attribute == "colour":
            big.colour = str(rng.choice([c for c in sc.COLOURS if c != big.colour]))
        elif attribute == "background":
            new.background = str(rng.choice([b for b in sc.BACKGROUNDS if b != new.background]))
        elif attribute == "size":
            big.size = str(rng.choice([s for s in sc.SIZES if s != big.size]))
            big.radius = sc.SIZES[big.size] * float(rng.uniform(0.9, 1.1))
            if not _place(big, others, rng, sc.POSITIONS.index(want["position"])):
                continue
        elif attribute == "position":
            cells = [c for c in range(9) if c != sc.POSITIONS.index(want["position"])]
            if not _place(big, others, rng, int(rng.choice(cells))):
                continue
        elif attribute == "count":
            if len(new.objects) > 1 and (len(new.objects) == 3 or rng.random() < 0.5):
                drop = [i for i in range(len(new.objects)) if i != k]
                del new.objects[int(rng.choice(drop))]
            else:
                size = str(rng.choice([s for s in sc.SIZES if sc.SIZES[s] < sc.SIZES[big.size]] or ["small"]))
                obj = sc.SceneObject(str(rng.choice(sc.SHAPES)), str(rng.choice(list(sc.COLOURS))), size, 0.5,
                                     0.5, min(sc.SIZES[size] * float(rng.uniform(0.9, 1.1)), big.radius * 0.95),
                                     float(rng.uniform(0, 360)))  # fmt: skip
                if not _place(obj, new.objects, rng):
                    continue
                new.objects.append(obj)
        got = sc.attributes(new)
        if [a for a in got if got[a] != want[a]] == [attribute]:
            return new
    return None


def label_codes(scene: sc.Scene) -> dict[str, int]:
    """Integer code of each :data:`LABELS` attribute of ``scene``."""
    a = sc.attributes(scene)
    return {k: LABELS[k].index(a[k]) for k in LABELS}


@dataclass
class Batch:
    images: np.ndarray  # uint8 (N, S, S, 3)
    captions: list[list[str]]  # N lists of paraphrased captions
    labels: dict[str, np.ndarray]  # attribute -> int64 (N,), codes of LABELS
    identities: list[str]
    partner: np.ndarray  # int64 (N,): row of the hard negative of each row, -1 for none
    objects: np.ndarray  # float32 (N, S, S): visible coverage of all objects (0 background .. 1 object)


class Corpus:
    """A stream of captioned scenes, deterministic in (``seed``, batch index): batch ``i`` is the same whatever
    was drawn before, so a resumed run sees the same data. Scenes whose identity is in ``exclude`` (by default
    every mini-NSD stimulus of the quick and mini profiles, simulator seeds 0-3, up to 8 subjects) are redrawn.
    ``hard_negatives`` is the fraction of each batch made of partners: copies of an anchor in the same batch that
    differ in exactly one :data:`VARY` attribute, their captions describing the change."""

    def __init__(self, seed: int = 0, image_size: int = 64, n_captions: int = 5, hard_negatives: float = 0.0,
                 exclude: frozenset[str] | None = None) -> None:  # fmt: skip
        if not 0 <= hard_negatives <= 0.5:
            raise CorpusError(f"hard_negatives={hard_negatives}: expected a fraction in [0, 0.5]")
        self.seed, self.image_size, self.n_captions = seed, image_size, n_captions
        self.hard_negatives = hard_negatives
        self.exclude = stimulus_identities() if exclude is None else exclude
        self.redrawn = 0

    def to_launch(self, folder, name: str) -> dict:
        """To a launched trainer (:class:`lib.distributed.Portable`): its arguments; the stream is rebuilt."""
        return {"seed": self.seed, "image_size": self.image_size, "n_captions": self.n_captions,
                "hard_negatives": self.hard_negatives, "exclude": sorted(self.exclude)}  # fmt: skip

    @classmethod
    def from_launch(cls, spec: dict, folder) -> Corpus:
        return cls(**(spec | {"exclude": frozenset(spec["exclude"])}))

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([CORPUS_TAG, self.seed, index]))

    def scenes(self, index: int, n: int) -> tuple[list[sc.Scene], np.ndarray, list[list[str]]]:
        """Scenes of batch ``index`` (anchors, then partners), the partner row of each, and their captions."""
        rng = self._rng(index)
        n_pairs = int(round(n * self.hard_negatives))
        anchors: list[sc.Scene] = []
        while len(anchors) < n - n_pairs:
            s = sc.sample_scene(rng)
            if scene_identity(s) in self.exclude:
                self.redrawn += 1
                continue
            anchors.append(s)
        out, partner = list(anchors), np.full(n, -1, np.int64)
        i = 0
        while len(out) < n:
            a = i % len(anchors)
            v = vary(anchors[a], VARY[int(rng.integers(len(VARY)))], rng)
            i += 1
            if v is None or scene_identity(v) in self.exclude:
                continue
            partner[a], partner[len(out)] = len(out), a
            out.append(v)
        caps = [sc.captions(s, rng, self.n_captions) for s in out]
        return out, partner, caps

    def batch(self, index: int, n: int) -> Batch:
        """Batch ``index`` of ``n`` rendered scenes with captions, labels, identities and hard-negative rows."""
        scene_list, partner, caps = self.scenes(index, n)
        drawn = [sc.render(s, self.image_size) for s in scene_list]
        images = np.stack([img for img, _ in drawn])
        objects = np.stack([cov.sum(0).clip(0, 1) for _, cov in drawn]).astype(np.float32)
        codes = [label_codes(s) for s in scene_list]
        labels = {k: np.array([c[k] for c in codes], np.int64) for k in LABELS}
        return Batch(images, caps, labels, [scene_identity(s) for s in scene_list], partner, objects)

    def take(self, n: int, batch_size: int = 512, start: int = 0) -> Batch:
        """``n`` scenes as one batch, from consecutive batches starting at index ``start`` (e.g. a probe set)."""
        parts = [self.batch(start + i, min(batch_size, n - i * batch_size))
                 for i in range((n + batch_size - 1) // batch_size)]  # fmt: skip
        off = np.cumsum([0] + [len(p.images) for p in parts[:-1]])
        return Batch(
            np.concatenate([p.images for p in parts]),
            [c for p in parts for c in p.captions],
            {k: np.concatenate([p.labels[k] for p in parts]) for k in LABELS},
            [i for p in parts for i in p.identities],
            np.concatenate(
                [np.where(p.partner >= 0, p.partner + o, -1) for p, o in zip(parts, off, strict=True)]
            ),
            np.concatenate([p.objects for p in parts]),
        )
