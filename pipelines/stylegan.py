"""StyleGAN2 in pure PyTorch: generator, discriminator, a pipeline, and safe loading of rosinality checkpoints.

The generator is topologically faithful to rosinality/stylegan2-pytorch (``model.py``), so its ``g_ema``
state dicts convert key by key (``convert_rosinality_state_dict``) and compute the same function. There
are no custom CUDA ops: upfirdn2d and the fused leaky ReLU are plain PyTorch, so it runs anywhere.

**Modulation is not fused.** Rosinality (like NVIDIA) modulates by building one weight tensor per sample,
``[N, out, in, k, k]``, and running a grouped convolution. Scaling the *input* by the style, running one
shared convolution, and scaling the *output* by the demodulation coefficient is the same function (the
style multiplies input channels, the coefficient output channels: both commute with the convolution),
and on a CPU it takes about half the time, because the per-sample weight tensor is never materialised.
The coefficient is ``rsqrt(s^2 @ sum_k(w^2)^T + 1e-8)``, a small matmul.

**Layout and W+ rows.** ``n_latent = 2 log2(resolution) - 2`` rows, consumed as in rosinality (odd rows
are shared by a toRGB and the next upsampling conv)::

    row 0      synthesis.conv1                     4x4
    row 1      synthesis.to_rgb1, synthesis.convs.0    (convs.0 upsamples to 8x8)
    row 2      synthesis.convs.1                   8x8
    row 3      synthesis.to_rgbs.0, synthesis.convs.2  (convs.2 upsamples to 16x16)
    ...
    row 2b+1   synthesis.to_rgbs.{b-1}, synthesis.convs.{2b}
    row 2b+2   synthesis.convs.{2b+1}
    last row   synthesis.to_rgbs.{last} only

``Generator.layers_of_row(k)`` lists those module names (as in ``generator.named_modules()``). Parameter
names therefore read ``generator.synthesis.convs.3.conv.weight`` in patches.

**Loading.** Our own format is a folder with ``config.json`` + ``generator.safetensors``. Rosinality ``.pt``
files are read only with ``torch.load(weights_only=True)``; NVIDIA ``.pkl`` files are refused unread (their
loading executes code embedded in the pickle).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from dataclasses import InitVar, asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from erase.errors import EraseError
from erase.files import check_writable
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "generator.safetensors"
MODEL_TYPE = "stylegan2"
SQRT2 = math.sqrt(2.0)


class StyleGANLoadError(EraseError):
    """A StyleGAN folder or checkpoint that cannot be loaded, or loaded safely."""


# ---------------------------------------------------------------------------------------------
# config


def rosinality_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """Rosinality's width per resolution (config-f with channel_multiplier=2)."""
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}


@dataclass
class StyleGANConfig:
    """Architecture of a StyleGAN2 generator (and of its discriminator). JSON-serialisable via ``to_dict``.

    ``channels`` maps each resolution 4, 8, ..., ``resolution`` to its width; left out, it is rosinality's
    table for ``channel_multiplier`` (an init-only argument, not stored). ``z_dim`` defaults to ``style_dim``
    as in rosinality, whose mapping network keeps one width throughout.
    """

    resolution: int
    style_dim: int = 512
    n_mlp: int = 8
    z_dim: int | None = None
    lr_mlp: float = 0.01
    channels: dict[int, int] | None = None
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    channel_multiplier: InitVar[int] = 2

    def __post_init__(self, channel_multiplier: int):
        res = self.resolution
        if not isinstance(res, int) or res < 4 or res & (res - 1):
            raise EraseError(f"StyleGAN resolution must be a power of two >= 4, got {res!r}")
        if not isinstance(self.style_dim, int) or self.style_dim < 1:
            raise EraseError(f"StyleGAN style_dim must be a positive integer, got {self.style_dim!r}")
        if not isinstance(self.n_mlp, int) or self.n_mlp < 0:
            raise EraseError(f"StyleGAN n_mlp must be a non-negative integer, got {self.n_mlp!r}")
        if self.z_dim is None:
            self.z_dim = self.style_dim
        if self.n_mlp == 0 and self.z_dim != self.style_dim:
            raise EraseError(f"StyleGAN without mapping layers (n_mlp=0) needs z_dim == style_dim, got {self.z_dim} and {self.style_dim}")
        table = rosinality_channels(channel_multiplier) if self.channels is None else {int(k): v for k, v in self.channels.items()}
        missing = [r for r in self.resolutions if r not in table]
        if missing:
            raise EraseError(f"StyleGAN channels lack the resolution(s) {missing}; give a width for each of {self.resolutions}")
        bad = {r: table[r] for r in self.resolutions if not isinstance(table[r], int) or table[r] < 1}
        if bad:
            raise EraseError(f"StyleGAN channels must be positive integers, got {bad}")
        self.channels = {r: table[r] for r in self.resolutions}  # canonical: exactly the resolutions used
        self.blur_kernel = tuple(int(k) for k in self.blur_kernel)

    @property
    def resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def n_latent(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = {str(k): v for k, v in self.channels.items()}
        d["blur_kernel"] = list(self.blur_kernel)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StyleGANConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"model_type"})
        if unknown:
            raise EraseError(f"unknown StyleGAN config field(s) {unknown}; known: {sorted(known)}")
        if d.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise EraseError(f"config model_type is {d['model_type']!r}, not {MODEL_TYPE!r}")
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except (TypeError, ValueError, AttributeError) as e:
            if isinstance(e, EraseError):
                raise
            raise EraseError(f"invalid StyleGAN config: {str(e).splitlines()[0]}") from e


