"""The DINO recipe ablation behind notebook 01's table: each recipe of :data:`RECIPES` (the shipped recipe and the
changes that led to it, one at a time) trained on the same corpus images as ``make pretrain``'s DINO for the same
number of steps, then probed on the subject's stimuli (k-NN and linear probes, fitted on the training stimuli and
scored on the test stimuli, for the image vector and the patch grid). The per-image hits go into
``01_dino_recipes.json`` in the profile's metrics folder, so that 01 can draw paired intervals against random
initialisation and against the previous recipe without retraining anything.

    python -m lib.stage.dino_recipes [--profile mini] [--steps 300] [--only name,...]

Runs of another length (``--steps 1500 --only ...``: a longer look at a few recipes) go to a file of their own,
``01_dino_recipes_<steps>steps.json``, beside the 300-step comparison that 01 draws.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from lib import fileio, paths, stage
from lib.analysis import probes, stats
from lib.data import scenes
from lib.models import dino
from lib.models.pretrained import train as pretrain
from lib.stage import joint_embedding as je

PROG = "python -m lib.stage.dino_recipes"
NAME = "01_dino_recipes.json"
DEFAULT_STEPS = 300  # the ablation's length, drawn by 01 from NAME
FORMAT = "lib.dino.recipes/1"
#: the recipe changes in the order they were tried: (name, what changed, DinoConfig fields it sets); the first
#: row turns every change of the shipped recipe off
CHANGES = (
    ("previous recipe", "the earlier shipped DINO: stride 32, local crops of 20-50% anywhere",
     {"stride": 32, "local_scale": (0.2, 0.5), "object_crops": 0.0, "patch_weight": 0.0, "colour_jitter": 0.0,
      "grey": 0.0, "koleo_weight": 0.0, "pair_share": 0.0, "background_swap": 0.0, "centering": "mean"}),
    ("+ stride 16", "the last stage keeps 4 x 4 patch tokens at 64 px", {"stride": 16}),
    ("+ masked patches", "iBOT's masked-patch term on the patch tokens", {"patch_weight": 1.0}),
    ("+ object crops", "3/4 of the local crops (5-30%) centred on rare-colour pixels",
     {"object_crops": 0.75, "local_scale": (0.05, 0.3)}),
    ("+ colour jitter", "hue, saturation, contrast and brightness jitter (0.8), grey (0.2)",
     {"colour_jitter": 0.8, "grey": 0.2}),
    ("+ KoLeo, pairs", "KoLeo on batches that keep one-attribute pairs together: the recipe shipped before",
     {"koleo_weight": 0.1, "pair_share": 0.5}),
    ("+ background swap", "half the views pasted onto another scene's background (object_masks: rare colours)",
     {"background_swap": 0.5}),
    ("+ Sinkhorn-Knopp (shipped)", "DINOv2's Sinkhorn-Knopp centring of the teacher instead of the running mean",
     {"centering": "sinkhorn"}),
)  # fmt: skip
#: the recipe of the shipped DINO (lib.models.pretrained.train.dino_config)
SHIPPED = "+ Sinkhorn-Knopp (shipped)"


def _cumulative(changes) -> dict:
    fields: dict = {}
    out = {}
    for name, what, change in changes:
        fields = fields | change
        out[name] = (what, fields)
    return out


#: the recipes, each the one before with one change: (what changed, DinoConfig fields over the shipped recipe's)
RECIPES = _cumulative(CHANGES)
POOLINGS = {"image vector": "cls", "patch grid": "grid"}


def recipe_config(name: str, steps: int) -> dino.DinoConfig:
    """The DinoConfig of recipe ``name``: the shipped recipe's (:func:`lib.models.pretrained.train.dino_config`)
    with the recipe's fields, for ``steps`` steps."""
    base = pretrain.dino_config(pretrain.PROFILES["full"])
    return dataclasses.replace(base, steps=int(steps), **RECIPES[name][1])


def _packed(hits: np.ndarray) -> str:
    return "".join("1" if h else "0" for h in np.asarray(hits) > 0.5)


