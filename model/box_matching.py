"""Hungarian matching of each query's box slots to its ground-truth boxes, as DETR matches.

The cost of slot k for target box g is the box loss of the pair: ``l1_weight * L1`` (summed
over cxcywh) ``+ giou_weight * (1 - GIoU)`` between the slot's mean box and the target. Per
query, the assignment of least summed cost (``scipy.optimize.linear_sum_assignment``) pairs
min(K, G) slots with targets; a target beyond the K slots stays unmatched. No gradient flows
through the matching.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou


def matching_cost(slot_boxes: torch.Tensor, targets_xyxy: torch.Tensor, l1_weight: float,
                  giou_weight: float) -> torch.Tensor:
    """(K,G) cost of every slot-target pair.

    Arguments:
      slot_boxes: (K,4) cxcywh.
      targets_xyxy: (G,4) xyxy, same frame.
    """
    targets = box_convert(targets_xyxy, "xyxy", "cxcywh")
    l1 = torch.cdist(slot_boxes, targets, p=1)
    giou = generalized_box_iou(box_convert(slot_boxes, "cxcywh", "xyxy"), targets_xyxy)
    return l1_weight * l1 + giou_weight * (1 - giou)


@torch.no_grad()
def match_slots(slot_boxes: torch.Tensor, targets_xyxy: torch.Tensor,
                target_query: torch.Tensor, l1_weight: float = 2.0, giou_weight: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The matched (slot, target) pairs of a batch.

    Arguments:
      slot_boxes: (Q,K,4) cxcywh mean boxes of the slots.
      targets_xyxy: (G,4) target boxes, xyxy in the same frame.
      target_query: (G,) the query (0..Q-1) each target belongs to.
      l1_weight, giou_weight: the cost weights (those of the box loss).
    Returns:
      (M,) flat slot rows (q*K + k) and (M,) target rows, ordered by query then slot.
    """
    queries, slots = slot_boxes.shape[:2]
    if target_query.numel() and not 0 <= int(target_query.min()) <= int(target_query.max()) \
            < queries:
        raise ValueError(f"box targets name queries {int(target_query.min())}.."
                         f"{int(target_query.max())}, but there are {queries} [BOX] queries")
    boxes, targets = slot_boxes.detach().float().cpu(), targets_xyxy.detach().float().cpu()
    owner = target_query.cpu()
    slot_rows: list[int] = []
    target_rows: list[int] = []
    for query in range(queries):
        mine = (owner == query).nonzero(as_tuple=True)[0]
        if not mine.numel():
            continue
        cost = matching_cost(boxes[query], targets[mine], l1_weight, giou_weight)
        rows, cols = linear_sum_assignment(cost.numpy())
        slot_rows.extend(query * slots + int(r) for r in rows)
        target_rows.extend(int(mine[c]) for c in cols)
    device = slot_boxes.device
    return (torch.tensor(slot_rows, dtype=torch.long, device=device),
            torch.tensor(target_rows, dtype=torch.long, device=device))
