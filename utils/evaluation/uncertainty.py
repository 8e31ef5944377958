"""Quality of the uncertainty u: does a high u flag a bad box?

A box "fails" when its IoU is below the threshold (0.5). With boxes sorted by ascending u
(most certain first, a stable sort keeps input order among ties):
- AURC: area under the risk-coverage curve, the mean over k = 1..n of the failure rate among
  the k most certain boxes (lower is better);
- AUROC of u as a score for detecting failures (higher is better; 0.5 when only one class
  is present, ties count one half);
- Spearman correlation of u and IoU (negative is good; 0.0 when either is constant).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata, spearmanr


def risk_coverage_curve(u: Sequence[float], iou: Sequence[float], threshold: float = 0.5
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(coverage k/n, selective risk among the k most certain) for k = 1..n."""
    u, iou = np.asarray(u, float), np.asarray(iou, float)
    order = np.argsort(u, kind="stable")
    failures = (iou[order] < threshold).astype(float)
    k = np.arange(1, len(u) + 1)
    return k / max(len(u), 1), np.cumsum(failures) / k


def aurc(u: Sequence[float], iou: Sequence[float], threshold: float = 0.5) -> float:
    if len(u) == 0:
        return 0.0
    return float(risk_coverage_curve(u, iou, threshold)[1].mean())


def auroc_failure(u: Sequence[float], iou: Sequence[float], threshold: float = 0.5) -> float:
    """Mann-Whitney AUROC of u separating failures (IoU < threshold) from successes."""
    u, iou = np.asarray(u, float), np.asarray(iou, float)
    failed = iou < threshold
    positives, negatives = int(failed.sum()), int((~failed).sum())
    if positives == 0 or negatives == 0:
        return 0.5
    ranks = rankdata(u)
    return float((ranks[failed].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def spearman_u_iou(u: Sequence[float], iou: Sequence[float]) -> float:
    u, iou = np.asarray(u, float), np.asarray(iou, float)
    if len(u) < 2 or np.ptp(u) == 0 or np.ptp(iou) == 0:
        return 0.0
    return float(spearmanr(u, iou).statistic)


def uncertainty_metrics(u: Sequence[float], iou: Sequence[float], threshold: float = 0.5
                        ) -> dict[str, float]:
    """The ``uncertainty`` block of metrics.json."""
    return {"aurc": aurc(u, iou, threshold), f"auroc_failure@{threshold}": auroc_failure(u, iou, threshold),
            "spearman_u_iou": spearman_u_iou(u, iou)}
