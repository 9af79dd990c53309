"""A compact, pure-PyTorch StyleGAN2 with LAFITE's CLIP conditioning, and a loader for LAFITE / stylegan2-ada
snapshots that runs no code from the file.

Parameter and buffer names, initialisation, equalised learning rate, resampling filters, modulation and
demodulation follow stylegan2-ada-pytorch and LAFITE (facts in ``../shared/docs/stylegan2_lafite.md``), so their
``G_ema`` weights load with ``strict=True``:

- :class:`Generator`: ``mapping`` (``fc0..fc{N-1}``, ``w_avg``) and ``synthesis`` (``b4..b{R}``, 'skip'
  architecture). With ``f_dim > 0`` every SynthesisLayer and ToRGBLayer takes the L2-normalised condition
  vector ``fts`` through its own ``pre_0`` -> ``pre_1`` and ``affine_0(cat([pre(fts), w]))`` (LAFITE's
  'structure 2'); with ``f_dim = 0`` it is stylegan2-ada's unconditional generator (``affine(w)``).
- :class:`Discriminator`: resnet blocks ``b{R}..b8`` and the epilogue ``b4`` with minibatch standard deviation;
  with ``f_dim > 0`` the epilogue's ``fts`` layer projects its features into the condition space, and the logit
  adds their dot product with the condition (per sample; LAFITE sums it over the batch).
- :func:`load_lafite`: reads a ``.pkl`` snapshot with an allow-list unpickler (nothing imported or executed
  from it) and returns our generator with its ``G_ema`` weights.
- :func:`save_generator` / :func:`load_generator`: our own checkpoints, a torch file read with
  ``weights_only=True``.

The modulated convolution runs unfused (scale the activations, one shared convolution, demodulate), which equals
the fused grouped convolution and is several times faster on CPU.
"""

from __future__ import annotations

import collections
import io as _io
import json
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib import fileio

GENERATOR_FORMAT = "lib.stylegan2.generator/1"


class StyleGANError(ValueError):
    """Bad input to the generator code: parameters, checkpoint files, refused pickle contents."""


# ================================================================================================================
# resampling and activation (pure PyTorch forms of NVIDIA's upfirdn2d, conv2d_resample and bias_act)


def setup_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The separable low-pass filter as a normalised 2-D kernel (outer product / sum)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0, 0, 0),
              gain: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Upsample by zero insertion, pad (x0, x1, y0, y1; negative crops), convolve with ``f`` (times ``gain``),
    keep every ``down``-th sample: NVIDIA's upfirdn2d for a 2-D filter."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    px0, px1, py0, py1 = pad
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    k = (f * gain).to(x.dtype).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, k, groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """x2 upsampling with the low-pass filter (the skip generator's image path)."""
    fw = f.shape[-1]
    p0, p1 = (fw + 1) // 2, (fw - 2) // 2
    return upfirdn2d(x, f, up=2, pad=(p0, p1, p0, p1), gain=4)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
                    padding: int = 0) -> torch.Tensor:  # fmt: skip
    """Convolution (correlation, like ``F.conv2d``) with optional x2 up- or downsampling through ``f``, equal to
    NVIDIA's conv2d_resample for the cases StyleGAN2 uses."""
    k = w.shape[-1]
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding)
    fw = f.shape[-1]
    if up == 2 and down == 1:
        p0 = padding + (fw + 1) // 2 - (k - 1)
        p1 = padding + (fw - 2) // 2 - (k - 2)
        if k == 1:
            raise StyleGANError("conv2d_resample: a 1x1 convolution with x2 upsampling is not supported")
        x = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
        return upfirdn2d(x, f, pad=(p0, p1, p0, p1), gain=4)
    if down == 2 and up == 1:
        p0 = padding + (fw - 1) // 2
        p1 = padding + (fw - 2) // 2
        if k == 1:
            return F.conv2d(upfirdn2d(x, f, down=2, pad=(p0, p1, p0, p1)), w)
        return F.conv2d(upfirdn2d(x, f, pad=(p0, p1, p0, p1)), w, stride=2)
    raise StyleGANError(f"conv2d_resample: up={up}, down={down} not supported (x2 up or down only)")