# ---------------------------------------------------------------------------------------------
# ops


def make_kernel(k) -> torch.Tensor:
    """A 1-D FIR kernel -> its normalised 2-D outer product (sums to 1)."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative = crop), convolve each channel with the 2-D FIR ``kernel``
    (flipped, i.e. a true convolution), downsample by keeping every ``down``-th sample.

    The same pad applies to both axes. The FIR step is a depthwise conv (``groups=C``) with one shared kernel:
    on a CPU its backward is ~50x faster than folding channels into the batch of a 1-channel conv.
    Downsampling is that conv's stride (it equals slicing the full output).
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    kh, kw = kernel.shape
    weight = kernel.flip([0, 1]).to(x.dtype).view(1, 1, kh, kw).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, slope: float = 0.2) -> torch.Tensor:
    """leaky_relu(x + bias, 0.2) * sqrt(2): the gain keeps activations at unit variance (equalised lr)."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, slope) * SQRT2


class PixelNorm(nn.Module):
    """Normalise each vector to unit mean square over its features (applied to z)."""

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with an equalised learning rate: weights stored ~N(0, 1/lr_mul^2), scaled at run time by
    lr_mul/sqrt(in), bias by lr_mul, so Adam's step is the same for every layer and slowed by lr_mul."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        bias = None if self.bias is None else self.bias * self.lr_mul
        out = F.linear(x, self.weight * self.scale, bias)
        return fused_leaky_relu(out) if self.activation else out

    def extra_repr(self):
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Conv2d with an equalised learning rate (weight scaled by 1/sqrt(in*k*k) at run time)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ModulatedConv2d(nn.Module):
    """A style-modulated (and by default demodulated) conv; optionally upsampling x2.

    The style ``s = modulation(w)`` (bias initialised to 1, so an untrained layer starts unmodulated) scales
    the input channels; demodulation rescales each output channel of each sample so the per-sample weight
    ``w * s`` would have unit norm. Implemented non-fused (see the module docstring). Upsampling is a
    stride-2 transposed conv followed by the FIR blur, as rosinality does, so converted weights see the
    same resampling.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.demodulate, self.upsample = demodulate, upsample
        self.padding = kernel_size // 2
        if upsample:
            # transposed conv: (H-1)*2 + k samples; the blur pads so that exactly 2H come out
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur_pad = ((p + 1) // 2 + 1, p // 2 + 1)
            self.register_buffer("blur_kernel", make_kernel(blur_kernel) * 4, persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.modulation(w)  # [N, in]
        weight = self.weight * self.scale
        x = x * s[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            out = upfirdn2d(out, self.blur_kernel, pad=self.blur_pad)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            demod = torch.rsqrt(s.square() @ weight.square().sum((2, 3)).t() + 1e-8)  # [N, out]
            out = out * demod[:, :, None, None]
        return out

    def extra_repr(self):
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, demodulate={self.demodulate}, upsample={self.upsample}"


class NoiseInjection(nn.Module):
    """Adds per-pixel noise scaled by one learned strength (zero at init)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise: torch.Tensor | None):
        return x if noise is None else x + self.weight * noise


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias + leaky ReLU * sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x, w, noise=None):
        return fused_leaky_relu(self.noise(self.conv(x, w), noise), self.bias)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) + bias, added to the upsampled RGB of the previous
    resolution (skip architecture)."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))
        if upsample:
            p = len(blur_kernel) - 2
            self.up_pad = ((p + 1) // 2 + 1, p // 2)
            self.register_buffer("up_kernel", make_kernel(blur_kernel) * 4, persistent=False)

    def forward(self, x, w, skip=None):
        out = self.conv(x, w) + self.bias.view(1, -1, 1, 1)
        if skip is not None:
            out = out + upfirdn2d(skip, self.up_kernel, up=2, pad=self.up_pad)
        return out


class ConstantInput(nn.Module):
    """The learned 4x4 input of the synthesis network."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.const = nn.Parameter(torch.randn(channels, size, size))

    def forward(self, batch: int):
        return self.const.unsqueeze(0).expand(batch, -1, -1, -1)


# ---------------------------------------------------------------------------------------------
# generator


class MappingNetwork(nn.Module):
    """z -> w: PixelNorm, then ``n_mlp`` equalised-lr linear layers (lr_mul = lr_mlp) with leaky ReLU."""

    def __init__(self, config: StyleGANConfig):
        super().__init__()
        dims = [config.z_dim] + [config.style_dim] * config.n_mlp
        self.norm = PixelNorm()
        self.layers = nn.ModuleList(EqualLinear(a, b, lr_mul=config.lr_mlp, activation=True) for a, b in zip(dims, dims[1:]))

    def forward(self, z):
        x = self.norm(z)
        for layer in self.layers:
            x = layer(x)
        return x


NOISE_MODES = ("const", "random", "none")


class SynthesisNetwork(nn.Module):
    """W+ (N, n_latent, style_dim) -> image in about [-1, 1]; rows consumed as in the module docstring.

    noise_mode: "const" uses the fixed buffers ``noises.noise_{k}`` (deterministic, rosinality's
    randomize_noise=False), "random" draws fresh noise from the global RNG, "none" adds no noise.
    """

    def __init__(self, config: StyleGANConfig):
        super().__init__()
        ch, sd, bk = config.channels, config.style_dim, config.blur_kernel
        self.n_latent = config.n_latent
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], sd, blur_kernel=bk)
        self.to_rgb1 = ToRGB(ch[4], sd, upsample=False, blur_kernel=bk)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for lo, hi in zip(config.resolutions, config.resolutions[1:]):
            self.convs.append(StyledConv(ch[lo], ch[hi], sd, upsample=True, blur_kernel=bk))
            self.convs.append(StyledConv(ch[hi], ch[hi], sd, blur_kernel=bk))
            self.to_rgbs.append(ToRGB(ch[hi], sd, blur_kernel=bk))
        # noise k feeds conv1 (k = 0) or convs[k-1]; its resolution is that layer's output size
        self.noises = nn.Module()
        for k in range(1 + len(self.convs)):
            size = 4 * 2 ** ((k + 1) // 2)
            self.noises.register_buffer(f"noise_{k}", torch.randn(1, 1, size, size))

    def _noise(self, k: int, ref: torch.Tensor, mode: str) -> torch.Tensor | None:
        """The noise map of layer k (conv1 is 0, convs[i] is i+1) for the batch of ``ref``."""
        if mode == "none":
            return None
        const = getattr(self.noises, f"noise_{k}")
        if mode == "const":
            return const
        return torch.randn(ref.shape[0], 1, *const.shape[2:], device=ref.device, dtype=ref.dtype)

    def forward(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise EraseError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1] != self.n_latent:
            raise EraseError(f"synthesis takes W+ of shape (N, {self.n_latent}, style_dim), got {tuple(ws.shape)}")
        x = self.input(ws.shape[0])
        x = self.conv1(x, ws[:, 0], self._noise(0, ws, noise_mode))
        img = self.to_rgb1(x, ws[:, 1])
        for b, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * b](x, ws[:, 2 * b + 1], self._noise(2 * b + 1, ws, noise_mode))
            x = self.convs[2 * b + 1](x, ws[:, 2 * b + 2], self._noise(2 * b + 2, ws, noise_mode))
            img = to_rgb(x, ws[:, 2 * b + 3], img)
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z -> w), ``synthesis`` (W+ -> image) and ``w_avg``, the tracked mean
    of w that truncation pulls towards (w' = w_avg + psi (w - w_avg))."""

    def __init__(self, config: StyleGANConfig):
        super().__init__()
        self.config = config
        self.mapping = MappingNetwork(config)
        self.synthesis = SynthesisNetwork(config)
        self.register_buffer("w_avg", torch.zeros(config.style_dim))

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """w_avg + psi (w - w_avg), for w (N, style_dim) or W+ (N, n_latent, style_dim)."""
        return w if psi == 1 else self.w_avg.to(w.dtype).lerp(w, psi)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "const") -> torch.Tensor:
        """z (N, z_dim) -> image (N, 3, resolution, resolution) in about [-1, 1], every W+ row the same w."""
        w = self.truncate(self.mapping(z), truncation_psi)
        return self.synthesis(w.unsqueeze(1).expand(-1, self.n_latent, -1), noise_mode)

    @torch.no_grad()
    def update_w_avg(self, w: torch.Tensor, beta: float = 0.995) -> None:
        """Track the mean w during training: w_avg <- beta w_avg + (1 - beta) mean(w)."""
        self.w_avg.copy_(w.detach().to(self.w_avg.dtype).mean(0).lerp(self.w_avg, beta))

    @torch.no_grad()
    def compute_w_avg(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Set w_avg to the mean of mapping(z) over ``n`` seeded z (rosinality's ``mean_latent``), for models
        whose checkpoint does not carry it."""
        z = torch.randn(n, self.config.z_dim, generator=torch.Generator().manual_seed(seed))
        self.w_avg.copy_(self.mapping(z.to(self.w_avg.device)).mean(0))
        return self.w_avg

    def layers_of_row(self, k: int) -> list[str]:
        """Names (in ``self.named_modules()``) of the layers whose style comes from W+ row ``k``."""
        if not 0 <= k < self.n_latent:
            raise EraseError(f"W+ row {k} is out of range: this generator has rows 0..{self.n_latent - 1}")
        if k == 0:
            return ["synthesis.conv1"]
        if k % 2 == 0:
            return [f"synthesis.convs.{k - 1}"]
        b = (k - 1) // 2  # odd row: a toRGB (to_rgb1 for row 1) and, unless it is the last row, the next upsampling conv
        rgb = "synthesis.to_rgb1" if b == 0 else f"synthesis.to_rgbs.{b - 1}"
        return [rgb] + ([f"synthesis.convs.{k - 1}"] if k - 1 < len(self.synthesis.convs) else [])


# ---------------------------------------------------------------------------------------------
# discriminator (for training; never loaded from rosinality, but the same shape of architecture)


class ConvLayer(nn.Module):
    """Equalised conv, optionally downsampling (FIR blur, then a stride-2 conv) and activated
    (bias + leaky ReLU * sqrt 2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, downsample: bool = False, blur_kernel=(1, 3, 3, 1),
                 bias: bool = True, activate: bool = True):
        super().__init__()
        self.downsample, self.activate = downsample, activate
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            self.blur_pad = ((p + 1) // 2, p // 2)
            self.register_buffer("blur_kernel", make_kernel(blur_kernel), persistent=False)
        self.conv = EqualConv2d(in_ch, out_ch, kernel_size, stride=2 if downsample else 1,
                                padding=0 if downsample else kernel_size // 2, bias=bias and not activate)
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias and activate else None

    def forward(self, x):
        if self.downsample:
            x = upfirdn2d(x, self.blur_kernel, pad=self.blur_pad)
        x = self.conv(x)
        return fused_leaky_relu(x, self.bias) if self.activate else x


class DiscriminatorBlock(nn.Module):
    """Residual block halving the resolution: (conv3 -> downsampling conv3) + downsampling 1x1 skip, / sqrt 2."""

    def __init__(self, in_ch: int, out_ch: int, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, blur_kernel=blur_kernel, bias=False, activate=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: image (N, 3, R, R) in [-1, 1] -> one logit per image (N,).

    The minibatch-stddev feature (groups of up to 4 samples, 1 feature) uses the largest group size <= 4
    that divides the batch, so any batch size works (rosinality requires a multiple of 4).
    """

    def __init__(self, config: StyleGANConfig, stddev_group: int = 4):
        super().__init__()
        ch, bk, res = config.channels, config.blur_kernel, config.resolution
        self.from_rgb = ConvLayer(3, ch[res], 1, blur_kernel=bk)
        self.blocks = nn.ModuleList(DiscriminatorBlock(ch[r], ch[r // 2], bk) for r in reversed(config.resolutions[1:]))
        self.stddev_group = stddev_group
        self.final_conv = ConvLayer(ch[4] + 1, ch[4], 3, blur_kernel=bk)
        self.final_linear = EqualLinear(ch[4] * 16, ch[4], activation=True)
        self.out = EqualLinear(ch[4], 1)

    def minibatch_stddev(self, x):
        n, c, h, w = x.shape
        g = max(d for d in range(1, min(n, self.stddev_group) + 1) if n % d == 0)
        std = (x.view(g, -1, c, h, w).var(0, unbiased=False) + 1e-8).sqrt()  # samples i, i+n/g, ... form a group
        std = std.mean((1, 2, 3)).view(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, std], 1)

    def forward(self, img):
        x = self.from_rgb(img)
        for block in self.blocks:
            x = block(x)
        x = self.final_conv(self.minibatch_stddev(x))
        return self.out(self.final_linear(x.flatten(1))).squeeze(1)


# ---------------------------------------------------------------------------------------------
# pipeline


OUTPUT_TYPES = ("pil", "np", "pt")


def _list(items: list[str]) -> str:
    return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")


def _mismatch(missing: list[str], unexpected: list[str], misshaped: list[str]) -> str:
    """'missing a, b; unexpected c; misshaped d [1] != [2]' for the non-empty lists ('' if everything fits)."""
    return "; ".join(f"{what} {_list(items)}" for what, items in
                     (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped)) if items)


def _load_into(generator: Generator, state: dict[str, torch.Tensor], source: str, fix: str) -> None:
    """load_state_dict with a one-line error naming what does not fit."""
    own = generator.state_dict()
    problems = _mismatch([k for k in own if k not in state], [k for k in state if k not in own],
                         [f"{k} {list(state[k].shape)} != {list(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape])
    if problems:
        raise StyleGANLoadError(f"{source} does not fit its config: {problems}; {fix}")
    generator.load_state_dict(state)


class StyleGANPipeline:
    """A StyleGAN2 generator behind the model interface erasekit uses: ``components == {"generator": G}``,
    so patches and selections name its parameters ``generator.<name>``."""

    def __init__(self, generator: Generator, name_or_path: str | None = None):
        self.generator = generator
        self.name_or_path = name_or_path

    @property
    def components(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    @property
    def config(self) -> StyleGANConfig:
        return self.generator.config

    @property
    def device(self) -> torch.device:
        return self.generator.w_avg.device

    def to(self, device) -> "StyleGANPipeline":
        self.generator.to(device)
        return self

    # -- files ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "StyleGANPipeline":
        """Load a folder written by ``save_pretrained``: ``config.json`` + ``generator.safetensors``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if folder.is_file():
            if folder.suffix in (".pt", ".pth"):
                raise StyleGANLoadError(f"{folder} is a checkpoint file, not a StyleGAN folder; load a rosinality checkpoint with load_rosinality")
            raise StyleGANLoadError(f"{folder} is a file; pass the StyleGAN folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}")
        if not folder.is_dir():
            raise StyleGANLoadError(f"StyleGAN folder {folder} does not exist")
        cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file():
            raise StyleGANLoadError(f"{folder} has no {CONFIG_FILE}; pass a folder written by StyleGANPipeline.save_pretrained "
                                    "(a rosinality .pt loads with load_rosinality)")
        try:
            raw = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StyleGANLoadError(f"{cfg_path} is not valid JSON ({str(e).splitlines()[0]}); re-save the model with save_pretrained") from e
        if not isinstance(raw, dict):
            raise StyleGANLoadError(f"{cfg_path} must hold a JSON object of StyleGAN config fields")
        try:
            config = StyleGANConfig.from_dict(raw)
        except EraseError as e:
            raise StyleGANLoadError(f"{cfg_path}: {e}") from e
        if not weights.is_file():
            others = sorted(p.name for p in folder.glob("*.pt*")) + sorted(p.name for p in folder.glob("*.bin"))
            hint = f" ({others[0]} is not read: only safetensors are)" if others else ""
            raise StyleGANLoadError(f"{folder} has no {WEIGHTS_FILE}{hint}; write the folder with StyleGANPipeline.save_pretrained")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise StyleGANLoadError(f"{weights} is corrupt ({str(e).splitlines()[0]}); re-save the model with save_pretrained") from e
        generator = Generator(config)
        _load_into(generator, state, str(weights),
                   f"{CONFIG_FILE} and {WEIGHTS_FILE} come from different models; re-save them together with save_pretrained")
        return cls(generator.eval(), name_or_path=str(folder)).to(device)

    def save_pretrained(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``config.json`` + ``generator.safetensors`` into a temp folder next to ``folder``, then rename it
        into place, so ``folder`` is never half-written. An existing non-empty ``folder`` is replaced only with
        ``overwrite=True`` (moved aside, then deleted once the new one is in place)."""
        from safetensors.torch import save_file

        out = Path(os.path.abspath(check_writable("output folder", folder, folder=True)))  # "." and "x/" have a usable name
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise EraseError(f"{out} exists and is not empty; pass overwrite=True or choose another folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp, old = (out.with_name(f".{out.name}.{tag}-{os.getpid()}") for tag in ("tmp", "old"))
        for p in (tmp, old):
            shutil.rmtree(p, ignore_errors=True)
        try:
            tmp.mkdir()
            state = {k: v.detach().cpu().contiguous() for k, v in self.generator.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            (tmp / CONFIG_FILE).write_text(json.dumps({"model_type": MODEL_TYPE, **self.config.to_dict()}, indent=2) + "\n")
            if out.exists():
                os.replace(out, old)
                try:
                    os.replace(tmp, out)
                except OSError:
                    os.replace(old, out)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    # -- sampling --------------------------------------------------------------------------
    def seed_latents(self, seeds) -> torch.Tensor:
        """z (N, z_dim) with z[i] drawn from ``torch.Generator().manual_seed(seeds[i])``: an image depends on its
        seed only, never on the batch it is generated in."""
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
                raise EraseError(f"seeds must be non-negative integers, got {s!r}")
        z_dim = self.config.z_dim
        if not seeds:
            return torch.zeros(0, z_dim)
        return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    @torch.no_grad()
    def __call__(self, seeds=None, *, latents: torch.Tensor | None = None, truncation_psi: float = 1.0,
                 noise_mode: str = "const", output_type: str = "pil", batch_size: int = 64):
        """Generate images for ``seeds`` (an int or a list of ints) or for ``latents``.

        ``latents`` is either z, shape (N, z_dim), mapped to w and used for every W+ row, or W+, shape
        (N, n_latent, style_dim), fed to synthesis as is. A 2-D tensor is always z, even when z_dim ==
        style_dim: to pass a single w, repeat it over the rows (``w[:, None].expand(-1, n_latent, -1)``).
        Truncation (w_avg + psi (w - w_avg)) applies to both. Only noise_mode "const" (and "none") is
        reproducible; "random" draws from the global RNG.

        Returns a list of PIL images ("pil"), a uint8 array (N, H, W, 3) ("np") or a float tensor
        (N, 3, H, W) in [0, 1] on the CPU ("pt").
        """
        if (seeds is None) == (latents is None):
            raise EraseError("pass either seeds or latents (exactly one of them)")
        if output_type not in OUTPUT_TYPES:
            raise EraseError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise EraseError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(truncation_psi, bool) or not isinstance(truncation_psi, (int, float)) or not math.isfinite(truncation_psi):
            raise EraseError(f"truncation_psi must be a finite number, got {truncation_psi!r}")
        G, cfg = self.generator, self.config
        latents = self.seed_latents(seeds) if seeds is not None else torch.as_tensor(latents)
        if latents.ndim == 2 and latents.shape[1] == cfg.z_dim:
            is_z = True
        elif latents.ndim == 3 and tuple(latents.shape[1:]) == (cfg.n_latent, cfg.style_dim):
            is_z = False
        else:
            raise EraseError(f"latents must be z (N, {cfg.z_dim}) or W+ (N, {cfg.n_latent}, {cfg.style_dim}), got {tuple(latents.shape)}")
        images = []
        for chunk in latents.split(batch_size):
            chunk = chunk.to(self.device, G.w_avg.dtype)
            ws = G.mapping(chunk).unsqueeze(1).expand(-1, cfg.n_latent, -1) if is_z else chunk
            images.append(G.synthesis(G.truncate(ws, truncation_psi), noise_mode).float().cpu())
        img = torch.cat(images) if images else torch.zeros(0, 3, cfg.resolution, cfg.resolution)
        if output_type == "pt":
            return ((img + 1) / 2).clamp(0, 1)
        arr = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return arr
        from PIL import Image

        return [Image.fromarray(a) for a in arr]


# ---------------------------------------------------------------------------------------------
# rosinality checkpoints

def _extract_hint(path: Path) -> str:
    return ("in a trusted environment extract the generator into a plain state dict: "
            f'ckpt = torch.load("{path}", weights_only=False); torch.save(ckpt["g_ema"], "g_ema.pt"); then load g_ema.pt')


def _rosinality_key(ours: str) -> str:
    """Our state-dict key -> rosinality's g_ema key (see the module docstring for the layout)."""
    if ours.startswith("mapping.layers."):
        i, rest = ours[len("mapping.layers."):].split(".", 1)
        return f"style.{int(i) + 1}.{rest}"  # style.0 is rosinality's PixelNorm
    if ours == "synthesis.input.const":
        return "input.input"
    key = ours[len("synthesis."):]
    parts = key.split(".")
    if parts[-1] == "bias" and (parts[0] == "conv1" or parts[0] == "convs") and parts[-2] != "modulation":
        return key[: -len("bias")] + "activate.bias"  # rosinality keeps a StyledConv's bias in its FusedLeakyReLU
    return key


def _rosinality_shape(ours: str, shape: torch.Size) -> tuple[int, ...]:
    """Rosinality stores modulated weights and the constant with a leading 1, toRGB biases as (1, 3, 1, 1)."""
    if ours.endswith(".conv.weight") or ours == "synthesis.input.const":
        return (1, *shape)
    if ours.startswith(("synthesis.to_rgb1.", "synthesis.to_rgbs.")) and ours.endswith(".bias") and ".modulation." not in ours:
        return (1, 3, 1, 1)
    return tuple(shape)


def _rosinality_constants(config: StyleGANConfig) -> dict[str, torch.Tensor]:
    """Rosinality's derived buffers: the FIR kernels of the upsampling convs and of the toRGB skips."""
    kernel = make_kernel(config.blur_kernel) * 4
    n_blocks = len(config.resolutions) - 1
    out = {f"convs.{2 * b}.conv.blur.kernel": kernel for b in range(n_blocks)}
    out.update({f"to_rgbs.{b}.upsample.kernel": kernel for b in range(n_blocks)})
    return out


def convert_rosinality_state_dict(sd: dict[str, torch.Tensor], config: StyleGANConfig, *,
                                  generator: Generator | None = None) -> dict[str, torch.Tensor]:
    """Rosinality ``g_ema`` state dict -> our Generator's state dict (every key but ``w_avg``, which rosinality
    does not store: see ``Generator.compute_w_avg``).

    Keys are renamed (``style.{i+1}`` -> ``mapping.layers.{i}``, ``input.input`` -> ``synthesis.input.const``,
    ``*.activate.bias`` -> ``*.bias``, the rest under ``synthesis.``) and singleton dims squeezed (see
    ``_rosinality_shape``); the blur / upsample kernel buffers are checked against ``config.blur_kernel``
    and dropped. Raises a one-line StyleGANLoadError naming missing, unexpected and misshaped keys.
    ``generator``: a ``Generator(config)`` to read the target shapes from (saves building one).
    """
    ours = (generator if generator is not None else Generator(config)).state_dict()  # the shapes to fill
    ours.pop("w_avg")
    out, missing, misshaped, used = {}, [], [], set()
    for key, ref in ours.items():
        theirs = _rosinality_key(key)
        if theirs not in sd:
            missing.append(theirs)
            continue
        used.add(theirs)
        src, want = sd[theirs], _rosinality_shape(key, ref.shape)
        if not isinstance(src, torch.Tensor) or tuple(src.shape) != want:
            misshaped.append(f"{theirs} {list(getattr(src, 'shape', []))} != {list(want)}")
            continue
        out[key] = src.reshape(ref.shape)
    constants = _rosinality_constants(config)
    for key, value in constants.items():
        if key in sd:
            used.add(key)
            if not isinstance(sd[key], torch.Tensor) or sd[key].shape != value.shape or not torch.allclose(sd[key].float(), value):
                misshaped.append(f"{key} (a blur kernel other than the config's {list(config.blur_kernel)})")
    problems = _mismatch(missing, [k for k in sd if k not in used], misshaped)
    if problems:
        raise StyleGANLoadError(f"not a rosinality g_ema state dict for a {config.resolution}px StyleGAN2 with style_dim {config.style_dim}, "
                                f"n_mlp {config.n_mlp}: {problems}; pass the matching config (or config=None to infer it)")
    return out


def infer_rosinality_config(sd: dict[str, torch.Tensor]) -> StyleGANConfig:
    """The architecture of a rosinality g_ema state dict, read off its shapes: n_mlp and style_dim from
    ``style.*``, the resolution from the number of convs (two per doubling), widths from the conv weights.
    lr_mlp and the blur kernel cannot be read off weights: rosinality's defaults (0.01, [1, 3, 3, 1])."""
    def shape(key):
        t = sd.get(key)
        if not isinstance(t, torch.Tensor):
            raise StyleGANLoadError(f"cannot infer the StyleGAN architecture: the state dict has no tensor {key!r} "
                                    "(is it a rosinality g_ema state dict?); pass config=")
        return t.shape

    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    n_convs = 0
    while f"convs.{n_convs}.conv.weight" in sd:
        n_convs += 1
    if n_convs % 2:
        raise StyleGANLoadError(f"cannot infer the StyleGAN architecture: {n_convs} convs (rosinality has two per resolution); pass config=")
    style_dim = shape(f"style.{n_mlp}.weight")[0] if n_mlp else shape("conv1.conv.modulation.weight")[1]
    z_dim = shape("style.1.weight")[1] if n_mlp else style_dim
    channels = {4: shape("conv1.conv.weight")[1]}
    for b in range(n_convs // 2):
        channels[8 * 2**b] = shape(f"convs.{2 * b}.conv.weight")[1]
    return StyleGANConfig(resolution=4 * 2 ** (n_convs // 2), style_dim=int(style_dim), n_mlp=n_mlp, z_dim=int(z_dim),
                          channels={k: int(v) for k, v in channels.items()})


def load_rosinality(path: str | os.PathLike, config: StyleGANConfig | None = None, device: str | torch.device = "cpu",
                    w_avg_samples: int = 4096) -> StyleGANPipeline:
    """A StyleGANPipeline from a rosinality/stylegan2-pytorch checkpoint (a dict with "g_ema", or a bare
    g_ema state dict) in a ``.pt``/``.pth`` file, read only with ``torch.load(weights_only=True)``, or in a
    ``.safetensors`` file. The config is inferred from the shapes unless given; w_avg is the mean of
    mapping(z) over ``w_avg_samples`` seeded z, as rosinality's mean_latent.

    Checkpoints written by rosinality's train.py also pickle an argparse.Namespace, which weights_only
    loading refuses: the error says how to extract g_ema in a trusted environment. NVIDIA ``.pkl`` files
    are refused without being opened.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        raise StyleGANLoadError(f"{path}: NVIDIA .pkl generators are refused unread, because loading one executes Python code embedded in the "
                                "pickle; convert it elsewhere, in a sandbox and only if you trust it, to a rosinality-layout state dict "
                                "(torch.save(state_dict, 'g_ema.pt')) and load that")
    if suffix not in (".pt", ".pth", ".safetensors"):
        raise StyleGANLoadError(f"{path}: expected a rosinality checkpoint (.pt / .pth) or a .safetensors g_ema state dict")
    if not path.is_file():
        raise StyleGANLoadError(f"rosinality checkpoint {path} does not exist")
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise StyleGANLoadError(f"{path} is corrupt ({str(e).splitlines()[0]})") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a corrupt file raises anything (garbage bytes give a KeyError)
            text = str(e).strip()
            if isinstance(e, pickle.UnpicklingError) and "weights only" in text.lower():
                found = re.search(r"(?:GLOBAL|Unsupported class) ([\w.]+)", text)
                if found:
                    raise StyleGANLoadError(f"{path} holds a pickled {found.group(1)}, which safe loading (weights_only=True) refuses; "
                                            f"{_extract_hint(path)}") from e
                detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
                raise StyleGANLoadError(f"{path} is corrupt or not a plain tensor checkpoint: safe loading (weights_only=True) refuses it"
                                        f"{f' ({detail.group(1).strip()})' if detail else ''}; if it is a trusted rosinality checkpoint, "
                                        f"{_extract_hint(path)}") from e
            raise StyleGANLoadError(f"cannot read {path} as a torch checkpoint ({type(e).__name__}: {text.splitlines()[0] if text else ''}); "
                                    "is the file complete?") from e
    if isinstance(obj, dict) and "g_ema" in obj:
        obj = obj["g_ema"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = sorted(map(str, obj))[:5] if isinstance(obj, dict) else type(obj).__name__
        raise StyleGANLoadError(f"{path} holds neither a 'g_ema' entry nor a bare g_ema state dict (found {keys}); "
                                "save the generator's state dict: torch.save(ckpt['g_ema'], 'g_ema.pt')")
    config = config if config is not None else infer_rosinality_config(obj)
    generator = Generator(config)
    state = convert_rosinality_state_dict(obj, config, generator=generator)
    _load_into(generator, {**state, "w_avg": generator.w_avg}, str(path), "pass the matching config")
    generator.compute_w_avg(w_avg_samples)
    return StyleGANPipeline(generator.eval(), name_or_path=str(path)).to(device)


__all__ = ["StyleGANConfig", "Generator", "Discriminator", "StyleGANPipeline", "StyleGANLoadError", "MappingNetwork",
           "SynthesisNetwork", "ModulatedConv2d", "StyledConv", "ToRGB", "EqualLinear", "EqualConv2d", "NoiseInjection",
           "ConstantInput", "PixelNorm", "upfirdn2d", "fused_leaky_relu", "make_kernel", "rosinality_channels",
           "convert_rosinality_state_dict", "infer_rosinality_config", "load_rosinality"]
