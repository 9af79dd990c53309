"""The embedding interface: preprocessing, checkpoints (ours, plain open_clip, refused pickles), saved embeddings,
retrieval, and training that resumes exactly where it stopped."""

import dataclasses
import os
import pickle

import numpy as np
import pytest
import torch

from lib.analysis import metrics
from lib.data import prep, scenes
from lib.models import contrastive, dino, embedding
from lib.models.embedding import EmbeddingError


@pytest.fixture(scope="module")
def emb():
    return embedding.create("mini-rn16", image_size=32, device="cpu", seed=0)


def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_repo_config_is_registered_with_open_clip():
    assert "mini-rn16" in embedding.architectures()
    with pytest.raises(EmbeddingError, match="arch='no-such-net'"):
        embedding.create("no-such-net")


def test_preprocess_matches_torchvision_resize_crop_and_clip_normalisation(emb):
    from torchvision.transforms.v2 import functional as TF

    img = _images(2, seed=1)
    big = np.random.default_rng(2).integers(0, 256, size=(2, 48, 64, 3), dtype=np.uint8)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    same = emb.preprocess(img)
    assert torch.allclose(same, (torch.tensor(img).permute(0, 3, 1, 2) / 255 - mean) / std, atol=1e-6)
    x = torch.tensor(big).permute(0, 3, 1, 2).float() / 255
    # open_clip's transform: Resize(32) (short side to 32, long side truncated to 42), CenterCrop(32)
    want = TF.center_crop(
        TF.resize(x, 32, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), [32, 32]
    )
    assert torch.allclose(emb.preprocess(big), (want.clamp(0, 1) - mean) / std, atol=1e-4)
    with pytest.raises(EmbeddingError, match="uint8"):
        emb.preprocess(img.astype(np.float32))


def test_embeddings_are_unit_vectors_and_captions_average(emb):
    v = emb.embed_images(_images(5))
    assert v.shape == (5, 128) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    caps = [["a red circle.", "a blue star."], ["a green bar.", "two shapes."]]
    mean, each = emb.embed_captions(caps)
    single = emb.embed_texts([c for cs in caps for c in cs]).reshape(2, 2, -1)
    assert np.allclose(each, single, atol=1e-6)
    m = single.mean(1)
    assert np.allclose(mean, m / np.linalg.norm(m, axis=1, keepdims=True), atol=1e-6)
    # images with different numbers of captions: the mean uses all of them, ``each`` the first n_each
    mean, each = emb.embed_captions([["a red circle."], ["a green bar.", "two shapes."]])
    assert each.shape == (2, 1, 128) and np.allclose(each[1, 0], single[1, 0], atol=1e-6)
    assert np.allclose(mean[1], m[1] / np.linalg.norm(m[1]), atol=1e-6)
    with pytest.raises(EmbeddingError, match="have none"):
        emb.embed_captions([["a"], []])


def test_checkpoint_round_trip_and_plain_open_clip_state_dict(emb, tmp_path):
    imgs = _images(4)
    ref = emb.embed_images(imgs)
    path = embedding.save_checkpoint(tmp_path / "m.pt", emb)
    back = embedding.load(checkpoint=path, device="cpu")
    assert back.arch == "mini-rn16" and back.image_size == 32
    assert np.allclose(back.embed_images(imgs), ref, atol=1e-6)
    copy = tmp_path / "elsewhere" / "copy.pt"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    assert embedding.load(checkpoint=copy, device="cpu").key == back.key  # the key follows the contents
    with pytest.raises(EmbeddingError, match="not image_size=48"):
        embedding.load(checkpoint=path, image_size=48)
    # a real CLIP arrives as a plain open_clip state dict: arch is then required
    plain = tmp_path / "plain.pt"
    torch.save(emb.model.state_dict(), plain)
    with pytest.raises(EmbeddingError, match="needs arch="):
        embedding.load(checkpoint=plain)
    loaded = embedding.load("mini-rn16", checkpoint=plain, image_size=32, device="cpu")
    assert np.allclose(loaded.embed_images(imgs), ref, atol=1e-6)
    # OpenAI's converted TorchScript weights carry three non-parameter entries; safetensors files load too
    from safetensors.torch import save_file

    jit_like = {
        **emb.model.state_dict(),
        "input_resolution": torch.tensor(32),
        "vocab_size": torch.tensor(49408),
    }
    torch.save(jit_like, tmp_path / "jit.pt")
    assert np.allclose(
        embedding.load("mini-rn16", tmp_path / "jit.pt", image_size=32).embed_images(imgs), ref, atol=1e-6
    )
    save_file({k: v.contiguous() for k, v in emb.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    st = embedding.load("mini-rn16", tmp_path / "w.safetensors", image_size=32, device="cpu")
    assert np.allclose(st.embed_images(imgs), ref, atol=1e-6)
    with pytest.raises(EmbeddingError, match="does not fit arch='RN50'"):
        embedding.load("RN50", checkpoint=plain)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def test_a_checkpoint_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"state_dict": _Evil()}, protocol=2))
    with pytest.raises(EmbeddingError, match="weights_only"):
        embedding.load("mini-rn16", checkpoint=bad)
    assert not (tmp_path / "pwned-by-checkpoint").exists()
    with pytest.raises(EmbeddingError, match="no such file"):
        embedding.load("mini-rn16", checkpoint=tmp_path / "missing.pt")


