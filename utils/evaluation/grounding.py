"""Grounding accuracy: IoU in pixels of the real image, accuracy at IoU >= t, and mIoU."""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import box_iou

THRESHOLDS = (0.1, 0.3, 0.5)


def to_pixels(boxes: torch.Tensor, width: torch.Tensor | float, height: torch.Tensor | float
              ) -> torch.Tensor:
    """Normalised xyxy (...,4) → pixel xyxy, with ``width``/``height`` broadcastable to (...)."""
    width = torch.as_tensor(width, dtype=boxes.dtype)
    height = torch.as_tensor(height, dtype=boxes.dtype)
    scale = torch.stack([width, height, width, height], dim=-1)
    return boxes * scale


def box_ious(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Paired IoU (M,) of boxes (M,4) and (M,4), xyxy. A degenerate box (zero or negative
    area) scores 0, never NaN."""
    if predicted.numel() == 0:
        return predicted.new_zeros(0)
    ious = box_iou(predicted.float(), target.float()).diagonal()
    return torch.nan_to_num(ious, nan=0.0).clamp(0.0, 1.0)


def grounding_metrics(ious: Sequence[float], thresholds: Sequence[float] = THRESHOLDS
                      ) -> dict[str, float]:
    """``acc@t`` = fraction of findings with IoU >= t (greater or equal), and ``miou``.

    With no finding every value is 0.0.
    """
    values = torch.tensor(list(ious), dtype=torch.float64)
    if values.numel() == 0:
        return {**{f"acc@{t}": 0.0 for t in thresholds}, "miou": 0.0}
    metrics = {f"acc@{t}": float((values >= t).double().mean()) for t in thresholds}
    metrics["miou"] = float(values.mean())
    return metrics
