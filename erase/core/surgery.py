"""Gradient surgery: pure functions on {name: tensor} gradient dicts.

All dot products and norms are computed in float32 (or wider) whatever the
gradients' dtype; results keep each gradient's dtype.

* ``project_conflicting``: PCGrad's projection (Yu et al. 2020). If <g, g_ref> < 0,
  g <- g - <g, g_ref> / ||g_ref||^2 * g_ref, making g orthogonal to g_ref. ``scope="global"``
  treats the dict as one flat vector (PCGrad as published); ``scope="per_tensor"`` projects each
  tensor on its own.
* ``doco_official``: DoCo's released rule, per tensor: c = cos(g_u, g_r); if c < 0,
  g_u <- g_u - lam * c * g_r / ||g_r||. It equals per-tensor PCGrad only when ||g_u|| = lam.
* ``weighted_sum``: sum_i w_i * g_i.
"""

from __future__ import annotations

import torch

Grads = dict[str, torch.Tensor]
EPS = 1e-12


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def dot(a: Grads, b: Grads) -> torch.Tensor:
    """Global dot product of two gradient dicts (same keys), in float32 or wider."""
    _same_keys(a, b)
    return sum((_f32(a[k]) * _f32(b[k])).sum() for k in a)


def norm(a: Grads) -> torch.Tensor:
    return dot(a, a).sqrt()


def _same_keys(a: Grads, b: Grads) -> None:
    if a.keys() != b.keys():
        raise KeyError(f"gradient dicts differ in keys: {sorted(set(a) ^ set(b))[:3]}")


def project_conflicting(g: Grads, g_ref: Grads, scope: str = "global") -> Grads:
    """PCGrad: remove from ``g`` its component along ``g_ref`` when the two conflict (negative dot)."""
    _same_keys(g, g_ref)
    if scope == "global":
        d = dot(g, g_ref)
        if d >= 0:
            return dict(g)
        coef = d / (dot(g_ref, g_ref) + EPS)
        return {k: (_f32(g[k]) - coef * _f32(g_ref[k])).to(g[k].dtype) for k in g}
    if scope == "per_tensor":
        out = {}
        for k in g:
            a, b = _f32(g[k]), _f32(g_ref[k])
            d = (a * b).sum()
            out[k] = g[k] if d >= 0 else (a - d / ((b * b).sum() + EPS) * b).to(g[k].dtype)
        return out
    raise ValueError(f"unknown scope {scope!r}; use 'global' or 'per_tensor'")


def doco_official(g_u: Grads, g_r: Grads, lam: float = 1.0, eps: float = 1e-8) -> Grads:
    """DoCo's released per-tensor rule (see module docstring). Only g_u is returned (g_r is not added)."""
    _same_keys(g_u, g_r)
    out = {}
    for k in g_u:
        a, b = _f32(g_u[k]), _f32(g_r[k])
        na, nb = a.norm(), b.norm()
        c = (a * b).sum() / (na * nb + eps)
        out[k] = g_u[k] if c >= 0 else (a - lam * c * b / (nb + eps)).to(g_u[k].dtype)
    return out


def weighted_sum(grads: list[Grads], weights: list[float]) -> Grads:
    if len(grads) != len(weights) or not grads:
        raise ValueError("weighted_sum needs one weight per gradient dict (at least one)")
    for g in grads[1:]:
        _same_keys(grads[0], g)
    return {k: sum(w * _f32(g[k]) for g, w in zip(grads, weights)).to(grads[0][k].dtype) for k in grads[0]}


def grads_of(loss: torch.Tensor, params: dict[str, torch.Tensor], retain_graph: bool = False) -> Grads:
    """{name: d loss / d param} via autograd.grad; leaves ``.grad`` untouched. Unused params get zeros."""
    names = list(params)
    gs = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=retain_graph, allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(names, gs)}


def clip_global_norm(g: Grads, max_norm: float) -> Grads:
    """Scale the dict so its global L2 norm is at most ``max_norm`` (as torch's clip_grad_norm_, on a dict)."""
    total = norm(g)
    coef = max_norm / (total + 1e-6)
    if coef >= 1:
        return dict(g)
    return {k: (_f32(v) * coef).to(v.dtype) for k, v in g.items()}


def pcgrad_pair(g_u: Grads, g_r: Grads, scope: str = "global", retain_weight: float = 1.0) -> Grads:
    """PCGrad for two tasks: each gradient projected off the other where they conflict, then summed
    (``retain_weight`` 1 is exact PCGrad; other values weight the projected retain gradient)."""
    a, b = project_conflicting(g_u, g_r, scope), project_conflicting(g_r, g_u, scope)
    return {k: (_f32(a[k]) + retain_weight * _f32(b[k])).to(g_u[k].dtype) for k in g_u}


# name -> (g_u, g_r, options) -> update; the DoCo generator step picks one by its `surgery` option.
# options: lam (official's projection strength), scope (PCGrad's), retain_weight (w: how much of the
# retain gradient the update adds: official proj(g_u) + w g_r, pcgrad g_u' + w g_r', none g_u + w g_r)
COMBINERS = {
    "official": lambda g_u, g_r, o: weighted_sum(
        [doco_official(g_u, g_r, lam=o["lam"]), g_r], [1.0, o["retain_weight"]]
    ),
    "pcgrad": lambda g_u, g_r, o: pcgrad_pair(g_u, g_r, o["scope"], o["retain_weight"]),
    "none": lambda g_u, g_r, o: weighted_sum([g_u, g_r], [1.0, o["retain_weight"]]),
}
# the upstream value of retain_weight per combiner: DoCo's released update is proj(g_u) alone; exact
# PCGrad sums both projected gradients; DoCo without CPG adds 0.1 x the retain loss
UPSTREAM_RETAIN_WEIGHT = {"official": 0.0, "pcgrad": 1.0, "none": 0.1}
