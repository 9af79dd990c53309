"""The shipped pretrained models: manifest against the files, checksum refusal, loaders, and `make pretrain`'s
code on the quick profile (seconds), including an exact resume."""

import json
import shutil

import numpy as np
import pytest
import torch

from lib.data import corpus as cp
from lib.data import scenes
from lib.models import dino, embedding, pretrained
from lib.models import stylegan2 as sg
from lib.models.pretrained import train as pretrain

SHIPPED = sorted(p.name for p in pretrained.MODELS_DIR.glob("*.safetensors"))


def test_manifest_lists_every_shipped_file_with_its_checksum_and_origin():
    manifest = pretrained.read_manifest(pretrained.MODELS_DIR / pretrained.MANIFEST)
    assert sorted(manifest["models"]) == SHIPPED == sorted(pretrained.FILES.values())
    total = 0
    for name, e in manifest["models"].items():
        f = pretrained.MODELS_DIR / name
        assert pretrained.verified(f) == f
        assert e["bytes"] == f.stat().st_size
        total += e["bytes"]
        assert (
            e["command"].startswith(("python -m lib.pretrain", pretrain.PROG)) and len(e["git_commit"]) >= 40
        )
        assert e["corpus"]["scenes_seen"] > 0 and "seed" in e["corpus"] and e["train_seconds"] > 0
        assert e["scores"]
    assert total <= 25 * 2**20


def test_a_modified_model_file_is_refused(tmp_path):
    for name in (pretrained.MANIFEST, pretrained.FILES["gan"]):
        shutil.copy(pretrained.MODELS_DIR / name, tmp_path / name)
    f = tmp_path / pretrained.FILES["gan"]
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(pretrained.ModelError, match=r"sha256 .* does not match the manifest") as e:
        pretrained.load_generator(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(pretrained.ModelError, match="no such model file"):
        pretrained.load_embedding(tmp_path)


def test_shipped_models_load_and_read_the_stimuli_grammar():
    emb = pretrained.load_embedding(device="cpu")
    rng = np.random.default_rng(0)
    scene_list = [scenes.sample_scene(rng) for _ in range(40)]
    caps = [c for s in scene_list for c in scenes.captions(s, rng)]
    tokens = emb.tokenize(caps)
    assert not (tokens == embedding.GrammarTokenizer.UNKNOWN).any(), (
        "a caption word is outside the vocabulary"
    )
    G = pretrained.load_generator(device="cpu")
    assert G.img_resolution == 64 and G.f_dim == emb.dim
    backbone, (mean, std) = pretrained.load_dino(device="cpu")
    assert backbone.width >= 8 and mean.shape == std.shape == (3,)
    assert (
        pretrained.conditioned_on()["sha256"]
        == pretrained.entry(pretrained.MODELS_DIR / pretrained.FILES["clip"])["sha256"]
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    scores = pretrain.run("quick", out=out / "models", state_dir=out / "state", device="cpu")
    return out, scores


def test_pretrain_quick_writes_loadable_checked_models(quick_run):
    out, scores = quick_run
    manifest = json.loads((out / "models" / pretrained.MANIFEST).read_text())
    assert sorted(manifest["models"]) == sorted(pretrained.FILES.values())
    emb = pretrained.load_embedding(out / "models", device="cpu")
    G = pretrained.load_generator(out / "models", device="cpu")
    backbone, stats = pretrained.load_dino(out / "models", device="cpu")
    assert emb.image_size == 32 and G.img_resolution == 32
    x = dino.normalise(np.zeros((2, 32, 32, 3), np.uint8), mean=stats[0], std=stats[1])
    assert dino.features(backbone, x).shape == (2, backbone.dim)
    assert set(scores) == {"clip", "gan", "refine", "extend", "anneal", "dino", "judge"}
    judge = pretrained.load_shape_judge(out / "models", device="cpu")
    assert judge.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2,)
    assert manifest["models"][pretrained.FILES["judge"]]["steps"] == pretrain.PROFILES["quick"].judge_steps
    gen = manifest["models"][pretrained.FILES["gan"]]
    assert [p["phase"] for p in gen["phases"]] == ["gan", "refine", "extend", "anneal"]
    assert gen["steps"] == sum(p["steps"] for p in gen["phases"]) == 16
    assert set(scores["clip"]["linear_probe"]) == set(cp.LABELS)


def test_half_precision_files_reproduce_the_trained_weights(quick_run, tmp_path):
    out, _ = quick_run
    emb = pretrained.load_embedding(out / "models", device="cpu")
    full = tmp_path / "full.safetensors"
    embedding.save_checkpoint(full, emb)  # float32 copy of the float16-stored weights: exact round trip
    again = embedding.load(checkpoint=full, device="cpu")
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.allclose(again.embed_images(imgs), emb.embed_images(imgs), atol=1e-6)
    assert torch.equal(again.tokenize(["a red star."]), emb.tokenize(["a red star."]))
    G = pretrained.load_generator(out / "models", device="cpu")
    sg.save_generator(tmp_path / "g.safetensors", G)
    G2 = sg.load_generator(tmp_path / "g.safetensors")
    z, f = torch.zeros(2, G.z_dim), torch.nn.functional.normalize(torch.randn(2, G.f_dim), dim=-1)
    assert torch.equal(G(z, fts=f, noise_mode="const"), G2(z, fts=f, noise_mode="const"))


def test_pretraining_resumes_exactly(tmp_path):
    cfg = pretrain.PROFILES["quick"]
    corp = cp.Corpus(cfg.seed, cfg.image_size, hard_negatives=cfg.hard_negatives, exclude=frozenset())
    whole, h1 = pretrain.train_embedding(cfg, corp, tmp_path / "a", "cpu")
    part, _ = pretrain.train_embedding(cfg, corp, tmp_path / "b", "cpu", stop_after=3)
    resumed, h2 = pretrain.train_embedding(cfg, corp, tmp_path / "b", "cpu")
    assert h1["clip"] == h2["clip"] and h2["done"]
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    G1, g1 = pretrain.train_generator(cfg, corp, whole, tmp_path / "a", "cpu")
    pretrain.train_generator(
        cfg, corp, whole, tmp_path / "c", "cpu", stop_after=3
    )  # stops inside the GAN phase
    G2, g2 = pretrain.train_generator(cfg, corp, whole, tmp_path / "c", "cpu")
    assert g1["l1"] == g2["l1"] and g1["loss_d"] == g2["loss_d"]
    for (k, a), b in zip(G1.state_dict().items(), G2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
