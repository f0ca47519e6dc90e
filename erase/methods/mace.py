"""MACE (Mass Concept Erasure, Lu et al. CVPR 2024): a closed-form refinement, one rank-1 LoRA per concept, and
a closed-form fusion of the LoRAs into one cross-attention K/V edit.

1. **Closed-form refinement (CFR).** Every cross-attention ``attn2.to_k`` / ``attn2.to_v`` is re-solved so that
   the tokens from each concept's last token to the end of the sequence (where the concept's "residual" meaning
   sits) give the keys and values of the same positions of the anchor prompt, while the retain prompts' keys and
   values stay (UCE's solve, ``erase.methods.uce.uce_solve``, with MACE's weights: a heavy preservation term
   and a small ridge ``lam``; upstream uses lamb 0 with cached COCO statistics).
2. **One LoRA per concept.** For each concept of the request (a joint request holds several; prompts are grouped by
   the tokens that differ from their anchor prompt), a rank-``lora_rank`` update B A of every cross-attention
   *key* projection is trained for ``lora_steps`` Adam steps to drive the cross-attention probabilities of the
   concept's tokens towards zero: loss = mean over layers of the squared attention probabilities at the
   concept's token positions, on the CFR model's UNet at noised latents of the *original* model's images of the
   concept (``lora_images`` per concept), timesteps drawn around t = 300 (MACE samples 200-400 most).
   Only the keys take part in the attention probabilities, so only the key projections get a LoRA; the queries
   are those of the CFR model (taken from one forward pass, no gradient through the UNet). The LoRA acts on the
   concept's own tokens only: applied to every token, a LoRA silences the concept mostly by raising the keys of
   the start token, which every prompt shares and the fusion must keep, so its fused effect was lost (measured on
   the tiny pipe: the fused model's concept attention rose to 4x the CFR model's). ``mask 'none'`` (MACE
   for art styles) weighs every pixel; ``'attention'`` restricts the loss to the pixels where the concept's own
   attention (mean over heads, normalised to its maximum) exceeds ``mask_threshold`` at the start of training
   (the model's own map, as Receler uses; MACE's Grounded-SAM masks are not available offline).
3. **Closed-form fusion.** One key projection per layer that reproduces every concept's LoRA on that concept's
   tokens and the CFR projection on the retain prompts' tokens:

       W = argmin  sum_i |(W - W_i) C_i|^2 + fuse_preserve |(W - W_cfr) C_p|^2 + lam |W - W_cfr|^2,

   W_i = W_cfr + B_i A_i, C_i the concept's token embeddings (its forget prompts, the concept's span), C_p the
   retain (and empty) prompts' tokens; the other tokens of the concept's forget prompts join with W_cfr as their
   target (as during the LoRA's training). float64, one linear solve per layer (``fuse_solve``). The patch config
   records each concept's attention loss before and after its LoRA and with the fused keys
   (``attention_loss_fused``), on the same images and noise.

No loop steps: ``setup`` writes the fused weights and the loop turns the change into a dense K/V patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from ..core.components import model_device, model_root
from ..core.data import generations, load_captioned_images
from ..core.diffusion import alphas_cumprod, encode_images, encode_prompts, noisy
from ..core.errors import EraseError
from ..core.registry import check_options, option, register_method
from ..core.selection import ParamSelection
from .uce import UCE, UCEConfig, concept_span, prompt_tokens


@dataclass
class MACEConfig(UCEConfig):
    preserve_scale: float | None = option(
        10.0,
        "CFR and fusion: weight per retain prompt of keeping its keys and values (MACE weighs "
        "preservation heavily: preserve_weight 2e5 against its COCO statistics)",
    )
    lam: float = option(0.1, "ridge weight towards the original (CFR) and the CFR weights (fusion); upstream lamb 0")
    lora_rank: int = option(1, "rank of each concept's key-projection LoRA (upstream 1)")
    lora_steps: int = option(50, "Adam steps per concept's LoRA (upstream 50)")
    lora_lr: float = option(
        1e-2,
        "Adam learning rate of the LoRAs (upstream 1e-4 on SD v1.4's 768-d keys; canvas-mini's 64-d keys need more)",
    )
    lora_images: int = option(8, "the original's images per concept the LoRA is trained on (upstream 8)")
    mask: str = option(
        "none", "'none' (every pixel, MACE for art styles) or 'attention' (where the concept's own attention is high)"
    )
    mask_threshold: float = option(0.5, "with mask 'attention': the share of the map's maximum a pixel needs to count")
    fuse_preserve: float = option(
        1.0,
        "fusion: weight of the retain tokens' keys staying as CFR made them, per token, against the "
        "concept tokens' weight of 1",
    )
    concept_images: str | None = option(
        None,
        "folder of the concepts' images (searched recursively): X.png, its prompt in X.txt (one of the request's "
        "forget prompts) and optionally its mask X.mask.png (white: the concept; MACE's segmentation masks). A "
        "concept with images there trains its LoRA on them, masked, instead of on the original's generations",
    )
    data_steps: int = option(25, "sampler steps for the original's images of each concept")
    data_guidance: float = option(7.5, "CFG weight of that sampler")
    data_seed: int = option(10_000, "first seed of those images (disjoint from evaluation seeds)")
    seed: int = option(0, "seed of the LoRA training (timesteps, noise, image order)")

    method: ClassVar[str] = "mace"

    def check(self) -> None:
        super().check()
        check_options(
            self,
            self.method,
            choices={"mask": ("none", "attention")},
            at_least_one=("lora_rank", "lora_images"),
            non_negative=("lora_steps", "fuse_preserve", "data_steps"),
            positive=("lora_lr",),
        )
        if not 0 <= self.mask_threshold < 1:
            raise EraseError(f"mace option mask_threshold must be in [0, 1), got {self.mask_threshold}")


@torch.no_grad()
def fuse_solve(
    w_base: torch.Tensor,
    edits: list[tuple[torch.Tensor, torch.Tensor]],
    c_keep: torch.Tensor,
    keep_weight: float,
    lam: float,
) -> torch.Tensor:
    """argmin_W sum_i |(W - W_i) C_i^T|^2 + keep_weight |(W - W_base) C_p^T|^2 + lam |W - W_base|^2
    for ``edits`` = [(W_i, C_i)] (rows of C are token embeddings), in float64."""
    wb = w_base.double()
    d = wb.shape[1]
    ck = c_keep.double()
    lhs = lam * torch.eye(d, dtype=torch.float64) + keep_weight * ck.T @ ck
    rhs = lam * wb + keep_weight * wb @ ck.T @ ck
    for w_i, c_i in edits:
        c = c_i.double()
        lhs += c.T @ c
        rhs += w_i.double() @ c.T @ c
    return torch.linalg.solve(lhs, rhs.T).T  # lhs is symmetric


def concept_groups(pipe, forget_prompts: list[str], anchor_prompts: list[str]) -> dict[tuple[int, ...], dict]:
    """The request's forget prompts grouped by concept (the token ids that differ from the anchor prompt): per group
    the prompt indices and, per prompt, the positions of the concept's tokens."""
    (ids_f, len_f), (ids_a, len_a) = prompt_tokens(pipe, forget_prompts), prompt_tokens(pipe, anchor_prompts)
    groups: dict[tuple[int, ...], dict] = {}
    for i in range(len(forget_prompts)):
        f, a = ids_f[i].tolist(), ids_a[i].tolist()
        start, end_f, _ = concept_span(f, a, len_f[i], len_a[i], i)
        g = groups.setdefault(tuple(f[start : end_f + 1]), {"prompts": [], "positions": []})
        g["prompts"].append(i)
        g["positions"].append(list(range(start, end_f + 1)))
    return groups


