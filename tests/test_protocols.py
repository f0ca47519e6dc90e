import json

import pytest

from eval.protocols import Protocol, ProtocolError, load_protocol


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
    from eval.canvas_mini import OBJECTS, STYLES

    p = load_protocol("canvas-mini")
    assert p.styles == STYLES and p.objects == OBJECTS and p.photo_class == "Photo"
    assert len(p.seeds) == 5


def test_json_round_trip(tmp_path):
    p = load_protocol("canvas-mini").with_overrides(steps=10)
    path = tmp_path / "p.json"
    p.save(path)
    q = load_protocol(str(path))
    assert q == p and q.deviations == p.deviations


def test_yaml_protocol(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: mine\nstyles: [A, B, Photo]\nobjects: [X, Y]\nphoto_class: Photo\nseeds: [1, 2]\nresolution: 64\n")
    p = load_protocol(str(path))
    assert p.styles == ["A", "B", "Photo"] and p.seeds == [1, 2]


def test_overrides_are_recorded_as_deviations():
    p = load_protocol("unlearncanvas").with_overrides(steps=20, seeds=[188], guidance=None)
    assert p.steps == 20 and p.seeds == [188]
    assert len(p.deviations) == 2 and any("steps: 100 -> 20" in d for d in p.deviations)
    assert load_protocol("unlearncanvas").with_overrides(steps=100).deviations == []


def test_bad_protocols(tmp_path):
    with pytest.raises(ProtocolError, match="unknown protocol"):
        load_protocol("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "styles": ["A"], "objects": ["B"], "photo_class": None, "colour": 1}))
    with pytest.raises(ProtocolError, match="unknown protocol field"):
        load_protocol(str(bad))
    with pytest.raises(ProtocolError, match="photo_class"):
        Protocol(name="x", styles=["A"], objects=["B"], photo_class="Photo")


def test_check_target():
    p = load_protocol("canvas-mini")
    p.check_target("Watercolor", "style")
    with pytest.raises(ProtocolError, match="not in protocol"):
        p.check_target("Van_Gogh", "style")
    with pytest.raises(ProtocolError, match="photo class"):
        p.check_target("Photo", "style")
    with pytest.raises(ProtocolError, match="unknown kind"):
        p.check_target("Birds", "colour")
