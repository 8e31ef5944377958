"""Overlay pictures on a real radiograph at a full and a small size."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils.visualize import BOX_COLOUR, GT_COLOUR, draw_grounding, to_rgb


def _findings(scale: float) -> list[dict]:
    def px(*values: float) -> list[float]:
        return [v * scale for v in values]

    return [{"phrase": "small left pleural effusion", "gt_boxes": [px(300, 300, 420, 400)],
             "box": px(290, 310, 410, 390),
             "hypotheses": [px(280, 300, 400, 380), px(300, 320, 420, 400)],
             "u": 1.2e-3, "iou": 0.71},
            {"phrase": "nodule in the right upper zone, about two centimetres across",
             "gt_boxes": [px(100, 120, 140, 160), px(150, 100, 170, 130)],
             "box": None, "hypotheses": None, "u": None, "iou": None},
            {"phrase": "no box at all", "gt_boxes": [], "box": [float("nan")] * 4, "hypotheses": [],
             "u": 0.5, "iou": 0.0}]


def _share(picture: Image.Image, colour: tuple[int, int, int]) -> float:
    return float((np.asarray(picture) == colour).all(axis=-1).mean())


@pytest.mark.parametrize("size", [256, 2048])
def test_overlay_is_readable_at_any_size(nih_images, tmp_path, size):
    with Image.open(nih_images[0]) as image:
        picture = draw_grounding(image.resize((size, size)), _findings(size / 512))
    picture.save(tmp_path / f"overlay_{size}.png")
    assert picture.mode == "RGB" and picture.width == size and picture.height > size
    top = picture.crop((0, 0, size, size))
    # Lines grow with the image: the box colours cover a similar share at both sizes.
    assert 0.002 < _share(top, GT_COLOUR) < 0.05 and 0.002 < _share(top, BOX_COLOUR) < 0.05
    band = np.asarray(picture.crop((0, size, size, picture.height)).convert("L"))
    assert (band > 128).mean() > 0.01  # caption text is drawn
    assert picture.height - size >= 5 * 12  # three findings (one wrapped) and the legend


def test_arrays_of_any_depth_are_accepted():
    ramp = np.tile(np.linspace(0, 4095, 64), (64, 1)).astype(np.uint16)
    rgb = to_rgb(ramp)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((63, 0)) == (255, 255, 255)
    assert to_rgb(np.zeros((8, 8, 3), dtype=np.uint8)).size == (8, 8)
    assert to_rgb(Image.fromarray(ramp)).getpixel((63, 0)) == (255,) * 3
    inverted = {"phrase": "x", "gt_boxes": [[40, 40, 10, 10]], "box": [50, 50, 20, 20],
                "hypotheses": [[5, 5, 1, 1]], "u": 0.1, "iou": 0.2}
    assert draw_grounding(np.zeros((64, 64), dtype=np.uint8), [inverted]).width == 64
    with pytest.raises(ValueError, match="grayscale"):
        to_rgb(np.zeros((8, 8, 2)))


def test_a_phrase_with_several_boxes_draws_each_box_not_their_enclosing_one():
    image = np.zeros((128, 128), dtype=np.uint8)
    left, right = [10.0, 60.0, 40.0, 100.0], [80.0, 60.0, 115.0, 100.0]
    finding = {"phrase": "bilateral pleural effusions", "gt_boxes": [], "u": 0.01,
               "box": [10.0, 60.0, 115.0, 100.0], "hypotheses": [],
               "boxes": [{"box": left, "hypotheses": [left]}, {"box": right, "hypotheses": []}]}
    pixels = np.asarray(draw_grounding(image, [finding]))
    red = (pixels == BOX_COLOUR).all(axis=-1)
    assert red[80, 10] and red[80, 40] and red[80, 80] and red[80, 114]  # both boxes' sides
    assert not red[60:101, 55:70].any()  # nothing between them: no enclosing box
    one = {**finding, "box": left, "hypotheses": [left], "boxes": None}
    same = {**one, "boxes": [{"box": left, "hypotheses": [left]}]}
    assert np.array_equal(np.asarray(draw_grounding(image, [one])),
                          np.asarray(draw_grounding(image, [same])))
