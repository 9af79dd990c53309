"""The steps of notebook 01 (the joint embedding): choose where the embedding and DINO come from, train the small
CLIP here when asked, probe the embedding beside a random-init network, embed every stimulus the subject saw and
score image-caption retrieval, train or load DINO and probe its features, check the result and assemble
:class:`lib.report.results.JointEmbedding`.

Each step takes the notebook's :class:`lib.stage.Stage` (dataset, device, seed, RNG, store) and returns a small
dataclass that the next steps and the figures read. The models, losses and probes themselves live in
:mod:`lib.models.contrastive`, :mod:`lib.models.dino`, :mod:`lib.models.embedding` and :mod:`lib.analysis.probes`."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from lib import metrics
from lib.analysis import decoding, probes, stats
from lib.data import prep, scenes
from lib.models import contrastive, dino, embedding, pretrained
from lib.models.embedding import Embedder
from lib.report.results import JointEmbedding

#: where the embedding (``embedding_source``) and DINO (``dino_source``) come from
SOURCES = ("pretrained", "scratch")
#: the rows of the embedding probes: the model used, the one trained here beside it, the random-init floor
THIS, SCRATCH, RANDOM = "this embedding", "scratch (here)", "random init"
#: the paired comparisons of the embedding probes (a - b on the same test images)
PAIRS = [(THIS, SCRATCH), (THIS, RANDOM), (SCRATCH, RANDOM)]
#: the scene attributes the 2-D projection is coloured by
PROJECTION_LABELS = ("colour", "shape", "count", "background", "bg_colour")


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where the models come from (the notebook's parameters): the embedding (``pretrained``: the shipped model in
    ``models_dir``; ``scratch``: ``clip_arch`` trained here; a ``clip_checkpoint`` file or ``clip_pretrained``
    open_clip tag: a real CLIP) and DINO (``pretrained`` or ``scratch``)."""

    embedding_source: str = "pretrained"
    dino_source: str = "pretrained"
    models_dir: str = ""  # empty: models/
    compare_scratch: bool = True  # with the pretrained model, also train clip_arch here
    clip_arch: str = "mini-rn16"
    clip_checkpoint: str = ""
    clip_pretrained: str = ""
    image_size: int = 0  # 0: the architecture's default

    def __post_init__(self) -> None:
        if self.embedding_source not in SOURCES or self.dino_source not in SOURCES:
            raise ValueError(
                f"embedding_source={self.embedding_source!r}, dino_source={self.dino_source!r}: "
                "expected pretrained or scratch"
            )

    @property
    def real_clip(self) -> bool:
        """A real CLIP (a checkpoint file or an open_clip tag) rather than a mini-world model."""
        return bool(self.clip_checkpoint or self.clip_pretrained)

    @property
    def trains_scratch(self) -> bool:
        """Whether ``clip_arch`` is trained here (as the embedding, or beside the pretrained one)."""
        return not self.real_clip and (self.embedding_source == "scratch" or self.compare_scratch)

    @property
    def from_models(self) -> bool:
        """Whether the embedding is the shipped mini-world model."""
        return self.embedding_source == "pretrained" and not self.real_clip

    @property
    def label(self) -> str:
        """The embedding's source as the metrics record it (``checkpoint`` for a real CLIP)."""
        return "checkpoint" if self.real_clip else self.embedding_source


@dataclasses.dataclass(frozen=True)
class Split:
    """The stimuli the subject saw: training ids (every model trained here sees only these) and test ids (the
    shared images)."""

    train_ids: np.ndarray
    test_ids: np.ndarray


@dataclasses.dataclass
class Scratch:
    """The embedding trained here (``emb`` None: not trained), its training history and configuration."""

    emb: Embedder | None
    history: dict | None
    cfg: contrastive.ClipTrainConfig


@dataclasses.dataclass
class EmbeddingProbes:
    """Linear probes and retrieval of each model (:func:`lib.analysis.probes.compare`), the per-image scores
    behind them, their intervals and paired comparisons, and the test images' majority-class rate (chance)."""

    probes: dict  # {model: {"linear_probe": {attribute: accuracy}, "img2txt_top1", "txt2img_top1"}}
    scores: dict  # {model: {attribute or retrieval: 0/1 per test image}}
    uncertainty: dict  # lib.analysis.decoding.uncertainty
    majority: dict  # {attribute: majority-class rate of the test images}
    attrs_train: object  # pandas.DataFrame of the training stimuli's scene attributes
    attrs_test: object

    @property
    def linear(self) -> dict:
        """{model: {attribute: linear-probe accuracy}}."""
        return {k: v["linear_probe"] for k, v in self.probes.items()}