_SQRT2 = float(np.sqrt(2))


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:  # fmt: skip
    """Add the bias (over dim 1), activate, multiply by ``gain`` (default: the activation's sqrt(2) or 1), clamp."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        default = _SQRT2
    elif act == "relu":
        x = F.relu(x)
        default = _SQRT2
    elif act == "linear":
        default = 1.0
    else:
        raise StyleGANError(f"activation={act!r}: expected 'lrelu', 'relu' or 'linear'")
    g = default if gain is None else gain
    if g != 1:
        x = x * g
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True) -> torch.Tensor:  # fmt: skip
    """StyleGAN2's modulated convolution, unfused: x * styles, one convolution with the shared weight, then the
    demodulation coefficients rsqrt(sum((weight * styles)^2) + 1e-8) per sample and output channel, then noise.
    The coefficients come from one product, styles^2 @ sum_k(weight^2)^T, never the (N, out, in, k, k) tensor of
    per-sample weights: the same sum, several times cheaper on CPU (forward and backward)."""
    n = x.shape[0]
    x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
    x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, padding=padding)
    if demodulate:
        d = (styles.square() @ weight.square().sum(dim=[2, 3]).T + 1e-8).rsqrt()
        x = x * d.to(x.dtype).reshape(n, -1, 1, 1)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# ================================================================================================================
# layers


class FullyConnectedLayer(torch.nn.Module):
    """Equalised-learning-rate linear layer: weight stored as randn / lr_multiplier, scaled at run time."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):  # fmt: skip
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, conv_clamp: float | None = None):  # fmt: skip
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size**2)
        self.act_gain = _SQRT2 if activation in ("lrelu", "relu") else 1.0
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        x = conv2d_resample(x, w.to(x.dtype), self.resample_filter, self.up, self.down, self.padding)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        b = None if self.bias is None else self.bias.to(x.dtype)
        return bias_act(x, b, self.activation, self.act_gain * gain, clamp)


class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None, activation: str = "lrelu",
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):  # fmt: skip
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        sizes = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            layer = FullyConnectedLayer(
                sizes[i], sizes[i + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{i}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                skip_w_avg_update: bool = False) -> torch.Tensor:  # fmt: skip
        x = normalize_2nd_moment(z.float()) if self.z_dim > 0 else None
        if self.c_dim > 0:
            y = normalize_2nd_moment(self.embed(c.float()))
            x = y if x is None else torch.cat([x, y], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class _Styles(torch.nn.Module):
    """The style of one layer: ``affine(w)`` (stylegan2-ada) or LAFITE's
    ``affine_0(cat([pre_1(pre_0(fts)), w]))`` when ``f_dim > 0``."""

    def _init_styles(self, w_dim: int, in_channels: int, f_dim: int, fts_hidden: int) -> None:
        self.f_dim = f_dim
        if f_dim > 0:
            mid = (f_dim + fts_hidden) // 2
            self.pre_0 = FullyConnectedLayer(f_dim, mid, activation="lrelu", lr_multiplier=0.01)
            self.pre_1 = FullyConnectedLayer(mid, fts_hidden, activation="lrelu", lr_multiplier=0.01)
            self.affine_0 = FullyConnectedLayer(w_dim + fts_hidden, in_channels, bias_init=1)
        else:
            self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)

    def styles(self, w: torch.Tensor, fts: torch.Tensor | None) -> torch.Tensor:
        if self.f_dim > 0:
            return self.affine_0(torch.cat([self.pre_1(self.pre_0(fts)), w], dim=-1))
        return self.affine(w)


class SynthesisLayer(_Styles):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 use_noise: bool = True, conv_clamp: float | None = None, f_dim: int = 0,
                 fts_hidden: int = 512):  # fmt: skip
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.register_buffer("resample_filter", setup_filter())
        self.padding = 1
        self._init_styles(w_dim, in_channels, f_dim, fts_hidden)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fts: torch.Tensor | None, noise_mode: str = "random",
                noise: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """``noise``: explicit (N or 1, 1, res, res) noise maps (the projector's), else per ``noise_mode``."""
        styles = self.styles(w, fts)
        add = None
        if self.use_noise:
            if noise is not None:
                add = noise * self.noise_strength
            elif noise_mode == "random":
                add = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
                add = add * self.noise_strength
            elif noise_mode == "const":
                add = self.noise_const * self.noise_strength
        # NHWC: the convolutions about 1.3x faster on CPU (forward and backward), the same outputs to rounding
        x = x.contiguous(memory_format=torch.channels_last)
        x = modulated_conv2d(x, self.weight, styles, add, self.up, self.padding, self.resample_filter)
        clamp = self.conv_clamp
        return bias_act(x, self.bias.to(x.dtype), "lrelu", _SQRT2, clamp)


