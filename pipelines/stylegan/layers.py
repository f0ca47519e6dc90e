"""The building blocks, in pure PyTorch: upfirdn2d, fused leaky ReLU, equalised layers,
modulated conv, noise, toRGB."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import SQRT2


def make_kernel(k) -> torch.Tensor:
    """A 1-D FIR kernel -> its normalised 2-D outer product (sums to 1)."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
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

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ):
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

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True
    ):
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

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel=(1, 3, 3, 1),
    ):
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
