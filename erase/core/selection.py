"""ParamSelection: which weights an erasure may change.

A selection maps parameter names (with their component prefix, e.g.
``unet.down_blocks.0...``) to ``None`` (the whole tensor may change) or a
boolean mask of the tensor's shape (only the True entries may change).

Builders: ``by_name`` (regex include / exclude), ``by_saliency`` (global top
fraction of |gradient|, via ``kthvalue``: no full sort), ``everything``.
Operations: ``freeze_others_``, ``mask_grads_`` (after backward, before the
optimiser step), ``count``, ``density_by_prefix``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from .errors import EraseError

UNET_GROUPS = {
    "cross_attention_kv": r"^unet\..*attn2\.to_[kv]\.",
    "cross_attention": r"^unet\..*attn2\.",
    "unet": r"^unet\.",
}


def unet_weights(group: str, trainable: str = "") -> str:
    r"""The full-name regex of the UNet weights a method trains: a named ``group`` of UNET_GROUPS, or, when
    ``trainable`` is given, that regex searched in the UNet's own parameter names (``^`` anchors it at the
    start of the UNet name, e.g. ``^mid_block\.`` or ``attn2\.to_[kv]``)."""
    if not trainable:
        return UNET_GROUPS[group]
    try:
        re.compile(trainable)
    except re.error as e:
        raise EraseError(
            f"trainable pattern {trainable!r} is not a valid regular expression ({e}); fix --set trainable=..."
        ) from None
    if trainable.startswith("^"):
        return rf"^unet\.(?:{trainable[1:]})"
    return rf"^unet\.(?=.*?(?:{trainable}))"


@dataclass
class ParamSelection:
    masks: dict[str, torch.Tensor | None]

    # -- builders ---------------------------------------------------------------
    @classmethod
    def everything(cls, root: nn.Module) -> "ParamSelection":
        return cls({name: None for name, _ in root.named_parameters()})

    @classmethod
    def by_name(cls, root: nn.Module, include: str, exclude: str | None = None) -> "ParamSelection":
        inc, exc = re.compile(include), re.compile(exclude) if exclude else None
        names = {n: None for n, _ in root.named_parameters() if inc.search(n) and not (exc and exc.search(n))}
        if not names:
            raise EraseError(
                f"no parameter matches {include!r}"
                + (f" minus {exclude!r}" if exclude else "")
                + "; check the pattern against the model's parameter names (e.g. unet.down_blocks.0.attentions.0...)"
            )
        return cls(names)

    @classmethod
    def by_saliency(cls, grads: dict[str, torch.Tensor], fraction: float) -> "ParamSelection":
        """Keep the global top ``fraction`` of entries by |gradient| (largest magnitudes kept).

        Uses ``kthvalue`` on the concatenated magnitudes (one pass, no sort). Entries tied with the
        threshold are kept, so the count can exceed ``fraction`` only by ties.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"saliency fraction must be in (0, 1], got {fraction}")
        if not grads:
            raise ValueError("no gradients to rank")
        flat = torch.cat([g.detach().abs().flatten().float() for g in grads.values()])
        n_keep = max(1, int(round(fraction * flat.numel())))
        if n_keep >= flat.numel():
            return cls({name: None for name in grads})
        # the (n - n_keep + 1)-th smallest magnitude is the smallest one we keep; ties with it are kept too
        threshold = torch.kthvalue(flat.cpu(), flat.numel() - n_keep + 1).values.item()
        if threshold == 0:  # a zero gradient carries no saliency: never keep an entry for tying with zero
            return cls({name: g.detach().abs().float() > 0 for name, g in grads.items()})
        return cls({name: g.detach().abs().float() >= threshold for name, g in grads.items()})

    # -- operations -------------------------------------------------------------
    def parameters(self, root: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(root.named_parameters())
        missing = [n for n in self.masks if n not in params]
        if missing:
            raise KeyError(f"selection names {len(missing)} parameter(s) the model lacks, e.g. {missing[0]!r}")
        return {n: params[n] for n in self.masks}

    def freeze_others_(self, root: nn.Module) -> list[nn.Parameter]:
        """requires_grad only on selected tensors; returns them (for the optimiser)."""
        chosen = []
        for name, p in root.named_parameters():
            p.requires_grad_(name in self.masks)
            if name in self.masks:
                chosen.append(p)
        return chosen

    @torch.no_grad()
    def mask_grads_(self, root: nn.Module) -> None:
        """Zero the gradient of every unselected entry (call after backward, before the step)."""
        params = dict(root.named_parameters())
        for name, mask in self.masks.items():
            p = params[name]
            if mask is not None and p.grad is not None:
                p.grad.mul_(mask.to(device=p.grad.device, dtype=p.grad.dtype))

    def count(self, root: nn.Module) -> int:
        """Number of entries that may change."""
        params = dict(root.named_parameters())
        return int(sum(params[n].numel() if m is None else int(m.sum()) for n, m in self.masks.items()))

    def density_by_prefix(self, root: nn.Module, depth: int = 3) -> dict[str, float]:
        """Fraction of selected entries per module prefix (first ``depth`` name parts; block index kept)."""
        params = dict(root.named_parameters())
        kept, total = defaultdict(int), defaultdict(int)
        for name, p in params.items():
            key = ".".join(name.split(".")[:depth])
            total[key] += p.numel()
            if name in self.masks:
                m = self.masks[name]
                kept[key] += p.numel() if m is None else int(m.sum())
        return {k: kept[k] / total[k] for k in sorted(total)}