class ToRGBLayer(_Styles):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None,
                 f_dim: int = 0, fts_hidden: int = 512):  # fmt: skip
        super().__init__()
        self.conv_clamp = conv_clamp
        self._init_styles(w_dim, in_channels, f_dim, fts_hidden)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fts: torch.Tensor | None) -> torch.Tensor:
        styles = self.styles(w, fts) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, conv_clamp: float | None = None, f_dim: int = 0, fts_hidden: int = 512):  # fmt: skip
        super().__init__()
        self.in_channels, self.resolution, self.is_last = in_channels, resolution, is_last
        self.register_buffer("resample_filter", setup_filter())
        kw = dict(conv_clamp=conv_clamp, f_dim=f_dim, fts_hidden=fts_hidden)
        self.num_conv = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, **kw)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, **kw)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, **kw)  # 'skip' architecture: every block
        self.num_torgb = 1

    def layers(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]

    def forward(self, x, img, ws, fts, noise_mode="random", noises=None):
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        noises = noises or [None] * self.num_conv
        for layer, noise in zip(self.layers(), noises, strict=True):
            x = layer(x, next(w_iter), fts, noise_mode, noise)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fts).float()
        return x, (y if img is None else img + y)


class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int = 3, channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: float | None = None, f_dim: int = 0,
                 fts_hidden: int = 512):  # fmt: skip
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise StyleGANError(f"img_resolution={img_resolution}: expected a power of two >= 4")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, int(np.log2(img_resolution)) + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, img_channels,
                                   r == img_resolution, conv_clamp, f_dim, fts_hidden)  # fmt: skip
            self.num_ws += block.num_conv
            setattr(self, f"b{r}", block)
        self.num_ws += 1  # the last block's ToRGB

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{r}") for r in self.block_resolutions]

    def noise_layers(self) -> list[SynthesisLayer]:
        return [layer for b in self.blocks() for layer in b.layers()]

    def forward(self, ws, fts=None, noise_mode="random", noises=None):
        """``noises``: one map per SynthesisLayer in :meth:`noise_layers` order (the projector's), or None."""
        ws = ws.float()
        x = img = None
        w_idx, n_idx = 0, 0
        for block in self.blocks():
            cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            nz = None if noises is None else noises[n_idx : n_idx + block.num_conv]
            x, img = block(x, img, cur, fts, noise_mode, nz)
            w_idx += block.num_conv
            n_idx += block.num_conv
        return img


class Generator(torch.nn.Module):
    """z (and the condition ``fts``) -> image in [-1, 1], (N, 3, R, R). Keyword arguments as stylegan2-ada's
    Generator: ``mapping_kwargs`` (num_layers, lr_multiplier, ...), ``synthesis_kwargs`` (channel_base,
    channel_max, conv_clamp, f_dim, fts_hidden)."""

    def __init__(self, z_dim: int = 512, c_dim: int = 0, w_dim: int = 512, img_resolution: int = 256,
                 img_channels: int = 3, mapping_kwargs: dict | None = None,
                 synthesis_kwargs: dict | None = None):  # fmt: skip
        super().__init__()
        mapping_kwargs, synthesis_kwargs = dict(mapping_kwargs or {}), dict(synthesis_kwargs or {})
        self.init_kwargs = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                                synthesis_kwargs=synthesis_kwargs)  # fmt: skip
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.f_dim = int(synthesis_kwargs.get("f_dim", 0))
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mapping_kwargs)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, fts: torch.Tensor | None = None,
                truncation_psi: float = 1.0, noise_mode: str = "random", ws: torch.Tensor | None = None,
                noises: list | None = None) -> torch.Tensor:  # fmt: skip
        """``fts``: the L2-normalised condition (N, f_dim); None draws a random unit vector, as LAFITE does.
        ``ws`` (N, num_ws, w_dim) skips the mapping network."""
        if ws is None:
            ws = self.mapping(z, c, truncation_psi=truncation_psi)
        if self.f_dim > 0 and fts is None:
            fts = F.normalize(torch.randn(ws.shape[0], self.f_dim, device=ws.device), dim=-1)
        return self.synthesis(ws, fts, noise_mode=noise_mode, noises=noises)


# ================================================================================================================
# discriminator


