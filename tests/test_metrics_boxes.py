"""Per-box grounding metrics (``grounding_boxes``) against values worked out by hand."""
from __future__ import annotations

import pytest
import torch

from utils.evaluation.boxes import BoxSetScore, box_set_metrics, score_box_set


def strip(*spans: tuple[float, float]) -> torch.Tensor:
    """Boxes of height 1 over x spans, so an IoU is overlap / union of the spans."""
    return torch.tensor([[x0, 0.0, x1, 1.0] for x0, x1 in spans]).view(-1, 4)


def test_matching_maximises_the_summed_iou_not_the_best_pair():
    # G1 = [0, 10], G2 = [4, 14]; P1 = [1, 11]: IoU 9/11 with G1, 7/13 with G2;
    # P2 = [0, 7]: IoU 7/10 with G1, 3/14 with G2. Taking the best pair first (P1-G1) leaves
    # P2-G2 (sum 1.03); the Hungarian pairing P1-G2 + P2-G1 sums to 1.24.
    score = score_box_set(strip((1, 11), (0, 7)), strip((0, 10), (4, 14)))
    assert score.ious == pytest.approx((0.7, 7 / 13))
    assert score.predicted == 2 and score.true_positives == 2


@pytest.mark.parametrize("predicted,truth,ious,count,hits", [
    ([(20, 30), (40, 50)], [(20, 30)], (1.0,), 2, 1),        # a spurious second box
    ([], [(0, 10), (20, 30), (40, 50)], (0.0, 0.0, 0.0), 0, 0),  # phrase not generated
    ([(0, 4)], [(0, 10)], (0.4,), 1, 0),                     # one box, IoU 4/10
    ([(0, 10)], [(0, 10), (20, 30)], (1.0, 0.0), 1, 1),       # one of two boxes found
])
def test_each_ground_truth_box_scores_its_matched_box_or_zero(predicted, truth, ious, count,
                                                              hits):
    score = score_box_set(strip(*predicted), strip(*truth))
    assert score.ious == pytest.approx(ious)
    assert (score.predicted, score.true_positives) == (count, hits)


def test_a_finding_needs_ground_truth_boxes():
    with pytest.raises(ValueError, match="ground-truth boxes"):
        score_box_set(strip((0, 1)), torch.zeros(0, 4))


def test_block_by_hand():
    scores = [BoxSetScore((0.7, 7 / 13), 2),       # two boxes, both found
              BoxSetScore((1.0,), 2),              # one box found, one spurious
              BoxSetScore((0.0, 0.0, 0.0), 0),     # three boxes, phrase missed
              BoxSetScore((0.4,), 1)]              # one box, IoU 0.4
    metrics = box_set_metrics(scores)
    assert metrics["acc@0.1"] == pytest.approx(4 / 7) and metrics["acc@0.3"] == pytest.approx(4 / 7)
    assert metrics["acc@0.5"] == pytest.approx(3 / 7)
    assert metrics["miou"] == pytest.approx((0.7 + 7 / 13 + 1.0 + 0.4) / 7)
    assert metrics["precision@0.5"] == pytest.approx(3 / 5)  # 3 hits of 5 predicted boxes
    assert metrics["recall@0.5"] == pytest.approx(3 / 7) == metrics["acc@0.5"]
    assert metrics["count_accuracy"] == pytest.approx(2 / 4)
    assert (metrics["n_findings"], metrics["n_boxes"]) == (4, 7)
    multi = metrics["multi_box"]
    assert multi["acc@0.5"] == pytest.approx(2 / 5) and multi["precision@0.5"] == 1.0
    assert multi["miou"] == pytest.approx((0.7 + 7 / 13) / 5)
    assert multi["count_accuracy"] == 0.5 and (multi["n_findings"], multi["n_boxes"]) == (2, 5)
    single = metrics["single_box"]
    assert single["acc@0.5"] == 0.5 and single["precision@0.5"] == pytest.approx(1 / 3)
    assert single["count_accuracy"] == 0.5
    keys = {"acc@0.1", "acc@0.3", "acc@0.5", "miou", "precision@0.5", "recall@0.5",
            "count_accuracy", "n_findings", "n_boxes"}
    assert set(multi) == set(single) == keys and set(metrics) == keys | {"multi_box",
                                                                         "single_box"}


def test_empty_blocks_are_zero():
    metrics = box_set_metrics([BoxSetScore((1.0,), 1)])
    assert metrics["multi_box"]["acc@0.5"] == 0.0 and metrics["multi_box"]["n_findings"] == 0
    assert metrics["multi_box"]["precision@0.5"] == 0.0
    assert box_set_metrics([])["count_accuracy"] == 0.0
