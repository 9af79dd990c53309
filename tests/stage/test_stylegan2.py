"""Notebook 03's steps (lib.stage.stylegan2): its parameters and hyperparameter sections against the values the
notebook declared before they moved to the profiles, the settings 04 and 05 read back, the results the report
reads, the checks' messages, and the reconstruction steps against the calls they wrap (a tiny generator)."""

from __future__ import annotations

import ast
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from lib import artifacts, metrics, paths
from lib.analysis import variants
from lib.models import embedding, gan, lowlevel
from lib.report import results as report_results
from lib.stage import profile as profiles
from lib.stage import stylegan2

#: notebook 03's parameters before the move (name -> default), and where each went: (section, field)
OLD_DEFAULTS = {
    "gan_steps": 400, "gan_batch_size": 32, "gan_channel_base": 1024, "gan_channel_max": 128, "gan_z_dim": 64,
    "gan_w_dim": 128, "gan_mapping_layers": 2, "gan_fts_hidden": 128, "gan_lr": 0.002, "gan_beta1": 0.9,
    "adv": 1.0, "itc": 1.0, "itd": 0.0, "temperature": 0.1, "rec": 1.0, "crop_min": 1.0, "feature_ratio": 1.0,
    "monitor_every": 100, "align_steps": 300, "align_pixel": 5.0, "tune_steps": 300, "tune_lr": 0.002,
    "tune_pixel": 5.0, "tune_folds": 5, "opt_steps": 25, "opt_anchor": 30.0, "opt_noise_maps": False,
    "opt_lr": 0.03, "opt_lowlevel": 3.0, "impose_strength": 0.25,
}  # fmt: skip
#: the profiles' notebooks."03" values of those parameters before the move
OLD_PROFILES = {
    "quick": {"tune_steps": 10, "tune_folds": 3, "opt_steps": 5},
    "mini": {"tune_steps": 150, "opt_steps": 15},
    "nsd": {"gan_channel_base": 16384, "gan_channel_max": 512, "gan_fts_hidden": 512, "gan_z_dim": 512,
            "gan_w_dim": 512, "gan_mapping_layers": 8, "gan_steps": 20000, "gan_lr": 0.0025, "gan_beta1": 0.0,
            "itc": 10.0, "itd": 5.0, "temperature": 0.5, "rec": 0.0, "crop_min": 0.5, "feature_ratio": 0.25},
}  # fmt: skip
#: the notebook's parameters after the move (at most 15; profile and overrides first)
PARAMETERS = ["profile", "overrides", "encoder", "generator", "models_dir", "lafite_checkpoint", "gan_resolution",
              "combine", "ratios", "n_show", "min_oracle_two_way", "min_predicted_two_way"]  # fmt: skip


def _where(old: str) -> tuple[str, str]:
    if old.startswith("gan_"):
        return "gan", old[4:]
    if old in ("impose_strength",):
        return "opt", old
    section, _, field = old.partition("_")
    if section in ("align", "tune", "opt"):
        return section, field
    return "gan", old  # adv, itc, itd, temperature, rec, crop_min, feature_ratio, monitor_every


