"""Quality of the box uncertainty u: does a high u flag a bad box?

A box fails when its IoU is below ``threshold`` (0.5 by default). Boxes are ranked by
ascending u, most certain first; a stable sort keeps the input order among equal u, so every
number here is a deterministic function of the input lists.

- Risk-coverage curve: at coverage k/n (the k most certain boxes kept, k = 1..n) the
  selective risk is the failure rate among those k boxes.
- AURC: the mean of the selective risks over k = 1..n (lower is better). Among equal u the
  input order decides which box is kept first.
- AUROC of u as a score for detecting failures (``sklearn.metrics.roc_auc_score``; equal u
  count one half; higher is better; 0.5 when all boxes fail or none does).
- Spearman rank correlation of u and IoU (``scipy.stats.spearmanr``, average ranks for ties;
  negative is good; 0.0 when u or IoU is constant or there are fewer than 2 boxes).
With no box, AURC is 0.0, AUROC 0.5 and Spearman 0.0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

FAILURE_IOU = 0.5  # a box fails when its IoU is below this


def _arrays(u: Sequence[float], iou: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    u, iou = np.asarray(u, dtype=np.float64), np.asarray(iou, dtype=np.float64)
    if u.ndim != 1 or u.shape != iou.shape:
        raise ValueError(f"u and IoU must be two lists of the same length, got shapes "
                         f"{u.shape} and {iou.shape}")
    if not (np.isfinite(u).all() and np.isfinite(iou).all()):
        raise ValueError("u and IoU must be finite numbers; a NaN or inf u means the box "
                         "decoder produced non-finite hypotheses")
    return u, iou


def risk_coverage_curve(u: Sequence[float], iou: Sequence[float], threshold: float = FAILURE_IOU
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve of u.

    Arguments:
      u: (n,) uncertainty per box.
      iou: (n,) IoU per box.
      threshold: a box with IoU below it fails.

    Returns:
      coverage (n,) = k/n and selective risk (n,) among the k most certain boxes, k = 1..n.
    """
    u, iou = _arrays(u, iou)
    failures = (iou[np.argsort(u, kind="stable")] < threshold).astype(np.float64)
    kept = np.arange(1, len(u) + 1)
    return kept / max(len(u), 1), np.cumsum(failures) / kept


def aurc(u: Sequence[float], iou: Sequence[float], threshold: float = FAILURE_IOU) -> float:
    """Area under the risk-coverage curve: the mean selective risk over k = 1..n (0.0 for n = 0)."""
    _, risk = risk_coverage_curve(u, iou, threshold)
    return float(risk.mean()) if len(risk) else 0.0


def auroc_failure(u: Sequence[float], iou: Sequence[float], threshold: float = FAILURE_IOU
                  ) -> float:
    """AUROC of u for telling failed boxes (IoU < threshold) from the others.

    It is the probability that a random failed box has a higher u than a random good one,
    ties counted one half. 0.5 when only one class is present (no box, all fail, none fails).
    """
    u, iou = _arrays(u, iou)
    failed = iou < threshold
    if failed.all() or not failed.any():
        return 0.5
    return float(roc_auc_score(failed, u))


def spearman_u_iou(u: Sequence[float], iou: Sequence[float]) -> float:
    """Spearman correlation of u and IoU; 0.0 (not NaN) for constant input or n < 2."""
    u, iou = _arrays(u, iou)
    if len(u) < 2 or np.ptp(u) == 0 or np.ptp(iou) == 0:
        return 0.0
    return float(spearmanr(u, iou).statistic)


def uncertainty_metrics(u: Sequence[float], iou: Sequence[float], threshold: float = FAILURE_IOU
                        ) -> dict[str, float]:
    """The ``uncertainty`` block of metrics.json.

    Arguments:
      u: (n,) uncertainty per box.
      iou: (n,) IoU per box, same boxes.
      threshold: the failure threshold; it names the AUROC key (``auroc_failure@0.5``).
    """
    return {"aurc": aurc(u, iou, threshold),
            f"auroc_failure@{threshold}": auroc_failure(u, iou, threshold),
            "spearman_u_iou": spearman_u_iou(u, iou)}


def signal_metrics(signals: Sequence[dict[str, float]], iou: Sequence[float],
                   threshold: float = FAILURE_IOU) -> dict[str, dict[str, float]]:
    """:func:`uncertainty_metrics` of each uncertainty signal present in every box.

    Arguments:
      signals: (n,) per box, signal name → u (``u_signals`` of the predictions).
      iou: (n,) IoU per box, same boxes.
    Returns:
      signal name → its metrics, plus ``n`` (the box count); ``{}`` for no box.
    """
    names = set.intersection(*(set(s) for s in signals)) if signals else set()
    return {name: {**uncertainty_metrics([s[name] for s in signals], iou, threshold),
                   "n": len(iou)} for name in sorted(names)}
