import numpy as np
import pytest

from worlds.canvas_mini import OBJECTS, RESOLUTION, STYLES, caption, render, render_array


def test_world_lists():
    assert len(STYLES) >= 11 and STYLES[-1] == "Photo"
    assert len(OBJECTS) >= 10
    assert len(set(STYLES)) == len(STYLES) and len(set(OBJECTS)) == len(OBJECTS)
    assert caption("Pencil_Drawing", "Birds") == "A Birds image in Pencil Drawing style."


def test_render_shape_and_determinism():
    img = render("Watercolor", "Cats", 7)
    assert img.mode == "RGB" and img.size == (RESOLUTION, RESOLUTION)
    a, b = render_array("Watercolor", "Cats", 7), render_array("Watercolor", "Cats", 7)
    assert a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, render_array("Watercolor", "Cats", 8))


def test_every_pair_renders_distinctly():
    # Same seed, different style (or object) must give a different image.
    imgs = {(s, o): render_array(s, o, 3) for s in STYLES for o in OBJECTS}
    flat = {k: v.tobytes() for k, v in imgs.items()}
    assert len(set(flat.values())) == len(flat)


def test_styles_are_not_identified_by_mean_colour_alone():
    # Several styles share the vivid pool: the mean colours of two pool styles overlap across seeds.
    means = {
        s: np.stack([render_array(s, "Birds", k).reshape(-1, 3).mean(0) for k in range(20)])
        for s in ("Mosaic", "Pop_Art")
    }
    spread = np.linalg.norm(means["Mosaic"].mean(0) - means["Pop_Art"].mean(0))
    assert spread < 3 * means["Pop_Art"].std(0).mean()


@pytest.mark.parametrize("style,obj", [("Cubism", "Birds"), ("Photo", "Dogs")])
def test_unknown_names_raise_clear_errors(style, obj):
    with pytest.raises(ValueError, match="unknown canvas-mini"):
        render(style, obj, 0)


def test_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        render("Photo", "Birds", -1)