def test_unknown_pretrained_tag_fails_with_a_clear_error():
    with pytest.raises(EmbeddingError, match="pretrained='no-such-tag' for arch='RN50'"):
        embedding.load("RN50", pretrained="no-such-tag")


def test_saved_embeddings_carry_the_model_key(tmp_path):
    ids = np.arange(3)
    a = np.eye(3, 4, dtype=np.float32)
    p = embedding.save_embeddings(tmp_path / "e.npz", ids, a, a, "k1", text_each=a[:, None], dino=a[:, :2])
    out = embedding.load_embeddings(p, model_key="k1")
    assert np.array_equal(out["image"], a) and out["dino"].shape == (3, 2) and out["model_key"] == "k1"
    with pytest.raises(EmbeddingError, match="expected k2"):
        embedding.load_embeddings(p, model_key="k2")
    with pytest.raises(EmbeddingError, match="differ in length"):
        embedding.save_embeddings(tmp_path / "f.npz", ids[:2], a, a, "k")
    assert not (tmp_path / "f.npz").exists()


def test_scene_attributes(tiny):
    _, test = prep.stimulus_split(tiny, 1)
    sc = tiny.scenes(test[:5])
    assert [s["nsdId"] for s in sc] == list(test[:5])
    table = scenes.attribute_table(sc)
    for s, (_, row) in zip(sc, table.iterrows(), strict=True):
        big = max(s["objects"], key=lambda o: o["radius"])
        assert row["shape"] == big["shape"] and row["count"] == len(s["objects"])
        # the position cell is the one the captions name for this object ("in the top left", "at the bottom")
        phrase = scenes._where(scenes.SceneObject(**big))
        assert phrase.split(" ", 2)[2] == row["position"], (phrase, row["position"])


def _tiny_data(n=24):
    rng = np.random.default_rng(5)
    sc = [scenes.sample_scene(rng) for _ in range(n)]
    imgs = np.stack([scenes.render(s, 32)[0] for s in sc])
    caps = [scenes.captions(s, rng, 3) for s in sc]
    return imgs, caps


def test_clip_training_resumes_exactly_and_reloads_when_finished(tmp_path):
    imgs, caps = _tiny_data()
    cfg = contrastive.ClipTrainConfig(steps=6, batch_size=8, lr=1e-3, checkpoint_every=2, eval_every=0)
    whole = embedding.create("mini-rn16", 32, "cpu", seed=1)
    h_whole = contrastive.train_clip(whole, imgs, caps, cfg)
    part = embedding.create("mini-rn16", 32, "cpu", seed=1)
    contrastive.train_clip(part, imgs, caps, cfg, state_dir=tmp_path, stop_after=3)
    resumed = embedding.create("mini-rn16", 32, "cpu", seed=1)  # a fresh process would start like this
    h_res = contrastive.train_clip(resumed, imgs, caps, cfg, state_dir=tmp_path)
    assert h_res["loss"] == h_whole["loss"]
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # finished: a second call loads the state and does not train again
    again = embedding.create("mini-rn16", 32, "cpu", seed=1)
    h_again = contrastive.train_clip(again, imgs, caps, cfg, state_dir=tmp_path)
    assert h_again["seconds"] == h_res["seconds"] and len(list(tmp_path.glob("clip-state-*.pt"))) == 1
    # another configuration gets its own state file
    contrastive.train_clip(embedding.create("mini-rn16", 32, "cpu", seed=1), imgs, caps,
                           contrastive.ClipTrainConfig(steps=2, batch_size=8, eval_every=0), state_dir=tmp_path)  # fmt: skip
    assert len(list(tmp_path.glob("clip-state-*.pt"))) == 2


