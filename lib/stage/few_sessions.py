"""Notebook 06's steps: how well a new subject is decoded from its first few sessions, alone or with a model shared
across subjects (MindEye2's design, :mod:`lib.models.shared`), pretrained on the other subjects' full data.

For each target subject and each session count k, five decoders into 01's image embedding, trained on the target's
training trials of its first k sessions and tested on its shared test images (repeats of every session averaged):

- ``ridge``: today's single-subject ridge (02's alpha grid, leave-one-image-out);
- ``mlp``: today's single-subject residual MLP (the profile's ``mlp`` section) with the update budget of the
  shared encoder's two stages (:func:`matched`);
- ``shared ridge``: ridge into the embedding's subspace that the other subjects' brains encode (the top
  ``rank`` principal directions of their ridge predictions), mapped back: the strong simple shared baseline;
- ``shared maps``: the shared encoder pretrained on the other subjects, only the new subject's map fitted;
- ``shared fine-tuned``: the same, then everything fine-tuned (MindEye2's recipe).
"""

from __future__ import annotations

import dataclasses
import resource
import time

import numpy as np

from lib import metrics
from lib.analysis import decoding, perceptual, stats
from lib.analysis.variants import ORACLE
from lib.data import prep
from lib.models import gan, lowlevel
from lib.models.mlp import MLPConfig, train_mlp
from lib.models.ridge import RidgeEncoder
from lib.models.shared import SharedConfig, SharedEncoder, train_shared
from lib.report.results import FewSessions
from lib.stage import Stage

MODELS = ("ridge", "mlp", "shared ridge", "shared maps", "shared fine-tuned")
SINGLE = ("ridge", "mlp")
METRICS = ("img_retrieval_top1", "brain_retrieval_top1", "two_way", "cosine")
#: the decoders whose test predictions 03's generator draws (None: at the first k, 0: with all sessions)
DRAWN = (("shared fine-tuned", None), ("mlp", None), ("ridge", None), ("shared fine-tuned", 0), ("ridge", 0))
#: 05's judges of the drawn images (beside PixCorr and SSIM): an ImageNet network never trained on the stimuli
JUDGES = ("EffNet-Lite0 2-way", "EffNet-Lite0 dist")
#: the issue's thresholds for the 1-session reconstructions of the shared encoder
RECON_GOALS = {"EffNet-Lite0 2-way": 0.75, "PixCorr": 0.55}
#: the spatial pathway beside the semantic one, as 02 fits it: ridge from the early visual voxels to a 16 px image
SPATIAL_ROI, SPATIAL_SIZE = "early", 16
SPATIAL = " + spatial"  # the suffix of the two pathways combined (03's recipe) from the same k sessions


class FewSessionsError(ValueError):
    """A setting of the experiment that cannot run; the message names it."""


@dataclasses.dataclass
class Subject:
    """One subject's prepared responses (00's cache) with the session of each training row."""

    number: int
    x_train: np.ndarray
    train_ids: np.ndarray
    train_sessions: np.ndarray
    x_test: np.ndarray
    test_ids: np.ndarray
    voxel_ijk: np.ndarray | None = None  # (V, 3) of its prepared voxels (the spatial pathway's early columns)
    # its ridge predictions of its own training rows (the shared ridge's space), once computed
    own_fit: np.ndarray | None = None

    @property
    def key(self) -> str:
        return f"subj{self.number:02d}"

    @property
    def sessions(self) -> list[int]:
        return sorted({int(s) for s in self.train_sessions})

    def first(self, k: int) -> np.ndarray:
        """Boolean mask of the training rows of the subject's first ``k`` sessions (0: every session)."""
        keep = self.sessions if not k else self.sessions[:k]
        return np.isin(self.train_sessions, keep)


def load_subjects(st: Stage) -> dict[int, Subject]:
    """00's prepared data of every subject of the common parameter ``subjects`` (an error naming 00 when missing)."""
    out = {}
    for s in st.common.subject_list:
        data, _, _ = prep.prepare_cached(st.ds, s, st.roi, st.sessions, compute=False, nonfinite=st.nonfinite)
        out[s] = Subject(s, data.x_train, data.train_ids, prep.training_sessions(st.ds, s, data), data.x_test,
                         data.test_ids, data.voxel_ijk)  # fmt: skip
    return out


