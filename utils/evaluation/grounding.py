"""Grounding accuracy: IoU in pixels of the real image, accuracy at IoU >= t, and mIoU.

Boxes are xyxy. The target of a finding with several ground-truth boxes is the smallest box
enclosing all of them (the rule of ``grounding`` and of the single-box model's training; each
box is scored on its own in :mod:`utils.evaluation.boxes`). Normalised boxes are
converted to pixels of the real image with :func:`to_pixels` before any IoU is taken, so a
non-square image weighs its two axes as a reader sees them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import box_area

THRESHOLDS = (0.1, 0.3, 0.5)


def to_pixels(boxes: torch.Tensor, width: torch.Tensor | float, height: torch.Tensor | float
              ) -> torch.Tensor:
    """Normalised xyxy boxes to pixel xyxy of the real image.

    Arguments:
      boxes: (..., 4) normalised xyxy in [0, 1].
      width, height: image size in pixels, scalars or tensors broadcastable to (...).

    Returns:
      (..., 4) pixel xyxy, in ``boxes``' dtype.
    """
    width = torch.as_tensor(width, dtype=boxes.dtype)
    height = torch.as_tensor(height, dtype=boxes.dtype)
    width, height = torch.broadcast_tensors(width, height)
    return boxes * torch.stack([width, height, width, height], dim=-1)


def box_ious(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Paired IoU of ``predicted[i]`` and ``target[i]`` (the diagonal of ``box_iou``, computed
    elementwise in O(M)).

    A pair where either box has zero or negative width or height (or a NaN coordinate)
    scores 0, never NaN.

    Arguments:
      predicted: (M, 4) xyxy.
      target: (M, 4) xyxy, same units.

    Returns:
      (M,) float32 IoU in [0, 1].
    """
    if predicted.shape != target.shape or predicted.dim() != 2 or predicted.shape[-1] != 4:
        raise ValueError(f"paired IoU needs two (M, 4) tensors, got {tuple(predicted.shape)} "
                         f"and {tuple(target.shape)}")
    predicted, target = predicted.float(), target.float()
    top_left = torch.maximum(predicted[:, :2], target[:, :2])
    bottom_right = torch.minimum(predicted[:, 2:], target[:, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    union = box_area(predicted) + box_area(target) - intersection
    ious = intersection / union.clamp(min=torch.finfo(torch.float32).tiny)
    valid = ((predicted[:, 2:] > predicted[:, :2]).all(dim=1)
             & (target[:, 2:] > target[:, :2]).all(dim=1))
    return torch.where(valid, ious, torch.zeros_like(ious)).clamp(0.0, 1.0)


def grounding_metrics(ious: Sequence[float], thresholds: Sequence[float] = THRESHOLDS
                      ) -> dict[str, float]:
    """Grounding accuracy over findings.

    ``acc@t`` is the fraction of findings whose IoU is greater than or equal to ``t``
    (``>=``, so a box at exactly IoU 0.5 counts at 0.5); ``miou`` is the mean IoU. A finding
    without a predicted box enters with IoU 0. With no finding every value is 0.0.

    Arguments:
      ious: one IoU per ground-truth finding.
      thresholds: the IoU thresholds t.

    Returns:
      ``{"acc@0.1": f, "acc@0.3": f, "acc@0.5": f, "miou": f}`` for the default thresholds.
    """
    values = torch.tensor(list(ious), dtype=torch.float64)
    if values.isnan().any():
        index = int(values.isnan().nonzero()[0, 0])
        raise ValueError(f"IoU number {index} is NaN: give every finding an IoU in [0, 1] "
                         "(0 when it has no predicted box)")
    if values.numel() == 0:
        return {**{f"acc@{t}": 0.0 for t in thresholds}, "miou": 0.0}
    metrics = {f"acc@{t}": float((values >= t).double().mean()) for t in thresholds}
    metrics["miou"] = float(values.mean())
    return metrics
