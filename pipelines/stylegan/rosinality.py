"""Safe loading of rosinality/stylegan2-pytorch g_ema checkpoints (weights_only); NVIDIA pickles refused unread."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from .config import StyleGANConfig, StyleGANLoadError
from .layers import make_kernel
from .networks import Generator
from .pipeline import StyleGANPipeline, _load_into, _mismatch


def _extract_hint(path: Path) -> str:
    return (
        "in a trusted environment extract the generator into a plain state dict: "
        f'ckpt = torch.load("{path}", weights_only=False); torch.save(ckpt["g_ema"], "g_ema.pt"); then load g_ema.pt'
    )


def _rosinality_key(ours: str) -> str:
    """Our state-dict key -> rosinality's g_ema key (see the module docstring for the layout)."""
    if ours.startswith("mapping.layers."):
        i, rest = ours[len("mapping.layers.") :].split(".", 1)
        return f"style.{int(i) + 1}.{rest}"  # style.0 is rosinality's PixelNorm
    if ours == "synthesis.input.const":
        return "input.input"
    key = ours[len("synthesis.") :]
    parts = key.split(".")
    if parts[-1] == "bias" and (parts[0] == "conv1" or parts[0] == "convs") and parts[-2] != "modulation":
        return key[: -len("bias")] + "activate.bias"  # rosinality keeps a StyledConv's bias in its FusedLeakyReLU
    return key


def _rosinality_shape(ours: str, shape: torch.Size) -> tuple[int, ...]:
    """Rosinality stores modulated weights and the constant with a leading 1, toRGB biases as (1, 3, 1, 1)."""
    if ours.endswith(".conv.weight") or ours == "synthesis.input.const":
        return (1, *shape)
    if (
        ours.startswith(("synthesis.to_rgb1.", "synthesis.to_rgbs."))
        and ours.endswith(".bias")
        and ".modulation." not in ours
    ):
        return (1, 3, 1, 1)
    return tuple(shape)


def _rosinality_constants(config: StyleGANConfig) -> dict[str, torch.Tensor]:
    """Rosinality's derived buffers: the FIR kernels of the upsampling convs and of the toRGB skips."""
    kernel = make_kernel(config.blur_kernel) * 4
    n_blocks = len(config.resolutions) - 1
    out = {f"convs.{2 * b}.conv.blur.kernel": kernel for b in range(n_blocks)}
    out.update({f"to_rgbs.{b}.upsample.kernel": kernel for b in range(n_blocks)})
    return out


def convert_rosinality_state_dict(
    sd: dict[str, torch.Tensor], config: StyleGANConfig, *, generator: Generator | None = None
) -> dict[str, torch.Tensor]:
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
            if (
                not isinstance(sd[key], torch.Tensor)
                or sd[key].shape != value.shape
                or not torch.allclose(sd[key].float(), value)
            ):
                misshaped.append(f"{key} (a blur kernel other than the config's {list(config.blur_kernel)})")
    problems = _mismatch(missing, [k for k in sd if k not in used], misshaped)
    if problems:
        raise StyleGANLoadError(
            f"not a rosinality g_ema state dict for a {config.resolution}px StyleGAN2 with "
            f"style_dim {config.style_dim}, n_mlp {config.n_mlp}: {problems}; pass the matching "
            "config (or config=None to infer it)"
        )
    return out


def infer_rosinality_config(sd: dict[str, torch.Tensor]) -> StyleGANConfig:
    """The architecture of a rosinality g_ema state dict, read off its shapes: n_mlp and style_dim from
    ``style.*``, the resolution from the number of convs (two per doubling), widths from the conv weights.
    lr_mlp and the blur kernel cannot be read off weights: rosinality's defaults (0.01, [1, 3, 3, 1])."""

    def shape(key):
        t = sd.get(key)
        if not isinstance(t, torch.Tensor):
            raise StyleGANLoadError(
                f"cannot infer the StyleGAN architecture: the state dict has no tensor {key!r} "
                "(is it a rosinality g_ema state dict?); pass config="
            )
        return t.shape

    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    n_convs = 0
    while f"convs.{n_convs}.conv.weight" in sd:
        n_convs += 1
    if n_convs % 2:
        raise StyleGANLoadError(
            f"cannot infer the StyleGAN architecture: {n_convs} convs (rosinality has two "
            "per resolution); pass config="
        )
    style_dim = shape(f"style.{n_mlp}.weight")[0] if n_mlp else shape("conv1.conv.modulation.weight")[1]
    z_dim = shape("style.1.weight")[1] if n_mlp else style_dim
    channels = {4: shape("conv1.conv.weight")[1]}
    for b in range(n_convs // 2):
        channels[8 * 2**b] = shape(f"convs.{2 * b}.conv.weight")[1]
    return StyleGANConfig(
        resolution=4 * 2 ** (n_convs // 2),
        style_dim=int(style_dim),
        n_mlp=n_mlp,
        z_dim=int(z_dim),
        channels={k: int(v) for k, v in channels.items()},
    )


def refuse_pickle(path: str | os.PathLike) -> None:
    """NVIDIA ``.pkl`` generators are refused without being opened: unpickling one runs the code it embeds."""
    path = Path(path)
    if path.suffix.lower() == ".pkl":
        raise StyleGANLoadError(
            f"{path}: NVIDIA .pkl generators are refused unread, because loading one executes Python code embedded in "
            "the pickle; convert it elsewhere, in a sandbox and only if you trust it, to a rosinality-layout state "
            "dict (torch.save(state_dict, 'g_ema.pt')) and load that"
        )


def load_rosinality(
    path: str | os.PathLike,
    config: StyleGANConfig | None = None,
    device: str | torch.device = "cpu",
    w_avg_samples: int = 4096,
) -> StyleGANPipeline:
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
    refuse_pickle(path)
    if suffix not in (".pt", ".pth", ".safetensors"):
        raise StyleGANLoadError(
            f"{path}: expected a rosinality checkpoint (.pt / .pth) or a .safetensors g_ema state dict"
        )
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
                    raise StyleGANLoadError(
                        f"{path} holds a pickled {found.group(1)}, which safe loading (weights_only=True) refuses; "
                        f"{_extract_hint(path)}"
                    ) from e
                detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
                raise StyleGANLoadError(
                    f"{path} is corrupt or not a plain tensor checkpoint: safe loading (weights_only=True) refuses it"
                    f"{f' ({detail.group(1).strip()})' if detail else ''}; if it is a trusted rosinality checkpoint, "
                    f"{_extract_hint(path)}"
                ) from e
            raise StyleGANLoadError(
                f"cannot read {path} as a torch checkpoint ({type(e).__name__}: "
                f"{text.splitlines()[0] if text else ''}); is the file complete?"
            ) from e
    if isinstance(obj, dict) and "g_ema" in obj:
        obj = obj["g_ema"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = sorted(map(str, obj))[:5] if isinstance(obj, dict) else type(obj).__name__
        raise StyleGANLoadError(
            f"{path} holds neither a 'g_ema' entry nor a bare g_ema state dict (found {keys}); "
            "save the generator's state dict: torch.save(ckpt['g_ema'], 'g_ema.pt')"
        )
    config = config if config is not None else infer_rosinality_config(obj)
    generator = Generator(config)
    state = convert_rosinality_state_dict(obj, config, generator=generator)
    _load_into(generator, {**state, "w_avg": generator.w_avg}, str(path), "pass the matching config")
    generator.compute_w_avg(w_avg_samples)
    return StyleGANPipeline(generator.eval(), name_or_path=str(path)).to(device)
