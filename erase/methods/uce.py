"""UCE (Unified Concept Editing): a closed-form edit of every cross-attention key and value projection.

For each ``attn2.to_k`` / ``attn2.to_v`` weight W (d_out x d) and text-token embeddings c, UCE solves

    min_W  s_e sum_E |W c_i - W_old c*_i|^2 + s_p sum_P |W c_j - W_old c_j|^2 + lam |W - W_old|_F^2

whose solution is  W = (lam W_old + s_e sum_E W_old c*_i c_i^T + s_p sum_P W_old c_j c_j^T)
                       (lam I + s_e sum_E c_i c_i^T + s_p sum_P c_j c_j^T)^-1,

solved in float64 with a linear solve (no explicit inverse). E pairs each forget prompt's token embeddings
with its anchor prompt's (the concept is mapped onto the anchor: c*_i is the anchor's token at the same
place); P holds the retain prompts' tokens (and the empty prompt's, as upstream), whose keys and values
should not move.

Which tokens: ``tokens 'suffix'`` (the legacy code) takes, in each forget / anchor pair, the tokens from the
concept's last token to the end of the padded sequence, aligned from there and trimmed to equal length;
``'last'`` (the current upstream script) takes only the concept's last token. Preserve prompts use every
token position either way. No training loop: ``setup`` writes the new weights, ``steps`` is 0, and the loop
turns the change into a dense K/V patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.components import model_root
from ..core.diffusion import encode_prompts
from ..core.errors import EraseError
from ..core.loop import Eraser
from ..core.registry import MethodConfig, check_options, option, register_method
from ..core.selection import ParamSelection, unet_weights


@dataclass
class UCEConfig(MethodConfig):
    lam: float = option(0.5, "lambda: weight of staying close to the original weights (upstream 0.5)")
    erase_scale: float = option(1.0, "s_e: weight of mapping the concept's tokens onto the anchor's (upstream 1)")
    preserve_scale: float | None = option(
        None,
        "s_p: weight of keeping the retain prompts' keys and values; null = max(0.1, 1 / |P|) "
        "per prompt (legacy upstream), a number = that weight per prompt",
    )
    tokens: str = option(
        "suffix",
        "erase tokens: 'suffix' (concept's last token to the end of the sequence, legacy) or 'last' (that token only)",
    )
    preserve_empty: bool = option(
        True, "also preserve the empty prompt (classifier-free guidance's unconditional branch), as upstream"
    )
    parameter_group: str = option("cross_attention_kv", "edited weights: 'cross_attention_kv' (upstream)")
    steps: int = option(0, "training steps (UCE has none: the edit is closed-form)")
    checkpoint_every: int = option(100, "unused (no training steps)")

    method: ClassVar[str] = "uce"  # the name option errors give (a method built on UCE's options sets its own)

    def check(self) -> None:
        m = self.method
        check_options(
            self,
            m,
            choices={"tokens": ("suffix", "last"), "parameter_group": ("cross_attention_kv",)},
            non_negative=("erase_scale",),
            positive=("lam",),
        )
        if self.preserve_scale is not None and not self.preserve_scale >= 0:
            raise EraseError(f"{m} option preserve_scale must be >= 0 or null, got {self.preserve_scale}")
        if self.steps != 0:
            raise EraseError(f"{m} is closed-form: it has no training steps; drop --steps (or --set steps=0)")


def prompt_tokens(pipe, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Padded token ids and each prompt's real length (BOS and EOS included, padding not)."""
    tok = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return tok.input_ids, tok.attention_mask.sum(1).tolist()


def concept_span(f: list[int], a: list[int], n_f: int, n_a: int, index: int = 0) -> tuple[int, int, int]:
    """Where a forget prompt's token ids ``f`` differ from its anchor prompt's ``a`` (real lengths ``n_f``, ``n_a``):
    (first differing position, the concept's last token in ``f``, the anchor's last token in ``a``). The common
    ending is aligned from each prompt's last real token, padding aside."""
    if f[:n_f] == a[:n_a]:
        raise EraseError(f"forget prompt {index} tokenises like its anchor prompt; the concept must change the prompt")
    start = next((k for k in range(min(n_f, n_a)) if f[k] != a[k]), min(n_f, n_a))
    back = 0
    while back < min(n_f, n_a) - start - 1 and f[n_f - 1 - back] == a[n_a - 1 - back]:
        back += 1
    return start, max(n_f - back - 1, start), max(n_a - back - 1, start)