def _concept_rows(emb: torch.Tensor, group: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A concept's token embeddings (its span in each of its forget prompts) and the other tokens of those prompts."""
    on, rest = [], []
    for i, pos in zip(group["prompts"], group["positions"]):
        other = [j for j in range(emb.shape[1]) if j not in pos]
        on.append(emb[i, pos])
        rest.append(emb[i, other])
    return torch.cat(on), torch.cat(rest)


class KeyCapture:
    """Forward pre-hooks on every cross-attention module: each one's query input and text states of the last pass."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [m.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.inputs[name] = (hidden.detach(), kwargs["encoder_hidden_states"].detach())

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def attention_probs(attn, hidden: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cross-attention probabilities (B, heads, pixels, tokens) from a module's query input and keys (B, tokens,
    inner)."""
    q = attn.head_to_batch_dim(attn.to_q(hidden))
    probs = attn.get_attention_scores(q, attn.head_to_batch_dim(keys), None)
    return probs.reshape(hidden.shape[0], attn.heads, *probs.shape[1:])


class MACE(UCE):
    """MACE: CFR (UCE's solve on the concept's residual tokens), a rank-1 key LoRA per concept that silences its
    attention, and a closed-form fusion of the LoRAs into one K/V edit."""

    name = "mace"

    def setup(self, pipe) -> ParamSelection:
        cfg, req = self.config, self.request
        groups = concept_groups(pipe, req.forget_prompts, req.anchor_prompts)
        images = self._concept_latents(pipe, groups)  # the original's images, before any edit
        data, selection, params = self.edit(pipe)  # 1. CFR: UCE's solve with MACE's weights
        root = model_root(pipe)
        suffix = ".to_k.weight"
        attns = {
            n[: -len(suffix)]: root.get_submodule(n[: -len(suffix)]) for n in params if n.endswith("attn2" + suffix)
        }
        loras, report, measures = [], [], []
        for k, (tokens, group) in enumerate(groups.items()):  # 2. one LoRA per concept
            lora, info, measure = self._train_lora(pipe, attns, group, images[tokens], k)
            loras.append((group, lora))
            measures.append(measure)
            report.append(
                {
                    "concept_tokens": pipe.tokenizer.decode(list(tokens)).strip(),
                    "prompts": len(group["prompts"]),
                    "images": "generations" if images[tokens][2] is None else "concept_images",
                    **info,
                }
            )
        with torch.no_grad():  # 3. fusion of the key LoRAs
            emb_f = encode_prompts(pipe, req.forget_prompts).float().cpu()
            rows = [_concept_rows(emb_f, group) for group, _ in loras]
            for name, attn in attns.items():
                w_cfr = attn.to_k.weight.detach().cpu().float()
                edits = [(w_cfr, rest) for _, rest in rows]  # the concepts' prompts' other tokens: as trained, CFR
                edits += [(w_cfr + (lora[name][0] @ lora[name][1]).cpu(), c) for (_, lora), (c, _) in zip(loras, rows)]
                fused = fuse_solve(w_cfr, edits, data.c_keep, cfg.fuse_preserve, cfg.lam)
                attn.to_k.weight.copy_(fused.to(attn.to_k.weight.device, attn.to_k.weight.dtype))
        for entry, measure in zip(report, measures):  # the fused keys against each LoRA, same images and noise
            entry["attention_loss_fused"] = round(measure(None), 6)
        self.info["mace"] = {"concepts": report, "mask": cfg.mask}
        return selection

    def _concept_latents(self, pipe, groups: dict) -> dict[tuple[int, ...], tuple]:
        """Per concept: the latents of its images in ``concept_images`` with their prompt indices and masks, or else
        ``lora_images`` latents of the original model (its forget prompts in turn, then the next seed), their
        forget-prompt indices and no masks."""
        cfg, out = self.config, self._user_images(pipe, groups)
        for tokens, group in groups.items():
            if tokens in out:
                continue
            n = len(group["prompts"])
            per = -(-cfg.lora_images // n)  # seeds per prompt
            z, _ = generations(
                pipe,
                [self.request.forget_prompts[i] for i in group["prompts"]],
                per,
                cfg.data_seed,
                steps=cfg.data_steps,
                guidance=cfg.data_guidance,
            )
            order = [(j % n) * per + j // n for j in range(cfg.lora_images)]  # the prompts in turn, then the next seed
            out[tokens] = (z[order], [group["prompts"][j % n] for j in range(cfg.lora_images)], None)
        return out

    def _user_images(self, pipe, groups: dict) -> dict[tuple[int, ...], tuple]:
        """``concept_images``, grouped by concept through their captions: {tokens: (latents, prompt indices, masks
        (N, 1, H, W); an image without a mask file weighs every pixel)}."""

        if not self.config.concept_images:
            return {}
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        index = {p: i for i, p in enumerate(self.request.forget_prompts)}
        found: dict[tuple[int, ...], list] = {}
        for image, caption, mask in load_captioned_images(self.config.concept_images, size, "mace concept_images"):
            if caption not in index:
                raise EraseError(
                    f"mace concept_images: the caption {caption!r} is not one of the request's forget prompts; "
                    "caption each image with the forget prompt it shows"
                )
            tokens = next(t for t, g in groups.items() if index[caption] in g["prompts"])
            found.setdefault(tokens, []).append(
                (image, index[caption], torch.ones_like(image[:1]) if mask is None else mask)
            )
        out = {}
        for tokens, items in found.items():
            with torch.no_grad():
                z = encode_images(pipe, torch.stack([im for im, _, _ in items])).cpu()
            out[tokens] = (z, [i for _, i, _ in items], torch.stack([m for _, _, m in items]))
        return out

    def _train_lora(self, pipe, attns: dict, group: dict, images, k: int) -> tuple[dict, dict, Callable]:
        """Rank-r B A per key projection, trained to silence the concept's attention; returns {layer: (B, A)}, the
        attention loss on all of the concept's images at t = 300 (fixed noise) before and after training, and that
        loss as a function of a LoRA (None: the model's keys as they are)."""
        cfg, device = self.config, model_device(pipe)
        z0_all, picks, image_masks = images
        rng = torch.Generator().manual_seed(cfg.seed * 1000 + k)
        lora = {}
        for name, attn in attns.items():
            w = attn.to_k.weight
            a = (torch.randn(cfg.lora_rank, w.shape[1], generator=rng) / math.sqrt(w.shape[1])).to(device)
            lora[name] = (
                torch.zeros(w.shape[0], cfg.lora_rank, device=device, requires_grad=True),
                a.requires_grad_(True),
            )
        opt = torch.optim.Adam([t for pair in lora.values() for t in pair], lr=cfg.lora_lr)
        loss_of = _AttentionLoss(pipe, attns, self.request.forget_prompts, group, cfg, image_masks)
        fixed = (list(range(len(picks))), torch.full((len(picks),), 300), torch.randn(z0_all.shape, generator=rng))

        @torch.no_grad()
        def measure(lora_or_none) -> float:
            return float(loss_of(lora_or_none, z0_all, picks, *fixed))

        before = measure(lora)
        for _ in range(cfg.lora_steps):
            j = int(torch.randint(len(picks), (1,), generator=rng))
            t = torch.tensor([int(min(999, max(1, 300 + 100 * torch.randn(1, generator=rng).item())))])
            loss = loss_of(lora, z0_all, picks, [j], t, torch.randn(z0_all[j : j + 1].shape, generator=rng))
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = measure(lora)
        return lora, {"attention_loss_before": round(before, 6), "attention_loss_after": round(after, 6)}, measure


class _AttentionLoss:
    """MACE's LoRA loss: the mean over cross-attention layers of the squared attention probabilities at the concept's
    token positions (masked with ``mask 'attention'``), with the key projections' LoRA applied; the queries come from
    one no-grad UNet pass of the CFR model."""

    def __init__(self, pipe, attns: dict, forget_prompts: list[str], group: dict, cfg, image_masks=None):
        self.pipe, self.attns, self.cfg, self.image_masks = pipe, attns, cfg, image_masks
        self.positions = dict(zip(group["prompts"], group["positions"]))
        device, n_tokens = model_device(pipe), pipe.tokenizer.model_max_length
        self.on_concept = {  # the LoRA acts on the concept's own tokens only: the fusion keeps the others' keys
            i: torch.zeros(n_tokens, device=device).index_fill_(0, torch.tensor(pos, device=device), 1.0)
            for i, pos in self.positions.items()
        }
        with torch.no_grad():  # the text side does not change while the LoRA trains: each prompt encoded once
            self.cond = {i: encode_prompts(pipe, [forget_prompts[i]]) for i in self.positions}
        self.acp = alphas_cumprod(pipe)
        self.masks: dict = {}

    def __call__(
        self, lora: dict | None, z0_all, picks: list[int], rows: list[int], t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        device = model_device(self.pipe)
        total = 0.0
        for r, row in enumerate(rows):  # one image at a time: each prompt has its own concept positions
            i = picks[row]
            z0, tt = z0_all[row : row + 1].to(device), t[r : r + 1].to(device)
            capture = KeyCapture(self.attns)
            try:
                with torch.no_grad():
                    z_t = noisy(z0, noise[r : r + 1].to(device), tt, self.acp)
                    self.pipe.unet(z_t, tt, encoder_hidden_states=self.cond[i])
            finally:
                capture.close()
            loss = 0.0
            for name, attn in self.attns.items():
                hidden, text = capture.inputs[name]
                keys = torch.nn.functional.linear(text, attn.to_k.weight.detach())
                if lora is not None:
                    b, a = lora[name]
                    keys = keys + self.on_concept[i][None, :, None] * torch.nn.functional.linear(text, b @ a)
                p = attention_probs(attn, hidden, keys)[..., self.positions[i]]  # (1, heads, pixels, concept tokens)
                loss = loss + (p.pow(2).sum(-1) * self._pixel_weights(p, name, i, row)).mean()
            total = total + loss / len(self.attns)
        return total / len(rows)

    def _pixel_weights(self, p: torch.Tensor, name: str, i: int, row: int) -> torch.Tensor | float:
        """Each pixel's weight in the loss, (1, 1, pixels): the image's mask averaged over the pixel (a mask's share
        of it), or with ``mask 'attention'`` 1 where the concept's own attention is high, or 1 everywhere."""
        if self.image_masks is not None:
            side = math.isqrt(p.shape[2])
            m = torch.nn.functional.adaptive_avg_pool2d(self.image_masks[row : row + 1], side).flatten(1)
            return m.to(p.device)[:, None, :]
        if self.cfg.mask == "attention":
            key = (name, i, row)
            if key not in self.masks:  # the concept's own map, fixed when first seen
                m = p.detach().mean(1).sum(-1)
                self.masks[key] = (m >= self.cfg.mask_threshold * m.amax(-1, keepdim=True)).float()
            return self.masks[key][:, None, :]
        return 1.0


register_method(
    "mace",
    MACEConfig,
    MACE,
    "MACE: closed-form K/V refinement, a rank-1 key LoRA per concept silencing its attention, "
    "closed-form fusion (multi-concept)",
)
