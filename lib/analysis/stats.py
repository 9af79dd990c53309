"""Uncertainty of every reported number: bootstrap intervals over test images, paired comparisons on the same
images, and the spread over training seeds.

Every metric of the project is the mean of a per-image score (a retrieval hit, a 2-way fraction, PixCorr, a
read-back hit; :mod:`lib.metrics`), so one resampling of the test images gives every metric's interval,
and the same resampling of two variants' scores on the same images gives their paired difference. Retrieval's
gallery stays the whole test set: the interval is over which images are queried, not over the gallery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

from lib import runtime

#: resamples per interval and sign flips per paired test unless a caller says otherwise
RESAMPLES = 2000
LEVEL = 0.95
METHODS = ("percentile", "bca")


class StatsError(ValueError):
    """Scores that cannot be resampled (empty, non-finite, unequal lengths) or an unknown option."""


@dataclass(frozen=True)
class StatsConfig:
    """The uncertainty every notebook reports (profile section ``stats``)."""

    resamples: int = 2000  # test-image resamples behind every 95% interval and paired comparison
    seeds: int = 1  # training seeds of the models 01-03 train (seed, seed + 1, ...); > 1 records the spread

    def check(self) -> None:
        if self.resamples < 100 or self.seeds < 1:
            raise ValueError(
                f"stats: resamples={self.resamples}, seeds={self.seeds}: expected >= 100 and >= 1"
            )


@dataclass(frozen=True)
class Interval:
    """A statistic of per-image scores with its bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    method: str
    n: int  # images
    resamples: int

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def bounds(self) -> list[float]:
        return [self.low, self.high]


