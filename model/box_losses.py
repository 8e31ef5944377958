"""Box losses of the four head modes (``--box_head``).

With ``L_k = l1_weight * L1(h_k, t) + giou_weight * GIoU(h_k, t)`` the loss of hypothesis k
(L1 summed over the 4 cxcywh coordinates, as in DETR; GIoU loss via torchvision), averaged
over the Q boxes of the batch:

- ``single`` (MedGround): ``L_1`` of the only hypothesis (N must be 1).
- ``mhp`` (relaxed multiple-hypothesis, winner-takes-all): ``(1-σ) L_best + σ/(N-1)
  Σ_{k≠best} L_k`` with ``best = argmin_k L_k`` (chosen without gradient); plus
  ``hypothesis_weight * L(mean box)``.
- ``umhp`` (uMedGround): ``Σ_k w_k L_k`` with ``w_k = d_k / Σ_j d_j``, ``d_k = ||h_k - t||_2``
  (cxcywh; the Euclidean norm of the per-coordinate L1 distances), so the farther a
  hypothesis, the more its loss weighs. The weights are detached (they weigh, they are not
  optimised); ``umhp_temperature`` τ sharpens them as ``w ∝ d^(1/τ)`` (τ = 1 is the
  reference rule). Plus ``hypothesis_weight * L(mean box)``.
- ``hinge``: ``L`` of the mean box, plus ``hypothesis_weight`` times the mean over hypothesis
  pairs and coordinates of ``max(0, m - |h_i - h_j|)`` (a margin keeping hypotheses apart).

Source: the authors' code, github.com/Cocofeat/uMedGround ``models/vlm_model/LISA.py``
(``trans_MHP_loss``, ``Cal_distance`` + ``trans_UMHP_loss``, ``trans_uncertain_box_loss``),
with σ = 0.05 and m = 0.01 as there. Deliberate differences: its mhp always treats hypothesis 0
as the best one (here the argmin, as relaxed winner-takes-all defines it); its umhp weights are
not detached and call ``torch.tensor.linalg.norm``, which does not exist, so that branch could
never run; its hinge (``MarginRankingLoss(margin=m)`` on ``|h_i - h_j|``) sums the 3 pairs
where this averages them (a factor N(N-1)/2 that ``hypothesis_weight`` absorbs); its
mhp/umhp do not regress the mean box, which is the box this project reports.

With the decoder's IoU head, :func:`iou_prediction_loss` adds ``box_iou``: ``iou_weight`` times
the mean squared error between the predicted IoU and the IoU of the mean box with the target
(detached: it is the head's target, not a quantity the boxes are trained to change), as SAM
trains its ``iou_prediction_head``.

Terms are returned weighted and separately: ``box_l1``, ``box_giou`` (the hypothesis
aggregate above; for hinge the mean box), ``box_hyp`` (the mean-box or margin term) and
``box_total``. With no box in the batch (Q = 0) every term is ``0 * sum(hypotheses)``: the
decoder runs on the empty batch, so this keeps every decoder parameter in the graph and
distributed training (DDP, DeepSpeed) sees a gradient (of zeros) for each of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss

from model.box_decoder import BoxPrediction
from model.constants import BOX_HEADS


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
    presence_weight: float = 1.0  # the presence BCE of several boxes per phrase (box_set_losses)
    count_weight: float = 1.0  # the box-count cross-entropy of several boxes per phrase
    iou_weight: float = 1.0  # the IoU head's loss, when the decoder has one

    def __post_init__(self) -> None:
        if self.mode not in BOX_HEADS:
            raise ValueError(f"box loss mode {self.mode!r} is not one of {BOX_HEADS}")
        if not 0.0 <= self.mhp_epsilon < 1.0:
            raise ValueError(f"mhp_epsilon {self.mhp_epsilon} must lie in [0, 1)")
        if self.umhp_temperature <= 0.0:
            raise ValueError(f"umhp_temperature {self.umhp_temperature} must be positive")
        if self.hinge_margin < 0.0:
            raise ValueError(f"hinge_margin {self.hinge_margin} must not be negative")
        if self.presence_weight < 0.0:
            raise ValueError(f"presence_weight {self.presence_weight} must not be negative")
        if self.count_weight < 0.0:
            raise ValueError(f"count_weight {self.count_weight} must not be negative")
        if self.iou_weight < 0.0:
            raise ValueError(f"iou_weight {self.iou_weight} must not be negative")


def _parts(boxes_cxcywh: torch.Tensor, targets_xyxy: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-box L1 (summed over coordinates) and GIoU losses; shapes (...,4) → (...)."""
    targets_cxcywh = box_convert(targets_xyxy, "xyxy", "cxcywh")
    l1 = (boxes_cxcywh - targets_cxcywh).abs().sum(dim=-1)
    giou = generalized_box_iou_loss(box_convert(boxes_cxcywh, "cxcywh", "xyxy"), targets_xyxy,
                                    reduction="none")
    return l1, giou