def embed(st: Stage, subjects: dict[int, Subject]) -> tuple[np.ndarray, np.ndarray]:
    """(nsdIds, 01's image embedding of each) of every image the subjects saw (01's embedder, saved by 01)."""
    ids = np.unique(np.concatenate([np.r_[s.train_ids, s.test_ids] for s in subjects.values()]))
    emb = st.store.load_embedder(device=st.device)
    vectors = np.concatenate(
        [emb.embed_images(st.ds.images(ids[i : i + 512])) for i in range(0, len(ids), 512)]
    )
    return ids, vectors


def _rows(vec: tuple[np.ndarray, np.ndarray], ids: np.ndarray) -> np.ndarray:
    return decoding.rows_of(*vec, ids)


@dataclasses.dataclass
class Fitted:
    """The test predictions of every model at every k for one target: {model: {k: (prediction in its
    retrieval space, regression output)}} and the seconds each took."""

    target: int
    pred: dict
    seconds: dict
    pretrain_seconds: float
    per_subject_parameters: int
    new_subject_seconds: float


def _subspace(others: list[Subject], vec, alphas, device: str, rank: int) -> np.ndarray:
    """(D, rank): the top principal directions of the other subjects' ridge predictions of their training
    images' embeddings, the part of the embedding their brains encode."""
    for s in others:  # each subject's fit once, whichever target it serves
        if s.own_fit is None:
            y = _rows(vec, s.train_ids)
            s.own_fit = (
                RidgeEncoder(alphas=alphas, device=device)
                .fit(s.x_train, y, groups=s.train_ids)
                .predict(s.x_train)
            )
    p = np.concatenate([s.own_fit for s in others])
    _, _, vt = np.linalg.svd(p - p.mean(0), full_matrices=False)
    return vt[:rank].T.astype(np.float32)


def fit_target(st: Stage, subjects: dict[int, Subject], vec: tuple[np.ndarray, np.ndarray], target: int,
               ks: list[int], *, shared: SharedConfig, mlp: MLPConfig, alphas, rank: int, seed: int) -> Fitted:  # fmt: skip
    """Every model of :data:`MODELS` for ``target`` at every k of ``ks`` (0: all sessions): the shared encoder
    pretrained once on the other subjects' full data (resumable under 06's work folder), then each k's fits."""
    if target not in subjects or len(subjects) < 2:
        raise FewSessionsError(
            f"target {target}: expected one of the subjects {sorted(subjects)}, with others"
        )
    tgt, others = subjects[target], [s for n, s in subjects.items() if n != target]
    work = st.store.work_dir(st.name, f"target{target}")
    shared = dataclasses.replace(shared, seed=seed)
    t0 = time.perf_counter()
    base, _ = train_shared({s.key: (s.x_train, _rows(vec, s.train_ids)) for s in others}, shared, device=st.device,
                           state_dir=work)  # fmt: skip
    pretrain_seconds = time.perf_counter() - t0
    basis = _subspace(others, vec, alphas, st.device, rank) if rank else None
    pred: dict = {m: {} for m in MODELS}
    seconds: dict = {m: {} for m in MODELS}
    new_subject, own = 0.0, 0
    for k in ks:
        keep = tgt.first(k)
        if not keep.any():
            raise FewSessionsError(
                f"k={k}: subject {target} has no training trials in its first {k} sessions"
            )
        fits, took, own = _fit_k(st, tgt, tgt.x_train[keep], tgt.train_ids[keep], vec, base, basis, shared,
                                 dataclasses.replace(mlp, seed=seed), alphas, work)  # fmt: skip
        for m in fits:
            pred[m][k], seconds[m][k] = fits[m], took[m]
        if k == ks[0]:
            new_subject = took["shared maps"] + took["shared fine-tuned"]
    return Fitted(target, {m: v for m, v in pred.items() if v}, seconds, pretrain_seconds, own, new_subject)


