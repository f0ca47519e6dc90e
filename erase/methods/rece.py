"""RECE (Reliable and Efficient Concept Erasure, Gong et al. ECCV'24): UCE, then
closed-form rounds against its own leaks.

Epoch 0 is UCE (``erase.methods.uce``) on every cross-attention ``attn2.to_k`` / ``attn2.to_v``, with UCE's
options. An edit that maps the concept's tokens onto the anchor can still be steered back to the concept by
another text embedding; each further epoch finds, for every erase row c (UCE's forget-token rows), the
embedding c' that makes the *edited* projections W_new,l give the *original* keys and values of c, over all
edited layers l at once:

    c' = argmin_x  sum_l |W_new,l x - W_old,l c|^2 + reg |x|^2
       = (sum_l W_new,l^T W_new,l + reg I)^-1 (sum_l W_new,l^T W_old,l) c

(float64, one linear solve for all rows). The found rows join the erase set, paired with the same anchor rows
(they must map to what the anchor maps to under W_old, with weight ``regenerate_scale`` relative to
``erase_scale``), and UCE is re-solved from the original weights W_old with the enlarged set: the found
embeddings accumulate over epochs and lambda keeps pulling towards the original model, not towards the
previous edit. Each epoch looks for c' against the newest edit.

``self.info["rece"]`` records per epoch how far the edited K/V of c' were from the original K/V of c before
they were erased (relative residual; small = c' regenerates the concept), the same residual after the
epoch's solve, and the relative K/V distance of the concept's own rows to their anchor targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.components import model_root
from ..core.errors import EraseError
from ..core.registry import check_options, option, register_method
from ..core.selection import ParamSelection
from .uce import UCE, UCEConfig, kv_parameters, uce_data, uce_solve


@dataclass
class RECEConfig(UCEConfig):
    epochs: int = option(
        3,
        "rounds after the UCE edit, each finding the regenerating embeddings of the newest edit and erasing them too "
        "(paper: 3 nudity, 2 unsafe, 1 artistic styles)",
    )
    reg: float = option(
        1e-3,
        "RECE's lambda: ridge weight of the regenerating-embedding solve (paper: 1e-3 styles "
        "and hard objects, 0.1 nudity)",
    )
    regenerate_scale: float = option(1.0, "weight of the found embeddings in the erase term, relative to erase_scale")

    method: ClassVar[str] = "rece"

    def check(self) -> None:
        super().check()
        check_options(self, self.method, non_negative=("epochs", "regenerate_scale"), positive=("reg",))


@torch.no_grad()
def regenerating_embeddings(
    w_new: list[torch.Tensor], w_old: list[torch.Tensor], c: torch.Tensor, reg: float
) -> torch.Tensor:
    """One c' row per row of ``c``: the ridge minimiser of sum_l |W_new,l x - W_old,l c|^2 + reg |x|^2, in float64."""
    d = c.shape[1]
    lhs = reg * torch.eye(d, dtype=torch.float64)
    cross = torch.zeros(d, d, dtype=torch.float64)
    for wn, wo in zip(w_new, w_old, strict=True):
        wn64 = wn.double()
        lhs += wn64.T @ wn64
        cross += wn64.T @ wo.double()
    return torch.linalg.solve(lhs, cross @ c.double().T).T


@torch.no_grad()
def kv_residual(w_a: list[torch.Tensor], x: torch.Tensor, w_b: list[torch.Tensor], y: torch.Tensor) -> float:
    """sqrt(sum_l |W_a,l x - W_b,l y|^2) / sqrt(sum_l |W_b,l y|^2), over every row and every projection."""
    num = den = 0.0
    x64, y64 = x.double(), y.double()
    for wa, wb in zip(w_a, w_b, strict=True):
        ref = y64 @ wb.double().T
        num += float(((x64 @ wa.double().T - ref) ** 2).sum())
        den += float((ref**2).sum())
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


class RECE(UCE):
    """RECE: UCE, then rounds that find the embeddings regenerating the concept through the edit and erase them too."""

    name = "rece"

    def setup(self, pipe) -> ParamSelection:
        cfg = self.config
        data = uce_data(pipe, self.request, cfg, self.name)
        selection, params = kv_parameters(pipe, self.scope(pipe), data.c_keep.shape[1])
        w_old = {n: p.detach().cpu().clone() for n, p in params.items()}
        old = list(w_old.values())

        def solve(c_erase: torch.Tensor, c_target: torch.Tensor) -> list[torch.Tensor]:
            for n, p in params.items():
                p.copy_(
                    uce_solve(
                        w_old[n], c_erase, c_target, data.c_keep, data.keep_weights, cfg.lam, cfg.erase_scale
                    ).to(p.device, p.dtype)
                )
            return [p.detach().cpu() for p in params.values()]

        with torch.no_grad():
            new = solve(data.c_erase, data.c_target)  # epoch 0: UCE
            log = [{"epoch": 0, "concept_to_anchor": kv_residual(new, data.c_erase, old, data.c_target)}]
            found: list[torch.Tensor] = []
            root_w = math.sqrt(cfg.regenerate_scale)  # scaling a pair's rows by sqrt(s) weighs its erase term by s
            c_norm = float(data.c_erase.double().norm())
            for epoch in range(1, cfg.epochs + 1):
                c_reg = regenerating_embeddings(new, old, data.c_erase, cfg.reg)
                before = kv_residual(new, c_reg, old, data.c_erase)
                found.append(c_reg)
                c_erase = torch.cat([data.c_erase.double(), root_w * torch.cat(found)])
                c_target = torch.cat([data.c_target.double()] + [root_w * data.c_target.double()] * len(found))
                new = solve(c_erase, c_target)
                log.append(
                    {
                        "epoch": epoch,
                        "regenerate_residual_before": before,
                        "regenerate_residual_after": kv_residual(new, c_reg, old, data.c_erase),
                        "regenerate_norm_ratio": float(c_reg.norm()) / c_norm if c_norm > 0 else float("nan"),
                        "concept_to_anchor": kv_residual(new, data.c_erase, old, data.c_target),
                        "erase_rows": len(c_erase),
                    }
                )
            if not all(math.isfinite(v) for row in log for v in row.values()):
                raise EraseError(f"rece: a regenerating-embedding solve was not finite ({log[-1]}); raise reg")
        self.info["data"] = data.describe()
        self.info["trainable"] = {
            "group": cfg.parameter_group,
            "tensors": len(params),
            "weights": selection.count(model_root(pipe)),
        }
        self.info["rece"] = log
        return selection


register_method(
    "rece",
    RECEConfig,
    RECE,
    "RECE: UCE, then closed-form rounds erasing the embeddings that regenerate the concept through the edit",
)
