"""The label prior: how often the labels alone (type, side, zone) place a box at IoU >= 0.5.

Not ``test.py --baseline phrase_prior``, which reads the phrase text (TF-IDF neighbours).

For each (finding type, side, zone) key, the mean training target box (normalised xyxy; for a
finding with several boxes the box enclosing them all) is the prediction for every test finding
with that key (a key unseen in training gets the mean of all training targets). The rate is the
fraction of test findings whose prediction reaches IoU >= 0.5 with their target. A model must
beat it to show that it uses the image.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import torch
from torchvision.ops import box_iou

from utils.annotations import enclosing_box

Key = tuple[str, str, str]


def target_box(finding: dict[str, Any], width: int, height: int) -> list[float]:
    """The normalised box (x0, y0, x1, y1) enclosing all pixel boxes of a canonical finding."""
    x0, y0, x1, y1 = enclosing_box(finding["boxes"])
    return [x0 / width, y0 / height, x1 / width, y1 / height]


def keyed_targets(rows: Iterable[dict[str, Any]]) -> list[tuple[Key, list[float]]]:
    """((type, side, zone), normalised target box) of every finding of canonical rows."""
    return [((f["type"], f["side"], f["zone"]), target_box(f, row["width"], row["height"]))
            for row in rows for f in row["findings"]]


def prior_hits(train_rows: Iterable[dict[str, Any]], test_rows: Iterable[dict[str, Any]],
               threshold: float = 0.5) -> list[tuple[str, bool]]:
    """(finding type, whether its key's mean train box reaches IoU >= ``threshold``) per test
    finding, in row order."""
    train = keyed_targets(train_rows)
    test = keyed_targets(test_rows)
    if not test:
        return []
    if not train:
        raise ValueError("the label prior needs training findings; the training split has none")
    grouped: dict[Key, list[list[float]]] = defaultdict(list)
    for key, box in train:
        grouped[key].append(box)
    means = {key: torch.tensor(boxes, dtype=torch.float64).mean(dim=0)
             for key, boxes in grouped.items()}
    everything = torch.tensor([box for _, box in train], dtype=torch.float64).mean(dim=0)
    predictions = torch.stack([means.get(key, everything) for key, _ in test])
    targets = torch.tensor([box for _, box in test], dtype=torch.float64)
    ious = box_iou(predictions, targets).diagonal()
    return [(key[0], bool(iou >= threshold)) for (key, _), iou in zip(test, ious.tolist())]


def label_prior_rates(train_rows: Iterable[dict[str, Any]], test_rows: Iterable[dict[str, Any]],
                       threshold: float = 0.5) -> dict[str, float]:
    """The rate over all test findings (key "all") and per finding type (sorted keys)."""
    hits = prior_hits(train_rows, test_rows, threshold)
    by_type: dict[str, list[bool]] = defaultdict(list)
    for kind, hit in hits:
        by_type[kind].append(hit)
    rates = {kind: sum(v) / len(v) for kind, v in sorted(by_type.items())}
    return {"all": sum(hit for _, hit in hits) / len(hits) if hits else 0.0, **rates}