@dataclasses.dataclass
class Embedded:
    """Image and caption embeddings of every stimulus the subject saw (``ids``: training then test) and top-1
    retrieval among the test images."""

    ids: np.ndarray
    vectors: dict  # "image", "text" (mean caption), "text_each" (each of the first C captions)
    test: np.ndarray  # boolean mask of the test rows
    img2txt: float  # image -> its mean caption embedding
    txt2img: float
    txt2img_each: float  # each single caption -> its image
    chance: float

    @property
    def image_test(self) -> np.ndarray:
        return self.vectors["image"][self.test]

    @property
    def text_test(self) -> np.ndarray:
        return self.vectors["text"][self.test]

    @property
    def each_test(self) -> np.ndarray:
        return self.vectors["text_each"][self.test]


@dataclasses.dataclass
class Dino:
    """The DINO teacher's backbone (None: no DINO, e.g. on real data), the normalised images of every stimulus,
    the configuration (for the random-init baseline) and the training history (None: pretrained)."""

    backbone: torch.nn.Module | None = None
    x: torch.Tensor | None = None
    cfg: dino.DinoConfig | None = None
    history: dict | None = None


def sources(st, **choices) -> Sources:
    """The notebook's model choices (the fields of :class:`Sources`, as keywords), checked against the data: real
    NSD needs a real CLIP."""
    src = Sources(**choices)
    if not (src.real_clip or st.ds.is_simulated):
        raise ValueError(
            "clip_checkpoint is empty: on real NSD give a local CLIP weights file, e.g. ViT-B-32"
        )
    return src


def split(st) -> Split:
    """The training and test stimuli of the subject's sessions (:func:`lib.data.prep.stimulus_split`)."""
    train_ids, test_ids = prep.stimulus_split(st.ds, st.subject, st.sessions)
    print(f"{len(train_ids)} training and {len(test_ids)} test images")
    return Split(train_ids, test_ids)


def train_scratch(st, data: Split, *, src: Sources, cfg: contrastive.ClipTrainConfig) -> Scratch:
    """``src.clip_arch`` trained here with ``cfg`` on the training stimuli and their captions
    (:func:`lib.models.contrastive.train_from_scratch`; resumable), its held-out retrieval on the test images
    monitored for the curves; not trained (``emb`` None) unless ``src.trains_scratch``."""
    if not src.trains_scratch:
        return Scratch(None, None, cfg)
    ds = st.ds
    monitor = probes.retrieval_monitor(ds.images(data.test_ids), ds.captions(data.test_ids))
    emb, history = contrastive.train_from_scratch(
        src.clip_arch,
        ds.images(data.train_ids),
        ds.captions(data.train_ids),
        cfg,
        st.store,
        src.image_size or None,
        st.device,
        monitor,
    )
    print(f"trained {src.clip_arch} from scratch: {cfg.steps} steps in {history['seconds']:.1f} s")
    return Scratch(emb, history, cfg)


def load_embedding(st, *, src: Sources, scratch: Scratch) -> Embedder:
    """The embedding this notebook hands on: a real CLIP, the shipped model or the one trained here, saved to the
    store and read back from it (what later notebooks load, with its key)."""
    dev = st.device
    if src.real_clip:
        emb = embedding.load(
            src.clip_arch,
            src.clip_checkpoint or None,
            src.clip_pretrained or None,
            src.image_size or None,
            dev,
        )
    elif src.embedding_source == "pretrained":
        emb = pretrained.load_embedding(src.models_dir or None, dev)
    else:
        emb = scratch.emb
    meta = {"pretrained": pretrained.provenance("clip", src.models_dir or None)} if src.from_models else {}
    st.store.save_embedder(emb, meta)
    emb = st.store.load_embedder(dev)  # later notebooks load this file
    print(f"{emb.arch} ({src.label}): {emb.dim}-d, {emb.image_size} px, key {emb.key}")
    return emb


