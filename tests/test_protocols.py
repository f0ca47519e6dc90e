import json

import pytest

from eval.protocols import Axis, Protocol, ProtocolError, load_protocol


def test_unlearncanvas_protocol_is_the_published_one():
    p = load_protocol("unlearncanvas")
    assert len(p.styles) == 51 and len(p.objects) == 20
    assert p.styles[:3] == ["Abstractionism", "Artist_Sketch", "Blossom_Season"]
    assert p.styles[37:40] == ["Rust", "Seed_Images", "Sketch"]  # photo class between Rust and Sketch
    assert p.styles == sorted(p.styles) and p.objects == sorted(p.objects)
    assert p.photo_class == "Seed_Images"
    assert p.seeds == [188, 288, 588, 688, 888]
    assert (p.steps, p.guidance, p.eta, p.resolution, p.negative_prompt) == (100, 9.0, 0.0, 512, "")
    assert p.prompt("Van_Gogh", "Dogs") == "A Dogs image in Van Gogh style."
    assert len(p.answer_set()) == 51 * 20 * 5


def test_canvas_mini_protocol():
    from worlds.canvas_mini import OBJECTS, STYLES

    p = load_protocol("canvas-mini")
    assert p.styles == STYLES and p.objects == OBJECTS and p.photo_class == "Photo"
    assert p.seeds == [0, 1, 2, 3, 4]
    assert p.axis_names == ["style", "object"]
    assert [(a.name, a.null_class, a.metric) for a in p.axes] == [
        ("style", "Photo", "concept_accuracy"),
        ("object", None, "concept_accuracy"),
    ]
    assert p.concepts("style") is p.styles and p.null_class("style") == "Photo" and p.null_class("object") is None
    assert (p.sampler, p.steps, p.guidance, p.eta, p.resolution) == ("ddim", 50, 7.5, 0.0, 32)


def test_json_round_trip(tmp_path):
    p = load_protocol("canvas-mini").with_overrides(steps=10)
    path = tmp_path / "p.json"
    p.save(path)
    q = load_protocol(str(path))
    assert q == p and q.deviations == p.deviations


def test_yaml_protocol(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: mine\nstyles: [A, B, Photo]\nobjects: [X, Y]\nphoto_class: Photo\nseeds: [1, 2]\nresolution: 64\n"
    )
    p = load_protocol(str(path))  # the older shape: styles / objects / photo_class
    assert (
        p.styles == ["A", "B", "Photo"] and p.objects == ["X", "Y"] and p.photo_class == "Photo" and p.seeds == [1, 2]
    )
    assert p.axes == [Axis("style", ["A", "B", "Photo"], "Photo"), Axis("object", ["X", "Y"])]


def test_overrides_are_recorded_as_deviations():
    p = load_protocol("unlearncanvas").with_overrides(steps=20, seeds=[188], guidance=None)
    assert p.steps == 20 and p.seeds == [188]
    assert p.deviations == [
        "steps: 100 -> 20 (protocol 'unlearncanvas' says 100)",
        "seeds: [188, 288, 588, 688, 888] -> [188] (protocol 'unlearncanvas' says [188, 288, 588, 688, 888])",
    ]
    assert load_protocol("unlearncanvas").with_overrides(steps=100).deviations == []


def test_bad_protocols(tmp_path):
    with pytest.raises(ProtocolError, match="unknown protocol"):
        load_protocol("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "styles": ["A"], "objects": ["B"], "photo_class": None, "colour": 1}))
    with pytest.raises(ProtocolError, match="unknown protocol field"):
        load_protocol(str(bad))
    with pytest.raises(ProtocolError, match="null class 'Photo' is not one of its concepts"):
        Axis("style", ["A"], "Photo")
    with pytest.raises(ProtocolError, match=r"exactly the axis placeholders \{style\}, \{object\}"):
        Protocol(name="x", axes=[Axis("style", ["A"]), Axis("object", ["B"])], template="A {object} image.")
    with pytest.raises(
        ProtocolError, match="unknown sampler 'heun'; choose one of: ddim, ddpm, pndm, euler, euler_a, dpm\\+\\+"
    ):
        load_protocol("canvas-mini").with_overrides(sampler="heun")
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"name": "x", "styles": ["A"], "objects": ["B"], "axes": []}))
    with pytest.raises(ProtocolError, match="either 'axes' or the older"):
        load_protocol(str(both))