class DiscriminatorBlock(torch.nn.Module):
    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int,
                 img_channels: int, conv_clamp: float | None = None):  # fmt: skip
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.register_buffer("resample_filter", setup_filter())
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(
                img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp
            )
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp
        )
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=np.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=np.sqrt(0.5))
        return y + x


class MinibatchStdLayer(torch.nn.Module):
    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise StyleGANError(f"minibatch of {n}: expected a multiple of the mbstd group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(torch.nn.Module):
    def __init__(self, in_channels: int, resolution: int = 4, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, conv_clamp: float | None = None, f_dim: int = 0):  # fmt: skip
        super().__init__()
        self.mbstd = (
            MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        )
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)  # fmt: skip
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        if f_dim > 0:
            self.fts = FullyConnectedLayer(in_channels, f_dim)
        self.out = FullyConnectedLayer(in_channels, 1)
        self.f_dim = f_dim

    def forward(self, x: torch.Tensor, fts: torch.Tensor | None):
        if self.mbstd is not None:
            x = self.mbstd(x)
        h = self.fc(self.conv(x).flatten(1))
        logit = self.out(h)
        d_fts = None
        if self.f_dim > 0:
            d_fts = F.normalize(self.fts(h), dim=-1)
            if fts is not None:
                logit = logit + (d_fts * fts).sum(dim=1, keepdim=True)
        return logit, d_fts


