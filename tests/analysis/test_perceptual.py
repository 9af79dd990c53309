"""Perceptual metrics: EfficientNet-Lite0's packaged weights classify real photographs, the feature nodes and scores
against direct computations, and the unavailable-weights path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import distance

from lib import metrics
from lib.analysis import perceptual


def _photo(name: str, size: int = 224) -> torch.Tensor:
    import skimage.data

    x = torch.as_tensor(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(perceptual.IMAGENET_MEAN).view(1, 3, 1, 1)
    return (x - mean) / torch.tensor(perceptual.IMAGENET_STD).view(1, 3, 1, 1)


def test_efficientnet_lite0_with_the_packaged_weights_recognises_a_cat_and_an_espresso():
    net = perceptual.FeatureNet("efficientnet_lite0", ["pool"], device="cpu")
    with torch.no_grad():
        cat = net.model(_photo("chelsea")).argmax().item()
        coffee = net.model(_photo("coffee")).argmax().item()
    assert cat in range(281, 286)  # ImageNet's domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian)
    assert coffee in (967, 968)  # espresso, cup


def test_folding_batch_norm_into_the_convolutions_keeps_the_features():
    torch.manual_seed(0)
    plain = perceptual.EfficientNetLite0().eval()
    for m in plain.modules():  # inference statistics and affine parameters away from the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    fused = perceptual.EfficientNetLite0().eval()
    fused.load_state_dict(plain.state_dict())
    fused.fuse_()
    x = _photo("chelsea", 96)
    with torch.no_grad():
        want, got = plain.pool(x), fused.pool(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert fused.fuse_() is fused  # a second call changes nothing
    torch.testing.assert_close(fused.pool(x), got)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    noisy = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    return base, noisy


def test_missing_weights_are_reported_unavailable_never_computed(tmp_path, images):
    base, noisy = images
    names = ["Alex(2)", "Alex(5)", "Incep", "EffNet-B", "SwAV"]
    table, unavailable = perceptual.evaluate({"a": noisy}, base, names, folder=tmp_path, low_level=False)
    assert table == {"a": dict.fromkeys(names)}
    assert set(unavailable) == set(names)
    assert "alexnet-owt-7be5be79.pth not found in " + str(tmp_path) in unavailable["Alex(2)"]
    assert perceptual.SWAV_FILE in unavailable["SwAV"]


def test_random_weight_scores_are_labelled_and_equal_a_direct_computation(images):
    base, noisy = images
    torch.manual_seed(3)
    table, unavailable = perceptual.evaluate({"noisy": noisy, "same": base}, base, ["Alex(2)", "Alex(5)"],
                                             device="cpu", random_weights=True)  # fmt: skip
    assert not unavailable
    assert set(table["noisy"]) == {"PixCorr", "SSIM", "Alex(2) [random weights]", "Alex(5) [random weights]"}
    assert table["same"]["Alex(2) [random weights]"] == 1.0
    # the same random network by hand: AlexNet's features up to the ReLU after conv 2 (index 4) and conv 5 (11)
    import torchvision

    torch.manual_seed(3)
    alex = torchvision.models.alexnet(weights=None).eval()

    def feats(x, upto):
        t = torch.as_tensor(x).permute(0, 3, 1, 2).float() / 255
        t = torch.nn.functional.interpolate(t, (256, 256), mode="bilinear", align_corners=False)
        t = (t - torch.tensor(perceptual.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
            perceptual.IMAGENET_STD
        ).view(1, 3, 1, 1)
        with torch.no_grad():
            return alex.features[: upto + 1](t).flatten(1).numpy()

    for label, upto in (("Alex(2)", 4), ("Alex(5)", 11)):
        expected = metrics.two_way_identification(feats(noisy, upto), feats(base, upto))
        assert table["noisy"][f"{label} [random weights]"] == pytest.approx(expected, abs=1e-9)
    assert table["noisy"]["PixCorr"] == pytest.approx(metrics.pixcorr(noisy, base))


def test_per_image_scores_are_what_each_value_averages(images):
    base, noisy = images
    torch.manual_seed(3)
    table, _, per = perceptual.evaluate({"noisy": noisy}, base, ["Alex(2)", "SwAV"], device="cpu",
                                        random_weights=True, per_image=True)  # fmt: skip
    assert set(per["noisy"]) == set(table["noisy"])
    for m, v in per["noisy"].items():
        assert v.shape == (len(base),) and table["noisy"][m] == pytest.approx(float(np.mean(v)), abs=1e-12)
    np.testing.assert_allclose(per["noisy"]["PixCorr"], metrics.pixcorr_per_image(noisy, base))


def test_correlation_distance_is_scipys():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 40)), rng.standard_normal((5, 40))
    expected = np.mean([distance.correlation(a[i], b[i]) for i in range(5)])
    assert perceptual.correlation_distance(a, b) == pytest.approx(expected, abs=1e-12)


def test_bad_input_names_the_variant_or_the_metric(images):
    base, noisy = images
    with pytest.raises(perceptual.PerceptualError, match="variant 'small'"):
        perceptual.evaluate({"small": noisy[:3]}, base, [])
    with pytest.raises(perceptual.PerceptualError, match="Alex9"):
        perceptual.evaluate({"a": noisy}, base, ["Alex9"])


def test_a_swav_style_checkpoint_loads_its_trunk_and_skips_its_heads(tmp_path):
    """A DataParallel ResNet-50 state with SwAV's projection head and prototypes: the trunk's weights are used."""
    import torchvision

    torch.manual_seed(5)
    trunk = torchvision.models.resnet50(weights=None).state_dict()
    state = {f"module.{k}": v for k, v in trunk.items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(2048, 2048)
    state["module.prototypes.weight"] = torch.zeros(3000, 128)
    torch.save(state, tmp_path / perceptual.SWAV_FILE)
    net = perceptual.FeatureNet("swav_resnet50", ["avgpool"], folder=tmp_path, device="cpu")
    torch.testing.assert_close(net.model.conv1.weight, trunk["conv1.weight"])
    torch.save({"module.conv1.weight": trunk["conv1.weight"]}, tmp_path / perceptual.SWAV_FILE)
    with pytest.raises(perceptual.PerceptualError, match="not a SwAV ResNet-50"):
        perceptual.FeatureNet("swav_resnet50", ["avgpool"], folder=tmp_path, device="cpu")
