"""Issue 25's design of Text-to-Unlearn, each part able to fail on its own: colour maps applied alike to both
images of a pair, the anchor of the erased image, NADA's re-chosen layers, guides that are never judges, FD
against concept-free renders, and palette drift."""

import pytest
import torch

from tests.test_text_to_unlearn import QUICK, quick_erase, tiny_pipe, toy_guides


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path / "cache"))


def test_colour_maps_keep_grey_grey_and_change_colours():
    from erase.core.image_views import apply_colour_maps, colour_maps

    matrices, contrast, brightness = colour_maps(64, torch.Generator().manual_seed(0))
    assert torch.allclose(matrices.sum(-1), torch.ones(64, 3), atol=1e-6)  # rows sum to 1: grey stays grey
    grey = torch.full((64, 3, 2, 2), 0.4)
    out = apply_colour_maps(grey, (matrices, torch.ones(64), torch.zeros(64)))
    assert torch.allclose(out, grey, atol=1e-6)
    red = torch.zeros(64, 3, 2, 2)
    red[:, 0] = 1.0
    seen = apply_colour_maps(red, (matrices, contrast, brightness))[:, :, 0, 0]
    assert seen.std(0).min() > 0.1  # a coloured pixel comes out in many colours


def test_both_images_of_a_pair_get_the_same_view_and_colour_map():
    """A batch of pairs under one random stream: each half must be exactly what the same stream makes of that half
    alone (the same shifts, flips and the same colour map per index); drawing maps for all 2n images would not."""
    from erase.core.image_views import clip_views, embed_pair

    a, b = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    both = clip_views(torch.cat([a, b]), 2, torch.Generator().manual_seed(5), colour=True, pairs=2).view(
        2, 2, 3, 3, 8, 8
    )
    alone_a = clip_views(a, 2, torch.Generator().manual_seed(5), colour=True).view(2, 3, 3, 8, 8)
    alone_b = clip_views(b, 2, torch.Generator().manual_seed(5), colour=True).view(2, 3, 3, 8, 8)
    assert torch.equal(both[:, 0], alone_a) and torch.equal(both[:, 1], alone_b)
    assert not torch.equal(
        alone_a, clip_views(a, 2, torch.Generator().manual_seed(5)).view(2, 3, 3, 8, 8)
    )  # colour did something
    ea, eb = embed_pair(lambda im: im.flatten(1), a, a.clone(), 3, torch.Generator().manual_seed(1), colour=True)
    assert torch.equal(ea, eb)


@pytest.mark.parametrize("anchor", ["unedited", "edited"])
def test_the_anchor_is_the_frozen_face_without_the_edit_under_unedited(tmp_path, anchor):
    """The perceptual and identity terms compare G_t(w_hat) with G_f(w) under ``unedited``, with G_f(w_hat) under
    ``edited`` (the paper)."""
    from erase.core.latent_mapper import to_images
    from erase.methods.text_to_unlearn import TextToUnlearn

    seen: list[tuple] = []
    original_codes = TextToUnlearn._codes

    def codes(self):
        out = original_codes(self)
        seen.append(("codes", self.frozen, out[0], out[2]))
        return out

    guides = toy_guides()
    base = guides.perceptual
    guides.perceptual = lambda x, y: (seen.append(("anchor", y.detach().clone())), base(x, y))[1]
    mp = pytest.MonkeyPatch()
    mp.setattr(TextToUnlearn, "_codes", codes)
    try:
        quick_erase(tmp_path / "o", {**QUICK, "anchor": anchor, "steps": 1}, guides=guides)
    finally:
        mp.undo()
    (_, frozen, w, w_hat), (_, got) = seen
    with torch.no_grad():
        plain, edited = to_images(frozen.synthesis(w)), to_images(frozen.synthesis(w_hat))
    assert torch.equal(got, plain if anchor == "unedited" else edited)
    assert not torch.equal(plain, edited)


