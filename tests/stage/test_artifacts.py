"""The stage hand-offs (lib.artifacts): distinct paths, the notebook a missing artifact names, and round trips
of encoders, predictions, generators, reconstructions, embedders and embeddings that refuse a mismatch; on small
arrays and tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib import artifacts, paths
from lib.models import embedding, gan
from lib.models.ridge import RidgeEncoder


@pytest.fixture()
def store(tmp_path):
    return artifacts.Store("quick", tmp_path / "results")


def _tiny_g(f_dim: int, seed: int = 0):
    cfg = gan.GANConfig(z_dim=8, w_dim=16, mapping_layers=2, channel_base=64, channel_max=16, fts_hidden=16,
                        batch_size=8, seed=seed)  # fmt: skip
    torch.manual_seed(seed)
    G, _ = gan.build(cfg, 32, f_dim)
    return G.eval()


def test_every_artifact_belongs_to_a_stage_and_paths_are_distinct(store):
    assert {a.stage for a in artifacts.ARTIFACTS.values()} <= set(artifacts.STAGES)
    files = [store.path(n) for n in artifacts.ARTIFACTS]
    assert len(set(files)) == len(files)
    assert store.path("predictions") == store.root / "02_fmri_encoder" / "predictions.npz"
    assert artifacts.Store("mini").root == paths.results_dir("mini")
    with pytest.raises(artifacts.ArtifactError, match="artifact 'nope'"):
        store.path("nope")


def test_a_missing_artifact_names_the_notebook_to_rerun(store):
    with pytest.raises(artifacts.ArtifactError) as e:
        store.load_predictions()
    msg = str(e.value)
    assert (
        "missing" in msg and "notebooks/02_fmri_encoder.ipynb" in msg and "--profile quick --only 02" in msg
    )
    assert "\n" not in msg


def test_encoder_and_predictions_round_trip_and_refuse_a_mismatch(store):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)).astype(np.float32), rng.standard_normal((40, 3)).astype(np.float32)
    enc = RidgeEncoder(alphas=[1.0]).fit(x, y)
    store.save_encoder("ridge_image", enc, "key-a", "nsdgeneral", 1)
    back = store.load_encoder("ridge_image", model_key="key-a", roi="nsdgeneral", subject=1)
    np.testing.assert_array_equal(back.predict(x), enc.predict(x))
    assert back.meta == {"model_key": "key-a", "roi": "nsdgeneral", "subject": 1}
    with pytest.raises(
        artifacts.ArtifactError, match=r"made with model_key='key-a', expected 'key-b'.*only 02"
    ):
        store.load_encoder("ridge_image", model_key="key-b")
    with pytest.raises(artifacts.ArtifactError, match="made with roi='nsdgeneral', expected 'V1-hV4'"):
        store.load_encoder("ridge_image", roi="V1-hV4")
    with pytest.raises(artifacts.ArtifactError, match="encoder 'ridge'"):
        store.save_encoder("ridge", enc, "k", "r", 1)
    ids = np.arange(5)
    store.save_predictions(ids, "key-a", "nsdgeneral", 1, pred_ridge_image=y[:5], true_image=y[:5])
    pred = store.load_predictions(model_key="key-a", roi="nsdgeneral", subject=1)
    np.testing.assert_array_equal(pred["pred_ridge_image"], y[:5])
    with pytest.raises(artifacts.ArtifactError, match="subject=1, expected 2"):
        store.load_predictions(subject=2)
    store.path("predictions").write_bytes(b"not a zip")
    with pytest.raises(artifacts.ArtifactError, match="unreadable"):
        store.load_predictions()


def test_generator_and_reconstructions_round_trip_with_provenance(store):
    G = _tiny_g(4)
    store.save_generator("generator", G, "key-a", source="here")
    back = store.load_generator("generator", model_key="key-a")
    z, f = torch.zeros(2, 8), torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    torch.testing.assert_close(back(z, fts=f, noise_mode="const"), G(z, fts=f, noise_mode="const"))
    with pytest.raises(artifacts.ArtifactError, match="expected 'key-b'.*only 03"):
        store.load_generator("generator", model_key="key-b")
    variants = {"oracle": np.zeros((3, 8, 8, 3), np.uint8), "predicted": np.ones((3, 8, 8, 3), np.uint8)}
    settings = dict.fromkeys(artifacts.GENERATION_SETTINGS, 1) | {"encoder": "ridge_image"}
    with pytest.raises(artifacts.ArtifactError, match="provenance names"):
        store.save_reconstructions(np.arange(3), variants, {"oracle": "x"}, "key-a", settings)
    with pytest.raises(artifacts.ArtifactError, match="missing opt_lr"):
        store.save_reconstructions(np.arange(3), variants, dict.fromkeys(variants, "x"), "key-a",
                                   {k: v for k, v in settings.items() if k != "opt_lr"})  # fmt: skip
    store.save_reconstructions(np.arange(3), variants, {"oracle": "o", "predicted": "p"}, "key-a", settings)
    rec = store.load_reconstructions(model_key="key-a")
    assert list(rec.variants) == ["oracle", "predicted"] and rec.provenance["predicted"] == "p"
    np.testing.assert_array_equal(rec.variants["predicted"], variants["predicted"])
    assert store.generation_settings() == settings == rec.settings
    with pytest.raises(artifacts.ArtifactError, match="expected 'other'"):
        store.load_reconstructions(model_key="other")


def test_embedder_and_embeddings_round_trip(store, emb):
    store.save_embedder(emb, {"origin": "test"})
    back = store.load_embedder("cpu")
    assert back.key == embedding.load(checkpoint=store.path("embedder"), device="cpu").key
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(back.embed_images(imgs), emb.embed_images(imgs), atol=1e-6)
    vec = np.eye(3, 4, dtype=np.float32)
    store.save_embeddings(np.arange(3), vec, vec, back.key)
    assert store.load_embeddings(model_key=back.key)["model_key"] == back.key
    with pytest.raises(artifacts.ArtifactError, match="only 01"):
        store.load_embeddings(model_key="another")


def test_reconstructions_of_an_older_03_name_the_missing_setting_and_notebook(store, monkeypatch):
    variants = {"oracle": np.zeros((2, 8, 8, 3), np.uint8)}
    older = tuple(k for k in artifacts.GENERATION_SETTINGS if k != "impose_strength")
    with monkeypatch.context() as m:  # what 03 wrote before impose_strength existed
        m.setattr(artifacts, "GENERATION_SETTINGS", older)
        store.save_reconstructions(np.arange(2), variants, {"oracle": "o"}, "key-a", dict.fromkeys(older, 1))
    for load in (store.generation_settings, store.load_reconstructions):
        with pytest.raises(
            artifacts.ArtifactError, match=r"without the setting\(s\) impose_strength.*rerun .*03"
        ):
            load()