def erase_pairs(
    ids_f: torch.Tensor,
    ids_a: torch.Tensor,
    emb_f: torch.Tensor,
    emb_a: torch.Tensor,
    tokens: str,
    len_f: list[int] | None = None,
    len_a: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(forget token embeddings, anchor token embeddings) row-aligned, from every forget / anchor prompt pair.

    The concept's span runs from the first token where the two prompts differ to where their common ending
    (aligned from each prompt's last real token, padding aside) starts; its last token in each prompt starts
    the aligned block ('suffix': through the end of the padded sequence, trimmed to equal length; 'last':
    that one token).
    """
    rows_f, rows_a = [], []
    for i in range(len(ids_f)):
        f, a = ids_f[i].tolist(), ids_a[i].tolist()
        _, end_f, end_a = concept_span(f, a, len_f[i] if len_f else len(f), len_a[i] if len_a else len(a), i)
        n = 1 if tokens == "last" else min(len(f) - end_f, len(a) - end_a)
        rows_f.append(emb_f[i, end_f : end_f + n])
        rows_a.append(emb_a[i, end_a : end_a + n])
    return torch.cat(rows_f), torch.cat(rows_a)


@torch.no_grad()
def uce_solve(
    w: torch.Tensor,
    c_erase: torch.Tensor,
    c_target: torch.Tensor,
    c_keep: torch.Tensor,
    keep_weights: torch.Tensor,
    lam: float,
    erase_scale: float,
) -> torch.Tensor:
    """The closed-form UCE weight for one projection ``w`` (d_out x d), in float64."""
    w64 = w.double()
    ce, ct, ck = c_erase.double(), c_target.double(), c_keep.double()
    kw = keep_weights.double()[:, None]
    d = w64.shape[1]
    lhs = lam * torch.eye(d, dtype=torch.float64) + erase_scale * ce.T @ ce + (kw * ck).T @ ck
    rhs = lam * w64 + erase_scale * (w64 @ ct.T) @ ce + (w64 @ (kw * ck).T) @ ck
    # W lhs = rhs  <=>  lhs^T W^T = rhs^T (lhs is symmetric)
    return torch.linalg.solve(lhs, rhs.T).T


@dataclass
class UCEData:
    """UCE's text-side inputs: erase rows and their anchor targets (row-aligned), preserve rows and their weights."""

    c_erase: torch.Tensor
    c_target: torch.Tensor
    c_keep: torch.Tensor
    keep_weights: torch.Tensor
    keep_prompts: list[str]
    per_prompt: float

    def describe(self) -> dict:
        return {
            "erase_tokens": len(self.c_erase),
            "preserve_prompts": len(self.keep_prompts),
            "preserve_tokens": len(self.c_keep),
            "preserve_scale_per_prompt": self.per_prompt,
        }


def uce_data(pipe, req, cfg, method: str = "uce") -> UCEData:
    """Encode the request's forget / anchor / retain prompts (and "" if ``cfg.preserve_empty``) into UCE's rows."""
    keep_prompts = list(req.retain_prompts) + ([""] if cfg.preserve_empty else [])
    if not keep_prompts:
        raise EraseError(f"{method} needs something to preserve: give retain concepts or keep preserve_empty on")
    (ids_f, len_f), (ids_a, len_a) = prompt_tokens(pipe, req.forget_prompts), prompt_tokens(pipe, req.anchor_prompts)
    with torch.no_grad():
        emb_f, emb_a = (
            encode_prompts(pipe, req.forget_prompts).float().cpu(),
            encode_prompts(pipe, req.anchor_prompts).float().cpu(),
        )
        emb_k = torch.cat(
            [encode_prompts(pipe, keep_prompts[i : i + 64]).float().cpu() for i in range(0, len(keep_prompts), 64)]
        )
    c_erase, c_target = erase_pairs(ids_f, ids_a, emb_f, emb_a, cfg.tokens, len_f, len_a)
    c_keep = emb_k.reshape(-1, emb_k.shape[-1])
    per_prompt = cfg.preserve_scale if cfg.preserve_scale is not None else max(0.1, 1.0 / len(keep_prompts))
    return UCEData(c_erase, c_target, c_keep, torch.full((len(c_keep),), per_prompt), keep_prompts, per_prompt)


def kv_parameters(pipe, scope: str, text_dim: int) -> tuple[ParamSelection, dict[str, torch.Tensor]]:
    """The selection of the projections in ``scope`` (everything else frozen) and those parameters, checked to
    take ``text_dim``-d inputs."""
    root = model_root(pipe)
    selection = ParamSelection.by_name(root, scope)
    params = selection.parameters(root)
    selection.freeze_others_(root)
    for p in params.values():
        if p.shape[1] != text_dim:
            raise EraseError(
                f"a cross-attention projection takes {p.shape[1]}-d inputs but the text encoder gives {text_dim}-d"
            )
    return selection, params


class UCE(Eraser):
    """UCE: closed-form edit of cross-attention K/V mapping the concept's tokens onto the anchor's,
    preserving the retain prompts."""

    name = "uce"

    def scope(self, pipe) -> str:
        return unet_weights(self.config.parameter_group)

    def setup(self, pipe) -> ParamSelection:
        return self.edit(pipe)[1]

    def edit(self, pipe) -> tuple[UCEData, ParamSelection, dict[str, torch.Tensor]]:
        """UCE's closed-form edit of every K/V projection in scope, in place; returns its data, the selection and
        the edited parameters (MACE refines further from here)."""
        cfg = self.config
        data = uce_data(pipe, self.request, cfg, self.name)
        selection, params = kv_parameters(pipe, self.scope(pipe), data.c_keep.shape[1])
        with torch.no_grad():
            for p in params.values():
                w = uce_solve(
                    p.detach().cpu(),
                    data.c_erase,
                    data.c_target,
                    data.c_keep,
                    data.keep_weights,
                    cfg.lam,
                    cfg.erase_scale,
                )
                p.copy_(w.to(p.device, p.dtype))
        self.info["data"] = data.describe()
        self.info["trainable"] = {
            "group": cfg.parameter_group,
            "tensors": len(params),
            "weights": selection.count(model_root(pipe)),
        }
        return data, selection, params

    def step(self, i: int) -> dict[str, float]:  # pragma: no cover - steps is always 0
        raise EraseError(f"{self.name} has no training steps")


register_method(
    "uce",
    UCEConfig,
    UCE,
    "UCE: closed-form edit of cross-attention K/V (concept tokens -> anchor tokens, retain prompts kept)",
)