def test_adaptive_layers_re_chosen_every_step_move_only_chosen_layers(tmp_path):

    pipe = tiny_pipe()
    before = {n: p.detach().clone() for n, p in pipe.generator.named_parameters()}
    patch = quick_erase(
        tmp_path / "o",
        {**QUICK, "layers": "adaptive", "top_k": 1, "adaptive_every": 1, "steps": 3, "lr": 0.05},
        pipe=pipe,
    )
    rows = patch.config["info"]["adaptive_rows"]
    assert len(rows) == 3 and all(len(r) == 1 for r in rows)  # chosen afresh at every step
    allowed = {layer for r in rows for layer in pipe.generator.layers_of_row(r[0])}
    from erase.core.patch import apply_patch

    apply_patch(pipe, patch)
    moved = {n for n, p in pipe.generator.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(
        any(n.startswith(f"synthesis.{layer}.") or n.startswith(f"{layer}.") for layer in allowed) for n in moved
    ), (moved, allowed)


@pytest.mark.parametrize("every", [1, 0])
def test_modulations_all_trains_every_style_affine_and_only_the_chosen_convolutions(tmp_path, every):
    """``modulations all``: the style affines of every synthesis conv move at every step, and of everything else
    only the chosen layers' tensors; re-chosen every step (``adaptive_every 1``) or once (0)."""
    import re

    from erase.core.patch import apply_patch
    from erase.methods.text_to_unlearn import MODULATIONS

    pipe = tiny_pipe()
    before = {n: p.detach().clone() for n, p in pipe.generator.named_parameters()}
    over = {**QUICK, "layers": "adaptive", "top_k": 1, "adaptive_every": every, "steps": 3, "lr": 0.05}
    patch = quick_erase(tmp_path / "o", {**over, "modulations": "all"}, pipe=pipe)
    chosen = {layer for r in patch.config["info"]["adaptive_rows"] for layer in pipe.generator.layers_of_row(r[0])}
    apply_patch(pipe, patch)
    moved = {n for n, p in pipe.generator.named_parameters() if not torch.equal(p, before[n])}
    affines = {n for n in before if re.match(MODULATIONS, f"generator.{n}")}
    assert affines and affines <= moved  # every conv's style affine, chosen or not
    outside = {n for n in moved - affines if not any(n.startswith(f"{layer}.") for layer in chosen)}
    assert not outside, outside  # nothing else outside the chosen layers


def test_modulations_all_needs_the_adaptive_layers(tmp_path):
    from erase.core.errors import EraseError
    from erase.methods.text_to_unlearn import TextToUnlearnConfig

    with pytest.raises(EraseError, match="set layers=adaptive or modulations=chosen"):
        TextToUnlearnConfig(layers="synthesis", modulations="all").check()


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0])
def test_edit_mix_edits_that_share_of_the_latents_with_the_second_mapper(tmp_path, mix):
    """``edit_mix``: each edited latent is the main mapper's edit or, for a random share of them, the second
    (looser) mapper's; 0 uses only the first, 1 only the second."""
    from erase.core.latent_mapper import edit
    from erase.methods.text_to_unlearn import TextToUnlearn

    seen: list[tuple] = []
    original_codes = TextToUnlearn._codes

    def codes(self):
        out = original_codes(self)
        seen.append((self, out[0], out[2]))
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(TextToUnlearn, "_codes", codes)
    try:
        quick_erase(tmp_path / "o", {**QUICK, "edit_mix": mix, "steps": 4, "batch_size": 8})
    finally:
        mp.undo()
    eraser = seen[0][0]
    assert (eraser.mixer is None) == (mix == 0.0)
    by_mixer = []
    for _, w, w_hat in seen:
        main = edit(eraser.mapper, w, 0.1)  # the default edit_scale
        second = edit(eraser.mixer, w, 0.1) if eraser.mixer is not None else None
        for i in range(len(w)):
            is_main = torch.allclose(w_hat[i], main[i])
            is_second = second is not None and torch.allclose(w_hat[i], second[i])
            assert is_main != is_second  # exactly one of the two mappers' edits
            by_mixer.append(is_second)
    share = sum(by_mixer) / len(by_mixer)
    assert share == mix if mix in (0.0, 1.0) else 0.2 < share < 0.8


