"""The loss of a decoder with K > 1 box slots per query (several boxes per phrase).

Each query's slots are matched to its ground-truth boxes by :func:`model.box_matching.
match_slots` (Hungarian, L1 + GIoU, as DETR). The matched slots then take the box loss of the
head mode (:func:`model.box_losses.compute_box_losses`: every slot keeps its N hypotheses,
so ``umhp``, ``mhp``, ``hinge`` and ``single`` apply per box), averaged over the matched
boxes. Every slot's presence logit takes a binary cross-entropy towards 1 when matched and 0
otherwise, averaged over the Q*K slots and weighted by ``presence_weight``: the term
``box_presence``, included in ``box_total``. The count head's logits take a cross-entropy
towards each query's number of ground-truth boxes (at most K, the slots there are), averaged
over the queries and weighted by ``count_weight``: the term ``box_count``, also in
``box_total``. With the decoder's IoU head, each matched slot's
predicted IoU takes :func:`model.box_losses.iou_prediction_loss` against the detached IoU of
its mean box with its ground-truth box (unmatched slots take none): the term ``box_iou``,
kept out of ``box_total`` as for one box.

With the decoder's phrase box, that box takes the single-box loss of the head mode against the
phrase's enclosing box (as a K = 1 decoder's box does), and its predicted IoU the IoU loss; each
term adds to the slots' term of the same name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.box_decoder import BoxPrediction
from model.box_losses import BoxLossConfig, compute_box_losses, iou_prediction_loss
from model.box_matching import match_slots


def compute_box_set_losses(prediction: BoxPrediction, targets_xyxy: torch.Tensor,
                           target_query: torch.Tensor, config: BoxLossConfig,
                           enclosing_xyxy: torch.Tensor | None = None
                           ) -> dict[str, torch.Tensor]:
    """Arguments:
      prediction: the decoder output for Q queries, with its K slots (``prediction.slots``).
      targets_xyxy: (G,4) ground-truth boxes, normalised xyxy in the decoder's frame.
      target_query: (G,) the query each box belongs to.
      config: the head mode and its weights.
      enclosing_xyxy: (Q,4) each query's enclosing box, the phrase box's target; needed when
        the decoder has the phrase box.
    Returns:
      ``box_l1``, ``box_giou``, ``box_hyp``, ``box_presence``, ``box_count``, ``box_total``
      and, with the IoU head, ``box_iou`` (scalars, weighted).
    """
    slots = prediction.slots
    if slots is None:
        raise ValueError("box set losses need a decoder with several box slots "
                         "(max_boxes_per_phrase > 1)")
    if targets_xyxy.dim() != 2 or targets_xyxy.shape[-1] != 4 \
            or target_query.shape != targets_xyxy.shape[:1]:
        raise ValueError(f"box set targets have shape {tuple(targets_xyxy.shape)} and their "
                         f"query index {tuple(target_query.shape)}; expected (G, 4) and (G,)")
    queries, count = slots.presence_logits.shape
    boxes = slots.boxes
    slot_rows, target_rows = match_slots(boxes.box.view(queries, slots.rows, 4)[:, :count],
                                         targets_xyxy, target_query, config.l1_weight,
                                         config.giou_weight)
    presence_rows = slot_rows
    slot_rows = slot_rows // count * slots.rows + slot_rows % count  # rows of ``boxes``
    matched = boxes.select(slot_rows)
    matched_targets = targets_xyxy[target_rows]
    losses = compute_box_losses(matched, matched_targets, config)
    logits = slots.presence_logits.flatten()
    if logits.numel():
        wanted = torch.zeros_like(logits)
        wanted[presence_rows] = 1.0
        presence = F.binary_cross_entropy_with_logits(logits, wanted)
    else:
        presence = 0.0 * logits.sum()
    if queries:
        wanted_count = torch.bincount(target_query, minlength=queries).clamp(1, count) - 1
        box_count = F.cross_entropy(slots.count_logits, wanted_count)
    else:
        box_count = 0.0 * slots.count_logits.sum()
    weighted = config.presence_weight * presence
    weighted_count = config.count_weight * box_count
    result = {"box_l1": losses["box_l1"], "box_giou": losses["box_giou"],
              "box_hyp": losses["box_hyp"], "box_presence": weighted, "box_count": weighted_count,
              "box_total": losses["box_total"] + weighted + weighted_count}
    if matched.iou is not None:
        result["box_iou"] = iou_prediction_loss(matched, matched_targets, config)
    if slots.phrase_box:
        if enclosing_xyxy is None or enclosing_xyxy.shape != (queries, 4):
            raise ValueError(f"the phrase box needs each query's enclosing box, (Q, 4) = "
                             f"({queries}, 4); got "
                             f"{None if enclosing_xyxy is None else tuple(enclosing_xyxy.shape)}")
        rows = torch.arange(queries, device=boxes.box.device) * slots.rows + count
        phrase = boxes.select(rows)
        phrase_losses = compute_box_losses(phrase, enclosing_xyxy, config)
        for name in ("box_l1", "box_giou", "box_hyp", "box_total"):
            result[name] = result[name] + phrase_losses[name]
        if phrase.iou is not None:
            result["box_iou"] = result["box_iou"] + iou_prediction_loss(phrase, enclosing_xyxy,
                                                                        config)
    return result
