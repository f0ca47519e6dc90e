"""Mapping, synthesis, the Generator (W+ rows as rosinality) and the Discriminator our trainer uses."""

from __future__ import annotations

import torch
from torch import nn

from erase.core.errors import EraseError

from .config import SQRT2, StyleGANConfig
from .layers import (
    ConstantInput,
    EqualConv2d,
    EqualLinear,
    PixelNorm,
    StyledConv,
    ToRGB,
    fused_leaky_relu,
    make_kernel,
    upfirdn2d,
)


class MappingNetwork(nn.Module):
    """z -> w: PixelNorm, then ``n_mlp`` equalised-lr linear layers (lr_mul = lr_mlp) with leaky ReLU."""

    def __init__(self, config: StyleGANConfig):
        super().__init__()
        dims = [config.z_dim] + [config.style_dim] * config.n_mlp
        self.norm = PixelNorm()
        self.layers = nn.ModuleList(
            EqualLinear(a, b, lr_mul=config.lr_mlp, activation=True) for a, b in zip(dims, dims[1:])
        )

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
        b = (
            k - 1
        ) // 2  # odd row: a toRGB (to_rgb1 for row 1) and, unless it is the last row, the next upsampling conv
        rgb = "synthesis.to_rgb1" if b == 0 else f"synthesis.to_rgbs.{b - 1}"
        return [rgb] + ([f"synthesis.convs.{k - 1}"] if k - 1 < len(self.synthesis.convs) else [])


class ConvLayer(nn.Module):
    """Equalised conv, optionally downsampling (FIR blur, then a stride-2 conv) and activated
    (bias + leaky ReLU * sqrt 2)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        downsample: bool = False,
        blur_kernel=(1, 3, 3, 1),
        bias: bool = True,
        activate: bool = True,
    ):
        super().__init__()
        self.downsample, self.activate = downsample, activate
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            self.blur_pad = ((p + 1) // 2, p // 2)
            self.register_buffer("blur_kernel", make_kernel(blur_kernel), persistent=False)
        self.conv = EqualConv2d(
            in_ch,
            out_ch,
            kernel_size,
            stride=2 if downsample else 1,
            padding=0 if downsample else kernel_size // 2,
            bias=bias and not activate,
        )
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
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(ch[r], ch[r // 2], bk) for r in reversed(config.resolutions[1:])
        )
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
