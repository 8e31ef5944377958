"""AURC, AUROC and Spearman against brute-force references."""
from __future__ import annotations

import numpy as np
import pytest

from utils.evaluation.uncertainty import aurc, auroc_failure, spearman_u_iou, uncertainty_metrics


def brute_auroc(u, failed):
    positives = [x for x, f in zip(u, failed) if f]
    negatives = [x for x, f in zip(u, failed) if not f]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def brute_aurc(u, iou, threshold):
    order = sorted(range(len(u)), key=lambda i: (u[i], i))
    risks = [sum(iou[order[j]] < threshold for j in range(k)) / k for k in range(1, len(u) + 1)]
    return sum(risks) / len(risks)


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 6, 40).astype(float)  # ties on purpose
    iou = rng.random(40)
    assert auroc_failure(u, iou) == pytest.approx(brute_auroc(u, iou < 0.5))
    assert aurc(u, iou) == pytest.approx(brute_aurc(list(u), list(iou), 0.5))


def test_hand_cases():
    u, iou = [0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.2, 0.1]  # u ranks the failures perfectly
    assert auroc_failure(u, iou) == 1.0
    assert aurc(u, iou) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
    assert spearman_u_iou(u, iou) == pytest.approx(-1.0)
    assert auroc_failure([0.1, 0.2], [0.9, 0.8]) == 0.5  # one class only
    assert spearman_u_iou([0.0, 0.0, 0.0], [0.1, 0.5, 0.9]) == 0.0  # constant u
    assert set(uncertainty_metrics(u, iou)) == {"aurc", "auroc_failure@0.5", "spearman_u_iou"}