def matched(mlp: MLPConfig, shared: SharedConfig, rows: int) -> MLPConfig:
    """The single-subject MLP with the update budget of a new subject's two shared stages (``2 * tune_steps``
    updates of ``tune_batch_size``), so that at one session it is not undertrained beside them."""
    per_epoch = max(1, rows // shared.tune_batch_size)
    return dataclasses.replace(mlp, batch_size=shared.tune_batch_size,
                               epochs=max(1, -(-2 * shared.tune_steps // per_epoch)))  # fmt: skip


def _fit_k(st: Stage, tgt: Subject, x: np.ndarray, ids: np.ndarray, vec, base: SharedEncoder,
           basis: np.ndarray | None, shared: SharedConfig, mlp: MLPConfig, alphas, work) -> tuple[dict, dict, int]:  # fmt: skip
    """Every model on one training set of the target: ({model: (prediction in its retrieval space, regression
    output)}, {model: seconds}, the new subject's own parameters)."""
    y = _rows(vec, ids)
    fits, took = {}, {}
    clock = time.perf_counter()

    def done(model: str, space: np.ndarray, regression: np.ndarray) -> None:
        nonlocal clock
        fits[model] = (space, regression)
        took[model], clock = time.perf_counter() - clock, time.perf_counter()

    out = RidgeEncoder(alphas=alphas, device=st.device).fit(x, y, groups=ids).predict(tgt.x_test)
    done("ridge", out, out)
    m, _ = train_mlp(x, y, matched(mlp, shared, len(x)), device=st.device, state_dir=work)
    done("mlp", m.retrieval_space(tgt.x_test), m.predict(tgt.x_test))
    if basis is not None:
        out = RidgeEncoder(alphas=alphas, device=st.device).fit(x, y @ basis, groups=ids).predict(tgt.x_test)
        done("shared ridge", out @ basis.T, out @ basis.T)
    tune = shared.tuning(len(x))  # the new subject's stages: a fixed number of updates in small batches
    maps, _ = train_shared(
        {tgt.key: (x, y)}, tune, start=base, train="maps", device=st.device, state_dir=work
    )
    done("shared maps", maps.retrieval_space(tgt.x_test, tgt.key), maps.predict(tgt.x_test, tgt.key))
    enc, _ = train_shared({tgt.key: (x, y)}, shared.tuning(len(x), everything=True), start=maps, train="all",
                          device=st.device, state_dir=work)  # fmt: skip
    done("shared fine-tuned", enc.retrieval_space(tgt.x_test, tgt.key), enc.predict(tgt.x_test, tgt.key))
    return fits, took, maps.parameters_of(tgt.key)


def per_image(
    fitted: Fitted, subjects: dict[int, Subject], vec, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """{"<model> @ k": {metric: (300,)}} of one target (:func:`lib.metrics.summary_per_sample`)."""
    tgt = subjects[fitted.target]
    true = _rows(vec, tgt.test_ids)
    out = {}
    for model, by_k in fitted.pred.items():
        for k, (space, reg) in by_k.items():
            scores = metrics.summary_per_sample(space, true, seed=seed, regression=reg)
            out[row(model, k)] = {m: scores[m] for m in METRICS}
    return out


def row(model: str, k: int) -> str:
    return f"{model} @ {k or 'all'}"


def comparisons(scores: dict, ks: list[int], resamples: int, seed: int) -> dict:
    """Paired comparisons on the same test images at every k: the fine-tuned shared encoder against each
    single-subject model and against its maps-only stage."""
    pairs = [(row("shared fine-tuned", k), row(other, k)) for k in ks for other in (*SINGLE, "shared maps")]
    return stats.comparisons(scores, pairs, resamples, seed=seed)


def peak_memory_mb() -> float:
    """The process's peak resident memory so far (MB; an upper bound of any step's)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclasses.dataclass
class Experiment:
    """Everything 06 measured: per target, the fits and per-image scores; the seed spread of the first target."""

    subjects: dict
    vec: tuple  # (nsdIds, image embeddings) of every image the subjects saw
    fitted: dict  # {target: Fitted}
    scores: dict  # {target: {row: {metric: (N,)}}}
    seed_rows: dict  # {row: {metric: [value per seed]}} of the first target
    ks: list


def run(st: Stage, *, ks: list[int], targets: list[int], shared: SharedConfig, mlp: MLPConfig, alphas, rank: int,
        seeds: int = 1, seed_ks: list[int] | None = None, other_ks: list[int] | None = None) -> Experiment:  # fmt: skip
    """The first target of ``targets`` (default all subjects) at every k of ``ks``, the others at ``other_ks``
    (default ``ks``); with ``seeds`` > 1, the first target again with each further seed at ``seed_ks`` (default
    the first k) for the seed spread."""
    for name, given in (("ks", ks), ("other_ks", other_ks), ("seed_ks", seed_ks)):
        if given is not None and (not given or any(k < 0 for k in given) or len(set(given)) != len(given)):
            raise FewSessionsError(f"{name}={given}: expected distinct session counts >= 0 (0: all)")
    subjects = load_subjects(st)
    targets = list(targets) or list(subjects)
    bad = [t for t in targets if t not in subjects]
    if bad:
        raise FewSessionsError(
            f"targets {bad}: not among the subjects {sorted(subjects)} (common parameter subjects)"
        )
    vec = embed(st, subjects)
    fitted, scores = {}, {}
    for i, t in enumerate(targets):
        fitted[t] = fit_target(st, subjects, vec, t, ks if not i or other_ks is None else other_ks, shared=shared,
                               mlp=mlp, alphas=alphas, rank=rank, seed=st.seed)  # fmt: skip
        scores[t] = per_image(fitted[t], subjects, vec, st.seed)
    seed_rows: dict = {}
    first = targets[0]
    for s in range(1, seeds):
        again = fit_target(st, subjects, vec, first, list(seed_ks or ks[:1]), shared=shared, mlp=mlp, alphas=alphas,
                           rank=rank, seed=st.seed + s)  # fmt: skip
        for r, by_metric in per_image(again, subjects, vec, st.seed).items():
            for m, v in by_metric.items():
                seed_rows.setdefault(r, {}).setdefault(m, [float(scores[first][r][m].mean())]).append(
                    float(v.mean())
                )
    return Experiment(subjects, vec, fitted, scores, seed_rows, list(ks))


def table(scores: dict) -> dict:
    """{row: {metric: mean over the test images}}."""
    return {r: {m: float(v.mean()) for m, v in by.items()} for r, by in scores.items()}


def goals(exp: Experiment, resamples: int, seed: int) -> dict:
    """The issue's numbers at the first k (one session) for the first target: the fine-tuned shared encoder's
    image retrieval against each single-subject model at that k and at all sessions, with the paired intervals."""
    t = next(iter(exp.fitted))
    k = exp.ks[0]
    m = table(exp.scores[t])
    ft = m[row("shared fine-tuned", k)]["img_retrieval_top1"]
    out = {"target": f"subj{t:02d}", "k": k, "shared fine-tuned": ft}
    for single in SINGLE:
        out[f"{single} @ {k}"] = m[row(single, k)]["img_retrieval_top1"]
        out[f"ratio to {single} @ {k}"] = ft / max(out[f"{single} @ {k}"], 1e-9)
        out[f"paired − {single} @ {k}"] = stats.paired(exp.scores[t][row("shared fine-tuned", k)]["img_retrieval_top1"],
                                                       exp.scores[t][row(single, k)]["img_retrieval_top1"], resamples,
                                                       seed=seed)  # fmt: skip
        if 0 in exp.ks:
            out[f"{single} @ all"] = m[row(single, 0)]["img_retrieval_top1"]
            out[f"ratio to {single} @ all"] = ft / max(out[f"{single} @ all"], 1e-9)
        # where the curves meet: the first k without a claimable lead of the shared encoder (None: never)
        out[f"meets {single} at k"] = meeting_point(exp, t, "shared fine-tuned", single)
    return out


def describe(results: FewSessions) -> str:
    """The first target's paired comparisons (image retrieval), the seed spread, the issue's numbers and what
    adding a subject cost, as lines."""
    first = results.targets[0]
    lines = []
    for name, by_metric in results.comparisons[first].items():
        c = by_metric["img_retrieval_top1"]
        lines.append(f"{name:48s} {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"
                     f"{' *' if stats.differs(c) else ''}")  # fmt: skip
    for r, by_metric in results.seed_spread.items():
        s = by_metric["img_retrieval_top1"]
        lines.append(f"seeds, {r}: image retrieval {s['mean']:.3f} (sd {s['sd']:.3f}, {s['n']} seeds)")
    lines.append(f"goals: { ({k: v for k, v in results.goals.items() if not isinstance(v, dict)}) }")
    lines.append(f"a new subject (its map, then everything), seconds: {results.new_subject_seconds}")
    lines.append(
        f"its own parameters: {results.per_subject_parameters}; peak memory {results.peak_memory_mb:.0f} MB"
    )
    return "\n".join(lines)


def meeting_point(
    exp: Experiment, target: int, a: str, b: str, metric: str = "img_retrieval_top1"
) -> int | None:
    """The first k at which model ``a`` no longer beats model ``b`` by a difference the report may claim
    (:func:`lib.analysis.stats.differs`), None if it does at every k."""
    for k in exp.ks:
        d = stats.paired(exp.scores[target][row(a, k)][metric], exp.scores[target][row(b, k)][metric], 1000)
        if not (stats.differs(d) and d["diff"] > 0):
            return k
    return None


def across_targets(exp: Experiment) -> dict:
    """{row: {metric: spread over the targets}} of the rows every target has."""
    tables = [table(s) for s in exp.scores.values()]
    rows = [r for r in tables[0] if all(r in t for t in tables)]
    return {r: {m: stats.spread([t[r][m] for t in tables]) for m in tables[0][r]} for r in rows}


def results(st: Stage, exp: Experiment, *, resamples: int, shared: SharedConfig) -> FewSessions:
    """06's results: per target the table, intervals and paired comparisons, the spread over targets and seeds,
    the issue's ratios at one session, and what adding a subject costs (the reconstructions:
    :func:`with_reconstruction`)."""
    key = lambda t: f"subj{t:02d}"  # noqa: E731
    return FewSessions(
        ks=exp.ks, models=[m for m in MODELS if any(row(m, exp.ks[0]) in s for s in exp.scores.values())],
        subjects=[key(s) for s in exp.subjects], targets=[key(t) for t in exp.fitted],
        table={key(t): table(s) for t, s in exp.scores.items()},
        intervals={key(t): stats.intervals(s, resamples, seed=st.seed) for t, s in exp.scores.items()},
        comparisons={key(t): comparisons(s, exp.ks, resamples, st.seed) for t, s in exp.scores.items()},
        across_targets=across_targets(exp),
        seed_spread={r: {m: stats.spread(v) for m, v in by.items()} for r, by in exp.seed_rows.items()},
        goals=goals(exp, resamples, st.seed),
        new_subject_seconds={key(t): f.new_subject_seconds for t, f in exp.fitted.items()},
        per_subject_parameters={key(t): f.per_subject_parameters for t, f in exp.fitted.items()},
        pretrain_seconds={key(t): f.pretrain_seconds for t, f in exp.fitted.items()},
        seconds={key(t): {m: {str(k): v for k, v in by.items()} for m, by in f.seconds.items() if by}
                 for t, f in exp.fitted.items()},
        peak_memory_mb=peak_memory_mb(), roi=st.roi, shared_config=dataclasses.asdict(shared),
    )  # fmt: skip


@dataclasses.dataclass
class Reconstruction:
    """The first target's test images drawn by 03's generator from each decoder of :data:`DRAWN` (and from the
    true embedding), judged as 05 judges reconstructions."""

    test_images: np.ndarray  # uint8 (N, S, S, 3), the seen images
    images: dict  # {variant: uint8 (N, R, R, 3)}
    per_image: (
        dict  # {variant: {metric: (N,)}} (perceptual.evaluate's), "mismatched": chance of PixCorr, SSIM
    )
    unavailable: dict  # {metric: why} for a judge whose weights are absent
    source: str  # the generator drawn with
    ratio: float
    seconds: float

    def scores(self, metric: str) -> dict[str, np.ndarray]:
        """{variant: per-image ``metric``} of every drawn variant that has it (for the figure)."""
        return {
            v: by[metric]
            for v, by in self.per_image.items()
            if v in self.images and by.get(metric) is not None
        }


def reconstruct(st: Stage, exp: Experiment, *, n_test: int = 0, judges=JUDGES, spatial: bool = True,
                alphas=None) -> Reconstruction:  # fmt: skip
    """03's generator (its recorded perturbation ratio, z = 0: 03's "plain" reconstructions) drawn from the first
    target's predictions of :data:`DRAWN` (their regression outputs, as 03 draws 02's), first ``n_test`` test
    images (0: all), and judged with PixCorr, SSIM and ``judges`` of :data:`lib.analysis.perceptual.METRICS`;
    chance of PixCorr and SSIM from the oracle's images paired with the next test image. The generator not tuned
    on fMRI is used: 03's tuned one learnt from the target's every session. With ``spatial``, also the shared
    encoder's first-k prediction combined with the spatial pathway fitted on the same k sessions
    (:func:`spatial_pathway`, ridge ``alphas``) by 03's recorded recipe (:func:`lib.models.gan.combiner`)."""
    t0 = time.perf_counter()
    t, k = next(iter(exp.fitted)), exp.ks[0]
    fitted = exp.fitted[t]
    wanted = [(m, k if kk is None else kk) for m, kk in DRAWN]
    missing = [row(m, kk) for m, kk in wanted if kk not in fitted.pred.get(m, {})]
    if missing:
        raise FewSessionsError(
            f"reconstruct: {missing} were not fitted (ks={exp.ks}); expected every row of DRAWN"
        )
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
        raise FewSessionsError(f"n_test={n_test!r}: expected 0 (every test image) or a positive count")
    tgt = exp.subjects[t]
    n = n_test or len(tgt.test_ids)
    emb = st.store.load_embedder(st.device)
    G = st.store.load_generator("generator", st.device, model_key=emb.key)
    settings = (
        st.store.generation_settings()
    )  # 03's recorded recipe: its ratio, and how it combines the pathways
    ratio = float(settings["feature_ratio"])
    conditions = {ORACLE: _rows(exp.vec, tgt.test_ids)} | {
        row(m, kk): fitted.pred[m][kk][1] for m, kk in wanted
    }
    images = {name: gan.generate(G, c[:n], ratio, seed=st.seed) for name, c in conditions.items()}
    if spatial:
        low = spatial_pathway(st, tgt, k, alphas)[:n]
        first = row("shared fine-tuned", k)
        images[first + SPATIAL] = gan.combiner(G, emb, settings, seed=st.seed, exact=False)(
            conditions[first][:n], low
        )
    seen = st.ds.images(tgt.test_ids[:n])
    _, unavailable, per_image = perceptual.evaluate(
        images, seen, list(judges), device=st.device, per_image=True
    )
    wrong = {"mismatched": images[ORACLE][np.roll(np.arange(n), 1)]}
    per_image |= perceptual.evaluate(wrong, seen, [], device=st.device, per_image=True)[2]
    return Reconstruction(seen, images, per_image, unavailable, "03's generator (not fMRI-tuned)", ratio,
                          time.perf_counter() - t0)  # fmt: skip


def spatial_pathway(st: Stage, tgt: Subject, k: int, alphas=None) -> np.ndarray:
    """The target's low-resolution test images (N, 16, 16, 3) decoded by ridge from its early visual voxels
    (:data:`SPATIAL_ROI`), fitted on its first ``k`` sessions as 02 fits its spatial pathway on all of them."""
    cols = prep.group_columns(st.ds, tgt.number, tgt.voxel_ijk, [SPATIAL_ROI]).get(SPATIAL_ROI)
    if cols is None or not len(cols):
        raise FewSessionsError(f"subject {tgt.number}: no {SPATIAL_ROI} voxels in its prepared ROI for the spatial "
                               "pathway; expected some (spatial=False leaves it out)")  # fmt: skip
    keep = tgt.first(k)
    dec = lowlevel.fit(tgt.x_train[keep], st.ds.images(tgt.train_ids[keep]), cols, size=SPATIAL_SIZE,
                       group=SPATIAL_ROI, alphas=alphas, groups=tgt.train_ids[keep], device=st.device)  # fmt: skip
    return dec.predict(tgt.x_test)


def reconstruction_results(exp: Experiment, rec: Reconstruction, *, resamples: int, seed: int) -> dict:
    """What :class:`lib.report.results.FewSessions` records of the reconstructions: the table and intervals of
    every judge, the paired comparisons of the shared encoder's 1-session images with the others, and the
    issue's goals (value, threshold, met)."""
    k = exp.ks[0]
    first = row("shared fine-tuned", k)
    judged = {v: {m: s for m, s in by.items() if s is not None} for v, by in rec.per_image.items()}
    pairs = [(first, v) for v in judged if v not in (first, "mismatched")]
    goals_ = {v: {m: {"value": float(np.mean(judged[v][m])), "threshold": th,
                      "met": bool(np.mean(judged[v][m]) >= th)} for m, th in RECON_GOALS.items() if m in judged[v]}
              for v in (first, first + SPATIAL) if v in judged}  # fmt: skip
    return {
        "variants": list(rec.images),
        "n_test": len(rec.test_images),
        "table": table(judged),
        "intervals": stats.intervals(judged, resamples, seed=seed),
        "comparisons": stats.comparisons(judged, pairs, resamples, seed=seed),
        "goals": goals_,
        "unavailable": rec.unavailable,
        "source": rec.source,
        "feature_ratio": rec.ratio,
        "seconds": rec.seconds,
    }


def with_reconstruction(results_: FewSessions, exp: Experiment, rec: Reconstruction, *, resamples: int,
                        seed: int) -> FewSessions:  # fmt: skip
    """``results_`` with the judged reconstructions (:func:`reconstruction_results`) and the peak memory so far."""
    return dataclasses.replace(results_, peak_memory_mb=peak_memory_mb(),
                               reconstructions=reconstruction_results(exp, rec, resamples=resamples, seed=seed))  # fmt: skip
