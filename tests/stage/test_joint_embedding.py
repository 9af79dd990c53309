"""Notebook 01's steps (lib.stage.joint_embedding) on tiny fake models and data: each against the direct
computation it wraps, the results object against the metrics keys the notebook wrote before its steps moved to
lib, and the hyperparameters the profiles now hold against the values the notebook's parameters cell had."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from lib.models import contrastive, dino
from lib.report import results as results_mod
from lib.stage import joint_embedding as je
from lib.stage import profile as profiles

#: the keys of 01's metrics JSON (quick profile: simulated data, DINO trained here), header aside
METRICS_KEYS = {
    "chance",
    "clip_steps",
    "dino_batch_entropy_final",
    "dino_knn",
    "dino_knn_clip_image",
    "dino_knn_random_init",
    "dino_grid_knn",
    "dino_grid_knn_random_init",
    "dino_versus_random",
    "dino_source",
    "dino_steps",
    "dino_teacher_entropy_final",
    "dino_train_seconds",
    "embedding_probes",
    "embedding_source",
    "img2txt_top1",
    "knn_majority",
    "linear_probe",
    "model",
    "n_test_images",
    "n_train_images",
    "probe_majority",
    "probe_uncertainty",
    "scratch_seed_spread",
    "subject",
    "torch_threads",
    "train_seconds",
    "txt2img_top1",
    "txt2img_top1_single_caption",
}
#: written only when DINO is trained here
DINO_TRAINED = {"dino_batch_entropy_final", "dino_steps", "dino_teacher_entropy_final", "dino_train_seconds"}

DIM, N_CAP = 6, 2


class FakeEmbedder:
    """Image i (all pixels i) embeds to row i of a random unit table; its caption j to that row plus noise j."""

    arch, key, image_size, dim = "fake", "k0", 8, DIM

    def __init__(self, n: int, noise: float = 0.0):
        rng = np.random.default_rng(1)
        self.table, self.noise = rng.normal(size=(n, DIM)), noise * rng.normal(size=(n, N_CAP, DIM))

    @staticmethod
    def _unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def embed_images(self, images):
        return self._unit(self.table[np.asarray(images)[:, 0, 0, 0].astype(int)])

    def embed_captions(self, captions, n_each=None):
        rows = [int(cs[0].split()[1]) for cs in captions]
        each = self._unit(self.table[rows][:, None, :] + self.noise[rows, :n_each])
        return self._unit(each.mean(1)), each


class FakeData:
    """Stimuli 0..n-1 (image i: all pixels i), two captions each; the last ``n_test`` are the shared images."""

    is_simulated = True

    def __init__(self, n: int = 30, n_test: int = 10):
        self.n, self.n_test = n, n_test

    def shared_ids(self):
        return np.arange(self.n - self.n_test, self.n)

    def images(self, ids):
        return np.broadcast_to(np.asarray(ids, np.uint8)[:, None, None, None], (len(ids), 4, 4, 3)).copy()

    def captions(self, ids):
        return [[f"image {i} caption {j}" for j in range(N_CAP)] for i in ids]


def fake_stage(ds=None, seed: int = 0):
    return SimpleNamespace(
        ds=ds or FakeData(),
        rng=np.random.default_rng(seed),
        seed=seed,
        subject=1,
        device="cpu",
        sessions=None,
        name="01_joint_embedding",
    )


def split_of(ds: FakeData) -> je.Split:
    return je.Split(np.arange(ds.n - ds.n_test), ds.shared_ids())


def test_sources_reject_an_unknown_source_naming_it():
    with pytest.raises(ValueError, match="embedding_source='clip'"):
        je.Sources(embedding_source="clip")
    with pytest.raises(ValueError, match="dino_source='none'"):
        je.Sources(dino_source="none")


def test_sources_choose_what_is_trained_here():
    assert je.Sources().trains_scratch and je.Sources().from_models and je.Sources().label == "pretrained"
    assert not je.Sources(compare_scratch=False).trains_scratch
    assert je.Sources(embedding_source="scratch", compare_scratch=False).trains_scratch
    real = je.Sources(clip_checkpoint="/x/ViT-B-32.pt")
    assert real.real_clip and not real.trains_scratch and not real.from_models and real.label == "checkpoint"


def test_real_data_needs_a_real_clip():
    st = fake_stage(SimpleNamespace(is_simulated=False))
    with pytest.raises(ValueError, match="clip_checkpoint is empty"):
        je.sources(st, embedding_source="pretrained")
    assert je.sources(st, clip_checkpoint="/x.pt").real_clip


def test_split_keeps_every_shared_image_out_of_training(tiny):
    st = SimpleNamespace(ds=tiny, subject=1, sessions=None)
    data = je.split(st)
    seen = np.unique(tiny.trial_images(1))
    assert not np.isin(data.train_ids, tiny.shared_ids()).any()
    assert np.isin(data.test_ids, tiny.shared_ids()).all()
    np.testing.assert_array_equal(np.sort(np.concatenate([data.train_ids, data.test_ids])), seen)


def test_embed_scores_retrieval_as_counted_directly():
    ds = FakeData()
    emb = FakeEmbedder(30, noise=1.5)
    data = split_of(ds)
    out = je.embed(fake_stage(ds), data, emb=emb)
    img = emb.embed_images(ds.images(data.test_ids))
    txt, each = emb.embed_captions(ds.captions(data.test_ids), N_CAP)
    n = len(data.test_ids)
    i2t = np.mean([np.argmax(img[i] @ txt.T) == i for i in range(n)])
    t2i = np.mean([np.argmax(txt[i] @ img.T) == i for i in range(n)])
    single = np.mean([np.argmax(each[i, j] @ img.T) == i for i in range(n) for j in range(N_CAP)])
    assert (out.img2txt, out.txt2img, out.txt2img_each) == pytest.approx((i2t, t2i, single))
    assert single < 1  # the noise makes the direct count a real check
    assert out.chance == 1 / n and out.test.sum() == n and list(out.ids[out.test]) == list(data.test_ids)


def test_retrieval_examples_draw_with_the_stage_rng_and_find_own_captions():
    ds = FakeData()
    data = split_of(ds)
    st = fake_stage(ds, seed=5)
    embedded = je.embed(st, data, emb=FakeEmbedder(30))
    ex = je.retrieval_examples(st, data, embedded=embedded, n_examples=4)
    show = np.random.default_rng(5).choice(10, 4, replace=False)
    np.testing.assert_array_equal(ex["images"][:, 0, 0, 0], data.test_ids[show])
    own = [[is_own for _, is_own, _ in r[:N_CAP]] for r in ex["ranked"]]
    assert own == [[True] * N_CAP] * 4  # noiseless captions: each image's own captions come first


def _outputs(dino_trained: bool, simulated: bool = True):
    st = fake_stage()
    data = je.Split(np.arange(8), np.arange(8, 12))
    emb = SimpleNamespace(arch="fake", key="k0", dim=DIM, image_size=8)
    scratch = je.Scratch(object(), {"seconds": 3.0}, contrastive.ClipTrainConfig(steps=60))
    probed = (
        je.EmbeddingProbes(
            {"this embedding": {"linear_probe": {"shape": 0.5}}},
            {},
            {"intervals": {}},
            {"shape": 0.25},
            None,
            None,
        )
        if simulated
        else None
    )
    embedded = je.Embedded(np.arange(12), {}, np.arange(12) >= 8, 0.5, 0.75, 0.25, 0.25)
    history = {"seconds": 2.0, "teacher_entropy": [4.0, 3.0], "batch_entropy": [5.0, 4.5]}
    teacher = je.Dino(cfg=dino.DinoConfig(steps=40), history=history if dino_trained else None)
    knn = {
        "DINO image vector": {"shape": 0.9},
        "DINO patch grid": {"shape": 0.7},
        "random init, image vector": {"shape": 0.3},
        "random init, patch grid": {"shape": 0.2},
        "CLIP image (reference)": {"shape": 0.8},
    }
    versus = {"knn": {"DINO image vector − random init, image vector": {"shape": {"diff": 0.6}}}}
    dino_probes = {"knn": knn, "linear": {"DINO image vector": {"shape": 1.0}}, "majority": {"shape": 0.25},
                   "versus_random": versus}  # fmt: skip
    return dict(
        st=st,
        data=data,
        src=je.Sources(dino_source="scratch"),
        emb=emb,
        scratch=scratch,
        probed=probed,
        spread={"seeds": [0]},
        embedded=embedded,
        teacher=teacher,
        dino_probes=dino_probes if simulated else None,
    )


def _results(o):
    return je.results(o["st"], o["data"], **{k: v for k, v in o.items() if k not in ("st", "data")})


def test_results_hold_exactly_the_metrics_keys_and_their_values():
    res = _results(_outputs(dino_trained=True))
    record = dataclasses.asdict(res)
    assert set(record) == METRICS_KEYS
    assert record["dino_knn"] == {"shape": 0.9} and record["dino_knn_random_init"] == {"shape": 0.3}
    assert record["dino_knn_clip_image"] == {"shape": 0.8} and record["linear_probe"] == {
        "DINO image vector": {"shape": 1.0}
    }
    assert record["dino_grid_knn"] == {"shape": 0.7} and record["dino_grid_knn_random_init"] == {"shape": 0.2}
    assert (
        record["dino_versus_random"]["knn"]["DINO image vector − random init, image vector"]["shape"]["diff"]
        == 0.6
    )
    assert (record["clip_steps"], record["train_seconds"], record["dino_steps"]) == (60, 3.0, 40)
    assert (record["dino_teacher_entropy_final"], record["dino_batch_entropy_final"]) == (3.0, 4.5)
    assert record["model"] == {
        "arch": "fake",
        "source": "pretrained",
        "key": "k0",
        "dim": DIM,
        "image_size": 8,
    }
    assert (record["n_train_images"], record["n_test_images"], record["txt2img_top1_single_caption"]) == (
        8,
        4,
        0.25,
    )
    header = {"profile": "quick", "seed": 0, "device": "cpu"}
    assert results_mod.from_record("01_joint_embedding", results_mod.as_record(res, header)) == res


def test_results_leave_out_what_was_not_run():
    no_dino = {
        k for k, v in dataclasses.asdict(_results(_outputs(dino_trained=False))).items() if v is not None
    }
    assert no_dino == METRICS_KEYS - DINO_TRAINED
    o = _outputs(dino_trained=False, simulated=False)
    o["scratch"] = je.Scratch(None, None, contrastive.ClipTrainConfig(steps=60))
    real = dataclasses.asdict(_results(o))
    assert (real["clip_steps"], real["train_seconds"], real["embedding_probes"], real["dino_knn"]) == (
        0,
        0.0,
        None,
        None,
    )
    assert je.key_numbers(_results(o))["clip_steps"] == 0 and "model" not in je.key_numbers(_results(o))


def test_save_and_check_stops_a_collapsed_dino():
    ds = FakeData()
    data = split_of(ds)
    saved = {}
    st = fake_stage(ds)
    st.store = SimpleNamespace(save_embeddings=lambda *a, **kw: saved.update(args=a, extra=kw))
    embedded = je.embed(st, data, emb=FakeEmbedder(30))
    collapsed = je.Dino(
        cfg=dino.DinoConfig(out_dim=64), history={"batch_entropy": [0.1], "teacher_entropy": [0.1]}
    )
    feats = {"features": np.zeros((30, 3)), "grid": np.zeros((30, 12))}
    with pytest.raises(AssertionError, match="collapsed onto a few prototypes"):
        je.save_and_check(
            st, data, emb=FakeEmbedder(30), embedded=embedded, teacher=collapsed, dino_probes=feats
        )
    assert saved["args"][3] == "k0" and saved["extra"]["dino"].shape == (30, 3)  # saved before the checks
    assert saved["extra"]["dino_grid"].shape == (30, 12)
    # the shipped teacher (no history) must tell backgrounds apart better than random init
    pair = " − ".join(je.DINO_PAIRS[0])
    no_better = feats | {
        "versus_random": {"knn": {pair: {"background": {"diff": 0.01, "low": -0.02, "high": 0.04}}}}
    }
    with pytest.raises(AssertionError, match="does not tell backgrounds apart better than random init"):
        je.save_and_check(
            st, data, emb=FakeEmbedder(30), embedded=embedded, teacher=je.Dino(), dino_probes=no_better
        )
    je.save_and_check(st, data, emb=FakeEmbedder(30), embedded=embedded, teacher=je.Dino(), dino_probes=None)
    assert "dino" not in saved["extra"]


@pytest.mark.parametrize("profile", ["quick", "mini", "nsd"])
def test_profiles_hold_the_notebooks_former_training_values(profile):
    """The values 01's parameters cell (and each profile's notebooks."01") set before they became hyperparameters."""
    cfg = profiles.load(profile)
    clip = profiles.resolve_config(cfg, "clip", seed=0)
    dcfg = profiles.resolve_config(cfg, "dino", seed=0)
    stats = profiles.resolve_config(cfg, "stats")
    steps, batch, eval_every = {"quick": (60, 64, 30), "mini": (300, 128, 50), "nsd": (300, 128, 50)}[profile]
    assert clip == contrastive.ClipTrainConfig(steps=steps, batch_size=batch, lr=0.002, eval_every=eval_every)
    former = dict(
        steps={"quick": 40, "mini": 500, "nsd": 800}[profile],
        batch_size=32,
        lr=0.001,
        out_dim=256 if profile == "quick" else 1024,
        n_local=6,
        teacher_temp=0.04,
        warmup_teacher_temp=0.04,
        global_size=48 if profile == "quick" else 64,
        local_size=32,
    )
    assert dcfg == dino.DinoConfig(**former)
    assert (stats.resamples, stats.seeds) == (2000, 1)
