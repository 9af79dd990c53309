"""Evaluation metrics of decoded embeddings and reconstructions, as the field defines them (MindEye's code)."""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_pair(pred: np.ndarray, true: np.ndarray, name: str) -> None:
    if np.ndim(pred) != 2 or np.shape(pred) != np.shape(true):
        raise ValueError(
            f"{name}: pred {np.shape(pred)} and true {np.shape(true)} must be equal (N, D) arrays"
        )
    if len(pred) < 2:
        raise ValueError(f"{name}: needs at least 2 samples, got {len(pred)}")


def retrieval(brain: np.ndarray, image: np.ndarray, n: int = 300, draws: int = 30, seed: int = 0) -> dict:
    """Top-1 retrieval by cosine similarity among ``n`` random test samples, averaged over ``draws`` draws.

    Row i of ``brain`` (embeddings decoded from fMRI) and of ``image`` (the seen images' embeddings) are a pair.
    ``image``: for each brain embedding, is its own image the most similar of the n (brain -> image, "image
    retrieval"); ``brain``: for each image, is its own brain embedding the most similar (image -> brain, "brain
    retrieval"). With fewer than ``n`` samples every draw uses all of them. Chance is 1/n.
    """
    _check_pair(brain, image, "retrieval")
    if n < 2 or draws < 1:
        raise ValueError(f"retrieval: n={n}, draws={draws}: expected n >= 2 and draws >= 1")
    b, v = _unit(brain), _unit(image)
    n = min(n, len(b))
    rng = np.random.default_rng(seed)
    img, brn = [], []
    for _ in range(draws if n < len(b) else 1):  # with every sample in each draw, all draws are the same
        idx = rng.choice(len(b), n, replace=False) if n < len(b) else np.arange(n)
        sim = b[idx] @ v[idx].T
        truth = np.arange(n)
        img.append(np.mean(sim.argmax(1) == truth))
        brn.append(np.mean(sim.argmax(0) == truth))
    return {"image": float(np.mean(img)), "brain": float(np.mean(brn)), "n": n, "chance": 1 / n}


def pearson_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) Pearson r between every row of ``a`` and every row of ``b`` (over their feature dimension)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return _unit(a) @ _unit(b).T


def two_way_identification(pred: np.ndarray, true: np.ndarray) -> float:
    """2-way identification: for each prediction, the fraction of the other N-1 true samples whose correlation
    with it is lower than that of its own true sample; the mean over predictions. Chance 0.5, perfect 1."""
    _check_pair(
        np.reshape(pred, (len(pred), -1)), np.reshape(true, (len(true), -1)), "two_way_identification"
    )
    r = pearson_matrix(pred, true)
    own = np.diag(r)
    n = len(r)
    below = (r < own[:, None]).sum(1)  # the diagonal is never below itself
    return float(np.mean(below / (n - 1)))


def cosine_per_sample(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Cosine similarity of each predicted row with its true row, (N,)."""
    _check_pair(pred, true, "cosine_per_sample")
    return np.sum(_unit(pred) * _unit(true), axis=1)


def pearson_per_sample(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r of each predicted row with its true row over the feature dimension, (N,)."""
    _check_pair(pred, true, "pearson_per_sample")
    p = np.asarray(pred, np.float64) - np.mean(pred, axis=1, keepdims=True)
    t = np.asarray(true, np.float64) - np.mean(true, axis=1, keepdims=True)
    return np.sum(_unit(p) * _unit(t), axis=1)


def pearson_per_column(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r of each column (e.g. a voxel, an embedding dimension) across samples, (D,); 0 where constant."""
    _check_pair(pred, true, "pearson_per_column")
    p = np.asarray(pred, np.float64) - np.mean(pred, axis=0)
    t = np.asarray(true, np.float64) - np.mean(true, axis=0)
    den = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    return np.where(den > 0, (p * t).sum(0) / np.where(den > 0, den, 1), 0.0)


def summary(pred: np.ndarray, true: np.ndarray, n: int = 300, draws: int = 30, seed: int = 0,
            regression: np.ndarray | None = None) -> dict:  # fmt: skip
    """The encoder metrics in one dict: retrieval both ways and 2-way identification of ``pred``, mean cosine and
    Pearson r of ``regression`` when given (e.g. an MLP's regression head, where ``pred`` is its contrastive
    projection, which is not trained to equal the target), else of ``pred``."""
    ret = retrieval(pred, true, n, draws, seed)
    reg = pred if regression is None else regression
    return {
        "img_retrieval_top1": ret["image"],
        "brain_retrieval_top1": ret["brain"],
        "retrieval_n": ret["n"],
        "chance": ret["chance"],
        "two_way": two_way_identification(pred, true),
        "cosine": float(cosine_per_sample(reg, true).mean()),
        "pearson": float(pearson_per_sample(reg, true).mean()),
    }