def test_check_target():
    p = load_protocol("canvas-mini")
    p.check_target("Watercolor", "style")
    with pytest.raises(ProtocolError, match="not in protocol"):
        p.check_target("Van_Gogh", "style")
    with pytest.raises(ProtocolError, match="photo class"):
        p.check_target("Photo", "style")
    with pytest.raises(
        ProtocolError, match="unknown kind 'colour' for protocol 'canvas-mini'; its axes are: style, object"
    ):
        p.check_target("Birds", "colour")


def test_old_shape_json_loads_and_saves_in_the_axes_shape(tmp_path):
    old = {
        "name": "canvas-mini",
        "styles": load_protocol("canvas-mini").styles,
        "objects": load_protocol("canvas-mini").objects,
        "photo_class": "Photo",
        "template": "A {object} image in {style} style.",
        "seeds": [0, 1, 2, 3, 4],
        "sampler": "ddim",
        "steps": 50,
        "guidance": 7.5,
        "eta": 0.0,
        "negative_prompt": "",
        "resolution": 32,
        "classifiers": "canvas-mini",
        "deviations": [],
    }  # a protocol file written before axes existed
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    p = load_protocol(str(path))
    assert p == load_protocol("canvas-mini")
    assert p.to_dict()["axes"][0] == {
        "name": "style",
        "concepts": old["styles"],
        "null_class": "Photo",
        "metric": "concept_accuracy",
    }
    assert "styles" not in p.to_dict()
    assert Protocol.from_dict(p.to_dict()) == p


def test_prompt_positional_in_axis_order_or_named():
    p = load_protocol("canvas-mini")
    assert p.prompt("Watercolor", "Birds") == "A Birds image in Watercolor style."
    assert p.prompt(style="Pop_Art", object="Birds") == "A Birds image in Pop Art style."
    assert p.prompt("Pop_Art", object="Cats") == "A Cats image in Pop Art style."
    with pytest.raises(ProtocolError, match="missing: object"):
        p.prompt("Pop_Art")
    with pytest.raises(ProtocolError, match="axis 'style' given twice"):
        p.prompt("Pop_Art", style="Rust")
    with pytest.raises(ProtocolError, match="unknown kind 'colour'"):
        p.prompt(colour="red", style="Rust", object="Cats")


def test_answer_set_is_every_axis_combination_times_every_seed_in_order():
    p = Protocol(name="t", axes=[Axis("style", ["A", "P"], "P"), Axis("object", ["x", "y", "z"])], seeds=[7, 9])
    assert p.answer_set()[:4] == [("A", "x", 7), ("A", "x", 9), ("A", "y", 7), ("A", "y", 9)]
    assert p.answer_set()[-1] == ("P", "z", 9)
    assert len(p.answer_set()) == 2 * 3 * 2
    with pytest.raises(ProtocolError, match="'P' is the photo class of protocol 't'"):
        p.check_target("P", "style")


def test_a_latent_seeded_protocol_with_other_axes_and_metrics():
    """A faces-like protocol: attribute and identity axes, no text template, its own metric names."""
    faces = Protocol(
        name="faces-mini",
        axes=[
            Axis("attribute", ["glasses", "smile", "none"], "none", metric="attribute_rate"),
            Axis("identity", ["ada", "bob"], metric="identity_match"),
        ],
        template=None,
        seeds=[1],
    )
    assert faces.axis_names == ["attribute", "identity"]
    assert faces.photo_class is None and faces.null_class("attribute") == "none"
    faces.check_target("glasses", "attribute")
    with pytest.raises(ProtocolError, match="no prompt template"):
        faces.prompt("smile", "ada")
    with pytest.raises(
        ProtocolError, match="unknown kind 'style' for protocol 'faces-mini'; its axes are: attribute, identity"
    ):
        _ = faces.styles
    from eval.axis_metrics import check_axis_metrics

    with pytest.raises(ProtocolError, match="asks for metric 'attribute_rate'; registered metrics: concept_accuracy"):
        check_axis_metrics(faces)
    assert Protocol.from_dict(json.loads(json.dumps(faces.to_dict()))) == faces


def test_sampler_override_is_a_deviation():
    p = load_protocol("unlearncanvas").with_overrides(sampler="euler")
    assert p.sampler == "euler"
    assert p.deviations == ["sampler: 'ddim' -> 'euler' (protocol 'unlearncanvas' says 'ddim')"]