def test_the_second_mapper_keeps_the_other_attributes_with_mix_attributes(tmp_path, monkeypatch):
    """``mix_attributes`` is the second mapper's attribute weight (and only its: the main mapper keeps its own)."""
    import erase.methods.text_to_unlearn as t2u

    trained = []
    real = t2u.train_mapper
    monkeypatch.setattr(
        t2u, "train_mapper", lambda G, p, g, spec, **k: trained.append(spec) or real(G, p, g, spec, **k)
    )
    over = {**QUICK, "edit_mix": 0.5, "mix_identity": 0.1, "steps": 2, "batch_size": 4}
    quick_erase(tmp_path / "o", {**over, "mix_attributes": 1.5, "mapper_attributes": 0.25})
    main, second = trained
    assert (main.attributes, main.identity) == (0.25, 1.0) and (second.attributes, second.identity) == (1.5, 0.1)


def test_edit_mix_is_a_share(tmp_path):
    from erase.core.errors import EraseError
    from erase.methods.text_to_unlearn import TextToUnlearnConfig

    with pytest.raises(EraseError, match="edit_mix is a share in"):
        TextToUnlearnConfig(edit_mix=1.5).check()


def test_the_guides_exclude_every_judge(tmp_path, monkeypatch):
    """Train with the evaluation's judges absent (an assets folder without them, an empty cache): if the method read
    any of them, it would fail. The guides' descriptions name none of the judges' networks either."""
    import shutil

    from worlds.faces_mini.assets import ASSETS_DIR
    from worlds.faces_mini.guides import GUIDE_ASSETS, JUDGE_ASSETS, faces_mini_guides

    if not all((ASSETS_DIR / n).is_dir() for n in (*GUIDE_ASSETS, "generator")):
        pytest.skip("faces-mini guides not built")
    from erase.api import erase_concept
    from erase.core.data import model_identity
    from pipelines.stylegan import StyleGANPipeline
    from worlds.faces_mini.assets import load_judge

    assets = tmp_path / "assets"
    for name in (*GUIDE_ASSETS, "generator"):
        shutil.copytree(ASSETS_DIR / name, assets / name)
    monkeypatch.setenv("ERASEKIT_FACES_MINI", str(assets))
    guides = faces_mini_guides(assets)
    described = " ".join(guides.describe().values())
    for judge in ("classifier", "classifier_b", "identity"):
        assert model_identity(load_judge(judge))[:16] not in described
    assert "clip-judge" not in described and set(JUDGE_ASSETS).isdisjoint(GUIDE_ASSETS)
    pipe = StyleGANPipeline.from_pretrained(assets / "generator")
    from erase.core.request import EraseRequest
    from eval.protocols import load_protocol

    req = EraseRequest.from_protocol(load_protocol("faces-mini"), "eyeglasses", "attribute")
    patch = erase_concept(
        pipe,
        "text_to_unlearn",
        req,
        tmp_path / "o",
        overrides={
            **QUICK,
            "batch_size": 2,
            "views": 1,
            "colour_augment": True,
            "preserve_unedited": 1.0,
            "preserve_where": "without_concept",
            "mapper_attributes": 1.0,
            "mapper_steps": 2,
        },
        progress=False,
        model_id="faces-mini",
        guides=guides,
    )
    assert patch.names()
    assert not any(p.name in JUDGE_ASSETS for p in assets.iterdir())


