"""The phrase-prior rate: how often the words alone place a box at IoU >= 0.5.

For each (finding type, side, zone) key, the mean training target box (normalised xyxy; the
box enclosing all of a finding's boxes) is the prediction for every test finding with that
key; the rate is the fraction of test findings it reaches IoU >= 0.5 with. A model must beat
it to show that it uses the image.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch
from torchvision.ops import box_iou

Key = tuple[str, str, str]


def target_box(finding: dict, width: int, height: int) -> list[float]:
    """The normalised box enclosing all pixel boxes of a canonical finding."""
    boxes = finding["boxes"]
    return [min(b[0] for b in boxes) / width, min(b[1] for b in boxes) / height,
            max(b[2] for b in boxes) / width, max(b[3] for b in boxes) / height]


def keyed_targets(rows: Iterable[dict]) -> list[tuple[Key, list[float]]]:
    return [((f["type"], f["side"], f["zone"]), target_box(f, row["width"], row["height"]))
            for row in rows for f in row["findings"]]


def phrase_prior_rate(train_rows: Iterable[dict], test_rows: Iterable[dict],
                      threshold: float = 0.5) -> float:
    """Fraction of test findings whose key's mean train box has IoU >= ``threshold``."""
    sums: dict[Key, list[torch.Tensor]] = defaultdict(list)
    for key, box in keyed_targets(train_rows):
        sums[key].append(torch.tensor(box))
    means = {key: torch.stack(boxes).mean(dim=0) for key, boxes in sums.items()}
    everything = torch.stack([b for boxes in sums.values() for b in boxes]).mean(dim=0)
    test = keyed_targets(test_rows)
    if not test:
        return 0.0
    predictions = torch.stack([means.get(key, everything) for key, _ in test])
    targets = torch.tensor([box for _, box in test])
    ious = box_iou(predictions, targets).diagonal()
    return float((ious >= threshold).float().mean())
