"""AdvUnlearn-style adversarial training (erase.core.adversarial, Concept Ablation's adversarial_steps): the
inner attack moves only its own vectors and lowers its own loss, the outer step ablates at what it found,
and a run resumes bit for bit."""

import pytest
import torch
from test_concept_ablation import TINY

from erase.api import erase_concept
from erase.core.adversarial import AdversarialPrefixes
from erase.core.diffusion import alphas_cumprod, noisy
from erase.core.request import EraseRequest
from erase.methods.concept_ablation import ConceptAblation


def request():
    """Short prompts: the tiny test tokenizer splits words into many tokens, and the adversarial prefix needs room."""
    return EraseRequest(
        concept="red",
        kind="style",
        anchor="blue",
        forget_prompts=["a red cat", "a red dog"],
        anchor_prompts=["a blue cat", "a blue dog"],
        retain_prompts=["a green cat", "a green dog"],
    )


ADV = {
    **TINY,
    "adversarial_steps": 3,
    "adversarial_lr": 0.05,
    "forget_seeds": 1,
    "alpha": 1.0,
    "retain_loss": "distill",
    "target": "frozen",
}


def test_the_inner_attack_moves_only_its_vectors_and_lowers_its_loss(tiny_pipe):
    prompts = request().forget_prompts
    adversary = AdversarialPrefixes(tiny_pipe, prompts, k=2, steps=1, lr=0.05)
    start = adversary.rows.clone()
    for p in tiny_pipe.unet.parameters():
        p.grad = None
    torch.manual_seed(0)
    z0, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    acp = alphas_cumprod(tiny_pipe)
    idx = torch.tensor([0, 1])

    def loss_now():
        gen = torch.Generator().manual_seed(7)
        noise = torch.randn(z0.shape, generator=gen)
        with torch.no_grad():
            pred = tiny_pipe.unet(noisy(z0, noise, t, acp), t, adversary.condition(tiny_pipe, idx)).sample
        return float(((pred - noise) ** 2).mean())

    before = loss_now()
    adversary.steps = 30
    adversary.attack(tiny_pipe, tiny_pipe.unet, idx, z0, t, acp, "epsilon", torch.Generator().manual_seed(1))
    assert loss_now() < before  # the attack found prompts under which the model denoises the concept's images better
    assert not torch.equal(adversary.rows, start) and adversary.rows.shape == (2, 2, start.shape[-1])
    assert all(p.grad is None for p in tiny_pipe.unet.parameters())  # the model's gradients are never touched


def test_adversarial_training_ablates_at_the_adversarial_prompts(tiny_pipe, tmp_path, monkeypatch):
    seen = []
    real = AdversarialPrefixes.attack
    monkeypatch.setattr(AdversarialPrefixes, "attack", lambda self, *a, **k: seen.append(1) or real(self, *a, **k))
    unweighted = erase_concept(
        tiny_pipe,
        "concept_ablation",
        request(),
        tmp_path / "w0",
        overrides={**ADV, "adversarial_weight": 0.0},
        progress=False,
    )
    adv = erase_concept(tiny_pipe, "concept_ablation", request(), tmp_path / "adv", overrides=ADV, progress=False)
    assert len(seen) == 2 * TINY["steps"]  # one inner attack per training step
    assert adv.config["info"]["data"]["forget_images"] == 2
    # same random stream, same attack: only the ablation at the adversarial prompts differs
    assert adv.names() == unweighted.names() and any(
        not torch.equal(adv.deltas[n], unweighted.deltas[n]) for n in adv.names()
    )


def test_adversarial_training_resumes_bit_identically(tiny_pipe, tmp_path, monkeypatch):
    from conftest import assert_resume_is_bit_identical

    over = {**ADV, "steps": 4, "checkpoint_every": 2}
    assert_resume_is_bit_identical(
        tiny_pipe,
        "concept_ablation",
        ConceptAblation,
        request(),
        over,
        tmp_path,
        monkeypatch,
        interrupt_at=3,
        resumed_from=2,
    )


@pytest.mark.parametrize(
    "adversarial_steps", [3, 0]
)  # 0: only the re-encoded forget and retain prompts reach the text encoder
def test_the_text_encoder_can_be_what_adversarial_training_changes(tiny_pipe, tmp_path, adversarial_steps):
    from pipelines.stable_diffusion import named_parameters

    over = {**ADV, "text_encoder": True, "adversarial_steps": adversarial_steps}
    patch = erase_concept(tiny_pipe, "concept_ablation", request(), tmp_path, overrides=over, progress=False)
    names = set(patch.names())
    assert names and all(n.startswith("text_encoder.") for n in names)
    moved = [n for n in names if float(patch.deltas[n].abs().max()) > 0]
    assert (
        len(moved) > len([n for n in named_parameters(tiny_pipe) if n.startswith("text_encoder.")]) // 2
    )  # most of it trained
    assert patch.config["info"]["trainable"]["group"] == "text_encoder"


def test_retain_text_keeps_the_text_encoders_outputs_on_retain_prompts(tiny_pipe, tmp_path):
    """With the text encoder trained, retain_text pulls its outputs on the retain prompts back to the original's."""
    from erase.core.diffusion import encode_prompts
    from pipelines.stable_diffusion import apply_patch, remove_patch

    req = request()
    original = encode_prompts(tiny_pipe, req.retain_prompts)
    over = {**ADV, "text_encoder": True, "adversarial_steps": 0, "alpha": 0.0, "lr": 1e-3, "steps": 6}
    drift = {}
    for weight in (0.0, 1e4):
        patch = erase_concept(
            tiny_pipe,
            "concept_ablation",
            req,
            tmp_path / str(weight),
            overrides={**over, "retain_text": weight},
            progress=False,
        )
        apply_patch(tiny_pipe, patch)
        drift[weight] = float((encode_prompts(tiny_pipe, req.retain_prompts) - original).pow(2).mean())
        remove_patch(tiny_pipe)
    assert drift[0.0] > 0 and drift[1e4] < 0.5 * drift[0.0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"retain_text": 1.0}, "retain_text keeps the text encoder's outputs and needs text_encoder=true"),
        ({"retain_text": -1.0, "text_encoder": True}, "retain_text"),
    ],
)
def test_retain_text_bad_settings(tiny_pipe, tmp_path, overrides, message):
    from erase.core.errors import EraseError

    with pytest.raises(EraseError, match=message):
        erase_concept(
            tiny_pipe, "concept_ablation", request(), tmp_path, overrides={**TINY, **overrides}, progress=False
        )
    assert not (tmp_path / "erasure_patch.safetensors").exists()