def test_fd_reference_holds_only_renders_without_the_concept(monkeypatch):
    import worlds.faces_mini.check as check
    from worlds.faces_mini.render import render_set
    from worlds.faces_mini.world import SEED_BASE

    seen = []
    monkeypatch.setattr(check, "CHECK_RENDERS", 40)
    monkeypatch.setattr(check, "features", lambda judge, x: (seen.append(x), x.mean(dim=(2, 3)).double().numpy())[1])
    check.fd_reference(None, 30, without="eyeglasses")
    real, floor = seen
    assert len(real) == 40 and len(floor) == 30
    images, labels = render_set(400, SEED_BASE["check"])
    expected = images[labels["eyeglasses"] == 0][:40].float() / 255
    assert torch.equal(real, expected)  # the first concept-free renders of the check range, in order
    seen.clear()
    check.fd_reference(None, 30)
    assert torch.equal(seen[0], images[:40].float() / 255)  # without ``without``: every render, glasses included


def test_palette_drift_is_zero_on_renders_and_counts_recoloured_pixels():
    from worlds.faces_mini.palette import off_palette, palette_drift
    from worlds.faces_mini.render import render_set
    from worlds.faces_mini.world import SEED_BASE

    images, labels = render_set(500, SEED_BASE["check"])
    x = images.float() / 255
    assert palette_drift(x) == 0.0  # renders the palette never saw
    magenta = x.clone()
    magenta[:, :, 10:14, 8:24] = torch.tensor([0.9, 0.0, 0.9]).view(1, 3, 1, 1)  # a band across the eyes
    assert abs(palette_drift(magenta) - 4 * 16 / 32**2) < 1e-6
    assert off_palette(magenta)[:, 10:14, 8:24].all()


def test_local_palette_drift_counts_a_world_colour_in_a_place_the_world_never_puts_it():
    """The violet of the lavender lips (a pixel of an erased face, (193, 141, 218)) is a colour the world renders
    somewhere, so no global drift; never at the mouth, so local drift. A hat's purple is local drift at the mouth
    and none at the top of the head, where hats are."""
    from worlds.faces_mini.palette import local_palette_drift, off_local_palette, palette_drift
    from worlds.faces_mini.render import HAT_RGB, render_set
    from worlds.faces_mini.world import SEED_BASE

    images, _ = render_set(500, SEED_BASE["check"])
    x = images.float() / 255
    assert local_palette_drift(x) < 1e-4  # renders the palette never saw (measured: about 0.001%)

    def painted(colour, rows, columns):
        y = x.clone()
        y[:, :, rows, columns] = (torch.tensor(colour) / 255).view(1, 3, 1, 1)
        return y

    mouth = (slice(20, 24), slice(12, 20))
    violet = painted((193, 141, 218), *mouth)
    assert palette_drift(violet) == 0.0
    assert off_local_palette(violet)[(slice(None), *mouth)].all()
    assert abs(local_palette_drift(violet) - 4 * 8 / 32**2) < 1e-3
    assert off_local_palette(painted(HAT_RGB[2], *mouth))[(slice(None), *mouth)].all()
    assert not off_local_palette(painted(HAT_RGB[2], slice(0, 4), slice(12, 20)))[:, 0:4, 12:20].any()


def test_the_other_attribute_kl_is_the_kl_of_the_kept_heads():
    """Guides.other_attribute_kl (the mapper's and the fine-tune's attribute term) against torch's own KL."""
    from erase.core.guides import Guides

    torch.manual_seed(0)
    net = torch.nn.Linear(12, 5)
    guides = Guides(
        clip_image=None, clip_text=None, other_attributes=lambda x, concept: net(x.flatten(1)).log_softmax(1)
    )
    a, b = torch.rand(4, 3, 2, 2), torch.rand(4, 3, 2, 2)
    assert guides.other_attribute_kl(a, a, "eyeglasses").abs() < 1e-6
    p, q = net(a.flatten(1)).log_softmax(1), net(b.flatten(1)).log_softmax(1)
    expected = torch.nn.functional.kl_div(q, p, log_target=True, reduction="batchmean")  # KL(p || q)
    assert torch.allclose(guides.other_attribute_kl(a, b, "eyeglasses"), expected, atol=1e-6)
    b.requires_grad_(True)
    guides.other_attribute_kl(a, b, "eyeglasses").backward()
    assert b.grad.abs().sum() > 0  # differentiable in the image being held, not in the reference


