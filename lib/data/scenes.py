"""Procedural captioned scenes for mini-NSD: sampling, anti-aliased rendering, paraphrased captions, attributes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "bar")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
BACKGROUNDS = ("plain", "gradient", "horizon", "stripes")
BG_COLOURS = {
    "grey": (128, 128, 128),
    "light blue": (150, 190, 230),
    "sand": (215, 195, 150),
    "pink": (230, 160, 185),
    "dark green": (40, 90, 60),
    "navy": (30, 40, 90),
}
SIZES = {"small": 0.09, "medium": 0.14, "large": 0.21}  # radius as a fraction of the image side
N_OBJECTS_P = (0.4, 0.35, 0.25)  # probability of 1, 2, 3 objects

_SHAPE_WORDS = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "hoop", "donut"),
    "bar": ("bar", "rod"),
}
_SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "medium": ("", "medium-sized", ""),
    "large": ("large", "big", "huge"),
}
_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, fraction of the width (0 left .. 1 right)
    y: float  # centre, fraction of the height (0 top .. 1 bottom)
    radius: float  # fraction of the image side
    angle: float  # rotation in degrees


@dataclass
class Scene:
    background: str
    bg_colour: str
    objects: list[SceneObject] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "bg_colour": self.bg_colour,
            "objects": [vars(o) for o in self.objects],
        }


def sample_scene(rng: np.random.Generator) -> Scene:
    """One to three objects of random shape, colour, size and position on a random background."""
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    bg_colour = list(BG_COLOURS)[rng.integers(len(BG_COLOURS))]
    n = int(rng.choice([1, 2, 3], p=N_OBJECTS_P))
    objs: list[SceneObject] = []
    for _ in range(n):
        size = list(SIZES)[rng.integers(len(SIZES))]
        radius = SIZES[size] * rng.uniform(0.9, 1.1)
        # rejection sampling keeps objects mostly apart, so that each stays visible
        for _try in range(20):
            x, y = rng.uniform(0.12 + radius * 0.6, 0.88 - radius * 0.6, size=2)
            if all(np.hypot(x - o.x, y - o.y) > 0.8 * (radius + o.radius) for o in objs):
                break
        objs.append(
            SceneObject(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=list(COLOURS)[rng.integers(len(COLOURS))],
                size=size,
                x=float(x),
                y=float(y),
                radius=float(radius),
                angle=float(rng.uniform(0, 360)),
            )
        )
    return Scene(bg, bg_colour, objs)


# ----------------------------------------------------------------------------------------------------------------
# rendering: signed distance fields in pixel units, coverage = clip(0.5 - sdf, 0, 1) (one-pixel anti-aliasing)


def _sd_box(px: np.ndarray, py: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(px) - hx, np.abs(py) - hy
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _sd_triangle(px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    """Equilateral triangle with half side ``r``, apex up (exact distance)."""
    k = np.sqrt(3.0)
    x = np.abs(px) - r
    y = -py + r / k
    flip = x + k * y > 0
    x, y = np.where(flip, (x - k * y) / 2, x), np.where(flip, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * r, 0)
    return -np.hypot(x, y) * np.sign(y)


def shape_sdf(shape: str, px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels) to ``shape`` of radius ``r`` centred at the origin of (px, py)."""
    if shape == "circle":
        return np.hypot(px, py) - r
    if shape == "square":
        return _sd_box(px, py, 0.8 * r, 0.8 * r)
    if shape == "triangle":
        return _sd_triangle(px, py + 0.2 * r, 0.95 * r)
    if shape == "star":
        rho, th = np.hypot(px, py), np.arctan2(py, px)
        # radius oscillates between 0.5 r and r; divide by the gradient's size so the edge stays ~1 px wide
        edge = r * (0.75 + 0.25 * np.cos(5 * th))
        return (rho - edge) / np.sqrt(1 + (1.25 * r * np.sin(5 * th) / np.maximum(rho, 1e-3)) ** 2)
    if shape == "cross":
        return np.minimum(_sd_box(px, py, r, 0.3 * r), _sd_box(px, py, 0.3 * r, r))
    if shape == "ring":
        return np.abs(np.hypot(px, py) - 0.75 * r) - 0.25 * r
    if shape == "bar":
        return _sd_box(px, py, r, 0.3 * r)
    raise ValueError(f"unknown shape {shape!r}: expected one of {SHAPES}")