def test_clip_training_learns_the_pairs():
    imgs, caps = _tiny_data(32)
    emb = embedding.create("mini-rn16", 32, "cpu", seed=0)
    before = emb.embed_images(imgs), emb.embed_captions(caps)[0]
    cfg = contrastive.ClipTrainConfig(steps=40, batch_size=16, lr=2e-3, eval_every=0)
    hist = contrastive.train_clip(emb, imgs, caps, cfg)
    after = emb.embed_images(imgs), emb.embed_captions(caps)[0]
    assert np.mean(hist["loss"][-5:]) < 0.7 * np.mean(hist["loss"][:5])
    assert sum(metrics.paired_top1(*after)) > sum(metrics.paired_top1(*before)) + 0.3


def test_dino_training_resumes_exactly(tmp_path):
    imgs, _ = _tiny_data(16)
    x = dino.normalise(imgs)
    cfg = dino.DinoConfig(steps=4, batch_size=4, out_dim=16, n_local=2, global_size=32, local_size=32,
                          checkpoint_every=1, width=8)  # fmt: skip
    _, t_whole, h_whole = dino.train_dino(x, cfg, device="cpu")
    dino.train_dino(x, cfg, state_dir=tmp_path, device="cpu", stop_after=2)
    _, t_res, h_res = dino.train_dino(x, cfg, state_dir=tmp_path, device="cpu")
    assert h_res["loss"] == h_whole["loss"] and h_res["momentum"] == h_whole["momentum"]
    for a, b in zip(t_whole.state_dict().values(), t_res.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    # after one step the teacher is exactly m * initial weights + (1 - m) * the student's, m = 0.996
    one = dataclasses.replace(cfg, steps=1)
    student, teacher, _ = dino.train_dino(x, one, device="cpu")
    init, _ = dino.build(one)
    for pt, ps, p0 in zip(teacher.parameters(), student.parameters(), init.parameters(), strict=True):
        assert torch.allclose(pt, 0.996 * p0 + 0.004 * ps, atol=1e-7)
    assert any(
        not torch.equal(ps, p0) for ps, p0 in zip(student.parameters(), init.parameters(), strict=True)
    )


def test_dino_config_errors():
    with pytest.raises(ValueError, match="local_size=16"):
        dino.DinoConfig(local_size=16).check()
    with pytest.raises(ValueError, match="global_scale"):
        dino.DinoConfig(global_scale=(0.5, 1.5)).check()


def test_embed_stimuli_reads_in_chunks_and_matches_one_pass(tiny):
    emb = embedding.create("mini-rn16", 32, "cpu", seed=0)
    ids = np.arange(13)
    out = embedding.embed_stimuli(emb, tiny, ids, chunk=5)
    assert np.allclose(out["image"], emb.embed_images(tiny.images(ids)), atol=1e-5)
    mean, each = emb.embed_captions(tiny.captions(ids))
    assert np.allclose(out["text"], mean, atol=1e-5) and np.allclose(out["text_each"], each, atol=1e-5)


def test_scratch_seed_spread_retrains_per_seed_and_keeps_the_store_untouched(tmp_path):
    from types import SimpleNamespace

    imgs, caps = _tiny_data(30)
    rng = np.random.default_rng(5)  # _tiny_data's scenes
    table = scenes.attribute_table([scenes.sample_scene(rng).to_dict() for _ in range(30)])
    store = SimpleNamespace(work_dir=lambda name: tmp_path / name, save_embedder=None)  # no save may happen
    cfg = contrastive.ClipTrainConfig(steps=2, batch_size=8, eval_every=0, seed=7)
    out = contrastive.scratch_seed_spread([7, 8], "mini-rn16", cfg, store, imgs[:20], caps[:20], imgs[20:], caps[20:],
                                          table.iloc[:20], table.iloc[20:].reset_index(drop=True), 32, "cpu")  # fmt: skip
    row = out["spread"]["scratch"]
    assert out["seeds"] == [7, 8] and {"img2txt_top1", "txt2img_top1", "shape"} <= set(row)
    # seed 7 by hand: the same training, the same probes
    emb = embedding.create("mini-rn16", 32, "cpu", 7)
    contrastive.train_clip(emb, imgs[:20], caps[:20], cfg, state_dir=tmp_path / "by_hand")
    probes = embedding.compare({"scratch": emb}, imgs[:20], imgs[20:], table.iloc[:20],
                               table.iloc[20:].reset_index(drop=True), caps[20:])  # fmt: skip
    assert row["img2txt_top1"]["values"][0] == probes["scratch"]["img2txt_top1"]
    assert row["shape"]["values"][0] == probes["scratch"]["linear_probe"]["shape"]
