"""Text-to-Unlearn's options (``erase.methods.text_to_unlearn``): what each one does is in its help text, and the
design they implement in that module's docstring and the README ("Text-to-Unlearn that erases")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.errors import EraseError
from ..core.registry import TrainedConfig, check_options, option

MODULATIONS = r"^generator\.synthesis\.(conv1|convs\.\d+)\.conv\.modulation\."  # every conv's style affine
LAYERS = {
    "synthesis": r"^generator\.synthesis\.(input|conv1|convs)\.",
    "mapping": r"^generator\.mapping\.",
    "adaptive": None,
}


@dataclass
class TextToUnlearnConfig(TrainedConfig):
    prompt: str | None = option(
        None, "the concept's text (default: the request's first forget prompt, e.g. 'a face with eyeglasses')"
    )
    mode: str = option(
        "directional",
        "'directional' (the method), 'clip_distance' (the paper's baseline: push G_t(w) away from the prompt), or "
        "'probe' (G_t(w) is trained to be G_f(w'), w' the face's concept-free counterpart under a linear probe of the "
        "concept in W, w itself where the probe finds no concept: for a concept that is linear in W, on faces-mini "
        "Alice; with layers mapping the trained mapping's w is held to w' directly)",
    )
    direction_loss: str = option(
        "frozen_pair",
        "'frozen_pair' (G_f(w_hat) -> G_t(w_hat) along i) or 'self_pair' (G_t's own edit no longer along i)",
    )
    layers: str = option(
        "synthesis",
        "trained weights: 'synthesis' (every synthesis conv + constant input), 'mapping', or "
        "'adaptive' (top_k W+ rows' convs)",
    )
    top_k: int = option(3, "with layers adaptive: how many W+ rows' layers are trained")
    adaptive_every: int = option(
        0, "with layers adaptive: re-choose the layers on G_t every this many steps (NADA); 0 = once at set-up"
    )
    modulations: str = option(
        "chosen",
        "with layers adaptive: 'chosen' trains a conv's style affine only with its layer; 'all' also trains every "
        "synthesis conv's style affine at every step (an edit reaching the unchosen rows can then be cancelled "
        "where its style is computed, while those layers' convolutions stay as they were)",
    )
    lr: float = option(0.002, "learning rate (Adam, betas (0, 0.99) as StyleGAN-NADA)")
    steps: int = option(300, "fine-tuning steps")
    batch_size: int = option(8, "latents per step")
    truncation: float = option(1.0, "truncation psi of the sampled latents (1 = the whole distribution)")
    anchor: str = option(
        "unedited",
        "what G_t(w_hat) is held to: 'unedited' = G_f(w), the face without the edit, or "
        "'edited' = G_f(w_hat) (the paper)",
    )
    lambda_perceptual: float = option(1.0, "weight of the perceptual distance G_t(w_hat) vs the anchor")
    perceptual_net: str = option(
        "",
        "which of the guides' perceptual networks (faces-mini: random, guide-classifier, "
        "guide-identity); '' = the default",
    )
    lambda_identity: float = option(
        1.0, "weight of the identity distance G_t(w_hat) vs the anchor (off for identity concepts)"
    )
    lambda_pixels: float = option(
        0.0,
        "weight of the mean squared pixel distance G_t(w_hat) vs the anchor, and G_t(w) vs G_f(w) where plain "
        "faces are kept",
    )
    lambda_attributes: float = option(
        0.0,
        "weight of keeping the guides' other attributes (KL, identity head included): G_t(w_hat) vs the "
        "anchor and G_t(w) vs G_f(w)",
    )
    attributes_on: str = option(
        "both",
        "where lambda_attributes keeps the other attributes: 'both', 'edited' (G_t(w_hat) vs the anchor only) or "
        "'plain' (G_t(w) vs G_f(w) only)",
    )
    preserve_unedited: float = option(
        1.0, "weight of the perceptual distance G_t(w) vs G_f(w) on plain latents (keep plain faces)"
    )
    preserve_where: str = option(
        "all",
        "which plain latents are kept: 'all', or 'without_concept' (where the guides' classifier finds no concept)",
    )
    remove_target: float = option(
        0.0,
        "weight of holding G_t(w) to G_f(w + edit_scale R(w)) where the guides' classifier finds the concept in "
        "G_f(w), R a latent mapper trained to take the concept out (the guide's probability lowered, identity and "
        "L2 as the add mapper): a concept-free face for the faces that have the concept by themselves "
        "(``counterpart`` chooses how that face is found)",
    )
    counterpart: str = option(
        "mapper",
        "remove_target's concept-free face: 'mapper' = G_f(w + edit_scale R(w)), or 'probe' = G_f(w'), w' moved along "
        "a linear probe of the concept in W (fitted on the guides' classifier's labels) until the probe reads it "
        "concept-free; used only where the probe's held-out balanced accuracy reaches probe_accuracy (on faces-mini "
        "Alice's probe does, 0.87; Bruno's, eyeglasses' and smile's do not, 0.55-0.57)",
    )
    probe_samples: int = option(
        4000, "with mode probe or counterpart probe: faces the probe is fitted on (a fifth held out)"
    )
    probe_margin: float = option(
        3.0, "with mode probe or counterpart probe: the probe's score (logit) the faces are moved to is -this"
    )
    probe_accuracy: float = option(
        0.75,
        "with mode probe or counterpart probe: the held-out balanced accuracy below which the probe is not used "
        "(mode probe refuses; counterpart probe leaves its term out and records it)",
    )
    plain_direction: float = option(
        0.0,
        "weight of the direction loss also on plain latents whose G_f(w) the guides' classifier finds the concept "
        "in (the concept where it occurs on its own, not only where the mapper puts it)",
    )
    colour_augment: bool = option(
        True,
        "both images of every CLIP pair under the same random colour map (needs views > 0), and i averaged over "
        "colour-mapped views: recolouring the concept no longer reads as removing it",
    )
    views: int = option(
        4, "the CLIP judges this many shifted / flipped views of each image pair (0: the images themselves)"
    )
    mapper_steps: int = option(1500, "latent-mapper training steps (cached per generator, prompt and guides)")
    mapper_lr: float = option(1e-3, "latent-mapper learning rate (Adam)")
    mapper_batch: int = option(16, "latent-mapper batch")
    mapper_l2: float = option(0.8, "latent-mapper L2 weight on the edit (StyleCLIP 0.8; off for identity concepts)")
    mapper_identity: float = option(
        1.0,
        "latent-mapper identity weight (StyleCLIP 0.1; 1.0 keeps the edit to the concept; off for identity concepts)",
    )
    mapper_attributes: float = option(
        0.0, "latent-mapper weight of keeping the guides' other attributes (KL): an edit that adds the concept only"
    )
    mapper_views: int = option(
        2, "latent mapper: CLIP judges this many randomly shifted / flipped views of each edit (0: the image itself)"
    )
    edit_scale: float = option(0.1, "w_hat = w + edit_scale * M(w) (StyleCLIP 0.1)")
    edit_mix: float = option(
        0.0,
        "share of each step's edited latents whose edit comes from a second mapper, trained with identity weight "
        "mix_identity and no attribute term (StyleCLIP's own): the fine-tune also meets a looser way of asking for "
        "the concept, one that reaches more W+ rows",
    )
    mix_identity: float = option(0.1, "with edit_mix > 0: the second mapper's identity weight (StyleCLIP 0.1)")
    mix_attributes: float = option(
        0.0,
        "with edit_mix > 0: the second mapper's weight of keeping the guides' other attributes (KL; 0 = StyleCLIP's "
        "edit, which also recolours hair): a loose route to the concept that changes nothing else",
    )
    adversarial_share: float = option(
        0.0,
        "share of each step's edited latents replaced by a latent attack on G_t: w_hat moved, within "
        "adversarial_radius per W+ row, to where G_t draws the concept most by the guide CLIP (adversarial_steps "
        "normalised-gradient steps); the fine-tune then removes the concept there too, not only along the mapper's "
        "edit",
    )
    adversarial_steps: int = option(3, "with adversarial_share > 0: the attack's gradient steps")
    adversarial_radius: float = option(
        3.0, "with adversarial_share > 0: the largest L2 change the attack makes to each W+ row of w_hat"
    )
    direction_samples: int = option(256, "latent pairs that define the reference direction i")
    gate_points: float = option(
        30.0, "the mapper's edit must raise the guides' judged rate of the concept by this many points"
    )
    gate_samples: int = option(256, "latents the gate judges")
    patch_dtype: str = option("float32", "storage dtype of the patch values (float16, bfloat16 or float32)")

    method: ClassVar[str] = "text_to_unlearn"

    def check(self) -> None:
        check_options(
            self,
            "text_to_unlearn",
            choices={
                "mode": ("directional", "clip_distance", "probe"),
                "direction_loss": ("frozen_pair", "self_pair"),
                "layers": tuple(LAYERS),
                "anchor": ("unedited", "edited"),
                "preserve_where": ("all", "without_concept"),
                "modulations": ("chosen", "all"),
                "counterpart": ("mapper", "probe"),
                "attributes_on": ("both", "edited", "plain"),
            },
            at_least_one=(
                "batch_size",
                "top_k",
                "mapper_batch",
                "direction_samples",
                "gate_samples",
                "adversarial_steps",
                "probe_samples",
            ),
            non_negative=(
                "lambda_perceptual",
                "lambda_identity",
                "lambda_pixels",
                "lambda_attributes",
                "plain_direction",
                "remove_target",
                "preserve_unedited",
                "mapper_steps",
                "mapper_l2",
                "mapper_identity",
                "mapper_attributes",
                "mix_attributes",
                "mapper_views",
                "views",
                "gate_points",
                "adaptive_every",
                "probe_margin",
                "probe_accuracy",
            ),
            positive=("mapper_lr", "edit_scale", "truncation", "adversarial_radius"),
        )
        if not 0.0 <= self.edit_mix <= 1.0 or self.mix_identity < 0:
            raise EraseError(
                f"text_to_unlearn: edit_mix is a share in [0, 1] and mix_identity a weight >= 0 (got {self.edit_mix}, "
                f"{self.mix_identity}); e.g. --set edit_mix=0.5"
            )
        if not 0.0 <= self.adversarial_share <= 1.0:
            raise EraseError(
                f"text_to_unlearn: adversarial_share is a share in [0, 1] (got {self.adversarial_share}); e.g. --set "
                "adversarial_share=0.5"
            )
        if self.adversarial_share > 0 and (self.mode != "directional" or self.layers == "mapping"):
            raise EraseError(
                "text_to_unlearn: adversarial_share attacks the edited latents of mode directional through the "
                f"synthesis (mode {self.mode!r}, layers {self.layers!r}); set adversarial_share=0 or use mode "
                "directional with layers synthesis or adaptive"
            )
        if self.modulations == "all" and self.layers != "adaptive":
            raise EraseError(
                f"text_to_unlearn: modulations all adds the style affines to the adaptive layers, and layers is "
                f"{self.layers!r} (which trains them already or not at all); set layers=adaptive or modulations=chosen"
            )
        if self.mode == "probe" and self.remove_target > 0:
            raise EraseError(
                "text_to_unlearn: mode probe already holds every face to its concept-free counterpart, and "
                f"remove_target ({self.remove_target:g}) would add a second such term; set remove_target=0"
            )
        if self.colour_augment and self.views == 0:
            raise EraseError(
                "text_to_unlearn: colour_augment maps the CLIP's views, and views is 0; set views > 0 (e.g. --set "
                "views=4) or colour_augment=false"
            )
