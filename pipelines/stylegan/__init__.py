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

from .config import (
    CONFIG_FILE,
    MODEL_TYPE,
    SQRT2,
    WEIGHTS_FILE,
    StyleGANConfig,
    StyleGANLoadError,
    rosinality_channels,
)
from .layers import (
    ConstantInput,
    EqualConv2d,
    EqualLinear,
    ModulatedConv2d,
    NoiseInjection,
    PixelNorm,
    StyledConv,
    ToRGB,
    fused_leaky_relu,
    make_kernel,
    upfirdn2d,
)
from .networks import (
    NOISE_MODES,
    ConvLayer,
    Discriminator,
    DiscriminatorBlock,
    Generator,
    MappingNetwork,
    SynthesisNetwork,
)
from .pipeline import OUTPUT_TYPES, StyleGANPipeline
from .rosinality import convert_rosinality_state_dict, infer_rosinality_config, load_rosinality, refuse_pickle

__all__ = [
    "StyleGANConfig",
    "Generator",
    "Discriminator",
    "StyleGANPipeline",
    "StyleGANLoadError",
    "MappingNetwork",
    "SynthesisNetwork",
    "ModulatedConv2d",
    "StyledConv",
    "ToRGB",
    "EqualLinear",
    "EqualConv2d",
    "NoiseInjection",
    "ConstantInput",
    "PixelNorm",
    "upfirdn2d",
    "fused_leaky_relu",
    "make_kernel",
    "rosinality_channels",
    "convert_rosinality_state_dict",
    "infer_rosinality_config",
    "load_rosinality",
    "refuse_pickle",
    "ConvLayer",
    "DiscriminatorBlock",
    "NOISE_MODES",
    "OUTPUT_TYPES",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "MODEL_TYPE",
    "SQRT2",
]