def probe_embedding(
    st, data: Split, *, emb: Embedder, scratch: Scratch, resamples: int
) -> EmbeddingProbes | None:
    """Linear probes of scene attributes and retrieval of ``emb``, the model trained here and the same
    architecture at random initialisation, on the test stimuli, with ``resamples`` bootstrap intervals over the
    test images and the paired comparisons :data:`PAIRS`; None on real data (no scene attributes)."""
    if not st.ds.is_simulated:
        return None
    ds = st.ds
    candidates = {THIS: emb} | (
        {SCRATCH: scratch.emb} if scratch.emb is not None and scratch.emb is not emb else {}
    )
    candidates[RANDOM] = embedding.random_like(emb, st.seed)
    attrs_train, attrs_test = (scenes.attribute_table(ds.scenes(i)) for i in (data.train_ids, data.test_ids))
    table, scores = probes.compare(
        candidates,
        ds.images(data.train_ids),
        ds.images(data.test_ids),
        attrs_train,
        attrs_test,
        ds.captions(data.test_ids),
        per_image=True,
    )
    uncertainty = decoding.uncertainty(scores, PAIRS, resamples, st.seed)
    majority = {a: float(attrs_test[a].value_counts(normalize=True).iloc[0]) for a in attrs_test}
    out = EmbeddingProbes(table, scores, uncertainty, majority, attrs_train, attrs_test)
    print(probes.knn_table(out.linear, majority))
    print(stats.describe_comparisons(uncertainty["comparisons"]))
    return out


def seed_spread(
    st, data: Split, *, src: Sources, scratch: Scratch, probed: EmbeddingProbes | None, seeds: int
) -> dict | None:
    """The probes of the model trained here, retrained with each further seed (``seeds`` in all, from the run's
    seed; :func:`lib.analysis.probes.scratch_seed_spread`); None when no model was trained here or on real data."""
    if probed is None or scratch.emb is None:
        return None
    ds = st.ds
    first = probed.probes[SCRATCH if SCRATCH in probed.probes else THIS]
    spread = probes.scratch_seed_spread(
        range(st.seed, st.seed + seeds),
        src.clip_arch,
        scratch.cfg,
        st.store,
        ds.images(data.train_ids),
        ds.captions(data.train_ids),
        ds.images(data.test_ids),
        ds.captions(data.test_ids),
        probed.attrs_train,
        probed.attrs_test,
        src.image_size or None,
        st.device,
        first=first,
    )
    print(stats.describe_spread(spread))
    return spread


def embed(st, data: Split, *, emb: Embedder) -> Embedded:
    """Image and caption embeddings of every stimulus (:func:`lib.models.embedding.embed_stimuli`) and top-1
    retrieval among the test images: each image against the mean caption embeddings both ways, and each single
    caption against the images."""
    ids = np.concatenate([data.train_ids, data.test_ids])
    vec = embedding.embed_stimuli(emb, st.ds, ids)
    test = np.isin(ids, data.test_ids)
    img_t, txt_t, each_t = vec["image"][test], vec["text"][test], vec["text_each"][test]
    img2txt, txt2img = metrics.paired_top1(img_t, txt_t)  # one text per image: its mean caption embedding
    owner = np.repeat(np.arange(len(img_t)), each_t.shape[1])
    txt2img_each = metrics.topk(each_t.reshape(-1, emb.dim), img_t, owner, k=1)  # each caption alone
    chance = 1 / len(data.test_ids)
    print(
        f"top-1 among {len(data.test_ids)}: image->text {img2txt:.3f}, text->image {txt2img:.3f} "
        f"(chance {chance:.4f}); single caption->image {txt2img_each:.3f}"
    )
    return Embedded(ids, vec, test, img2txt, txt2img, txt2img_each, chance)


def retrieval_examples(st, data: Split, *, embedded: Embedded, n_examples: int) -> dict:
    """``n_examples`` test images drawn with the run's RNG and their 3 most similar captions among all test
    captions (:func:`lib.models.embedding.top_captions`): {"images": ..., "ranked": [[(text, own, sim)]]}."""
    each_t = embedded.each_test
    n_cap = each_t.shape[1]
    flat_caps = [c for cs in st.ds.captions(data.test_ids) for c in cs[:n_cap]]
    owner = np.repeat(np.arange(len(each_t)), n_cap)
    show = st.rng.choice(len(data.test_ids), min(n_examples, len(data.test_ids)), replace=False)
    ranked = embedding.top_captions(
        embedded.image_test[show], each_t.reshape(-1, each_t.shape[-1]), flat_caps, owner, show, k=3
    )
    return {"images": st.ds.images(data.test_ids[show]), "ranked": ranked}


