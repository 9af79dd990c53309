"""StyleGAN2 / LAFITE: resampling ops against SciPy, the modulated convolution against a per-sample fused form,
parameter names, the snapshot loader on a pickle written here in stylegan2-ada's persistent-object format, and
the one-line error for a generator file whose init_kwargs were edited."""

from __future__ import annotations

import collections
import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from lib.models import stylegan2 as sg
from tests.conftest import one_line


def _small_g(f_dim=16, res=16, seed=0):
    torch.manual_seed(seed)
    return sg.Generator(z_dim=8, w_dim=8, img_resolution=res, mapping_kwargs={"num_layers": 2},
                        synthesis_kwargs={"channel_base": 128, "channel_max": 16, "f_dim": f_dim,
                                          "fts_hidden": 12})  # fmt: skip


def _scipy_upfirdn2d(x, taps, up, down):
    """Separable upfirdn with SciPy (full convolution), rows then columns."""
    h = np.asarray(taps, float) / np.sum(taps)
    y = np.apply_along_axis(lambda r: scipy.signal.upfirdn(h, r, up, down), -1, x)
    return np.apply_along_axis(lambda c: scipy.signal.upfirdn(h, c, up, down), -2, y)


@pytest.mark.parametrize("up,down", [(2, 1), (1, 2), (1, 1)])
def test_upfirdn2d_equals_scipy(up, down):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 7, 9))
    f = sg.setup_filter()
    # scipy: upsampled length (n-1)*up+1 (no trailing zeros), full convolution; ours pads explicitly
    p0, p1 = 3, 3 - (up - 1)
    ours = sg.upfirdn2d(torch.as_tensor(x), f.double(), up=up, down=down, pad=(p0, p1, p0, p1))
    want = _scipy_upfirdn2d(x, [1, 3, 3, 1], up, down)
    np.testing.assert_allclose(ours.numpy(), want, atol=1e-12)


def test_upsample_keeps_a_constant_image_constant_inside():
    x = torch.full((1, 1, 6, 6), 2.5)
    y = sg.upsample2d(x, sg.setup_filter())
    assert y.shape[-2:] == (12, 12)
    np.testing.assert_allclose(y[0, 0, 2:-2, 2:-2].numpy(), 2.5, rtol=1e-6)


@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv_equals_per_sample_weights(up):
    torch.manual_seed(0)
    x, weight, styles = torch.randn(3, 4, 5, 5), torch.randn(6, 4, 3, 3), torch.randn(3, 4)
    f = sg.setup_filter()
    ours = sg.modulated_conv2d(x, weight, styles, up=up, padding=1, resample_filter=f)
    for i in range(3):  # the fused form: one demodulated weight per sample
        w = weight * styles[i].reshape(1, -1, 1, 1)
        w = w * (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).rsqrt()
        if up == 1:
            want = F.conv2d(x[i : i + 1], w, padding=1)
        else:  # zero-insert x2, pad, true convolution = correlation with the flipped kernel, then the blur
            z = torch.zeros(1, 4, 10, 10)
            z[:, :, ::2, ::2] = x[i : i + 1]
            want = F.conv2d(F.pad(z, [2, 2, 2, 2]), w.flip([2, 3]))
            want = sg.upfirdn2d(want, f, pad=(1, 1, 1, 1), gain=4)[:, :, :, :]
            want = want[:, :, : ours.shape[2], : ours.shape[3]]
        torch.testing.assert_close(ours[i : i + 1], want, rtol=1e-5, atol=1e-5)


