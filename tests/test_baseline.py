"""The image-free phrase-prior baseline on a handmade training set."""
from __future__ import annotations

import pytest
import torch

from utils.baseline import PhrasePriorBaseline, build_phrase_prior

PAIRS = [("left upper nodule", [0.6, 0.1, 0.7, 0.2]),
         ("left upper nodule", [0.6, 0.2, 0.7, 0.3]),
         ("right lower effusion", [0.1, 0.7, 0.4, 0.9]),
         ("cardiomegaly", [0.3, 0.4, 0.8, 0.8])]


def test_averages_the_nearest_training_phrases():
    baseline = PhrasePriorBaseline(k=2).fit(PAIRS)
    boxes = baseline.predict(["nodule in the left upper zone", "Cardiomegaly."])
    assert boxes.shape == (2, 4) and boxes.dtype == torch.float32
    assert boxes[0].tolist() == pytest.approx([0.6, 0.15, 0.7, 0.25])
    # "cardiomegaly" and then the first training pair (all others tie at similarity 0).
    assert boxes[1].tolist() == pytest.approx([0.45, 0.25, 0.75, 0.5])
    _, spread = baseline.predict_with_spread(["nodule in the left upper zone"])
    assert float(spread[0]) == pytest.approx((0 + 0.0025 + 0 + 0.0025) / 4)


def test_k_one_is_the_nearest_phrase_and_ties_take_the_earlier_pair():
    baseline = build_phrase_prior(PAIRS, k=1)
    assert baseline.predict(["right effusion"])[0].tolist() == pytest.approx([0.1, 0.7, 0.4, 0.9])
    nearest = baseline.predict(["left upper nodule"])[0]
    assert nearest.tolist() == pytest.approx([0.6, 0.1, 0.7, 0.2])


def test_unknown_words_get_the_mean_training_box_and_k_is_capped():
    mean = torch.tensor([box for _, box in PAIRS]).mean(dim=0)
    baseline = PhrasePriorBaseline(k=2).fit(PAIRS)
    assert torch.allclose(baseline.predict(["pneumothorax"])[0], mean)
    capped = PhrasePriorBaseline(k=50).fit(PAIRS)
    assert torch.allclose(capped.predict(["left upper nodule"])[0], mean)
    assert baseline.predict([]).shape == (0, 4)


def test_deterministic_across_fits():
    phrases = ["left nodule", "effusion on the right", "enlarged heart"]
    first = PhrasePriorBaseline().fit(PAIRS).predict(phrases)
    assert torch.equal(first, PhrasePriorBaseline().fit(PAIRS).predict(phrases))


def test_bad_use_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one training finding"):
        PhrasePriorBaseline().fit([])
    with pytest.raises(ValueError, match="4 numbers each"):
        PhrasePriorBaseline().fit([("nodule", [0.1, 0.2, 0.3])])
    with pytest.raises(ValueError, match="no word"):
        PhrasePriorBaseline().fit([("?", [0.1, 0.2, 0.3, 0.4])])
    with pytest.raises(RuntimeError, match="fit"):
        PhrasePriorBaseline().predict(["nodule"])
    with pytest.raises(ValueError, match="k >= 1"):
        PhrasePriorBaseline(k=0)
