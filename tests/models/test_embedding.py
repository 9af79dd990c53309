"""The embedding interface (lib.models.embedding): preprocessing, checkpoints (ours, plain open_clip, refused
pickles), saved embeddings, embedding the stimuli in chunks, and the grammar tokenizer of the shipped models."""

import os
import pickle

import numpy as np
import pytest
import torch

from lib.models import embedding
from lib.models.embedding import EmbeddingError


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


def test_embed_stimuli_reads_in_chunks_and_matches_one_pass(tiny):
    emb = embedding.create("mini-rn16", 32, "cpu", seed=0)
    ids = np.arange(13)
    out = embedding.embed_stimuli(emb, tiny, ids, chunk=5)
    assert np.allclose(out["image"], emb.embed_images(tiny.images(ids)), atol=1e-5)
    mean, each = emb.embed_captions(tiny.captions(ids))
    assert np.allclose(out["text"], mean, atol=1e-5) and np.allclose(out["text_each"], each, atol=1e-5)


def test_grammar_tokenizer_keeps_the_end_token_where_argmax_pooling_finds_it():
    texts = ["A large red circle in the top left on stripes.", "two shapes on grey: a star, a bar."]
    vocab = embedding.grammar_vocab(texts)
    tok = embedding.GrammarTokenizer(vocab, vocab_size=64, context_length=24)
    base = tok.base(texts)
    mapped = tok(texts)
    assert torch.equal(mapped.argmax(-1), base.argmax(-1))  # the end-of-text position
    assert torch.equal(mapped == 0, base == 0)
    assert mapped.max() == 63 and (mapped[:, 0] == 62).all()
    unknown = tok(["a zebra"])
    assert (unknown == embedding.GrammarTokenizer.UNKNOWN).sum() >= 1


def test_grammar_vocab_is_every_id_the_tokenizer_gives_the_captions():
    """Word by word equals CLIP's tokenizer on whole texts (punctuation, case, HTML entities, repeated spaces)."""
    from lib.data import corpus as cp

    texts = [c for cs in cp.Corpus(0, exclude=frozenset()).scenes(0, 200)[2] for c in cs]
    texts += ["A  RED star&amp;a bar's edge, (left)...", "it's grey-blue: 3 circles!"]
    tok = embedding._open_clip().tokenizer.SimpleTokenizer()
    direct = np.unique(tok(texts).numpy())
    want = np.setdiff1d(direct, [0, tok.sot_token_id, tok.eot_token_id])
    got = embedding.grammar_vocab(texts)
    assert got.dtype == np.int64 and np.array_equal(got, want) and len(got) > 20