def test_generator_names_shapes_and_output():
    G = _small_g()
    names = dict(G.named_parameters()) | dict(G.named_buffers())
    for key in ("mapping.fc0.weight", "mapping.fc1.bias", "mapping.w_avg", "synthesis.b4.const",
                "synthesis.b4.conv1.pre_0.weight", "synthesis.b4.conv1.pre_1.weight",
                "synthesis.b4.conv1.affine_0.weight", "synthesis.b8.conv0.noise_const",
                "synthesis.b8.conv0.noise_strength", "synthesis.b16.torgb.affine_0.bias",
                "synthesis.b16.resample_filter"):  # fmt: skip
        assert key in names, key
    assert not any(k.endswith(".affine.weight") for k in names)  # LAFITE's structure 2 has no plain affine
    assert names["synthesis.b8.conv0.affine_0.weight"].shape == (16, 8 + 12)  # cat([pre(fts), w])
    assert names["synthesis.b8.conv0.pre_0.weight"].shape == ((16 + 12) // 2, 16)
    assert G.num_ws == 2 * 3 - 1 + 1
    z, fts = torch.randn(4, 8), F.normalize(torch.randn(4, 16), dim=-1)
    img = G(z, fts=fts, noise_mode="const")
    assert img.shape == (4, 3, 16, 16) and torch.isfinite(img).all()
    assert not torch.allclose(img, G(z, fts=F.normalize(torch.randn(4, 16), dim=-1), noise_mode="const"))
    plain = sg.Generator(
        z_dim=8, w_dim=8, img_resolution=8, synthesis_kwargs={"channel_base": 64, "channel_max": 8}
    )
    assert "synthesis.b4.conv1.affine.weight" in dict(
        plain.named_parameters()
    )  # stylegan2-ada, unconditional


def test_discriminator_names_and_projection():
    torch.manual_seed(0)
    D = sg.Discriminator(img_resolution=16, channel_base=128, channel_max=16, f_dim=10)
    names = dict(D.named_parameters())
    for key in ("b16.fromrgb.weight", "b16.conv0.weight", "b16.conv1.weight", "b16.skip.weight", "b8.skip.weight",
                "b4.conv.weight", "b4.fc.weight", "b4.out.weight", "b4.fts.weight"):  # fmt: skip
        assert key in names, key
    assert "b8.fromrgb.weight" not in names and names["b4.conv.weight"].shape[1] == 16 + 1  # mbstd channel
    img, fts = torch.randn(4, 3, 16, 16), F.normalize(torch.randn(4, 10), dim=-1)
    logit, d_fts = D(img, fts)
    bare, _ = D(img, None)
    torch.testing.assert_close(logit - bare, (d_fts * fts).sum(1, keepdim=True))  # per-sample projection
    torch.testing.assert_close(d_fts.norm(dim=1), torch.ones(4))


def test_own_checkpoint_roundtrip(tmp_path):
    G = _small_g()
    path = sg.save_generator(tmp_path / "g.pt", G, {"note": "test"})
    H = sg.load_generator(path)
    z, fts = torch.randn(2, 8), F.normalize(torch.randn(2, 16), dim=-1)
    torch.testing.assert_close(H(z, fts=fts, noise_mode="const"), G.eval()(z, fts=fts, noise_mode="const"))
    with pytest.raises(sg.StyleGANError, match="no such"):
        sg.load_generator(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------------------------
# a snapshot in stylegan2-ada's persistent-object pickle format, written by stand-in modules registered only
# while pickling (the loader must not need them, and must not run the embedded source)


@pytest.fixture
def persistent_format(monkeypatch):
    tu, pers = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    dn, util = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(
        meta,
    ):  # what stylegan2-ada's loader would call (it would exec module_src)
        raise AssertionError("the original reconstruction must never be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    util.EasyDict = EasyDict
    for name, mod in [
        ("torch_utils", tu),
        ("torch_utils.persistence", pers),
        ("dnnlib", dn),
        ("dnnlib.util", util),
    ]:
        monkeypatch.setitem(sys.modules, name, mod)

    class Snap:
        def __init__(self, module, init_kwargs=None):
            self.module, self.init_kwargs = module, init_kwargs

        def __reduce__(self):
            m = self.module
            state = {k: v for k, v in vars(m).items()
                     if isinstance(v, (int, float, str, np.floating, type(None), list))}  # fmt: skip
            state.update(
                _parameters=collections.OrderedDict(m._parameters),
                _buffers=collections.OrderedDict(m._buffers),
                _non_persistent_buffers_set=set(),
                _modules=collections.OrderedDict((k, Snap(c)) for k, c in m._modules.items()),
                _init_kwargs=EasyDict(self.init_kwargs or {}),
            )
            meta = dict(type="class", version=4, class_name=type(m).__name__, state=state,
                        module_src="import os\nos.system('touch EXECUTED')\n")  # fmt: skip
            return (_reconstruct_persistent_obj, (meta,))

    def write(path, G, D):
        kw = EasyDict(G.init_kwargs)
        kw["mapping_kwargs"] = EasyDict(kw["mapping_kwargs"])
        snap = {"G": Snap(G, kw), "D": Snap(D, EasyDict(D.init_kwargs)), "G_ema": Snap(G, kw),
                "training_set_kwargs": EasyDict(resolution=16), "augment_pipe": None}  # fmt: skip
        with open(path, "wb") as fh:
            pickle.dump(snap, fh)

    return write


def test_lafite_snapshot_loads_and_reproduces_the_generator(tmp_path, persistent_format, monkeypatch):
    G = _small_g().eval()
    D = sg.Discriminator(img_resolution=16, channel_base=128, channel_max=16, f_dim=16)
    path = tmp_path / "network-snapshot.pkl"
    persistent_format(path, G, D)
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        monkeypatch.delitem(sys.modules, name)  # loading must not need them
    monkeypatch.chdir(tmp_path)
    H = sg.load_lafite(path)
    assert not (tmp_path / "EXECUTED").exists()
    assert H.f_dim == 16 and H.img_resolution == 16 and not H.training
    z, fts = torch.randn(3, 8), F.normalize(torch.randn(3, 16), dim=-1)
    assert torch.equal(H(z, fts=fts, noise_mode="const"), G(z, fts=fts, noise_mode="const"))
    with pytest.raises(sg.StyleGANError, match="no network 'G_missing'"):
        sg.load_lafite(path, key="G_missing")


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("fn,arg,name", [
    (os.system, "touch PWNED", "system"),
    (eval, "__import__('pathlib').Path('PWNED').touch()", "builtins.eval"),
])  # fmt: skip
def test_a_pickle_calling_code_is_refused_and_nothing_runs(tmp_path, monkeypatch, fn, arg, name):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Evil(fn, arg)}))
    with pytest.raises(sg.StyleGANError, match=rf"refused to load global .*{name}"):
        sg.load_lafite(path)
    assert not (tmp_path / "PWNED").exists()


