"""Probes of an image space, fitted on the training stimuli and scored on the test stimuli: k-NN and linear probes
of the simulator's scene attributes (DINO's and the embedding's features), image-caption retrieval, the seed
spread of an embedding trained here, and a 2-D projection for the figures."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from sklearn.manifold import TSNE

from lib import metrics
from lib.analysis import stats
from lib.metrics import paired_top1, paired_top1_per_sample
from lib.models.contrastive import ClipTrainConfig, train_from_scratch
from lib.models.embedding import Embedder


def knn_table(results: dict[str, dict[str, float]], chance: dict[str, float]) -> str:
    """The k-NN accuracies as a plain-text table: one row per attribute, one column per feature set."""
    names = list(results)
    head = f"{'attribute':<12}" + "".join(f"{n:>24}" for n in names) + f"{'majority class':>16}"
    rows = [
        f"{a:<12}" + "".join(f"{results[n][a]:>24.3f}" for n in names) + f"{chance[a]:>16.3f}" for a in chance
    ]
    return "\n".join([head, *rows])


def probe_table(
    features: dict[str, np.ndarray], test: np.ndarray, attributes, k: int = 20
) -> dict[str, dict]:
    """Probes of each named feature set (rows: images; ``test``: boolean mask of the test rows; fitted on the
    others) for every column of the ``attributes`` table: ``knn`` (:func:`knn_accuracy` with ``k`` neighbours)
    and ``linear`` (:func:`linear_probe_accuracy`), {name: {attribute: accuracy}}; ``hits``, the 0/1 scores
    behind them, {"knn" / "linear": {name: {attribute: (N test,)}}} for paired comparisons; and ``majority``,
    the test rows' majority-class rate per attribute (chance)."""
    test = np.asarray(test, bool)
    if test.shape != (len(attributes),) or not (test.any() and (~test).any()):
        raise ValueError(f"test mask {test.shape}: expected one entry per row of attributes ({len(attributes)}), "
                         "with training and test rows")  # fmt: skip
    tr, te = attributes[~test], attributes[test]
    hits: dict[str, dict] = {"knn": {}, "linear": {}}
    for name, f in features.items():
        if len(f) != len(test):
            raise ValueError(f"features {name!r}: {len(f)} rows, expected {len(test)}")
        hits["knn"][name] = metrics.knn_accuracy(f[~test], f[test], tr, te, k, per_image=True)
        hits["linear"][name] = metrics.linear_probe_accuracy(f[~test], f[test], tr, te, per_image=True)
    out: dict[str, dict] = {
        probe: {name: {a: float(v.mean()) for a, v in by_attr.items()} for name, by_attr in table.items()}
        for probe, table in hits.items()
    }
    out["hits"] = hits
    out["majority"] = {a: float(te[a].value_counts(normalize=True).iloc[0]) for a in attributes}
    return out


def project_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE of the rows of ``x`` (cosine distance, perplexity up to 30) for plotting."""

    perplexity = float(min(30, max(2, (len(x) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(x)


def compare(embedders: dict[str, Embedder], images_train: np.ndarray, images_test: np.ndarray, attrs_train,
            attrs_test, captions_test: list[list[str]], per_image: bool = False):  # fmt: skip
    """For each named model: linear probes of its image embedding (fitted on the training images' attributes,
    scored on the test images'; :func:`linear_probe_accuracy`) and top-1 retrieval both ways between the
    test images and their mean caption embeddings. With ``per_image`` also the scores behind them, {model:
    {attribute or img2txt_top1 / txt2img_top1: 0/1 per test image}}, for :mod:`lib.analysis.stats`."""

    out, scores = {}, {}
    for name, emb in embedders.items():
        a, b = emb.embed_images(images_train), emb.embed_images(images_test)
        txt, _ = emb.embed_captions(captions_test)
        i2t, t2i = paired_top1_per_sample(b, txt)
        hits = metrics.linear_probe_accuracy(a, b, attrs_train, attrs_test, per_image=True)
        scores[name] = hits | {"img2txt_top1": i2t, "txt2img_top1": t2i}
        out[name] = {"linear_probe": {k: float(v.mean()) for k, v in hits.items()},
                     "img2txt_top1": float(i2t.mean()), "txt2img_top1": float(t2i.mean())}  # fmt: skip
    return (out, scores) if per_image else out


def probe_rows(probes: dict[str, dict]) -> dict[str, dict[str, float]]:
    """:func:`compare`'s result as a flat table {model: {attribute or retrieval: number}} (for seed spreads)."""
    return {
        name: r["linear_probe"] | {k: v for k, v in r.items() if k != "linear_probe"}
        for name, r in probes.items()
    }


def retrieval_monitor(images: np.ndarray, captions: list[list[str]]) -> Callable[[Embedder], dict]:
    """A ``monitor`` for :func:`train_clip`: top-1 retrieval both ways between ``images`` and their mean caption
    embeddings (held-out images; for the training curves only, never for choosing a model)."""

    def monitor(emb: Embedder) -> dict:
        img = emb.embed_images(images)
        txt, _ = emb.embed_captions(captions)
        i2t, t2i = paired_top1(img, txt)
        return {"img2txt_top1": i2t, "txt2img_top1": t2i}

    return monitor


def scratch_seed_spread(seeds, arch: str, cfg: ClipTrainConfig, store, images_train: np.ndarray,
                        captions_train: list[list[str]], images_test: np.ndarray, captions_test: list[list[str]],
                        attrs_train, attrs_test, image_size: int | None = None, device: str = "auto",
                        first: dict | None = None) -> dict:  # fmt: skip
    """The seed spread of 01's probes of the embedding trained here (:func:`train_from_scratch` with each of
    ``seeds``, kept in memory; ``first``: the first seed's :func:`compare` row, already
    computed): :func:`lib.analysis.stats.across_seeds` over {"scratch": {attribute or retrieval: number}}."""

    def table(seed: int) -> dict:
        emb, _ = train_from_scratch(arch, images_train, captions_train, dataclasses.replace(cfg, seed=seed), store,
                                    image_size, device, save=False)  # fmt: skip
        probes = compare({"scratch": emb}, images_train, images_test, attrs_train, attrs_test,
                                   captions_test)  # fmt: skip
        return probe_rows(probes)

    return stats.across_seeds(seeds, table, None if first is None else probe_rows({"scratch": first}))
