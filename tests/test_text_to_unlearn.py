"""Text-to-Unlearn on a tiny random StyleGAN2 with toy guides: the mapper gate, 2-step runs of every mode,
patch apply / remove bit-identical on the generator, and the guides counted in the run's identity."""

import json

import pytest
import torch
from torch import nn

from erase.core.errors import EraseError
from erase.core.guides import Guides, unit
from erase.core.request import EraseRequest
from pipelines.stylegan import Generator, StyleGANConfig, StyleGANPipeline

TINY = StyleGANConfig(resolution=16, style_dim=32, n_mlp=2, channels={4: 32, 8: 16, 16: 16})
# a few steps of everything; the views, colour maps, keep-plain term and mapper views the defaults add are switched
# off here (each has its own parameter set below), so the calls of every guide can be counted
QUICK = {
    "steps": 2,
    "batch_size": 2,
    "mapper_steps": 10,
    "mapper_batch": 4,
    "direction_samples": 8,
    "gate_samples": 32,
    "gate_points": 0.0,
    "views": 0,
    "colour_augment": False,
    "preserve_unedited": 0.0,
    "mapper_views": 0,
}


def tiny_pipe(seed: int = 0) -> StyleGANPipeline:
    torch.manual_seed(seed)
    return StyleGANPipeline(Generator(TINY).eval())


def toy_guides() -> Guides:
    """A random 'CLIP' whose text embedding of the concept is a fixed direction, and a judge that agrees
    with it (P(concept) rises with the image's CLIP similarity to the concept), so a mapper trained
    through the CLIP moves the judge."""
    torch.manual_seed(123)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16)
    ).requires_grad_(False)
    texts: dict[str, torch.Tensor] = {}

    def clip_image(x):
        return unit(net(x))

    def clip_text(ts):
        return torch.stack(
            [texts.setdefault(t, unit(torch.randn(16, generator=torch.Generator().manual_seed(len(t))))) for t in ts]
        )

    def perceptual(a, b):
        return (net[0](a) - net[0](b)).pow(2).mean(dim=(1, 2, 3))

    def concept_probability(x, concept):
        return torch.sigmoid(40 * ((clip_image(x) * clip_text(["a face with eyeglasses"])).sum(-1) - base[0]))

    base = [0.0]
    with torch.no_grad():  # centre the judge on the untouched generator: about half the samples "have" the concept
        x = (
            tiny_pipe().generator(torch.randn(64, TINY.z_dim, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
            + 1
        ) / 2
        base[0] = float((clip_image(x) * clip_text(["a face with eyeglasses"])).sum(-1).median())

    def other_attributes(x, concept):
        return net(x)[:, :4].log_softmax(1)

    return Guides(
        clip_image=clip_image,
        clip_text=clip_text,
        perceptual=perceptual,
        identity=clip_image,
        concept_probability=concept_probability,
        other_attributes=other_attributes,
        names={"clip": "toy", "perceptual": "toy", "identity": "toy", "gate_judge": "toy"},
    )


def request(kind="attribute", concept="eyeglasses"):
    return EraseRequest(
        concept=concept,
        kind=kind,
        anchor="a face",
        forget_prompts=["a face with eyeglasses"],
        anchor_prompts=["a face"],
        protocol="faces-mini",
    )


def quick_erase(out, overrides=QUICK, *, pipe=None, guides=None):
    """A text_to_unlearn run on the tiny generator with the toy guides (or those given): the shape most tests share."""
    from erase.api import erase_concept

    return erase_concept(
        pipe if pipe is not None else tiny_pipe(),
        "text_to_unlearn",
        request(),
        out,
        overrides=overrides,
        progress=False,
        model_id="tiny",
        guides=guides if guides is not None else toy_guides(),
    )


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"direction_loss": "self_pair", "preserve_unedited": 1.0},
        {"mode": "clip_distance"},
        {"layers": "adaptive", "top_k": 2},
        {"layers": "mapping"},
        {"mapper_views": 2, "views": 2},
        {"direction_loss": "self_pair", "views": 2},
        {"mode": "clip_distance", "views": 2},
        {"views": 2, "colour_augment": True, "preserve_unedited": 1.0},
        {"anchor": "edited", "lambda_pixels": 1.0},
        {"preserve_unedited": 1.0, "preserve_where": "without_concept"},
        {"mapper_attributes": 1.0, "lambda_attributes": 1.0},
        {"layers": "adaptive", "top_k": 2, "adaptive_every": 1, "steps": 3},
        {"plain_direction": 1.0, "views": 1},
        {"remove_target": 1.0, "preserve_unedited": 0.0},
    ],
)
def test_two_steps_give_a_generator_patch_that_comes_off_bit_identical(tmp_path, over):
    from erase.core.patch import apply_patch, remove_patch

    pipe = tiny_pipe()
    before = pipe(seeds=[0, 1, 2], output_type="pt")
    params_before = {n: p.detach().clone() for n, p in pipe.generator.named_parameters()}
    patch = quick_erase(tmp_path / "out", {**QUICK, **over}, pipe=pipe)
    assert patch.names() and all(n.startswith("generator.") for n in patch.names())
    if over.get("layers") == "mapping":
        assert all(n.startswith("generator.mapping.") for n in patch.names())
    elif over.get("layers") != "adaptive":
        assert all(n.startswith("generator.synthesis.") and "to_rgb" not in n for n in patch.names())
    assert torch.equal(pipe(seeds=[0, 1, 2], output_type="pt"), before)  # the loop leaves the model unpatched
    apply_patch(pipe, patch)
    assert not torch.equal(pipe(seeds=[0, 1, 2], output_type="pt"), before)
    remove_patch(pipe)
    assert all(torch.equal(p, params_before[n]) for n, p in pipe.generator.named_parameters())
    assert torch.equal(pipe(seeds=[0, 1, 2], output_type="pt"), before)