def test_snapshot_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(sg.StyleGANError, match="bad.pkl"):
        sg.load_lafite(bad)
    with pytest.raises(sg.StyleGANError, match="no such snapshot"):
        sg.load_lafite(tmp_path / "none.pkl")


@pytest.mark.parametrize("base, millions", [(32768, 45.0), (16384, 39.1)])
def test_lafite_256px_configuration_matches_the_shared_table(base, millions):
    # LAFITE's COCO generator: 256 px, z = w = 512, 8 mapping layers, 512-d CLIP condition (../shared/docs table);
    # built on the meta device: shapes without memory
    with torch.device("meta"):
        G = sg.Generator(z_dim=512, w_dim=512, img_resolution=256, mapping_kwargs={"num_layers": 8},
                         synthesis_kwargs={"channel_base": base, "channel_max": 512, "f_dim": 512})  # fmt: skip
    shapes = {k: tuple(v.shape) for k, v in [*G.named_parameters(), *G.named_buffers()]}
    assert sum(p.numel() for p in G.parameters()) / 1e6 == pytest.approx(millions, abs=0.05)
    assert G.num_ws == 14
    assert shapes["synthesis.b8.conv0.pre_0.weight"] == (512, 512)
    assert shapes["synthesis.b8.conv0.pre_1.weight"] == (512, 512)
    assert shapes["synthesis.b8.conv0.affine_0.weight"] == (512, 1024)
    assert shapes["synthesis.b4.const"] == (512, 4, 4) and shapes["synthesis.b256.conv0.noise_const"] == (
        256,
        256,
    )
    assert shapes["synthesis.b256.torgb.weight"] == (3, min(base // 256, 512), 1, 1)
    assert shapes["mapping.fc7.weight"] == (512, 512) and shapes["mapping.w_avg"] == (512,)
    assert shapes["synthesis.b64.resample_filter"] == (4, 4)
    assert not any(k.endswith(".affine.weight") for k in shapes)  # structure 2: affine_0 only


def test_equalised_learning_rate_identities():
    torch.manual_seed(0)
    fc = sg.FullyConnectedLayer(400, 300, lr_multiplier=0.01, bias_init=1.0)
    # stored as randn / lr_multiplier; at run time weight * lr / sqrt(in) and bias * lr
    assert float(fc.weight.detach().std()) == pytest.approx(100.0, rel=0.02)
    x = torch.randn(5, 400)
    want = x @ (fc.weight * 0.01 / 20).T + 0.01 * fc.bias
    torch.testing.assert_close(fc(x), want, rtol=1e-5, atol=1e-5)
    conv = sg.Conv2dLayer(6, 4, 3, activation="lrelu")
    xi = torch.randn(2, 6, 8, 8)
    want = F.leaky_relu(F.conv2d(xi, conv.weight / np.sqrt(6 * 9), conv.bias, padding=1), 0.2) * np.sqrt(2)
    torch.testing.assert_close(conv(xi), want, rtol=1e-5, atol=1e-5)


def test_demodulation_normalises_each_output_channel_and_ignores_the_style_scale():
    torch.manual_seed(0)
    x, weight, styles = torch.randn(2, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(2, 4)
    f = sg.setup_filter()
    out = sg.modulated_conv2d(x, weight, styles, padding=1, resample_filter=f)
    # a per-sample scale of the styles cancels in the demodulation
    scaled = sg.modulated_conv2d(
        x, weight, styles * torch.tensor([[3.0], [0.2]]), padding=1, resample_filter=f
    )
    torch.testing.assert_close(out, scaled, rtol=1e-4, atol=1e-5)
    # on unit white noise each output channel then has unit variance in expectation (weights of unit norm)
    noise = torch.randn(2, 4, 96, 96)
    var = sg.modulated_conv2d(noise, weight, styles, padding=1, resample_filter=f)[..., 1:-1, 1:-1].var(
        dim=[2, 3]
    )
    torch.testing.assert_close(var, torch.ones(2, 5), rtol=0.1, atol=0.1)


def test_a_generator_file_with_edited_kwargs_is_one_line(tmp_path):
    import torch

    from lib.models import stylegan2 as sg

    G = sg.Generator(z_dim=8, w_dim=8, img_resolution=8, mapping_kwargs={"num_layers": 1},
                     synthesis_kwargs={"channel_base": 64, "channel_max": 16, "f_dim": 4})  # fmt: skip
    path = tmp_path / "g.pt"

    def edited(edit):
        sg.save_generator(path, G)
        blob = torch.load(path, weights_only=True)
        edit(blob)
        torch.save(blob, path)
        with pytest.raises(sg.StyleGANError) as e:
            sg.load_generator(path)
        return one_line(e)

    assert edited(lambda b: b["init_kwargs"].update(w_dim=16)) == (
        f"{path}: weights do not fit its init_kwargs: synthesis.b4.conv1.affine_0.weight is (16, 520) in the file, "
        "(16, 528) for these init_kwargs; expected the file as save_generator wrote it"
    )
    assert "build no generator (Generator.__init__() got an unexpected keyword argument 'foo')" in edited(
        lambda b: b["init_kwargs"].update(foo=1)
    )
    assert "build no generator (img_resolution=12: expected a power of two >= 4)" in edited(
        lambda b: b["init_kwargs"].update(img_resolution=12)
    )
    assert edited(lambda b: b.pop("state_dict")).endswith("expected 'init_kwargs' and 'state_dict' dictionaries in "
                                                          f"a {sg.GENERATOR_FORMAT} file")  # fmt: skip
    sd = next(iter(G.state_dict()))
    assert edited(lambda b: b["state_dict"].pop(sd)).endswith(f"1 missing (e.g. {sd}); expected the file as "
                                                             "save_generator wrote it")  # fmt: skip
