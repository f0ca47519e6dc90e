"""Image-folder loading shared by user forget sets and FID reference folders."""

import numpy as np
import torch
from PIL import Image

from eval.images import image_files, load_images


def test_image_files_filters_and_excludes(tmp_path):
    (tmp_path / "Watercolor").mkdir()
    (tmp_path / "Mosaic").mkdir()
    for sub in ("Watercolor", "Mosaic"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / sub / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "top.JPG")
    (tmp_path / "readme.txt").write_text("x")
    assert [f.name for f in image_files(tmp_path)] == ["top.JPG"]
    found = image_files(tmp_path, recursive=True, exclude="Watercolor")
    assert [f.relative_to(tmp_path).as_posix() for f in found] == ["Mosaic/a.png", "top.JPG"]


def test_load_images_resizes_to_float(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[..., 0] = 255
    Image.fromarray(arr).save(tmp_path / "red.png")
    Image.fromarray(np.full((4, 4), 128, np.uint8), mode="L").save(tmp_path / "grey.png")
    x = load_images(image_files(tmp_path), 8)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    grey, red = x  # sorted by name
    assert torch.allclose(red[0], torch.ones(8, 8)) and torch.allclose(red[1:], torch.zeros(2, 8, 8))
    assert torch.allclose(grey, torch.full((3, 8, 8), 128 / 255))