def _unpacked(bits: str) -> np.ndarray:
    return np.frombuffer(bits.encode(), np.uint8).astype(np.float64) - ord("0")


def file_name(steps: int) -> str:
    """The recipe file of runs of ``steps`` steps: :data:`NAME` for the ablation's length, else its own."""
    return NAME if int(steps) == DEFAULT_STEPS else f"01_dino_recipes_{int(steps)}steps.json"


def run(profile: str = paths.EMBEDDED_PROFILE, steps: int = DEFAULT_STEPS, only: tuple[str, ...] = (), knn_k: int = 20,
        corpus: str = "full", overrides: dict | None = None) -> dict:  # fmt: skip
    """Train and probe each recipe (``only``: those; default all) on the DINO images of pretraining profile
    ``corpus`` (:func:`lib.models.pretrained.train.dino_data`), add them to ``profile``'s recipe file and return
    it (``overrides``: of ``profile``'s common parameters, as a notebook's; the file: :func:`file_name`). Each recipe's training state is kept
    under build/pretrain/recipes/<corpus>-<steps>/, so a rerun resumes."""
    bad = set(only) - set(RECIPES)
    if bad:
        raise ValueError(f"--only {sorted(bad)}: expected some of {list(RECIPES)}")
    st = stage.setup("01_joint_embedding", profile, overrides or {})
    data = je.split(st)
    ids = np.concatenate([data.train_ids, data.test_ids])
    test = np.r_[np.zeros(len(data.train_ids), bool), np.ones(len(data.test_ids), bool)]
    images, attrs = st.ds.images(ids), scenes.attribute_table(st.ds.scenes(ids))
    x_corpus, (mean, std), partners = pretrain.dino_data(pretrain.PROFILES[corpus])
    x = dino.normalise(images, mean=mean, std=std, size=pretrain.PROFILES[corpus].image_size)  # as trained
    out_path = paths.metrics_dir(profile) / file_name(steps)
    record = load(out_path) if out_path.exists() else {"format": FORMAT, "recipes": {}}
    record |= {
        "steps": int(steps),
        "profile": profile,
        "corpus": corpus,
        "n_test": int(test.sum()),
        "command": PROG,
    }
    for name in only or tuple(RECIPES):
        rc = recipe_config(name, steps)
        t0 = time.perf_counter()
        _, teacher, hist = dino.train_dino(x_corpus, rc, paths.BUILD_DIR / "pretrain" / "recipes" / f"{corpus}-{steps}",
                                           device=st.device, partners=partners)  # fmt: skip
        nets = {name: teacher.backbone, f"random init ({name})": dino.build(rc)[0].backbone}
        feats = {f"{n} · {pool}": dino.features(net, x, pooling=how) for n, net in nets.items()
                 for pool, how in POOLINGS.items()}  # fmt: skip
        table = probes.probe_table(feats, test, attrs, knn_k)
        assigned = prototypes(teacher, x)
        record["recipes"][name] = {
            "changed": RECIPES[name][0], "config": dataclasses.asdict(rc), "seconds": time.perf_counter() - t0,
            "train_seconds": hist["seconds"], "prototypes_used": int(len(np.unique(assigned))),
            "prototype_nmi": {a: float(normalized_mutual_info_score(attrs[a].astype(str), assigned)) for a in attrs},
            "hits": {probe: {f: {a: _packed(v) for a, v in by_attr.items()} for f, by_attr in t.items()}
                     for probe, t in table["hits"].items()},
        }  # fmt: skip
        record["majority"] = table["majority"]
        fileio.write_json(out_path, record)  # after each recipe: a cut run keeps the recipes it finished
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return record