def _background(scene: Scene, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = np.array(BG_COLOURS[scene.bg_colour], dtype=np.float32) / 255
    light = 0.5 * base + 0.5
    img = np.broadcast_to(base, (size, size, 3)).copy()
    v = (yy / size)[..., None]
    if scene.background == "gradient":
        img = base * (1 - v) + light * v
    elif scene.background == "horizon":
        sky = np.array((0.62, 0.78, 0.95), dtype=np.float32)
        ground = base
        t = np.clip((yy - 0.55 * size) + 0.5, 0, 1)[..., None]  # anti-aliased horizon line
        img = sky * (1 - t) + ground * t
    elif scene.background == "stripes":
        period = size / 5
        s = np.clip(2 * np.abs(((xx + yy) / period) % 1 - 0.5) * period / 2 - period / 4 + 0.5, 0, 1)[
            ..., None
        ]
        img = base * (1 - s) + light * s
    return img.astype(np.float32)


def render(scene: Scene, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene`` as uint8 (size, size, 3) and return it with each object's visible coverage (n, size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    img = _background(scene, size, yy, xx)
    covs = []
    for o in scene.objects:
        t = np.deg2rad(o.angle)
        dx, dy = xx - o.x * size, yy - o.y * size
        px, py = np.cos(t) * dx + np.sin(t) * dy, -np.sin(t) * dx + np.cos(t) * dy
        a = np.clip(0.5 - shape_sdf(o.shape, px, py, o.radius * size), 0, 1).astype(np.float32)
        col = np.array(COLOURS[o.colour], dtype=np.float32) / 255
        img = img * (1 - a[..., None]) + col * a[..., None]
        for c in covs:  # later objects occlude earlier ones
            c *= 1 - a
        covs.append(a)
    out = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out, np.stack(covs) if covs else np.zeros((0, size, size), np.float32)


# ----------------------------------------------------------------------------------------------------------------
# captions


def _third(v: float) -> int:
    """0, 1 or 2: which third of the image (0..1) a coordinate falls in."""
    return 0 if v < 1 / 3 else (1 if v < 2 / 3 else 2)


def _where(o: SceneObject) -> str:
    row, col = _third(o.y), _third(o.x)
    return [
        ["in the top left", "at the top", "in the top right"],
        ["on the left", "in the centre", "on the right"],
        ["in the bottom left", "at the bottom", "in the bottom right"],
    ][row][col]


def _bg_phrase(scene: Scene, rng: np.random.Generator) -> str:
    c = scene.bg_colour
    return {
        "plain": [f"on a plain {c} background", f"against {c}", f"on {c}"],
        "gradient": [f"on a {c} gradient", f"on a background fading from {c}", f"over a soft {c} gradient"],
        "horizon": [
            f"in a landscape with {c} ground",
            f"above a {c} horizon under a pale sky",
            f"in an open scene with sky and {c} ground",
        ],
        "stripes": [f"on a striped {c} background", f"over {c} diagonal stripes", f"on {c} stripes"],
    }[scene.background][rng.integers(3)]


def _noun(o: SceneObject, rng: np.random.Generator, with_size: bool = True) -> str:
    words = _SHAPE_WORDS[o.shape]
    size = _SIZE_WORDS[o.size][rng.integers(3)] if with_size else ""
    parts = [w for w in (size, o.colour, words[rng.integers(len(words))]) if w]
    return " ".join(parts)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` paraphrased captions of ``scene``, each naming every object's colour and shape."""
    out: list[str] = []
    templates = ("list_where", "there_is", "count", "picture", "short")
    for i in range(n):
        objs = list(scene.objects)
        rng.shuffle(objs)
        kind = templates[i % len(templates)]
        bg = _bg_phrase(scene, rng)
        if kind == "list_where":
            body = ", and ".join(f"{_article(_noun(o, rng))} {_where(o)}" for o in objs)
            text = f"{body} {bg}"
        elif kind == "there_is":
            body = " and ".join(_article(_noun(o, rng)) for o in objs)
            text = f"there is {body} {bg}"
        elif kind == "count":
            k = len(objs)
            noun = "shape" if k == 1 else "shapes"
            body = ", ".join(_article(_noun(o, rng, with_size=False)) for o in objs)
            text = f"{_COUNT_WORDS[k]} {noun} {bg}: {body}"
        elif kind == "picture":
            body = " next to ".join(_article(_noun(o, rng)) for o in objs)
            text = f"a picture of {body}"
        else:
            text = " and ".join(_article(_noun(o, rng, with_size=False)) for o in objs)
        out.append(text[0].upper() + text[1:] + ".")
    return out


# ----------------------------------------------------------------------------------------------------------------
# position-invariant attributes (what higher visual areas of the simulator are tuned to)


def global_feature_names() -> list[str]:
    return (
        [f"shape:{s}" for s in SHAPES]
        + [f"colour:{c}" for c in COLOURS]
        + [f"count:{k}" for k in (1, 2, 3)]
        + [f"background:{b}" for b in BACKGROUNDS]
        + ["area", "com_x", "com_y"]
    )


def global_features(scene: Scene, coverage: np.ndarray) -> np.ndarray:
    """Attribute vector of :func:`global_feature_names`: shape and colour counts, object count, background kind,
    visible object area, and the coverage-weighted centre of mass (-1..1; used by parietal voxels)."""
    f = np.zeros(len(global_feature_names()), np.float32)
    for o in scene.objects:
        f[SHAPES.index(o.shape)] += 1
        f[len(SHAPES) + list(COLOURS).index(o.colour)] += 1
    base = len(SHAPES) + len(COLOURS)
    f[base + len(scene.objects) - 1] = 1
    f[base + 3 + BACKGROUNDS.index(scene.background)] = 1
    total = coverage.sum(axis=0)
    size = coverage.shape[-1]
    area = total.mean()
    f[-3] = area
    if total.sum() > 0:
        yy, xx = np.mgrid[0:size, 0:size] + 0.5
        f[-2] = 2 * (xx * total).sum() / total.sum() / size - 1
        f[-1] = 2 * (yy * total).sum() / total.sum() / size - 1
    return f


# ----------------------------------------------------------------------------------------------------------------
# categorical attributes of a scene, for probing embeddings (k-NN, colouring of projections)

ATTRIBUTES = ("shape", "colour", "size", "position", "count", "background", "bg_colour")
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)


def attributes(scene: dict | Scene) -> dict[str, str | int]:
    """One label per :data:`ATTRIBUTES` entry: shape, colour, size and 3 x 3 position cell of the largest object;
    number of objects; background kind and colour. ``scene`` is a :class:`Scene` or its ``to_dict()``."""
    d = scene.to_dict() if isinstance(scene, Scene) else scene
    if not d.get("objects"):
        raise ValueError(f"scene {d.get('nsdId', '?')}: has no objects")
    o = max(d["objects"], key=lambda o: o["radius"])
    row, col = _third(o["y"]), _third(o["x"])  # the cell the captions name
    return {
        "shape": o["shape"],
        "colour": o["colour"],
        "size": o["size"],
        "position": POSITIONS[3 * row + col],
        "count": len(d["objects"]),
        "background": d["background"],
        "bg_colour": d["bg_colour"],
    }


def attribute_table(scene_list: list[dict]):
    """A pandas DataFrame of :func:`attributes`, one row per scene (in order)."""

    return pd.DataFrame([attributes(s) for s in scene_list], columns=list(ATTRIBUTES))