def dino_teacher(st, *, src: Sources, embedded: Embedded, cfg: dino.DinoConfig) -> Dino:
    """DINO's teacher: the shipped one (``dino_source="pretrained"``, images normalised with its training
    statistics) or trained here with ``cfg`` on the training images (:func:`lib.models.dino.train_dino`,
    resumable). Only on simulated data, whose scene attributes the probes need (an empty :class:`Dino` else)."""
    if not st.ds.is_simulated:
        return Dino()
    images = st.ds.images(embedded.ids)
    if src.dino_source == "pretrained":
        backbone, (mean, std) = pretrained.load_dino(src.models_dir or None, st.device)
        # the random-init baseline needs only the backbone's width and the seed
        return Dino(
            backbone,
            dino.normalise(images, mean=mean, std=std),
            dino.DinoConfig(width=backbone.width, stride=backbone.stride, seed=st.seed),
        )
    x = dino.normalise(images, ids_fit=np.flatnonzero(~embedded.test))
    _, teacher, history = dino.train_dino(
        x[~embedded.test], cfg, st.store.work_dir(st.name), device=st.device
    )
    history["log_k"] = float(np.log(cfg.out_dim))
    return Dino(teacher.backbone, x, cfg, history)


#: the DINO feature sets 01 probes: {name: (network, pooling of :func:`lib.models.dino.features`)}
DINO_FEATURES = {
    "DINO image vector": ("teacher", "cls"),
    "DINO patch grid": ("teacher", "grid"),
    "random init, image vector": ("random", "cls"),
    "random init, patch grid": ("random", "grid"),
}
#: each DINO feature set against the same network at random initialisation, on the same test images
DINO_PAIRS = (
    ("DINO image vector", "random init, image vector"),
    ("DINO patch grid", "random init, patch grid"),
)


def probe_dino(st, *, teacher: Dino, embedded: Embedded, knn_k: int, resamples: int) -> dict | None:
    """k-NN (``knn_k`` neighbours) and linear probes of the scene attributes from the frozen features of the DINO
    teacher, its image vector (the mean of the patch tokens) and its patch tokens pooled on a 2 x 2 grid, and the
    same from the network at random initialisation, with the CLIP image embedding as a reference; fitted on the
    training images and scored on the test images (:func:`lib.analysis.probes.probe_table`), and each DINO set
    against random init on the same images (paired 95% intervals, ``resamples``): {"knn", "linear", "majority",
    "versus_random" ({probe: {pair: {attribute: paired}}}), "features" (the teacher's image vector of every
    stimulus), "grid" (its patch grid)}; None without DINO."""
    if teacher.backbone is None:
        return None
    nets = {"teacher": teacher.backbone, "random": dino.build(teacher.cfg)[0].backbone.to(st.device)}
    table = {
        name: dino.features(nets[net], teacher.x, pooling=pool) for name, (net, pool) in DINO_FEATURES.items()
    }
    table["CLIP image (reference)"] = embedded.vectors["image"]
    out = probes.probe_table(table, embedded.test, scenes.attribute_table(st.ds.scenes(embedded.ids)), knn_k)
    hits = out.pop("hits")
    out["versus_random"] = {probe: stats.comparisons(hits[probe], DINO_PAIRS, resamples, seed=st.seed)
                            for probe in ("knn", "linear")}  # fmt: skip
    print(
        "k-NN",
        probes.knn_table(out["knn"], out["majority"]),
        "linear probe",
        probes.knn_table(out["linear"], out["majority"]),
        sep="\n",
    )
    return out | {"features": table["DINO image vector"], "grid": table["DINO patch grid"]}


def describe_versus(dino_probes: dict) -> str:
    """Each DINO vector against random init (paired 95% intervals), per probe, as printed under 01's DINO figure."""
    return "\n".join(
        f"{probe}:\n{stats.describe_comparisons(c)}" for probe, c in dino_probes["versus_random"].items()
    )


def projection(st, data: Split, *, embedded: Embedded) -> dict | None:
    """A 2-D t-SNE of the test image embeddings (:func:`lib.analysis.probes.project_2d`) and the scene attributes
    :data:`PROJECTION_LABELS` of those images: {"xy", "labels"}; None on real data."""
    if not st.ds.is_simulated:
        return None
    attrs_test = scenes.attribute_table(st.ds.scenes(data.test_ids))
    xy = probes.project_2d(embedded.image_test, st.seed)
    return {"xy": xy, "labels": {a: attrs_test[a].to_numpy() for a in PROJECTION_LABELS}}


