"""The generator's sharpening step (worlds.faces_mini.sharpen): its loss against hand counts, and on a tiny random
generator with a toy guide: faces read more surely with the data's rates, the mapping untouched, the GAN's own
generator kept, and never sharpened twice."""

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from erase.core.latent_mapper import to_images, to_wplus
from pipelines.stylegan import Generator, StyleGANConfig, StyleGANPipeline
from worlds.faces_mini.sharpen import MARKER, head_rates, sharpen_generator, sharpening_loss
from worlds.faces_mini.train import Recipe
from worlds.faces_mini.world import HEADS

TINY = StyleGANConfig(resolution=16, style_dim=32, n_mlp=2, channels={4: 32, 8: 16, 16: 16})


class ToyGuide(nn.Module):
    """Every head's logits from the image's mean colour (a fixed random linear read), so that a generator can make
    them sure or unsure."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.heads = nn.ModuleDict({h: nn.Linear(3, n) for h, n in HEADS.items()})
        for lin in self.heads.values():
            lin.weight.data *= 20

    def forward(self, x):
        m = x.mean(dim=(2, 3))
        return {h: lin(m) for h, lin in self.heads.items()}


def test_the_loss_matches_hand_counts():
    recipe = replace(Recipe(), sharpen_entropy=1.0, sharpen_marginal=1.0, sharpen_keep=2.0)
    uniform = {"smile": torch.zeros(4, 2)}  # every face 50 / 50
    data = {"smile": torch.tensor([0.5, 0.5])}
    x, x_gan = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    terms = sharpening_loss(uniform, data, x, x_gan, recipe)
    assert math.isclose(float(terms["entropy"]), math.log(2), rel_tol=1e-6)  # the most unsure two-class face
    assert math.isclose(float(terms["marginal"]), 0.0, abs_tol=1e-7)  # the batch's rates are the data's
    assert math.isclose(float(terms["keep"]), 2.0 * 0.25, rel_tol=1e-6)
    sure = {"smile": torch.tensor([[5.0, 0.0]] * 4)}  # every face nearly surely class 0
    terms = sharpening_loss(sure, data, x, x, recipe)
    mean1 = 1 / (1 + math.exp(5))
    assert math.isclose(
        float(terms["entropy"]), -(mean1 * math.log(mean1) + (1 - mean1) * math.log(1 - mean1)), rel_tol=1e-4
    )
    by_hand = 0.5 * (math.log(0.5) - math.log(1 - mean1)) + 0.5 * (math.log(0.5) - math.log(mean1))
    assert math.isclose(float(terms["marginal"]), by_hand, rel_tol=1e-4)


def test_head_rates_are_the_labels_class_frequencies():
    labels = {h: torch.tensor([0, 1, 1, 1]) % n for h, n in HEADS.items()}
    rates = head_rates(labels)
    assert rates["smile"].tolist() == [0.25, 0.75] and rates["identity"].tolist() == [0.25, 0.75, 0, 0, 0]


def _faces(folder: Path, guide: nn.Module, n: int = 256):
    pipe = StyleGANPipeline.from_pretrained(folder)
    with torch.no_grad():
        x = pipe(seeds=list(range(n)), truncation_psi=1.0, output_type="pt")
        probs = {h: v.softmax(1) for h, v in guide(x).items()}
    return pipe.generator, x, probs


def _sharpened(tmp_path: Path, name: str, guide: nn.Module, **fields):
    torch.manual_seed(0)
    folder = tmp_path / name / "generator"
    StyleGANPipeline(Generator(TINY).eval()).save_pretrained(folder)
    labels = {h: torch.randint(0, n, (1000,), generator=torch.Generator().manual_seed(1)) for h, n in HEADS.items()}
    recipe = replace(  # the entropy alone here (the marginal term has its own test below)
        Recipe(), sharpen_steps=60, sharpen_batch=16, sharpen_lr=1e-2, sharpen_marginal=0.0, gan_save_dtype="float32"
    )
    recipe = replace(recipe, **fields)
    torch.manual_seed(9)  # a stale copy of another GAN in the work folder: the sharpening must not start from it
    StyleGANPipeline(Generator(TINY).eval()).save_pretrained(tmp_path / name / "work" / "generator-gan")
    before = _faces(folder, guide)
    record = sharpen_generator(recipe, folder, guide, labels, tmp_path / name / "work", "cpu")
    return folder, recipe, labels, record, before, _faces(folder, guide)


def _entropy(probs):
    return sum(float(-(p * p.clamp_min(1e-8).log()).sum(1).mean()) for p in probs.values()) / len(probs)


def test_sharpening_makes_faces_surer_keeps_the_mapping_and_the_gan_and_runs_once(tmp_path):
    guide = ToyGuide()
    folder, recipe, labels, record, (before_G, before_x, before), (after_G, after_x, after) = _sharpened(
        tmp_path, "keep", guide, sharpen_keep=1.0
    )
    assert _entropy(after) < 0.8 * _entropy(before)  # surer on every head together
    mapping = {n: p for n, p in before_G.state_dict().items() if n.startswith("mapping.")}
    assert mapping and all(torch.equal(p, after_G.state_dict()[n]) for n, p in mapping.items())
    assert (folder / MARKER).exists() and record["steps"] == 60
    gan_G, _, _ = _faces(tmp_path / "keep" / "work" / "generator-gan", guide)
    assert all(torch.equal(p, before_G.state_dict()[n]) for n, p in gan_G.state_dict().items())  # the GAN's own
    with pytest.raises(RuntimeError, match="already sharpened"):
        sharpen_generator(recipe, folder, guide, labels, tmp_path / "keep" / "work", "cpu")
    # the pixel term holds the faces to the GAN's: without it they move further
    *_, (_, loose_x, _) = _sharpened(tmp_path, "loose", guide, sharpen_keep=0.0)
    assert (after_x - before_x).abs().mean() < 0.8 * (loose_x - before_x).abs().mean()


def test_the_marginal_term_pulls_the_rates_towards_the_data():
    """With the entropy off, the marginal term alone moves the guide's mean reading towards the data's rates."""
    torch.manual_seed(0)
    guide = ToyGuide()
    G = Generator(TINY)
    data = {h: torch.full((n,), 1.0 / n) for h, n in HEADS.items()}
    recipe = replace(Recipe(), sharpen_entropy=0.0, sharpen_marginal=1.0, sharpen_keep=0.0)
    opt = torch.optim.Adam([p for n, p in G.named_parameters() if n.startswith("synthesis.")], lr=5e-3)
    z = torch.randn(64, TINY.z_dim, generator=torch.Generator().manual_seed(2))

    def marginal():
        x = to_images(G.synthesis(to_wplus(G, z)))
        return sharpening_loss(guide(x), data, x, x.detach(), recipe)["marginal"]

    first = float(marginal().detach())
    for _ in range(40):
        loss = marginal()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(marginal().detach()) < 0.5 * first
