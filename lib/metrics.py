"""Evaluation metrics of decoded embeddings and reconstructions, as the field defines them (MindEye's code), and
the k-NN and linear-probe accuracies of features. Pure measures with no other lib import, so that every layer can
score with them: data (noise ceilings), models (held-out monitors of training) and analysis."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
    img, brn = [], []
    for _, i, r in _retrieval_draws(brain, image, n, draws, seed):
        img.append(i.mean())
        brn.append(r.mean())
    n = min(n, len(brain))
    return {"image": float(np.mean(img)), "brain": float(np.mean(brn)), "n": n, "chance": 1 / n}


def retrieval_per_sample(brain: np.ndarray, image: np.ndarray, n: int = 300, draws: int = 30,
                         seed: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """Each pair's share of :func:`retrieval`'s hits (the same draws for the same seed), ``image`` and ``brain``
    (N,): in the draws that held row i, how often it was found. With ``n`` >= N (one draw of every row) these are
    0/1 and their means are :func:`retrieval`'s numbers; with fewer, each row is weighted by its draws."""
    hits = np.zeros((2, len(brain)))
    seen = np.zeros(len(brain))
    for idx, i, r in _retrieval_draws(brain, image, n, draws, seed):
        hits[0, idx] += i
        hits[1, idx] += r
        seen[idx] += 1
    seen = np.maximum(seen, 1)  # a row no draw held (n < N, few draws) counts as missed
    return {"image": hits[0] / seen, "brain": hits[1] / seen}


def _retrieval_draws(brain, image, n, draws, seed):
    """(rows, image hits, brain hits) of each draw of ``n`` pairs: the one sampling of both retrieval functions."""
    _check_pair(brain, image, "retrieval")
    if n < 2 or draws < 1:
        raise ValueError(f"retrieval: n={n}, draws={draws}: expected n >= 2 and draws >= 1")
    b, v = _unit(brain), _unit(image)
    n = min(n, len(b))
    rng = np.random.default_rng(seed)
    for _ in range(draws if n < len(b) else 1):  # with every sample in each draw, all draws are the same
        idx = rng.choice(len(b), n, replace=False) if n < len(b) else np.arange(n)
        s = b[idx] @ v[idx].T
        truth = np.arange(n)
        yield idx, s.argmax(1) == truth, s.argmax(0) == truth