class Discriminator(torch.nn.Module):
    """image (N, 3, R, R) in [-1, 1] (and the condition) -> (logit (N, 1), normalised features (N, f_dim) or
    None)."""

    def __init__(self, c_dim: int = 0, img_resolution: int = 256, img_channels: int = 3,
                 channel_base: int = 32768, channel_max: int = 512, conv_clamp: float | None = None,
                 mbstd_group_size: int = 4, mbstd_num_channels: int = 1, f_dim: int = 0):  # fmt: skip
        super().__init__()
        if c_dim:
            raise StyleGANError(
                f"c_dim={c_dim}: class labels are not supported (LAFITE conditions through fts)"
            )
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels,
                                channel_base=channel_base, channel_max=channel_max, conv_clamp=conv_clamp,
                                mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels,
                                f_dim=f_dim)  # fmt: skip
        self.block_resolutions = [2**i for i in range(int(np.log2(img_resolution)), 2, -1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
        for r in self.block_resolutions:
            in_ch = ch[r] if r < img_resolution else 0
            setattr(self, f"b{r}", DiscriminatorBlock(in_ch, ch[r], ch[r // 2], r, img_channels, conv_clamp))
        self.b4 = DiscriminatorEpilogue(ch[4], 4, mbstd_group_size, mbstd_num_channels, conv_clamp, f_dim)

    def forward(self, img: torch.Tensor, fts: torch.Tensor | None = None):
        x, img = None, img.contiguous(memory_format=torch.channels_last)  # NHWC, as the synthesis layers
        for r in self.block_resolutions:
            x = getattr(self, f"b{r}")(x, img)
        return self.b4(x, fts)


# ================================================================================================================
# images


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Generator output (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), as stylegan2-ada writes images."""
    x = (img.detach().float().permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.cpu().numpy()


def from_uint8(images: np.ndarray | torch.Tensor, device=None) -> torch.Tensor:
    """uint8 (N, H, W, 3), an array or a tensor -> float (N, 3, H, W) in [-1, 1], on ``device`` (default: a
    tensor's own device, else CPU)."""
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    x = x.to(device) if device is not None else x
    if x.dim() != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise StyleGANError(f"images: expected uint8 (N, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1


# ================================================================================================================
# our checkpoints


def save_generator(path: str | Path, G: Generator, meta: dict | None = None, half: bool = False) -> Path:
    """The generator's configuration and weights as a torch file readable with ``weights_only=True``, or with a
    ``.safetensors`` suffix as safetensors (configuration in its header; ``half``: float16 weights)."""
    if Path(path).suffix == ".safetensors":
        header = {"format": GENERATOR_FORMAT, "init_kwargs": json.dumps(G.init_kwargs),
                  "meta": json.dumps(dict(meta or {}))}  # fmt: skip
        return fileio.write_bytes(path, fileio.safetensors_bytes(G.state_dict(), header, half))
    state = {k: v.detach().cpu() for k, v in G.state_dict().items()}
    if half:
        state = fileio.cast_floats(state, torch.float16)
    blob = {
        "format": GENERATOR_FORMAT,
        "init_kwargs": G.init_kwargs,
        "meta": dict(meta or {}),
        "state_dict": state,
    }
    return fileio.write_bytes(path, fileio.torch_bytes(blob))


def _read_safetensors(path: Path) -> dict:
    state, meta = fileio.read_safetensors(path, StyleGANError)
    if meta.get("format") != GENERATOR_FORMAT:
        return {}
    return {"format": GENERATOR_FORMAT, "init_kwargs": json.loads(meta["init_kwargs"]),
            "meta": json.loads(meta.get("meta", "{}")), "state_dict": state}  # fmt: skip


def load_generator(path: str | Path, device: str = "cpu") -> Generator:
    """A generator written by :func:`save_generator` (read with ``weights_only=True``), in eval mode; the ``meta``
    given there is the attribute ``meta``."""
    path = Path(path)
    if not path.is_file():
        raise StyleGANError(f"{path}: no such generator checkpoint")
    if path.suffix == ".safetensors":
        blob = _read_safetensors(path)
    else:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise StyleGANError(f"{path}: not a generator checkpoint ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != GENERATOR_FORMAT:
        raise StyleGANError(f"{path}: not a {GENERATOR_FORMAT} file (a LAFITE .pkl: use load_lafite)")
    kwargs, state = blob.get("init_kwargs"), blob.get("state_dict")
    if not isinstance(kwargs, dict) or not isinstance(state, dict):
        raise StyleGANError(
            f"{path}: expected 'init_kwargs' and 'state_dict' dictionaries in a {GENERATOR_FORMAT} file"
        )
    try:
        G = Generator(**kwargs)
    except (TypeError, ValueError) as e:  # StyleGANError is a ValueError: message already names the value
        raise StyleGANError(
            f"{path}: init_kwargs {kwargs} build no generator ({str(e).splitlines()[0]})"
        ) from None
    mine = G.state_dict()
    missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    wrong = [k for k in mine if k in state and tuple(state[k].shape) != tuple(mine[k].shape)]
    if missing or extra or wrong:
        k = (wrong or missing or extra)[0]
        what = (f"{k} is {tuple(state[k].shape)} in the file, {tuple(mine[k].shape)} for these init_kwargs" if wrong
                else f"{len(missing)} missing (e.g. {k})" if missing else f"{len(extra)} unexpected (e.g. {k})")  # fmt: skip
        raise StyleGANError(f"{path}: weights do not fit its init_kwargs: {what}; expected the file as "
                            "save_generator wrote it")  # fmt: skip
    G.load_state_dict(fileio.cast_floats(state, torch.float32))
    G.meta = dict(blob.get("meta") or {})
    return G.to(device).eval().requires_grad_(False)


# ================================================================================================================
# LAFITE / stylegan2-ada snapshots, without running their code


class _Persistent:
    """What a persistent network object unpickles to here: its metadata (class name, state), nothing run."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or "state" not in meta:
            raise StyleGANError("persistent object without a state")
        self.meta = meta

    @property
    def class_name(self) -> str:
        return str(self.meta.get("class_name", "?"))

    @property
    def state(self) -> dict:
        return self.meta["state"]


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a plain dict."""

    def __setstate__(self, state):  # an EasyDict pickles its (empty) __dict__
        pass


def _load_storage(b: bytes):
    return torch.load(_io.BytesIO(b), map_location="cpu", weights_only=True)


def _numpy_scalar(*args):
    try:
        from numpy._core.multiarray import scalar  # lazy: NumPy 2's name, tried first
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar  # lazy: NumPy 1's name
    return scalar(*args)


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Persistent,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("builtins", "set"): set,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise StyleGANError(
                f"refused to load global {module}.{name}: not one a stylegan2-ada / LAFITE snapshot uses"
            ) from None


def read_snapshot(path: str | Path) -> dict:
    """The snapshot dict with every network as a :class:`_Persistent` (metadata only); nothing is imported or
    executed from the file. Raises :class:`StyleGANError` naming any global outside the allow-list."""
    path = Path(path)
    if not path.is_file():
        raise StyleGANError(f"{path}: no such snapshot file")
    with open(path, "rb") as fh:
        try:
            data = _SafeUnpickler(fh).load()
        except StyleGANError as e:
            raise StyleGANError(f"{path}: {e}") from None
        except Exception as e:  # noqa: BLE001 - truncated or foreign files are one user error
            raise StyleGANError(f"{path}: not a readable snapshot pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise StyleGANError(f"{path}: expected a snapshot dict (G, D, G_ema, ...), got {type(data).__name__}")
    return data


def _flatten(obj: _Persistent, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and buffers of a persistent module and its children, with dotted names."""
    state, out = obj.state, {}
    for group in ("_parameters", "_buffers"):
        for k, v in (state.get(group) or {}).items():
            if v is not None:
                out[prefix + k] = v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(v)
    for k, child in (state.get("_modules") or {}).items():
        if isinstance(child, _Persistent):
            out.update(_flatten(child, f"{prefix}{k}."))
        elif child is not None:
            raise StyleGANError(f"module {prefix}{k}: unexpected {type(child).__name__}")
    return out


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    if isinstance(x, np.generic):
        return x.item()
    return x


def config_from_snapshot(g: _Persistent, tensors: dict[str, torch.Tensor]) -> dict:
    """Our Generator's keyword arguments from a stored generator: its init kwargs, with the conditioning
    dimension and mapping depth checked against (or read from) the tensors."""
    kw = _plain(dict(g.state.get("_init_kwargs") or {}))
    if "synthesis.b4.conv1.affine.weight" in tensors and "synthesis.b4.conv1.pre_0.weight" in tensors:
        raise StyleGANError(
            "generator has both affine and pre_0 layers: LAFITE's structure 0 is not supported"
        )
    if any(".scale_layer_0." in k for k in tensors):
        raise StyleGANError("generator uses LAFITE's structure 1 (above 256 px): not supported")
    res = int(kw.get("img_resolution") or 0)
    if not res:
        res = max(int(k.split(".")[1][1:]) for k in tensors if k.startswith("synthesis.b"))
    fc = sorted(
        int(k.split(".")[1][2:]) for k in tensors if k.startswith("mapping.fc") and k.endswith(".weight")
    )
    if not fc:
        raise StyleGANError("no mapping.fc* weights: not a StyleGAN2 generator")
    w_dim = int(tensors[f"mapping.fc{fc[-1]}.weight"].shape[0])
    mapping = {k: v for k, v in dict(kw.get("mapping_kwargs") or {}).items()
               if k in ("num_layers", "embed_features", "layer_features", "activation", "lr_multiplier",
                        "w_avg_beta")}  # fmt: skip
    mapping["num_layers"] = len(fc)
    synth_in = dict(kw.get("synthesis_kwargs") or {})
    synthesis = {k: synth_in[k] for k in ("channel_base", "channel_max", "conv_clamp") if k in synth_in}
    pre0 = tensors.get("synthesis.b4.conv1.pre_0.weight")
    if pre0 is not None:
        synthesis["f_dim"] = int(pre0.shape[1])
        synthesis["fts_hidden"] = int(tensors["synthesis.b4.conv1.pre_1.weight"].shape[0])
    c0 = tensors["synthesis.b4.const"].shape[0]
    if "channel_base" not in synthesis:  # older configs: read the channels from the tensors
        synthesis["channel_base"], synthesis["channel_max"] = int(c0) * 4, int(c0)
    z_dim = int(kw.get("z_dim", tensors["mapping.fc0.weight"].shape[1]))
    c_dim = int(kw.get("c_dim", 0))
    return dict(z_dim=z_dim, c_dim=c_dim, w_dim=int(kw.get("w_dim", w_dim)), img_resolution=res,
                img_channels=int(kw.get("img_channels", 3)), mapping_kwargs=mapping, synthesis_kwargs=synthesis)  # fmt: skip


def load_lafite(path: str | Path, key: str = "G_ema", device: str = "cpu") -> Generator:
    """Our :class:`Generator` with the weights of a LAFITE / stylegan2-ada snapshot's ``key`` network (default
    ``G_ema``), in eval mode. Reads the pickle with an allow-list unpickler: no module from the file is imported
    and its embedded source is never executed; the configuration comes from the stored init kwargs."""
    data = read_snapshot(path)
    if key not in data or not isinstance(data[key], _Persistent):
        raise StyleGANError(f"{path}: no network {key!r} (has {sorted(map(str, data))})")
    g = data[key]
    tensors = _flatten(g)
    try:
        cfg = config_from_snapshot(g, tensors)
        G = Generator(**cfg)
        G.load_state_dict(tensors, strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = " ".join(str(e).strip().splitlines()[:2])[:400]
        raise StyleGANError(f"{path}: {key} does not fit lib.models.stylegan2.Generator: {first}") from None
    return G.to(device).eval().requires_grad_(False)
