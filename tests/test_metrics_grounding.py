"""Grounding metrics and phrase matching against hand-computed cases."""
from __future__ import annotations

import pytest
import torch

from utils.annotations import Finding
from utils.evaluation.grounding import box_ious, grounding_metrics, to_pixels
from utils.evaluation.matching import match_phrases, parse_generated_answer, token_f1


def test_thresholds_are_greater_or_equal():
    metrics = grounding_metrics([0.1, 0.3, 0.5, 0.0999])
    assert metrics == pytest.approx({"acc@0.1": 0.75, "acc@0.3": 0.5, "acc@0.5": 0.25,
                                     "miou": (0.1 + 0.3 + 0.5 + 0.0999) / 4})


def test_no_findings_scores_zero():
    assert grounding_metrics([]) == {"acc@0.1": 0.0, "acc@0.3": 0.0, "acc@0.5": 0.0, "miou": 0.0}


def test_paired_iou_and_degenerate_boxes():
    predicted = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 9]], dtype=torch.float)
    target = torch.tensor([[5, 0, 15, 10], [0, 0, 10, 10], [5, 5, 5, 9]], dtype=torch.float)
    assert box_ious(predicted, target).tolist() == pytest.approx([50 / 150, 1.0, 0.0])
    assert box_ious(torch.zeros(0, 4), torch.zeros(0, 4)).numel() == 0


def test_enclosing_target_and_pixels():
    finding = Finding("bilateral effusions", ((0.1, 0.2, 0.3, 0.4), (0.5, 0.1, 0.6, 0.3)))
    assert finding.target_box() == pytest.approx((0.1, 0.1, 0.6, 0.4))
    assert to_pixels(torch.tensor([0.1, 0.2, 0.5, 1.0]), 200, 100).tolist() == pytest.approx(
        [20, 20, 100, 100])


def test_parse_generated_answer():
    text = "Small left effusion. It is [BOX]. Right upper zone nodule. It is [BOX]."
    assert parse_generated_answer(text) == ["Small left effusion", "Right upper zone nodule"]
    assert parse_generated_answer("No finding to ground.") == []
    assert parse_generated_answer("[BOX] cardiomegaly. It is [BOX]") == ["", "cardiomegaly"]


def test_matching_is_one_to_one_and_drops_weak_pairs():
    predicted = ["right upper zone nodule", "small left effusion", "hernia"]
    truth = ["small left pleural effusion", "nodule in the right upper zone"]
    assert match_phrases(predicted, truth) == [(0, 1), (1, 0)]
    assert match_phrases([], truth) == [] and match_phrases(predicted, []) == []
    assert token_f1("left effusion", "left effusion") == 1.0
    assert token_f1("left", "") == 0.0
