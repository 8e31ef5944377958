"""AURC, AUROC and Spearman against brute-force references and hand cases; the two plots."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils.evaluation.plots import plot_iou_vs_uncertainty, plot_risk_coverage
from utils.evaluation.uncertainty import (
    aurc,
    auroc_failure,
    risk_coverage_curve,
    spearman_u_iou,
    uncertainty_metrics,
)


def brute_auroc(u, failed):
    """P(u of a failed box > u of a good box), over all pairs, ties one half."""
    positives = [x for x, f in zip(u, failed) if f]
    negatives = [x for x, f in zip(u, failed) if not f]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def brute_aurc(u, iou, threshold):
    """Explicit loop: keep the k most certain boxes (ties in input order), average the risks."""
    order = sorted(range(len(u)), key=lambda i: (u[i], i))
    risks = []
    for k in range(1, len(u) + 1):
        kept = order[:k]
        risks.append(sum(iou[i] < threshold for i in kept) / k)
    return sum(risks) / len(risks)


@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 6, 60).astype(float) if seed % 2 else rng.random(60)  # ties on odd seeds
    iou = np.clip(rng.random(60) - 0.3 * u / u.max() + 0.15, 0, 1)
    for threshold in (0.3, 0.5):
        assert auroc_failure(u, iou, threshold) == pytest.approx(brute_auroc(u, iou < threshold))
        assert aurc(u, iou, threshold) == pytest.approx(brute_aurc(list(u), list(iou), threshold))


def test_hand_cases():
    u, iou = [0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.2, 0.1]  # u ranks the failures perfectly
    assert auroc_failure(u, iou) == 1.0
    assert aurc(u, iou) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
    assert spearman_u_iou(u, iou) == pytest.approx(-1.0)
    assert auroc_failure(u[::-1], iou) == 0.0 and spearman_u_iou(u[::-1], iou) == pytest.approx(1.0)
    assert auroc_failure([0.1, 0.2], [0.9, 0.8]) == 0.5  # no failure: one class only
    assert auroc_failure([0.1, 0.2], [0.1, 0.2]) == 0.5  # all fail
    assert auroc_failure([0.3, 0.3], [0.1, 0.9]) == 0.5  # a tie counts one half
    assert aurc([0.5, 0.5], [0.1, 0.9]) == pytest.approx((1 + 0.5) / 2)  # stable: input order
    assert aurc([0.5, 0.5], [0.9, 0.1]) == pytest.approx((0 + 0.5) / 2)
    assert aurc([0.2], [0.5]) == 0.0  # IoU == threshold is not a failure


def test_constant_or_empty_input_gives_numbers_not_nan():
    assert spearman_u_iou([0.0, 0.0, 0.0], [0.1, 0.5, 0.9]) == 0.0
    assert spearman_u_iou([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]) == 0.0
    assert spearman_u_iou([0.1], [0.5]) == 0.0
    assert uncertainty_metrics([], []) == {"aurc": 0.0, "auroc_failure@0.5": 0.5,
                                           "spearman_u_iou": 0.0}
    coverage, risk = risk_coverage_curve([], [])
    assert coverage.shape == risk.shape == (0,)


def test_curve_and_contract_keys():
    coverage, risk = risk_coverage_curve([0.3, 0.1, 0.2], [0.2, 0.9, 0.4])
    assert coverage.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert risk.tolist() == pytest.approx([0.0, 0.5, 2 / 3])
    assert list(uncertainty_metrics([0.1, 0.2], [0.9, 0.1])) == ["aurc", "auroc_failure@0.5",
                                                                 "spearman_u_iou"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same length"):
        aurc([0.1, 0.2], [0.5])
    with pytest.raises(ValueError, match="finite"):
        auroc_failure([0.1, float("nan")], [0.5, 0.2])


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng(0)
    u = rng.random(200) * 1e-3
    iou = np.clip(0.8 - 500 * u + 0.25 * rng.standard_normal(200), 0, 1)
    plot_risk_coverage(u, iou, tmp_path / "risk_coverage.png")
    plot_iou_vs_uncertainty(u, iou, tmp_path / "iou_vs_u.png")
    plot_iou_vs_uncertainty(u[:3], iou[:3], tmp_path / "few.png", bins=10)
    for name in ("risk_coverage.png", "iou_vs_u.png", "few.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "PNG" and picture.width > 500
    with pytest.raises(ValueError, match="at least one box"):
        plot_risk_coverage([], [], tmp_path / "empty.png")