def save_and_check(
    st, data: Split, *, emb: Embedder, embedded: Embedded, teacher: Dino, dino_probes: dict | None
) -> None:
    """Save the embeddings of every stimulus (and DINO's features) for later notebooks, then check them: finite,
    no test image among the training images, retrieval clearly above chance, and no DINO collapse."""
    vec = embedded.vectors
    extra = (
        {"dino": dino_probes["features"], "dino_grid": dino_probes["grid"]} if dino_probes is not None else {}
    )
    st.store.save_embeddings(embedded.ids, vec["image"], vec["text"], emb.key, vec["text_each"], **extra)
    assert vec["image"].shape == (len(embedded.ids), emb.dim) and np.isfinite(vec["image"]).all()
    assert not prep.is_test_image(st.ds, data.train_ids).any(), (
        "a shared test image is among the training images"
    )
    chance = embedded.chance
    assert embedded.img2txt > 5 * chance and embedded.txt2img > 5 * chance, (
        "retrieval is not clearly above chance"
    )
    if dino_probes is not None and teacher.history is None:  # the shipped teacher learned at least the scene
        bg = dino_probes["versus_random"]["knn"][" − ".join(DINO_PAIRS[0])]["background"]
        assert bg["low"] > 0, "the shipped DINO does not tell backgrounds apart better than random init"
    if (
        teacher.history is not None
    ):  # no collapse: the batch-mean output spreads over prototypes, samples stay sharp
        assert teacher.history["batch_entropy"][-1] > np.log(4), (
            "DINO teacher collapsed onto a few prototypes"
        )
        assert teacher.history["teacher_entropy"][-1] < 0.9 * np.log(teacher.cfg.out_dim), (
            "DINO teacher collapsed to uniform"
        )


def results(
    st,
    data: Split,
    *,
    src: Sources,
    emb: Embedder,
    scratch: Scratch,
    probed: EmbeddingProbes | None,
    spread: dict | None,
    embedded: Embedded,
    teacher: Dino,
    dino_probes: dict | None,
) -> JointEmbedding:
    """The notebook's results (:class:`lib.report.results.JointEmbedding`) from its steps' outputs."""
    optional = {}
    if probed is not None:  # simulated data: the embedding's probes
        optional |= dict(
            embedding_probes=probed.probes,
            probe_majority=probed.majority,
            probe_uncertainty=probed.uncertainty,
        )
    if dino_probes is not None:
        knn = dino_probes["knn"]
        optional |= dict(
            dino_knn=knn["DINO image vector"],
            dino_knn_random_init=knn["random init, image vector"],
            dino_knn_clip_image=knn["CLIP image (reference)"],
            dino_grid_knn=knn["DINO patch grid"],
            dino_grid_knn_random_init=knn["random init, patch grid"],
            knn_majority=dino_probes["majority"],
            linear_probe=dino_probes["linear"],
            dino_versus_random=dino_probes["versus_random"],
        )
    if teacher.history is not None:  # DINO trained here
        optional |= dict(
            dino_train_seconds=teacher.history["seconds"],
            dino_steps=teacher.cfg.steps,
            dino_teacher_entropy_final=teacher.history["teacher_entropy"][-1],
            dino_batch_entropy_final=teacher.history["batch_entropy"][-1],
        )
    model = {
        "arch": emb.arch,
        "source": src.label,
        "key": emb.key,
        "dim": emb.dim,
        "image_size": emb.image_size,
    }
    return JointEmbedding(
        subject=st.subject,
        model=model,
        n_train_images=int(len(data.train_ids)),
        n_test_images=int(len(data.test_ids)),
        img2txt_top1=embedded.img2txt,
        txt2img_top1=embedded.txt2img,
        txt2img_top1_single_caption=embedded.txt2img_each,
        chance=embedded.chance,
        embedding_source=src.label,
        dino_source=src.dino_source,
        train_seconds=scratch.history["seconds"] if scratch.history else 0.0,
        clip_steps=scratch.cfg.steps if scratch.history else 0,
        torch_threads=torch.get_num_threads(),
        scratch_seed_spread=spread,
        **optional,
    )


def key_numbers(res: JointEmbedding) -> dict:
    """The results' single numbers and names (no tables), as the notebook prints them at the end."""
    return {k: v for k, v in dataclasses.asdict(res).items() if not isinstance(v, dict | None)}