def test_the_gate_stops_a_mapper_that_does_not_add_the_concept(tmp_path):

    with pytest.raises(EraseError, match=r"raised the judged rate of 'eyeglasses' only from .*the gate needs \+101"):
        quick_erase(tmp_path / "out", {**QUICK, "gate_points": 101.0})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("loss", [{}, {"views": 2}])
def test_the_mapper_adds_what_the_guide_clip_reads_as_the_prompt_and_is_cached(tmp_path, loss):
    from erase.core.latent_mapper import MapperSettings, concept_rates, train_mapper

    pipe, guides = tiny_pipe(), toy_guides()
    settings = MapperSettings(steps=60, batch_size=8, l2=0.0, identity=0.0, scale=0.5, **loss)
    mapper = train_mapper(pipe.generator, "a face with eyeglasses", guides, settings)
    plain, edited = concept_rates(pipe.generator, mapper, guides, "eyeglasses", 64, seed=5, scale=0.5)
    assert edited > plain + 0.2
    again = train_mapper(
        pipe.generator, "a face with eyeglasses", guides, settings
    )  # read from the cache: same weights, no training
    assert all(torch.equal(a, b) for a, b in zip(mapper.state_dict().values(), again.state_dict().values()))


def test_the_removing_mapper_takes_out_what_the_guide_classifier_reads_as_the_concept(tmp_path):
    from dataclasses import replace

    from erase.core.latent_mapper import MapperSettings, concept_rates, train_mapper

    pipe, guides = tiny_pipe(), toy_guides()
    settings = MapperSettings(steps=120, batch_size=8, l2=0.0, identity=0.0, scale=0.5, remove=True)
    mapper = train_mapper(pipe.generator, "a face with eyeglasses", guides, settings, concept="eyeglasses")
    plain, removed = concept_rates(pipe.generator, mapper, guides, "eyeglasses", 64, seed=5, scale=0.5)
    assert plain > 0.3 and removed < plain - 0.25
    # the same settings but the direction, trained after it: cached apart, so it adds the concept
    adding = train_mapper(
        pipe.generator, "a face with eyeglasses", guides, replace(settings, remove=False), concept="eyeglasses"
    )
    plain, added = concept_rates(pipe.generator, adding, guides, "eyeglasses", 64, seed=5, scale=0.5)
    assert added > plain + 0.2
    with pytest.raises(EraseError, match="needs the concept"):
        train_mapper(pipe.generator, "a face with eyeglasses", guides, settings)


def test_remove_target_holds_the_faces_with_the_concept_to_their_removed_counterpart(tmp_path):
    """The removal term is there, is recorded, and moves the trained generator differently from its absence."""
    from erase.api import erase_concept

    def run(over, out):
        return erase_concept(
            tiny_pipe(),
            "text_to_unlearn",
            request(),
            tmp_path / out,
            overrides={
                **QUICK,
                "preserve_unedited": 0.0,
                "mapper_steps": 120,
                "edit_scale": 0.5,
                "batch_size": 8,
                **over,
            },
            progress=False,
            model_id="tiny",
            guides=toy_guides(),
        )

    with_removal, without = run({"remove_target": 5.0}, "a"), run({}, "b")  # only the removal term differs
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["removal"] >= 0 for r in log if "removal" in r) and any("removal" in r for r in log)
    assert log[0]["step"] == 0 and log[0]["removal"] > 0  # G_t is G_f at step 0: the target is another image
    assert "removal" in with_removal.config["info"] and "removal" not in without.config["info"]
    removal = with_removal.config["info"]["removal"]
    assert removal["rate_removed"] < removal["rate_plain"]
    assert any(not torch.equal(with_removal.dense_delta(n), without.dense_delta(n)) for n in without.names())


def test_guides_are_part_of_the_run_identity(tmp_path):
    from erase.api import erase_concept

    out = tmp_path / "out"
    quick_erase(out)
    other = toy_guides()
    other.names["clip"] = "another clip"
    with pytest.raises(EraseError, match="differs in guides.clip"):
        erase_concept(
            tiny_pipe(),
            "text_to_unlearn",
            request(),
            out,
            overrides=QUICK,
            progress=False,
            model_id="tiny",
            guides=other,
            resume=True,
        )


