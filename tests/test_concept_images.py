"""canvas-mini's concept-image folders (MACE's ``concept_images``): captions that are the request's forget prompts,
the renderer's own masks for objects, none for styles, and the folder written whole or not at all."""

import numpy as np
import pytest
from PIL import Image

from erase.core.errors import EraseError
from erase.core.request import EraseRequest
from eval.protocols import load_protocol
from worlds.canvas_mini.concept_images import main, write_concept_images


def test_object_images_carry_the_forget_prompts_and_the_objects_silhouettes(tmp_path):
    out = write_concept_images(["Birds", "Towers"], "object", 12, tmp_path / "images")
    protocol = load_protocol("canvas-mini")
    for obj in ("Birds", "Towers"):
        forget = EraseRequest.from_protocol(protocol, obj, "object").forget_prompts
        captions = [(out / obj / f"{j}.txt").read_text().strip() for j in range(12)]
        assert captions == [forget[j % len(forget)] for j in range(12)]  # the forget prompts in turn
        true, moved = [], []
        for j in range(12):
            image = np.asarray(Image.open(out / obj / f"{j}.png"), np.float32)
            mask = np.asarray(Image.open(out / obj / f"{j}.mask.png"), np.float32) / 255
            assert 0.1 < mask.mean() < 0.7
            true.append(_contrast(image, mask))
            moved.append(max(_contrast(image, np.roll(mask, 8, axis=a)) for a in (0, 1)))
        # the silhouette is where the object is drawn: its inside and outside differ in colour (over the 12 images,
        # one per style) half as much again as those of the same mask moved by a quarter of the image
        assert np.mean(true) > 1.5 * np.mean(moved)


def _contrast(image, mask):
    return np.abs(image[mask > 0.5].mean(0) - image[mask <= 0.5].mean(0)).sum()


def test_style_images_have_no_mask_and_bad_input_writes_nothing(tmp_path, capsys):
    out = write_concept_images(["Watercolor"], "style", 3, tmp_path / "styles")
    assert sorted(p.name for p in (out / "Watercolor").iterdir()) == [
        "0.png",
        "0.txt",
        "1.png",
        "1.txt",
        "2.png",
        "2.txt",
    ]
    with pytest.raises(EraseError, match="already exists"):
        write_concept_images(["Watercolor"], "style", 3, out)
    for argv, match in (
        (["--concepts", "Cubism", "--kind", "style"], "not a canvas-mini style"),
        (["--concepts", "Birds", "--kind", "style"], "not a canvas-mini style"),
        (["--concepts", "Birds", "--kind", "object", "--n", "0"], "at least 1"),
    ):
        assert main([*argv, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1
        assert not (tmp_path / "bad").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["styles"]  # no temp folder left behind