@torch.no_grad()
def prototypes(net: dino.DinoNet, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """The prototype each image is assigned to: the argmax of the teacher's head (what DINO's objective asks the
    student to predict), for the mutual information of the assignment with each scene attribute."""
    net.eval()
    dev = next(net.parameters()).device
    return np.concatenate(
        [net(x[i : i + batch_size].to(dev)).argmax(1).cpu().numpy() for i in range(0, len(x), batch_size)]
    )


def describe_prototypes(record: dict) -> str:
    """Each recipe's prototypes used and the normalised mutual information of its assignment with each attribute:
    what the objective clusters the scenes by."""
    lines = []
    for name in (n for n in RECIPES if n in record["recipes"]):  # the file's keys are sorted
        r = record["recipes"][name]
        if "prototype_nmi" in r:
            nmi = ", ".join(f"{a} {v:.2f}" for a, v in r["prototype_nmi"].items())
            lines.append(f"{name}: {r['prototypes_used']} prototypes; NMI with {nmi}")
    return "\n".join(lines)


def load(path) -> dict:
    """A recipe file of :func:`run`; another format is an error naming the file."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable recipe file ({type(e).__name__}); rerun {PROG}") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} recipe file; rerun {PROG}")
    return rec


def _hits(record: dict, recipe: str, probe: str, features: str) -> dict[str, np.ndarray]:
    """{attribute: 0/1 per test stimulus} of one feature set of ``recipe`` under ``probe``."""
    return {a: _unpacked(b) for a, b in record["recipes"][recipe]["hits"][probe][features].items()}


def comparison(record: dict, resamples: int, seed: int = 0) -> dict:
    """From a recipe file: {probe: {pooling: {recipe: {attribute: {"accuracy", "vs_random", "vs_previous"}}}}},
    the accuracy on the test stimuli and paired 95% intervals (:func:`lib.analysis.stats.paired`) against the
    recipe's network at random initialisation and against the recipe before it in :data:`RECIPES`."""
    names = [n for n in RECIPES if n in record["recipes"]]
    out: dict = {}
    for probe in ("knn", "linear"):
        for pool in POOLINGS:
            rows = out.setdefault(probe, {}).setdefault(pool, {})
            for i, name in enumerate(names):
                mine = _hits(record, name, probe, f"{name} · {pool}")
                rand = _hits(record, name, probe, f"random init ({name}) · {pool}")
                prev = _hits(record, names[i - 1], probe, f"{names[i - 1]} · {pool}") if i else None
                rows[name] = {
                    a: {"accuracy": float(mine[a].mean()),
                        "vs_random": stats.paired(mine[a], rand[a], resamples, seed=seed),
                        "vs_previous": None if prev is None else stats.paired(mine[a], prev[a], resamples, seed=seed)}
                    for a in mine
                }  # fmt: skip
    return out


#: the panels of 01's recipe figure: (probe, pooling) and their titles
PANELS = {("knn", "image vector"): "k-NN (k = 20), image vector", ("linear", "image vector"): "linear probe, image vector",
          ("knn", "patch grid"): "k-NN (k = 20), patch grid", ("linear", "patch grid"): "linear probe, patch grid"}  # fmt: skip


def saved(profile: str = paths.EMBEDDED_PROFILE, steps: int = DEFAULT_STEPS) -> dict | None:
    """The recipe file of ``profile`` (default mini, whose stimuli the recipes were probed on) and ``steps``; None,
    saying which command makes it, when there is none."""
    path = paths.metrics_dir(profile) / file_name(steps)
    if not path.exists():
        print(
            f"no recipe ablation at {paths.display(path)}: {PROG} --profile {profile} --steps {steps} makes it"
        )
        return None
    return load(path)


def panels(record: dict, resamples: int, seed: int = 0) -> dict:
    """{panel title: {recipe: {attribute: accuracy and paired intervals}}} of :func:`comparison`, one panel per
    :data:`PANELS` entry, for :func:`lib.report.figures.recipe_table`."""
    cmp = comparison(record, resamples, seed)
    return {title: cmp[probe][pool] for (probe, pool), title in PANELS.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=paths.EMBEDDED_PROFILE)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps of every recipe")
    ap.add_argument("--only", default="", help=f"comma-separated recipes: {', '.join(RECIPES)}")
    a = ap.parse_args(argv)
    run(a.profile, a.steps, tuple(s for s in a.only.split(",") if s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