def test_perceptual_net_picks_the_named_distance_and_refuses_an_unknown_one(tmp_path):

    calls = {"default": 0, "other": 0}
    guides = toy_guides()
    default = guides.perceptual

    def counted(name, fn):
        def distance(a, b):
            calls[name] += 1
            return fn(a, b)

        return distance

    guides.perceptual = counted("default", default)
    guides.perceptual_choices = {"other": counted("other", lambda a, b: (a - b).abs().mean(dim=(1, 2, 3)))}
    quick_erase(tmp_path / "a", {**QUICK, "perceptual_net": "other"}, guides=guides)
    assert calls == {"default": 0, "other": QUICK["steps"]}
    quick_erase(tmp_path / "b", guides=guides)
    assert calls == {"default": QUICK["steps"], "other": QUICK["steps"]}
    guides.perceptual = None
    with pytest.raises(EraseError, match=r"needs a perceptual guide \(lambda_perceptual / preserve_unedited > 0\)"):
        quick_erase(tmp_path / "d", guides=guides)
    quick_erase(tmp_path / "e", {**QUICK, "lambda_perceptual": 0.0}, guides=guides)  # no weight, no guide needed
    with pytest.raises(EraseError, match="no perceptual network 'lpips'.*these have: other"):
        quick_erase(tmp_path / "c", {**QUICK, "perceptual_net": "lpips"}, guides=guides)


def test_without_guides_or_on_a_diffusion_model_it_says_what_is_missing(tmp_path, tiny_pipe):
    from erase.api import erase_concept

    with pytest.raises(EraseError, match="needs guides"):
        erase_concept(
            StyleGANPipeline(Generator(TINY)),
            "text_to_unlearn",
            request(),
            tmp_path / "a",
            overrides=QUICK,
            progress=False,
        )
    with pytest.raises(EraseError, match="StyleGAN pipeline"):
        erase_concept(
            tiny_pipe,
            "text_to_unlearn",
            request(),
            tmp_path / "b",
            overrides=QUICK,
            progress=False,
            guides=toy_guides(),
        )


def test_clip_views_are_small_shifts_and_flips_of_each_image():
    from erase.core.image_views import clip_views

    x = torch.rand(3, 3, 16, 16)
    assert clip_views(x, 0, torch.Generator()) is x
    views = clip_views(x, 6, torch.Generator().manual_seed(0), shift=2).view(6, 3, 3, 16, 16)
    assert not all(torch.equal(v, x) for v in views)  # not the image itself
    for v in (
        views
    ):  # each view is the batch shifted by at most 2 pixels (and maybe mirrored): its centre is in the original
        found = False
        for flip in (False, True):
            u = v.flip(-1) if flip else v
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    found |= torch.equal(u[..., 4:12, 4:12], x[..., 4 + dy : 12 + dy, 4 + dx : 12 + dx])
        assert found


def test_identity_mappers_drop_the_terms_that_keep_who_the_face_is():
    from dataclasses import replace

    from erase.core.latent_mapper import MapperSettings

    s = MapperSettings(l2=0.8, identity=0.1, views=2)
    assert s.for_kind("attribute") == s
    assert (s.for_kind("identity").l2, s.for_kind("identity").identity, s.for_kind("identity").views) == (0.0, 0.0, 2)
    removing = replace(s, remove=True).for_kind("identity")  # taking an identity out: no further than it must
    assert (removing.l2, removing.identity) == (0.8, 0.0)


@pytest.mark.parametrize("views", [0, 3])
def test_a_pair_is_embedded_under_the_same_views(views):
    from erase.core.image_views import embed_pair

    x = torch.rand(4, 3, 16, 16)
    clip_image = lambda im: im.flatten(1)  # noqa: E731 - an embedding that sees every pixel
    a, b = embed_pair(clip_image, x, x.clone(), views, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (max(views, 1), 4, 3 * 16 * 16)
    assert torch.equal(a, b)  # the same images under the same views: no difference at all
    a, b = embed_pair(clip_image, x, x.flip(-2), views, torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)


def test_with_the_mapping_trained_the_frozen_half_of_each_pair_comes_from_the_frozen_mapping(tmp_path):
    """layers mapping: G_f(w_hat) must render the frozen mapping's w of the same z, or both halves of the pair are the
    same image at every step (the direction loss then stays at exactly 1 and the run learns nothing it can measure)."""
    import json

    quick_erase(tmp_path / "out", {**QUICK, "steps": 3, "layers": "mapping", "lr": 0.05})
    rows = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    direction = [r["direction"] for r in rows if "direction" in r]
    assert len(direction) >= 2 and direction[0] == 1.0  # G_t starts as G_f: no difference yet
    assert direction[-1] < 0.999  # once the mapping has moved, the pair differs
