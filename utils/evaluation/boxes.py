"""Per-box grounding (``grounding_boxes``): every ground-truth box of a finding scored on its own.

Within each finding, the predicted boxes (the boxes the model reports for the phrase) and the
ground-truth boxes are paired one to one by Hungarian matching on IoU (the pairing of largest
summed IoU, ``scipy.optimize.linear_sum_assignment``). Each ground-truth box scores the IoU of
its predicted box, 0 when it has none (fewer predicted than true boxes, or a finding whose
phrase was not generated). Over all ground-truth boxes, ``acc@t`` is the fraction with IoU
>= t and ``miou`` the mean IoU. A pair with IoU >= 0.5 is a true positive:
``precision@0.5`` = true positives / predicted boxes, ``recall@0.5`` = true positives /
ground-truth boxes (so it equals ``acc@0.5``). ``count_accuracy`` is the fraction of findings
whose number of predicted boxes equals their number of ground-truth boxes. ``multi_box`` and
``single_box`` are the same over the findings with more than one / exactly one ground-truth
box. Boxes are pixel xyxy of the real image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

from utils.evaluation.grounding import THRESHOLDS, grounding_metrics

TRUE_POSITIVE_IOU = 0.5


@dataclass(frozen=True)
class BoxSetScore:
    """One finding: ``ious`` has one IoU per ground-truth box (0 when unmatched);
    ``predicted`` is how many boxes the model reported for it."""

    ious: tuple[float, ...]
    predicted: int

    @property
    def true_positives(self) -> int:
        """Matched pairs with IoU >= 0.5 (an unmatched ground-truth box scores 0)."""
        return sum(iou >= TRUE_POSITIVE_IOU for iou in self.ious)


def score_box_set(predicted: torch.Tensor, truth: torch.Tensor) -> BoxSetScore:
    """Match a finding's predicted boxes (P,4) to its ground-truth boxes (G,4), pixel xyxy.

    P may be 0 (no box: every ground-truth box scores 0); G must be at least 1.
    """
    if truth.dim() != 2 or truth.shape[0] == 0 or truth.shape[1] != 4:
        raise ValueError(f"a finding needs (G, 4) ground-truth boxes with G >= 1, got "
                         f"{tuple(truth.shape)}")
    predicted = predicted.reshape(-1, 4).float()
    ious = [0.0] * truth.shape[0]
    if predicted.shape[0]:
        matrix = box_iou(predicted, truth.float()).nan_to_num(0.0).clamp(0.0, 1.0)
        rows, cols = linear_sum_assignment(matrix.numpy(), maximize=True)
        for row, col in zip(rows, cols):
            ious[int(col)] = float(matrix[row, col])
    return BoxSetScore(tuple(ious), int(predicted.shape[0]))


def _block(scores: Sequence[BoxSetScore]) -> dict[str, Any]:
    metrics: dict[str, Any] = grounding_metrics([iou for s in scores for iou in s.ious],
                                                THRESHOLDS)
    predicted = sum(s.predicted for s in scores)
    truth = sum(len(s.ious) for s in scores)
    hits = sum(s.true_positives for s in scores)
    metrics["precision@0.5"] = hits / predicted if predicted else 0.0
    metrics["recall@0.5"] = hits / truth if truth else 0.0
    metrics["count_accuracy"] = (sum(s.predicted == len(s.ious) for s in scores) / len(scores)
                                 if scores else 0.0)
    metrics["n_findings"] = len(scores)
    metrics["n_boxes"] = truth
    return metrics


def box_set_metrics(scores: Sequence[BoxSetScore]) -> dict[str, Any]:
    """The ``grounding_boxes`` block: the per-box metrics over all findings, then over the
    findings with several (``multi_box``) and with one (``single_box``) ground-truth box.
    Also ``n_findings`` and ``n_boxes`` (ground-truth boxes) of each; an empty block is 0.0."""
    metrics = _block(scores)
    metrics["multi_box"] = _block([s for s in scores if len(s.ious) > 1])
    metrics["single_box"] = _block([s for s in scores if len(s.ious) == 1])
    return metrics