def hypothesis_weights(prediction: BoxPrediction, targets_xyxy: torch.Tensor,
                       config: BoxLossConfig) -> torch.Tensor:
    """(Q,N) weights of the loss of each hypothesis in modes single, mhp and umhp (each row sums
    to 1), detached. Mode hinge regresses the mean box and has none."""
    if config.mode == "hinge":
        raise ValueError("box loss mode 'hinge' regresses the mean box; it has no hypothesis "
                         "weights")
    hypotheses = prediction.hypotheses.detach()
    queries, count = hypotheses.shape[:2]
    if config.mode == "single" or count == 1:
        return hypotheses.new_full((queries, count), 1.0 / count)
    targets = box_convert(targets_xyxy, "xyxy", "cxcywh").unsqueeze(1)
    if config.mode == "umhp":
        distance = (hypotheses - targets).norm(dim=-1).clamp_min(1e-8)
        distance = distance ** (1.0 / config.umhp_temperature)
        return distance / distance.sum(dim=1, keepdim=True)
    l1, giou = _parts(hypotheses, targets_xyxy.unsqueeze(1).expand(-1, count, -1))
    best = (config.l1_weight * l1 + config.giou_weight * giou).argmin(dim=1)
    weights = hypotheses.new_full((queries, count), config.mhp_epsilon / (count - 1))
    weights[torch.arange(queries), best] = 1.0 - config.mhp_epsilon
    return weights


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
    if config.mode == "single" and count != 1:
        raise ValueError(f"box loss mode 'single' needs 1 hypothesis, the decoder has {count}")
    if targets_xyxy.shape != (queries, 4):
        raise ValueError(f"box targets have shape {tuple(targets_xyxy.shape)}, expected "
                         f"({queries}, 4): one normalised xyxy target per [BOX]")
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


def iou_prediction_loss(prediction: BoxPrediction, targets_xyxy: torch.Tensor,
                        config: BoxLossConfig) -> torch.Tensor:
    """``iou_weight`` x MSE of the IoU head against the detached IoU of the mean box.

    Arguments:
      prediction: Q predictions with ``iou`` (Q,) set (a decoder with the IoU head).
      targets_xyxy: (Q,4) targets, normalised xyxy in the same frame.
      config: its ``iou_weight``.
    Returns:
      a scalar; with Q = 0, ``0 * sum(iou)`` (the head stays in the graph).
    """
    if prediction.iou is None:
        raise ValueError("the box decoder has no IoU head (build it with iou_head=True)")
    if prediction.iou.shape[0] == 0:
        return 0.0 * prediction.iou.sum()
    with torch.no_grad():
        mean_xyxy = box_convert(prediction.box.detach(), "cxcywh", "xyxy")
        actual = box_iou(mean_xyxy, targets_xyxy.to(mean_xyxy.dtype)).diagonal()
    return config.iou_weight * (prediction.iou - actual).pow(2).mean()
