"""The uncertainty signals of a box: what its scalar ``u`` can report (higher = less sure).

- ``spread``: the hypotheses' scale-relative spread, :attr:`BoxPrediction.uncertainty` (the
  mean over (cx, cy, w, h) of variance / size², see :mod:`model.box_decoder`).
- ``iou``: ``1 - predicted IoU``, from the decoder's IoU head (SAM's ``iou_prediction_head``).
- ``combined``: ``1 - predicted IoU x agreement``, where the agreement is the mean IoU of the
  hypotheses with the box (1 when they coincide; with test-time shifts the 5 x N hypotheses of
  :mod:`model.test_time_shifts` and the image's own box). A fixed rule, fitted on nothing:
  the head's IoU estimate, discounted by how much the hypotheses disagree about the box, both
  in IoU units. With one hypothesis it equals ``iou``.

``iou`` and ``combined`` need a decoder with the IoU head (``GroundingConfig.iou_head``).
"""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou

from model.box_decoder import BoxPrediction
from model.constants import UNCERTAINTY_SIGNALS


def hypothesis_agreement(prediction: BoxPrediction) -> torch.Tensor:
    """(Q,) the mean IoU of each query's hypotheses with its box, in [0, 1]."""
    if prediction.box.shape[0] == 0:
        return prediction.box.new_zeros(0)
    hypotheses = box_convert(prediction.hypotheses.float(), "cxcywh", "xyxy")
    mean = box_convert(prediction.box.float(), "cxcywh", "xyxy")
    return torch.stack([box_iou(hypotheses[:, k], mean).diagonal()
                        for k in range(hypotheses.shape[1])], dim=1).mean(dim=1)


def uncertainty_signals(prediction: BoxPrediction) -> dict[str, torch.Tensor]:
    """The available signals, name → (Q,) float32: ``spread`` always, ``iou`` and ``combined``
    when the prediction has the IoU head's ``iou``."""
    signals = {"spread": prediction.uncertainty.float()}
    if prediction.iou is not None:
        iou = prediction.iou.float().clamp(0.0, 1.0)
        signals["iou"] = 1.0 - iou
        signals["combined"] = 1.0 - iou * hypothesis_agreement(prediction)
    return signals


def reported_uncertainty(prediction: BoxPrediction, signal: str) -> torch.Tensor:
    """(Q,) the ``u`` that ``signal`` (one of :data:`UNCERTAINTY_SIGNALS`) reports."""
    if signal not in UNCERTAINTY_SIGNALS:
        raise ValueError(f"uncertainty signal {signal!r} is not one of {UNCERTAINTY_SIGNALS}")
    signals = uncertainty_signals(prediction)
    if signal not in signals:
        raise ValueError(f"uncertainty signal {signal!r} needs the IoU head: train with "
                         "--iou_head, or report --uncertainty spread")
    return signals[signal]