def _scores(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise StatsError(f"{name}: shape {x.shape}, expected per-image scores (N,) with N >= 2")
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise StatsError(f"{name}: {bad} of {len(x)} scores are NaN or infinite; expected finite numbers")
    return x


def _check(resamples: int, level: float, method: str) -> None:
    if int(resamples) < 100:
        raise StatsError(f"resamples={resamples}: expected 100 or more")
    if not 0 < level < 1:
        raise StatsError(f"level={level}: expected a coverage between 0 and 1, e.g. 0.95")
    if method not in METHODS:
        raise StatsError(f"method={method!r}: expected one of {METHODS}")


def resample_means(x: np.ndarray, resamples: int, seed: int, chunk: int = 256) -> np.ndarray:
    """Means of ``resamples`` bootstrap samples of ``x`` (images drawn with replacement), (resamples,). The same
    ``seed`` and length draw the same images for any ``x``: scores of two variants are resampled in pairs."""
    rng = np.random.default_rng(seed)
    out = np.empty(int(resamples))
    for start in range(0, len(out), chunk):
        idx = rng.integers(0, len(x), (min(chunk, len(out) - start), len(x)))
        out[start : start + len(idx)] = x[idx].mean(1)
    return out


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _bca(x: np.ndarray, boot: np.ndarray, estimate: float, level: float,
         statistic: Callable[[np.ndarray], float]) -> tuple[float, float]:  # fmt: skip
    """Efron's bias-corrected and accelerated interval: bias from the share of resamples below the estimate,
    acceleration from the jackknife."""
    below = (np.sum(boot < estimate) + 0.5 * np.sum(boot == estimate)) / len(boot)
    if below <= 0 or below >= 1:  # every resample on one side: BCa is undefined, fall back to percentiles
        return _percentiles(boot, level)
    z0 = special.ndtri(below)
    n = len(x)
    if statistic is np.mean:
        jack = (x.sum() - x) / (n - 1)
    else:
        jack = np.array([statistic(np.delete(x, i)) for i in range(n)])
    d = jack.mean() - jack
    den = 6.0 * np.sum(d**2) ** 1.5
    a = float(np.sum(d**3) / den) if den > 0 else 0.0
    z = special.ndtri(np.array([(1 - level) / 2, (1 + level) / 2]))
    q = special.ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
    lo, hi = np.quantile(boot, q)
    return float(lo), float(hi)


def bootstrap(values, resamples: int = RESAMPLES, level: float = LEVEL, method: str = "percentile", seed: int = 0,
              statistic: Callable[[np.ndarray], float] | None = None, name: str = "scores") -> Interval:  # fmt: skip
    """The ``level`` bootstrap interval of ``statistic`` (default the mean) of per-image scores ``values`` (N,),
    resampling images with replacement ``resamples`` times: ``percentile`` or ``bca`` (Efron's BCa)."""
    _check(resamples, level, method)
    x = _scores(values, name)
    stat = statistic or np.mean
    estimate = float(stat(x))
    if statistic is None:
        boot = resample_means(x, resamples, seed)
    else:
        rng = np.random.default_rng(seed)
        boot = np.array([stat(x[rng.integers(0, len(x), len(x))]) for _ in range(int(resamples))])
    lo, hi = _percentiles(boot, level) if method == "percentile" else _bca(x, boot, estimate, level, stat)
    return Interval(estimate, lo, hi, level, method, len(x), int(resamples))


def sign_flip_p(d: np.ndarray, permutations: int = 10_000, seed: int = 0) -> float:
    """Two-sided p of a paired permutation test that the mean of the differences ``d`` is 0: each image's two
    scores swapped (its difference's sign flipped) at random; (1 + flips as extreme) / (1 + flips)."""
    d = _scores(d, "differences")
    observed = abs(d.mean())
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    count, done, chunk = 0, 0, 512
    while done < permutations:
        k = min(chunk, permutations - done)
        signs = rng.integers(0, 2, (k, len(d))) * 2 - 1
        count += int(np.sum(np.abs(signs @ d) / len(d) >= observed - 1e-12))
        done += k
    return (1 + count) / (1 + permutations)


def paired(a, b, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
           permutations: int = 10_000) -> dict:  # fmt: skip
    """``a`` against ``b``, per-image scores of two variants on the same images: the mean difference ``a - b``, its
    percentile bootstrap interval (images resampled in pairs) and the sign-flip permutation p."""
    a, b = _scores(a, "a"), _scores(b, "b")
    if a.shape != b.shape:
        raise StatsError(f"paired scores of {len(a)} and {len(b)} images: expected the same images")
    d = a - b
    iv = bootstrap(d, resamples, level, "percentile", seed, name="differences")
    return {"diff": iv.estimate, "low": iv.low, "high": iv.high, "p": sign_flip_p(d, permutations, seed),
            "level": level, "n": len(d)}  # fmt: skip


def intervals(per_image: dict[str, dict[str, np.ndarray]], resamples: int = RESAMPLES, level: float = LEVEL,
              seed: int = 0, method: str = "percentile") -> dict[str, dict[str, list[float]]]:  # fmt: skip
    """{row: {metric: [low, high]}} for a table of per-image scores {row: {metric: (N,)}}; a metric without scores
    (None: unavailable) has None."""
    return {
        row: {m: None if v is None else bootstrap(v, resamples, level, method, seed, name=f"{row}: {m}").bounds
              for m, v in scores.items()}
        for row, scores in per_image.items()
    }  # fmt: skip


def comparisons(per_image: dict[str, dict[str, np.ndarray]], pairs: Iterable[tuple[str, str]],
                resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict[str, dict[str, dict]]:  # fmt: skip
    """{"a − b": {metric: :func:`paired`}} for each pair of rows present in ``per_image``, over the metrics both
    have scores for."""
    out = {}
    for a, b in pairs:
        if a not in per_image or b not in per_image:
            continue
        common = [m for m, v in per_image[a].items() if v is not None and per_image[b].get(m) is not None]
        out[f"{a} − {b}"] = {
            m: paired(per_image[a][m], per_image[b][m], resamples, level, seed) for m in common
        }
    return out


#: a paired difference is claimed only when its interval excludes 0 and its permutation p is below this
ALPHA = 0.05


def differs(comparison: dict) -> bool:
    """Whether the report may call a paired comparison a difference: its 95% interval excludes 0 and (when it
    has one) its sign-flip p is below :data:`ALPHA`. Both, because with 0/1 scores and few images that differ
    the percentile interval alone is too eager (e.g. 7 discordant pairs out of 300: interval [-0.043, -0.003],
    p = 0.07)."""
    outside = comparison["low"] > 0 or comparison["high"] < 0
    return outside and comparison.get("p", 0.0) < ALPHA


def spread(values: Iterable[float]) -> dict:
    """Seed spread of one number: every value, mean, sample standard deviation (0 for one seed), min and max."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.ndim != 1 or not len(v):
        raise StatsError(f"spread of {v.shape} values: expected one value per seed")
    return {"values": v.tolist(), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": len(v)}  # fmt: skip


#: bookkeeping numbers of a table that are not results (no spread is recorded for them)
BOOKKEEPING = ("chance", "retrieval_n", "n")


def seed_spread(tables: list[dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """{row: {metric: :func:`spread`}} of one table per seed ({row: {metric: number}}), over the numeric entries
    every seed has (not :data:`BOOKKEEPING`)."""
    if not tables:
        raise StatsError("seed_spread: expected one table per seed, got none")
    out: dict[str, dict[str, dict]] = {}
    for row, first in tables[0].items():
        for m in (m for m in first if m not in BOOKKEEPING):
            vals = [t.get(row, {}).get(m) for t in tables]
            if all(isinstance(x, int | float) and not isinstance(x, bool) for x in vals):
                out.setdefault(row, {})[m] = spread(vals)
    return out


def across_seeds(seeds: list[int], table_of: Callable[[int], dict[str, dict]],
                 first: dict[str, dict] | None = None) -> dict:  # fmt: skip
    """The seed spread of a table of numbers ({row: {metric: number}}): ``table_of(seed)`` for each of ``seeds``
    (``first``, when given, is the first seed's table, already computed). Returns {"seeds": [...], "spread":
    :func:`seed_spread`}; one seed gives a spread of 0."""

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise StatsError("across_seeds: expected at least one seed")
    tables = [first] if first is not None else []
    for s in runtime.progress(seeds[len(tables) :], desc="seeds"):
        tables.append(table_of(s))
    return {"seeds": seeds, "spread": seed_spread(tables)}


def describe_comparisons(comparisons: dict[str, dict[str, dict]]) -> str:
    """Paired comparisons as text, one line per pair: ``metric diff [low, high] p`` (* where the interval
    excludes 0)."""
    return "\n".join(
        f"{pair}: " + ", ".join(f"{m} {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] p={c['p']:.3g}"
                                f"{' *' if differs(c) else ''}" for m, c in by_metric.items())
        for pair, by_metric in comparisons.items()
    )  # fmt: skip


def describe_spread(spread: dict) -> str:
    """A seed spread (:func:`across_seeds`) as text: ``row: metric mean ± sd`` per row."""
    return f"seeds {spread['seeds']}:\n" + "\n".join(
        f"  {row}: " + ", ".join(f"{m} {v['mean']:.3f} ± {v['sd']:.3f}" for m, v in ms.items())
        for row, ms in spread["spread"].items()
    )