def _notebook_parameters() -> list[str]:
    nb = json.loads((paths.NOTEBOOKS_DIR / "03_stylegan2.ipynb").read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    return [node.target.id for node in ast.parse("".join(cell["source"])).body]


def test_the_notebook_declares_only_the_researcher_facing_parameters_and_the_profiles_name_no_other():
    assert _notebook_parameters() == PARAMETERS
    for name in ("quick", "mini", "nsd"):
        assert set(profiles.load(name)["notebooks"].get("03", {})) <= set(PARAMETERS), name


@pytest.mark.parametrize("profile", ["quick", "mini", "nsd"])
def test_every_moved_parameter_resolves_to_the_value_the_notebook_ran_with(profile):
    cfg = profiles.load(profile)
    sections = {s: profiles.resolve_config(cfg, s, seed=7) if s == "gan" else profiles.resolve_config(cfg, s)
                for s in ("gan", "align", "tune", "opt")}  # fmt: skip
    want = OLD_DEFAULTS | OLD_PROFILES[profile]
    got = {old: getattr(sections[_where(old)[0]], _where(old)[1]) for old in OLD_DEFAULTS}
    assert got == want
    assert {old: type(v) for old, v in got.items()} == {old: type(v) for old, v in want.items()}
    assert sections["gan"].seed == 7


def test_an_override_of_a_new_section_is_checked_and_named():
    cfg = profiles.load("quick")
    assert profiles.resolve_config(cfg, "tune", {"tune.steps": 3}).steps == 3
    with pytest.raises(profiles.ProfileError, match="folds=1"):
        profiles.resolve_config(cfg, "tune", {"tune.folds": 1})
    with pytest.raises(profiles.ProfileError, match="impose_strength=1.5"):
        profiles.resolve_config(cfg, "opt", {"opt.impose_strength": 1.5})
    with pytest.raises(profiles.ProfileError, match="OptConfig has no field 'opt_steps'"):
        profiles.resolve_config(cfg, "opt", {"opt.opt_steps": 3})


def test_the_generation_settings_are_the_ones_04_and_05_read_back_under_their_old_names():
    opt = gan.OptConfig(steps=7, anchor=2.0, noise_maps=True, lr=0.5, lowlevel=4.0, impose_strength=0.1)
    got = stylegan2.generation_settings(encoder="mlp_image", combine="impose", ratio=0.25, opt=opt)
    assert tuple(got) == artifacts.GENERATION_SETTINGS
    assert got == {"feature_ratio": 0.25, "encoder": "mlp_image", "opt_steps": 7, "opt_lr": 0.5, "opt_anchor": 2.0,
                   "opt_noise_maps": True, "combine": "impose", "opt_lowlevel": 4.0,
                   "impose_strength": 0.1}  # fmt: skip


def _generation(**over) -> stylegan2.Generation:
    base = dict(G=SimpleNamespace(img_resolution=32), view=None, monitor=None, n_monitor=10, ratio=1.0,
                kind="pretrained", checkpoint=None, source="the generator (pretrained)", parameters=1234,
                history=None, adversarial_seconds=0.0, steps=0, align_pixel=5.0, oracle_adversarial_only=0.97)  # fmt: skip
    return stylegan2.Generation(**(base | over))


def _results(gen: stylegan2.Generation):
    st = SimpleNamespace(subject=1, roi="nsdgeneral")
    inputs = SimpleNamespace(train_ids=np.arange(40), test_ids=np.arange(12))
    tuning = SimpleNamespace(cfg=gan.TuneConfig(steps=10, pixel=2.0))
    settings = stylegan2.generation_settings(
        encoder="ridge_image", combine="both", ratio=1.0, opt=gan.OptConfig()
    )
    table = {"oracle": {"two_way": 0.99, "pixcorr": 0.5, "ssim": 0.4}}
    return stylegan2.results(st, inputs, gen=gen, tuning=tuning, table=table, ratios={"ratio": [1.0]},
                             spread={"seeds": [0]}, settings=settings)  # fmt: skip


def test_the_results_hold_every_field_the_report_reads_and_read_back_equal():
    res = _results(_generation())
    record = report_results.as_record(res, {"profile": "quick", "seed": 0, "device": "cpu"})
    assert report_results.from_record("03_stylegan2", record) == res
    fields = {f.name for f in dataclasses.fields(report_results.Generator)}
    assert set(dataclasses.asdict(res)) == fields
    assert json.loads(json.dumps(record)) == record  # plain JSON: what save_results writes
    assert res.generator == "pretrained" and res.lafite_checkpoint is None and res.gan_steps == 0
    assert (res.align_steps, res.align_pixel, res.tune_steps, res.tune_pixel) == (0, 5.0, 10, 2.0)
    assert (res.n_train, res.n_test, res.resolution, res.generator_parameters) == (40, 12, 32, 1234)
    assert res.chance == {"two_way": 0.5} and res.opt_steps == 25 and res.encoder == "ridge_image"


def test_the_results_of_a_generator_trained_here_record_its_steps_seconds_and_monitor():
    monitor = [{"step": 100, "two_way": 0.8}]
    gen = _generation(kind="train", history={"seconds": 3.0, "monitor": monitor}, adversarial_seconds=3.0,
                      steps=400, align_history={"loss": [1.0]}, align_seconds=2.0, align_steps=300)  # fmt: skip
    res = _results(gen)
    assert (res.generator, res.gan_steps, res.align_steps, res.gan_monitor) == ("train", 400, 300, monitor)
    assert (res.gan_train_seconds, res.gan_adversarial_seconds, res.align_seconds) == (5.0, 3.0, 2.0)
    res = _results(_generation(kind="lafite_checkpoint", checkpoint="lafite.pkl"))
    assert (res.generator, res.lafite_checkpoint) == ("lafite_checkpoint", "lafite.pkl")


@pytest.mark.parametrize(
    ("name", "value"),
    [("encoder", "clip"), ("generator", "lafite"), ("combine", "add"), ("gan_resolution", 48)],
)
def test_a_bad_parameter_is_a_one_line_error_naming_it(name, value):
    given = dict(encoder="ridge_image", generator="pretrained", combine="both", gan_resolution=32) | {
        name: value
    }
    with pytest.raises(ValueError, match=f"^{name}={value!r}: expected") as e:
        stylegan2.check_parameters(**given)
    assert "\n" not in str(e.value)
    stylegan2.check_parameters(encoder="mlp_image", generator="train", combine="optimise", gan_resolution=0)


def test_the_checks_name_the_goal_a_score_missed():
    good = {"oracle": {"two_way": 0.95, "pixcorr": 0.5}, "predicted": {"two_way": 0.85, "pixcorr": 0.3}}
    stylegan2.check(good, min_oracle_two_way=0.9, min_predicted_two_way=0.8)
    with pytest.raises(stylegan2.CheckFailed, match="min_oracle_two_way 0.96"):
        stylegan2.check(good, min_oracle_two_way=0.96, min_predicted_two_way=0.8)
    with pytest.raises(stylegan2.CheckFailed, match="min_predicted_two_way 0.9"):
        stylegan2.check(good, min_oracle_two_way=0.9, min_predicted_two_way=0.9)
    bad = good | {"tuned": {"two_way": 0.9, "pixcorr": float("nan")}}
    with pytest.raises(stylegan2.CheckFailed, match="^scores of tuned: not finite"):
        stylegan2.check(bad, min_oracle_two_way=0.0, min_predicted_two_way=0.0)


# ------------------------------------------------------------------------------------------------------------
# the reconstruction steps against the calls they wrap, on a tiny generator and embedding model

TINY = dict(z_dim=8, w_dim=16, mapping_layers=2, channel_base=64, channel_max=16, fts_hidden=16, batch_size=8)


@pytest.fixture(scope="module")
def tiny_setup():
    emb = embedding.create("mini-rn16", image_size=32, device="cpu", seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    f = emb.embed_images(images)
    G, _ = gan.build(gan.GANConfig(**TINY), 32, f.shape[1])
    G = G.eval().requires_grad_(False)
    p = f + 0.1 * rng.standard_normal(f.shape).astype(np.float32)
    low = rng.uniform(0, 1, (len(f), 8, 8, 3)).astype(np.float32)
    inputs = SimpleNamespace(emb=emb, f_test=f, p_test=p, img_test=images, pred={"lowlevel": low})
    gen = _generation(G=G, view=gan.EmbeddingView(emb), ratio=1.0)
    tuned = SimpleNamespace(G=G)  # a copy would do as well: the steps only draw with it
    return inputs, gen, tuned


def test_the_reconstructions_equal_the_calls_they_wrap(tiny_setup):
    inputs, gen, tuned = tiny_setup
    opt = gan.OptConfig(steps=2)
    recon, hist = stylegan2.reconstruct(inputs, gen=gen, tuning=tuned, opt=opt, seed=3)
    assert list(recon) == ["oracle", "predicted", "tuned", "optimised"]
    np.testing.assert_array_equal(recon["oracle"], gan.generate(gen.G, inputs.f_test, 1.0, seed=3))
    np.testing.assert_array_equal(recon["tuned"], gan.generate(tuned.G, inputs.p_test, 1.0, seed=3))
    direct, _ = gan.optimise_latents(tuned.G, inputs.p_test, inputs.emb, steps=2, lr=opt.lr, ratio=1.0, seed=3,
                                     anchor=opt.anchor, noise_maps=False)  # fmt: skip
    np.testing.assert_array_equal(recon["optimised"], direct)
    settings = stylegan2.generation_settings(encoder="ridge_image", combine="impose", ratio=1.0, opt=opt)
    both = stylegan2.add_pathways(inputs, recon, tuning=tuned, settings=settings, seed=3)
    assert list(both) == [*recon, variants.SPATIAL, variants.COMBINED] and len(recon) == 4
    np.testing.assert_array_equal(both[variants.SPATIAL], lowlevel.upsample(inputs.pred["lowlevel"], 32))
    imposed = lowlevel.impose(recon["tuned"], inputs.pred["lowlevel"], opt.impose_strength)
    np.testing.assert_array_equal(both[variants.COMBINED], imposed)


def test_the_ratio_effect_is_the_two_way_of_each_ratio(tiny_setup):
    inputs, gen, _ = tiny_setup
    got = stylegan2.ratio_effect(inputs, gen=gen, ratios=[0.5, 1.0], seed=1)
    assert got["ratio"] == [0.5, 1.0]
    for i, r in enumerate([0.5, 1.0]):
        for name, f in (("oracle", inputs.f_test), ("predicted", inputs.p_test)):
            e = gan.embed_generated(gen.view, gan.generate(gen.G, f, r, seed=1))
            assert got[name][i] == metrics.two_way_identification(e, inputs.f_test)


def test_how_often_training_is_monitored_is_not_part_of_the_training_state():
    emb = embedding.create("mini-rn16", image_size=32, device="cpu", seed=0)
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    feats = emb.embed_images(images)
    keys = [gan.train_gan(images, feats, gan.GANConfig(steps=1, monitor_every=m, **TINY), emb, "cpu")[2]["state_key"]
            for m in (1, 100)]  # fmt: skip
    other = gan.train_gan(images, feats, gan.GANConfig(steps=1, save_every=7, **TINY), emb, "cpu")[2][
        "state_key"
    ]
    assert keys[0] == keys[1] != other
