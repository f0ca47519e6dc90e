"""Prompts with learnable slots: token ids with placeholder positions whose input embeddings an attack supplies.

An attack never edits the tokenizer or the text encoder. A prompt is written with one ``{}`` marker where the
slots go (``"{} A Dogs image in Watercolor style."`` for UnlearnDiffAtk's prefix, ``"A Dogs image in {} style."``
for textual inversion's new word); ``slot_prompts`` tokenizes the text on either side of the marker exactly as
the whole prompt would be tokenized (CLIP's BPE splits at word boundaries) and puts ``n`` placeholder ids
between them. ``injected`` is a forward hook on the text encoder's token-embedding layer that writes the
attack's rows into the placeholder positions, so the text encoder runs unchanged (any transformers version,
any CLIP-like encoder whose input embeddings come from ``get_input_embeddings()``), and gradients flow into
the rows.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import EraseError

MARKER = "{}"


@dataclass
class SlotPrompts:
    ids: torch.Tensor  # (N, L) token ids, placeholders at the slots
    slots: torch.Tensor  # (N, L) bool: where the attack's rows go
    lengths: list[int]  # real tokens per prompt (BOS and EOS included)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: list[int]) -> "SlotPrompts":
        return SlotPrompts(self.ids[index], self.slots[index], [self.lengths[i] for i in index])


def _words(tokenizer, text: str) -> list[int]:
    text = " ".join(text.split())
    return tokenizer(text, add_special_tokens=False).input_ids if text else []


def slot_prompts(tokenizer, texts: list[str], n_slots: int) -> SlotPrompts:
    """Token ids of ``texts`` (each with one ``{}``) with ``n_slots`` placeholder positions at the marker."""
    max_len = tokenizer.model_max_length
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids, slots, lengths = [], [], []
    for text in texts:
        if text.count(MARKER) != 1:
            raise EraseError(f"an attack prompt needs exactly one {MARKER} where its tokens go, got {text!r}")
        before, after = text.split(MARKER)
        row = [bos] + _words(tokenizer, before) + [pad] * n_slots + _words(tokenizer, after) + [eos]
        if len(row) > max_len:
            raise EraseError(
                f"prompt {text!r} with {n_slots} attack token(s) needs {len(row)} tokens; the text encoder takes "
                f"{max_len}: use a shorter prompt or fewer tokens (--set k=...)"
            )
        start = 1 + len(_words(tokenizer, before))
        mask = [False] * max_len
        for j in range(start, start + n_slots):
            mask[j] = True
        lengths.append(len(row))
        ids.append(row + [pad] * (max_len - len(row)))
        slots.append(mask)
    return SlotPrompts(torch.tensor(ids), torch.tensor(slots), lengths)


@contextmanager
def injected(text_encoder, slots: torch.Tensor, rows: torch.Tensor):
    """Inside the block, the text encoder's input embeddings at ``slots`` (N, L) are ``rows`` (slots.sum(), D)."""
    layer = text_encoder.get_input_embeddings()

    def hook(module, inputs, output):
        if output.shape[:2] != slots.shape:
            raise RuntimeError(
                f"attack slots {tuple(slots.shape)} do not match the token batch {tuple(output.shape[:2])}"
            )
        out = output.clone()
        out[slots.to(out.device)] = rows.to(out.device, out.dtype)
        return out

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_slots(text_encoder, prompts: SlotPrompts, rows: torch.Tensor) -> torch.Tensor:
    """Text-encoder hidden states (N, L, D) of ``prompts`` with ``rows`` (N, n_slots, D) in
    their slots (differentiable)."""
    device = next(text_encoder.parameters()).device
    with injected(text_encoder, prompts.slots, rows.reshape(-1, rows.shape[-1])):
        return text_encoder(prompts.ids.to(device))[0]


def eos_states(text_encoder, prompts: SlotPrompts, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The text encoder's final state at each prompt's EOS token (CLIP's text feature before projection)."""
    with torch.no_grad():
        if rows is None:
            hidden = text_encoder(prompts.ids.to(next(text_encoder.parameters()).device))[0]
        else:
            hidden = encode_slots(text_encoder, prompts, rows)
    return hidden[torch.arange(len(prompts)), torch.tensor(prompts.lengths) - 1].float().cpu()


# -- the relaxed one-hot of UnlearnDiffAtk -------------------------------------------------------------------------


def project_simplex(p: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of every row (last dim) onto the probability simplex {x >= 0, sum x = 1}.

    The sort-based closed form: with u sorted descending and rho the last index where
    u_rho - (sum_{j<=rho} u_j - 1) / rho > 0, the threshold is theta = (sum_{j<=rho} u_j - 1) / rho and the
    projection max(p - theta, 0). Upstream finds the same theta by bisection.
    """
    u, _ = torch.sort(p, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, p.shape[-1] + 1, device=p.device, dtype=p.dtype)
    rho = ((u - css / k) > 0).sum(-1, keepdim=True)
    theta = css.gather(-1, rho - 1) / rho.to(p.dtype)
    return (p - theta).clamp_min(0)


class SampledOneHot(torch.autograd.Function):
    """Forward: one token per row drawn from the row's distribution, as a one-hot. Backward: straight through,
    the incoming gradient clipped to [-1, 1] (hardtanh), as UnlearnDiffAtk's sampler does."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, generator: torch.Generator | None):
        flat = probs.detach().reshape(-1, probs.shape[-1]).clamp_min(0)
        picks = torch.multinomial(flat, 1, generator=generator).squeeze(1)
        return torch.nn.functional.one_hot(picks, probs.shape[-1]).to(probs.dtype).reshape(probs.shape)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(-1, 1), None


def sampled_one_hot(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return SampledOneHot.apply(probs, generator)