@pytest.mark.parametrize(
    "where,expected", [("both", ["edited", "plain"]), ("edited", ["edited"]), ("plain", ["plain"])]
)
def test_attributes_on_chooses_which_images_keep_the_other_attributes(tmp_path, where, expected):
    """lambda_attributes' KL on G_t(w_hat) against the anchor, on G_t(w) against G_f(w), or both. At the first step
    G_t is G_f, so the plain pair is two equal images and the edited pair is not."""
    guides = toy_guides()
    seen = []
    base = guides.other_attribute_kl

    def recorded(reference, x, concept):
        seen.append("plain" if torch.equal(reference, x) else "edited")
        return base(reference, x, concept)

    guides.other_attribute_kl = recorded
    quick_erase(tmp_path / "o", {**QUICK, "steps": 1, "lambda_attributes": 1.0, "attributes_on": where}, guides=guides)
    assert seen == expected


def test_attributes_on_is_one_of_its_choices(tmp_path):
    from erase.core.errors import EraseError

    with pytest.raises(EraseError, match="attributes_on"):
        quick_erase(tmp_path / "o", {**QUICK, "attributes_on": "mapper"})


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_latent_attack_stays_within_its_radius_and_asks_g_t_for_the_concept_more(tmp_path, share):
    """``adversarial_share``: that share of the edited latents is replaced by w_hat moved at most
    ``adversarial_radius`` in each W+ row towards what the guide CLIP reads as the prompt on G_t (at the step it is
    made); 0 leaves every mapper edit as it is."""
    from erase.core.latent_mapper import edit, to_images
    from erase.methods.text_to_unlearn import TextToUnlearn

    seen: list[tuple] = []
    original_codes, original_attack = TextToUnlearn._codes, TextToUnlearn._attacked

    def codes(self):
        out = original_codes(self)
        seen.append((self, out[0], out[2]))
        return out

    def attacked(self, w_hat):
        out = original_attack(self, w_hat)
        with torch.no_grad():
            score = [
                (self.guides.clip_image(to_images(self.G.synthesis(w))) * self.text).sum(-1) for w in (w_hat, out)
            ]
        seen.append(("attack", (out - w_hat).norm(dim=-1), *score))
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(TextToUnlearn, "_codes", codes)
    mp.setattr(TextToUnlearn, "_attacked", attacked)
    try:
        quick_erase(
            tmp_path / "o",
            {**QUICK, "steps": 3, "batch_size": 4, "adversarial_share": share, "adversarial_radius": 0.5},
        )
    finally:
        mp.undo()
    attacks = [s for s in seen if s[0] == "attack"]
    steps = [s for s in seen if s[0] != "attack"]
    assert len(attacks) == (3 if share == 1.0 else 0)
    for _, moved, before, after in attacks:
        assert moved.max() <= 0.5 + 1e-5 and moved.max() > 0.25
        assert (after > before).all()
    for eraser, w, w_hat in steps:
        mapper_edit = edit(eraser.mapper, w, 0.1)
        assert torch.equal(w_hat, mapper_edit) == (share == 0.0)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"adversarial_share": 1.5}, "adversarial_share is a share in"),
        ({"adversarial_share": 0.5, "layers": "mapping"}, "set adversarial_share=0"),
        ({"adversarial_share": 0.5, "mode": "clip_distance"}, "set adversarial_share=0"),
        ({"adversarial_radius": 0.0}, "adversarial_radius"),
    ],
)
def test_the_latent_attack_refuses_what_it_cannot_do(fields, message):
    from erase.core.errors import EraseError
    from erase.methods.text_to_unlearn import TextToUnlearnConfig

    with pytest.raises(EraseError, match=message):
        TextToUnlearnConfig(**fields).check()
