"""The phrase-prior baseline and the overlay pictures."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils.baseline import PhrasePriorBaseline
from utils.visualize import draw_grounding


def test_phrase_prior_averages_the_nearest_training_phrases():
    pairs = [("left upper nodule", [0.6, 0.1, 0.7, 0.2]), ("left upper nodule", [0.6, 0.2, 0.7, 0.3]),
             ("right lower effusion", [0.1, 0.7, 0.4, 0.9])]
    baseline = PhrasePriorBaseline(k=2).fit(pairs)
    boxes, spread = baseline.predict(["nodule in the left upper zone"])
    assert boxes[0].tolist() == pytest.approx([0.6, 0.15, 0.7, 0.25])
    assert float(spread[0]) == pytest.approx((0 + 0.0025 + 0 + 0.0025) / 4)
    assert baseline.predict([])[0].shape == (0, 4)


@pytest.mark.parametrize("size", [256, 2048])
def test_overlay_is_readable_at_any_size(nih_images, size):
    image = Image.open(nih_images[0]).resize((size, size))
    s = size / 512
    finding = {"phrase": "small left pleural effusion", "gt_boxes": [[300 * s, 300 * s, 420 * s, 400 * s]],
               "box": [290 * s, 310 * s, 410 * s, 390 * s],
               "hypotheses": [[280 * s, 300 * s, 400 * s, 380 * s], [300 * s, 320 * s, 420 * s, 400 * s]],
               "u": 1.2e-3, "iou": 0.71}
    picture = draw_grounding(image, [finding, {**finding, "phrase": "nodule", "box": None,
                                               "hypotheses": None, "u": None, "iou": None}])
    assert picture.width == size and picture.height > size
    band = np.asarray(picture.crop((0, size, size, picture.height)).convert("L"))
    assert (band > 0).any()
