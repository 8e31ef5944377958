"""Box losses of the four head modes (``--box_head``).

With ``L_k = l1_weight * L1(h_k, t) + giou_weight * GIoU(h_k, t)`` the loss of hypothesis k
(L1 summed over the 4 cxcywh coordinates, as in DETR; GIoU loss via torchvision), averaged
over the Q boxes of the batch:

- ``single`` (MedGround): ``L_1`` of the only hypothesis.
- ``mhp`` (relaxed multiple-hypothesis): ``(1-σ) L_best + σ/(N-1) Σ_{k≠best} L_k`` with
  ``best = argmin_k L_k``; plus ``hypothesis_weight * L(mean box)``.
- ``umhp`` (uMedGround): ``Σ_k w_k L_k`` with ``w_k = d_k / Σ_j d_j``, ``d_k`` the Euclidean
  norm of the coordinate-wise L1 distance of hypothesis k to the target, as in the reference
  code's ``Cal_distance``; the weights are detached (they weigh, they are not optimised) and
  ``umhp_temperature`` sharpens them as ``w ∝ d^(1/τ)`` (τ = 1 is the reference rule).
  Plus ``hypothesis_weight * L(mean box)``.
- ``hinge``: ``L`` of the mean box, plus ``hypothesis_weight`` times the mean over hypothesis
  pairs and coordinates of ``max(0, m - |h_i - h_j|)`` (the reference code's
  ``MarginRankingLoss(margin=m)`` keeping hypotheses apart).

Terms are returned weighted and separately: ``box_l1``, ``box_giou`` (the hypothesis
aggregate above), ``box_hyp`` (the mean-box or margin term) and ``box_total``. With no box in
the batch every term is ``0 * sum(predictions)``, which keeps the decoder in the graph so
distributed training sees a gradient (of zeros) for every parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch
from torchvision.ops import box_convert, generalized_box_iou_loss

from model.box_decoder import BoxPrediction

MODES = ("single", "mhp", "umhp", "hinge")


@dataclass
class BoxLossConfig:
    """Weights and hyper-parameters of the box losses (see the module docstring)."""

    mode: str = "umhp"
    l1_weight: float = 2.0
    giou_weight: float = 1.0
    hypothesis_weight: float = 1.0
    mhp_epsilon: float = 0.05
    umhp_temperature: float = 1.0
    hinge_margin: float = 0.01

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"box loss mode {self.mode!r} is not one of {MODES}")


def _parts(boxes_cxcywh: torch.Tensor, targets_xyxy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-box L1 (summed over coordinates) and GIoU losses; shapes (...,4) → (...)."""
    targets_cxcywh = box_convert(targets_xyxy, "xyxy", "cxcywh")
    l1 = (boxes_cxcywh - targets_cxcywh).abs().sum(dim=-1)
    giou = generalized_box_iou_loss(box_convert(boxes_cxcywh, "cxcywh", "xyxy"), targets_xyxy,
                                    reduction="none")
    return l1, giou


def hypothesis_weights(prediction: BoxPrediction, targets_xyxy: torch.Tensor,
                       config: BoxLossConfig) -> torch.Tensor:
    """(Q,N) weights of the loss of each hypothesis (each row sums to 1), detached."""
    hypotheses = prediction.hypotheses.detach()
    queries, count = hypotheses.shape[:2]
    if config.mode == "single" or count == 1:
        return hypotheses.new_full((queries, count), 1.0 / count)
    targets = box_convert(targets_xyxy, "xyxy", "cxcywh").unsqueeze(1)
    if config.mode == "umhp":
        distance = (hypotheses - targets).abs().norm(dim=-1).clamp_min(1e-8)
        distance = distance ** (1.0 / config.umhp_temperature)
        return distance / distance.sum(dim=1, keepdim=True)
    if config.mode == "mhp":
        l1, giou = _parts(prediction.hypotheses.detach(),
                          targets_xyxy.unsqueeze(1).expand(-1, count, -1))
        best = (config.l1_weight * l1 + config.giou_weight * giou).argmin(dim=1)
        weights = hypotheses.new_full((queries, count), config.mhp_epsilon / (count - 1))
        weights[torch.arange(queries), best] = 1.0 - config.mhp_epsilon
        return weights
    return hypotheses.new_zeros(queries, count)  # hinge: only the mean box is regressed


def compute_box_losses(prediction: BoxPrediction, targets_xyxy: torch.Tensor,
                       config: BoxLossConfig) -> dict[str, torch.Tensor]:
    """Arguments:
      prediction: Q predictions with N hypotheses (cxcywh).
      targets_xyxy: (Q,4) targets, normalised xyxy in the same frame.
      config: the mode and its weights.
    Returns:
      ``box_l1``, ``box_giou``, ``box_hyp``, ``box_total`` (scalars, weighted).
    """
    queries, count = prediction.hypotheses.shape[:2]
    if queries == 0:
        zero = 0.0 * prediction.hypotheses.sum()
        return {"box_l1": zero, "box_giou": zero, "box_hyp": zero, "box_total": zero}
    if config.mode == "hinge":
        l1, giou = _parts(prediction.box, targets_xyxy)
        pairs = list(combinations(range(count), 2))
        if pairs:
            gaps = torch.stack([(prediction.hypotheses[:, i] - prediction.hypotheses[:, j]).abs()
                                for i, j in pairs], dim=1)
            hyp = (config.hinge_margin - gaps).clamp_min(0).mean()
        else:
            hyp = 0.0 * prediction.hypotheses.sum()
        box_l1, box_giou = l1.mean(), giou.mean()
    else:
        weights = hypothesis_weights(prediction, targets_xyxy, config)
        l1, giou = _parts(prediction.hypotheses, targets_xyxy.unsqueeze(1).expand(-1, count, -1))
        box_l1 = (weights * l1).sum(dim=1).mean()
        box_giou = (weights * giou).sum(dim=1).mean()
        if config.mode == "single":
            hyp = 0.0 * prediction.box.sum()
        else:
            mean_l1, mean_giou = _parts(prediction.box, targets_xyxy)
            hyp = (config.l1_weight * mean_l1 + config.giou_weight * mean_giou).mean()
    losses = {"box_l1": config.l1_weight * box_l1, "box_giou": config.giou_weight * box_giou,
              "box_hyp": config.hypothesis_weight * hyp}
    losses["box_total"] = losses["box_l1"] + losses["box_giou"] + losses["box_hyp"]
    return losses
