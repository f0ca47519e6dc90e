"""What every attack shares: its task (prompts, seeds, judge), its config, and the prefix search of
UnlearnDiffAtk and the soft-prompt attack.

An attack is a config dataclass + an ``Attack`` class registered by name (``eval.attacks.register_attack``).
The runner (``eval.attacks.run``) owns everything else: the pre-attack check, the target images, blocks of
optimisation each followed by one judged generation per still-unbroken prompt, early stopping, checkpoints,
resume and the report. An attack implements:

* ``slot_texts(task)``: each prompt with ``{}`` where its tokens go, and ``n_slots``;
* ``setup(pipe, task, prompts, rng)``: its variables and optimiser;
* ``train_block(pipe, task, block, active, rng)``: ``iters`` optimisation steps for the active prompts;
* ``candidate_rows(active)`` / ``candidate_texts(active)``: what is judged after the block;
* ``state_dict()`` / ``load_state_dict()``: everything a resumed run restores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erase.core.diffusion import alphas_cumprod, denoising_error, encode_images, prediction_type
from erase.core.errors import EraseError
from erase.core.patch import patches_disabled
from erase.core.prompt_slots import SlotPrompts, encode_slots, slot_prompts
from erase.core.registry import check_options, option
from eval.generate import protocol_images, to_tensor


@dataclass
class AttackTask:
    """One target concept on one protocol: the prompts an attacker starts from and how success is judged."""

    protocol: object
    target: str
    kind: str
    prompts: list[
        str
    ]  # what the attacker starts from: the protocol's prompts (or the same without the concept's word)
    concept_prompts: list[
        str
    ]  # the protocol's prompts of the concept (the original model's images of these are the targets)
    seeds: list[int]
    judge: object  # images (N, 3, H, W) in [0, 1] -> logits over the axis's concepts
    label: int  # the target's index among the judge's classes
    classes: list[str]
    slot_prompts: list[str] = field(default_factory=list)  # the concept prompts with {} in the concept word's place
    target_latents: torch.Tensor | None = (
        None  # (N, C, h, w): the original's generation of each concept prompt at its seed
    )
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)


class Attack:
    """Base class: see the module docstring."""

    name = "attack"
    needs_target_latents = True

    def __init__(self, config):
        self.config = config
        self.info: dict = {}

    @property
    def blocks(self) -> int:
        return self.config.blocks

    @property
    def iters(self) -> int:
        return self.config.iters

    def budget(self) -> dict:
        """What one attacked prompt may cost: optimisation steps and judged generations."""
        return {
            "blocks": self.blocks,
            "steps_per_block": self.iters,
            "max_steps": self.blocks * self.iters,
            "max_judge_queries": self.blocks,
        }

    def slot_texts(self, task: AttackTask) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    n_slots = 1

    def setup(self, pipe, task: AttackTask, prompts: SlotPrompts, rng: torch.Generator) -> None:  # pragma: no cover
        raise NotImplementedError

    def train_block(
        self, pipe, task: AttackTask, block: int, active: list[int], rng: torch.Generator
    ) -> dict:  # pragma: no cover
        raise NotImplementedError

    def candidate_rows(self, active: list[int]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def candidate_texts(self, pipe, task: AttackTask, active: list[int]) -> list[str | None]:
        return [None] * len(active)

    def state_dict(self) -> dict:  # pragma: no cover
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:  # pragma: no cover
        raise NotImplementedError


@dataclass
class BudgetConfig:
    """What every attack's budget is made of: blocks of Adam steps, one judged generation after each block."""

    blocks: int = option(50, "blocks of optimisation, one judged generation after each")
    iters: int = option(40, "Adam steps per block")
    lr: float = option(0.01, "Adam learning rate")
    seed: int = option(0, "seed of the attack's noise and sampling")

    def validate(self, name: str, at_least_one: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
        check_options(
            self, name, at_least_one=("blocks", *at_least_one), non_negative=("iters", *non_negative), positive=("lr",)
        )


# -- the prefix search shared by UnlearnDiffAtk (discrete) and the soft-prompt attack (continuous) ------------------


@dataclass
class PrefixConfig(BudgetConfig):
    blocks: int = option(
        50, "timesteps attacked in turn, ascending (t = 10, 30, ..., 990 of 1000); one judged generation after each"
    )
    iters: int = option(40, "Adam steps per timestep (upstream 40)")
    lr: float = option(0.01, "Adam learning rate (upstream 0.01)")
    k: int = option(3, "attack tokens prepended to the prompt (UnlearnDiffAtk: 3 for styles and objects)")
    weight_decay: float = option(0.1, "Adam L2 weight decay (upstream 0.1)")
    random_search: bool = option(
        False, "control: no optimisation, a fresh random candidate at every judged generation (same budget)"
    )

    def validate(self, name: str) -> None:
        super().validate(name, at_least_one=("k",), non_negative=("weight_decay",))


def block_timestep(block: int, blocks: int, num_train_timesteps: int) -> int:
    """The timestep of block ``block`` of ``blocks``, ascending through the middle of equal bins: 10,
    30, ..., 990 for 50 of 1000."""
    return int((block + 0.5) * num_train_timesteps / blocks)


class PrefixAttack(Attack):
    """k rows prepended to each prompt, optimised so the attacked model denoises the original's image of that prompt.

    Loss at timestep t: MSE(eps, eps_theta*(x_t, t, c_adv)) with x_t the original's image noised by fresh eps,
    no guidance; one sum over prompts of each prompt's mean, so every prompt is optimised as if alone.
    Subclasses say how rows are made from the variables (``rows``), and what a random candidate is.
    """

    @property
    def n_slots(self) -> int:
        return self.config.k

    def slot_texts(self, task: AttackTask) -> list[str]:
        return ["{} " + p for p in task.prompts]

    def make_variables(self, pipe, n: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def rows(self, index: list[int], rng: torch.Generator, *, train: bool) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def after_step(self) -> None:
        """Keep the variables feasible after an optimiser step (the simplex for UnlearnDiffAtk)."""

    def random_candidates(self, active: list[int], rng: torch.Generator) -> None:  # pragma: no cover
        raise NotImplementedError

    def setup(self, pipe, task, prompts, rng):
        self.config.validate(self.name)
        self.prompts = prompts
        self.embedding = pipe.text_encoder.get_input_embeddings().weight.detach()
        self.var = self.make_variables(pipe, len(prompts)).requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.var], lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)

    def train_block(self, pipe, task, block, active, rng):
        if self.config.random_search:
            self.random_candidates(active, rng)
            return {"steps": 0}
        t_value = block_timestep(block, self.blocks, self.num_train_timesteps)
        acp, kind, device = alphas_cumprod(pipe), prediction_type(pipe), pipe.unet.device
        x0_all = task.target_latents
        loss_value = float("nan")
        for _ in range(self.iters):
            noise_all = torch.randn(
                x0_all.shape, generator=rng
            )  # drawn for every prompt, so a prompt's stream never depends on the others
            rows = self.rows(list(range(len(self.prompts))), rng, train=True)[active]
            x0, noise = x0_all[active].to(device), noise_all[active].to(device)
            t = torch.full((len(active),), t_value, device=device, dtype=torch.long)
            cond = encode_slots(pipe.text_encoder, self.prompts.subset(active), rows)
            loss = denoising_error(pipe.unet, x0, noise, t, cond, acp, kind).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                self.after_step()
            loss_value = float(loss.detach()) / len(active)
        return {"steps": self.iters, "t": t_value, "loss": loss_value}

    def state_dict(self) -> dict:
        return {"var": self.var.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.var.copy_(state["var"])
        self.optimizer.load_state_dict(state["optimizer"])


def check_prompts_fit(tokenizer, texts: list[str], n_slots: int) -> SlotPrompts:
    try:
        return slot_prompts(tokenizer, texts, n_slots)
    except EraseError:
        raise
    except Exception as e:  # noqa: BLE001 - a tokenizer that cannot take the prompt: one line
        raise EraseError(f"cannot tokenize the attack prompts: {e}") from e


def original_images(pipe, protocol, prompts: list[str], seeds: list[int], *, batch_size: int = 64):
    """The original model's images (uint8 N x H x W x 3) of ``prompts`` at ``seeds``, with the protocol's sampler:
    every applied patch is taken off for the duration (bit-exactly) and put back."""
    with patches_disabled(pipe):
        return protocol_images(pipe, protocol, prompts, seeds, batch_size=batch_size)


def latents_of(pipe, images) -> torch.Tensor:
    """uint8 images -> the VAE's latents (posterior mode x scaling factor), as
    UnlearnDiffAtk encodes its target image."""
    return torch.cat([encode_images(pipe, to_tensor(images[i : i + 64])).cpu() for i in range(0, len(images), 64)])


def original_latents(pipe, protocol, prompts: list[str], seeds: list[int]) -> torch.Tensor:
    return latents_of(pipe, original_images(pipe, protocol, prompts, seeds))