def _paired_top1(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    s = a @ b.T
    truth = np.arange(len(a))
    return float(np.mean(s.argmax(1) == truth)), float(np.mean(s.argmax(0) == truth))


def paired_top1_per_sample(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`paired_top1`'s hits per row, (N,) 0/1 each way (their means are its numbers)."""
    _check_pair(a, b, "paired_top1")
    s = _unit(a) @ _unit(b).T
    truth = np.arange(len(a))
    return (s.argmax(1) == truth).astype(np.float64), (s.argmax(0) == truth).astype(np.float64)


def paired_top1(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Top-1 retrieval between paired rows of ``a`` and ``b`` (all rows, by cosine similarity): the fraction of
    rows of ``a`` whose most similar row of ``b`` is their pair, and the reverse (ties go to the first row). The
    one top-1 of the project: :func:`retrieval` averages it over random draws of ``n`` pairs."""
    _check_pair(a, b, "paired_top1")
    return _paired_top1(_unit(a), _unit(b))


def topk(query: np.ndarray, gallery: np.ndarray, truth: np.ndarray, k: int = 1) -> float:
    """Fraction of ``query`` rows whose true ``gallery`` row ``truth[i]`` is among their ``k`` most similar rows
    by cosine similarity (a query with several true rows, e.g. captions of one image, is scored per query)."""
    q, g = _unit(query), _unit(gallery)
    truth = np.asarray(truth)
    if q.shape[1] != g.shape[1] or truth.shape != (len(q),) or k < 1:
        raise ValueError(f"topk: query {q.shape}, gallery {g.shape}, truth {truth.shape}, k={k}: expected equal "
                         "dimensions, one truth per query and k >= 1")  # fmt: skip
    s = q @ g.T
    true = s[np.arange(len(q)), truth]
    return float(((s > true[:, None]).sum(1) < k).mean())


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
    return float(np.mean(two_way_per_sample(pred, true)))


def two_way_per_sample(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Each prediction's term of :func:`two_way_identification` (N,): the fraction of the other true samples it
    correlates with less than with its own."""
    _check_pair(
        np.reshape(pred, (len(pred), -1)), np.reshape(true, (len(true), -1)), "two_way_identification"
    )
    r = pearson_matrix(pred, true)
    own = np.diag(r)
    below = (r < own[:, None]).sum(1)  # the diagonal is never below itself
    return below / (len(r) - 1)


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


def summary_per_sample(pred: np.ndarray, true: np.ndarray, n: int = 300, draws: int = 30, seed: int = 0,
                       regression: np.ndarray | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """:func:`summary`'s metrics per test sample (N,) each, for bootstrap intervals and paired comparisons
    (:mod:`lib.analysis.stats`); their means are :func:`summary`'s numbers (retrieval: see
    :func:`retrieval_per_sample`)."""
    ret = retrieval_per_sample(pred, true, n, draws, seed)
    reg = pred if regression is None else regression
    return {
        "img_retrieval_top1": ret["image"],
        "brain_retrieval_top1": ret["brain"],
        "two_way": two_way_per_sample(pred, true),
        "cosine": cosine_per_sample(reg, true),
        "pearson": pearson_per_sample(reg, true),
    }


# ================================================================================================================
# low-level image metrics (MindEye's definitions)

#: side both images are resized to before PixCorr and SSIM (MindEye's evaluation)
METRIC_SIZE = 425


def _images(a: np.ndarray, name: str):

    x = np.asarray(a)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 images (N, H, W, 3), got {x.shape} {x.dtype}")
    return torch.as_tensor(x).permute(0, 3, 1, 2).float() / 255


def resize(x, size: int):
    """Float images (N, C, H, W) resized to ``size`` x ``size``: bilinear, as torchvision's Resize on tensors,
    antialiased only when shrinking; unchanged when already that size."""

    if x.shape[-2:] == (size, size):
        return x
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=shrink)


def _checked(recons: dict[str, np.ndarray], targets: np.ndarray) -> np.ndarray:
    """``targets`` as an array, after checking that every image set of ``recons`` is uint8 (N, H, W, 3) with one
    image per target (a one-line error naming the set)."""
    t = np.asarray(targets)
    _images(t[:1], "targets")
    for name, r in recons.items():
        _images(np.asarray(r)[:1], name)
        if len(r) != len(t) or len(t) == 0:
            raise ValueError(
                f"{name} ({len(r)}) and targets ({len(t)}): expected the same number of images, >= 1"
            )
    return t


def _pixcorr(r, t) -> np.ndarray:
    """Pearson r over all values of each pair of float images (N, C, H, W), (N,)."""
    r = r.flatten(1) - r.flatten(1).mean(1, keepdim=True)
    t = t.flatten(1) - t.flatten(1).mean(1, keepdim=True)
    den = (r.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-12)
    return ((r * t).sum(1) / den).double().numpy()


class _Ssim:
    """SSIM's parts on float images (N, 3, S, S): the target's grey image, its local mean and variance computed
    once (:meth:`target`), then any number of images scored against them (:meth:`score`)."""

    C1, C2 = 0.01**2, 0.03**2
    GREY = (0.2125, 0.7154, 0.0721)

    def __init__(self, sigma: float):
        self.radius = int(3.5 * sigma + 0.5)
        g = torch.exp(-0.5 * (torch.arange(-self.radius, self.radius + 1, dtype=torch.float64) / sigma) ** 2)
        self.g = (g / g.sum()).float()
        self.grey = torch.tensor(self.GREY).view(1, 3, 1, 1)
        self._band = None  # (S, S - 2 radius): the blur's matrix for images of side S

    def blur(self, a):
        """Separable Gaussian over the last two axes, valid region only (= scikit-image's filter cropped by the
        window radius), as two products with a banded matrix: on CPU faster than the 23-tap convolution."""
        n = a.shape[-1]
        if self._band is None or self._band.shape[0] != n or a.shape[-2] != n:
            if a.shape[-2] != n:
                raise ValueError(f"SSIM: images {tuple(a.shape[-2:])}: expected square")
            band = torch.zeros(n, n - 2 * self.radius)
            for j in range(n - 2 * self.radius):
                band[j : j + 2 * self.radius + 1, j] = self.g
            self._band = band
        return self._band.T @ (a @ self._band)

    def target(self, t):
        y = (t * self.grey).sum(1, keepdim=True)
        my, yy = self.blur(torch.cat([y, y * y], 1)).split(1, dim=1)
        return y, my, yy - my * my

    def score(self, r, target) -> np.ndarray:
        y, my, vy = target
        x = (r * self.grey).sum(1, keepdim=True)
        mx, xx, xy = self.blur(torch.cat([x, x * x, x * y], 1)).split(1, dim=1)
        vx, cxy = xx - mx * mx, xy - mx * my
        s = ((2 * mx * my + self.C1) * (2 * cxy + self.C2)) / (
            (mx * mx + my * my + self.C1) * (vx + vy + self.C2)
        )
        return s.double().mean(dim=[1, 2, 3]).numpy()


def low_level_per_image(recons: dict[str, np.ndarray], targets: np.ndarray, size: int = METRIC_SIZE,
                        sigma: float = 1.5, chunk: int = 32, which=("PixCorr", "SSIM")) -> dict[str, dict]:  # fmt: skip
    """{name: {"PixCorr": (N,), "SSIM": (N,)}} of every image set of ``recons`` (uint8 (N, H, W, 3), row i drawn for
    targets[i]) against ``targets``, each metric as :func:`pixcorr_per_image` and :func:`ssim_per_image` define it.
    Each chunk of targets is resized, greyed and blurred once for every set."""
    t_all = _checked(recons, targets)
    ssim_ = _Ssim(sigma)
    out: dict[str, dict[str, list]] = {v: {m: [] for m in which} for v in recons}
    for i in range(0, len(t_all), chunk):
        t = resize(_images(t_all[i : i + chunk], "targets"), size)
        tgt = ssim_.target(t) if "SSIM" in which else None
        for v, rec in recons.items():
            r = resize(_images(np.asarray(rec[i : i + chunk]), v), size)
            if "PixCorr" in which:
                out[v]["PixCorr"].append(_pixcorr(r, t))
            if "SSIM" in which:
                out[v]["SSIM"].append(ssim_.score(r, tgt))
    return {v: {m: np.concatenate(x) for m, x in by.items()} for v, by in out.items()}


def pixcorr_per_image(recons: np.ndarray, targets: np.ndarray, size: int = METRIC_SIZE) -> np.ndarray:
    """Pearson r over all RGB pixel values of each (reconstruction, target) pair after resizing both to
    ``size`` x ``size``, (N,)."""
    return low_level_per_image({"recons": recons}, targets, size, which=("PixCorr",))["recons"]["PixCorr"]


def pixcorr(recons: np.ndarray, targets: np.ndarray, size: int = METRIC_SIZE) -> float:
    """MindEye's PixCorr: the mean of :func:`pixcorr_per_image` over pairs. Inputs: uint8 (N, H, W, 3)."""
    return float(np.mean(pixcorr_per_image(recons, targets, size)))


def ssim_per_image(
    recons: np.ndarray, targets: np.ndarray, size: int = METRIC_SIZE, sigma: float = 1.5
) -> np.ndarray:
    """SSIM of each pair after resizing to ``size`` and converting to grey (0.2125 R + 0.7154 G + 0.0721 B):
    Gaussian weights (``sigma``, window truncated at 3.5 sigma), population covariances, data range 1,
    K1 0.01, K2 0.03, averaged over the pixels a full window covers; equal to scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``."""
    return low_level_per_image({"recons": recons}, targets, size, sigma, which=("SSIM",))["recons"]["SSIM"]


def ssim(recons: np.ndarray, targets: np.ndarray, size: int = METRIC_SIZE) -> float:
    """MindEye's SSIM: the mean of :func:`ssim_per_image` over pairs. Inputs: uint8 (N, H, W, 3)."""
    return float(np.mean(ssim_per_image(recons, targets, size)))


def layout(images: np.ndarray, grid: int, grey: bool = False) -> np.ndarray:
    """The spatial layout of uint8 ``images`` (N, S, S, 3): area means in [0, 1] on a ``grid`` x ``grid`` raster
    (block means when S is a multiple of ``grid``), flattened in (row, column, channel) order to
    (N, grid * grid * 3), or with ``grey`` averaged over the channels to (N, grid * grid). The one layout of the
    project: the ROI comparison's targets (02) and the embedding's layout read-out (04)."""

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
        raise ValueError(f"layout: images {images.shape}: expected (N, size, size, 3)")
    if not 1 <= grid <= images.shape[1]:
        raise ValueError(f"layout: grid={grid}: expected 1..{images.shape[1]} (the image size)")
    out = []
    for lo in range(0, len(images), 256):
        x = torch.as_tensor(images[lo : lo + 256]).permute(0, 3, 1, 2).double() / 255
        x = F.adaptive_avg_pool2d(x, grid).permute(0, 2, 3, 1)
        out.append((x.mean(-1) if grey else x).reshape(len(x), -1).float().numpy())
    width = grid * grid * (1 if grey else 3)
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def knn_predict(
    train: np.ndarray, labels: np.ndarray, test: np.ndarray, k: int = 20, temperature: float = 0.07
):
    """DINO's weighted k-NN classifier: the ``k`` training rows most cosine-similar to each test row vote for
    their label with weight exp(similarity / temperature); returns the label with the most weight."""
    if len(train) != len(labels):
        raise ValueError(f"{len(train)} training features but {len(labels)} labels")
    k = min(k, len(train))
    a = torch.as_tensor(train, dtype=torch.float64)
    b = torch.as_tensor(test, dtype=torch.float64)
    sim = F.normalize(b, dim=1) @ F.normalize(a, dim=1).T
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(b), len(classes), dtype=torch.float64)
    votes.scatter_add_(1, torch.as_tensor(y)[idx], (top / temperature).exp())
    return classes[votes.argmax(1).numpy()]


def knn_accuracy(train: np.ndarray, test: np.ndarray, attributes_train, attributes_test, k: int = 20,
                 per_image: bool = False) -> dict:  # fmt: skip
    """{attribute: k-NN accuracy on the test rows} for every column of the two attribute tables (with
    ``per_image``: {attribute: 0/1 per test row} instead)."""
    out = {}
    for a in attributes_train.columns:
        guess = knn_predict(train, attributes_train[a].to_numpy(), test, k)
        hits = (guess == attributes_test[a].to_numpy()).astype(np.float64)
        out[a] = hits if per_image else float(hits.mean())
    return out


def linear_probe_accuracy(train: np.ndarray, test: np.ndarray, attributes_train, attributes_test,
                          alpha: float = 100.0, per_image: bool = False) -> dict:  # fmt: skip
    """{attribute: test accuracy} of a linear probe (scikit-learn's one-vs-rest ridge classifier on standardised
    features, penalty ``alpha``) fitted on the training rows: what the features hold linearly, where k-NN shows
    what dominates their similarity. With ``per_image``: {attribute: 0/1 per test image} instead."""
    from sklearn.linear_model import RidgeClassifier  # lazy: scikit-learn: a second to import, probes only
    from sklearn.pipeline import make_pipeline  # lazy: as above
    from sklearn.preprocessing import StandardScaler  # lazy: as above

    out = {}
    for a in attributes_train.columns:
        clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=alpha))
        clf.fit(train, attributes_train[a].astype(str).to_numpy())
        hits = (clf.predict(test) == attributes_test[a].astype(str).to_numpy()).astype(np.float64)
        out[a] = hits if per_image else float(hits.mean())
    return out
