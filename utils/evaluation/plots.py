"""Pictures of uncertainty quality: the risk-coverage curve and IoU against u."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.evaluation.uncertainty import aurc, risk_coverage_curve  # noqa: E402


def plot_risk_coverage(u: Sequence[float], iou: Sequence[float], path: str | Path,
                       threshold: float = 0.5) -> None:
    """Selective risk (IoU < threshold) against coverage, boxes ordered by ascending u, with
    the random-order risk for reference."""
    coverage, risk = risk_coverage_curve(u, iou, threshold)
    figure, axis = plt.subplots(figsize=(5, 4), dpi=120)
    axis.plot(coverage, risk, label=f"ordered by u (AURC {aurc(u, iou, threshold):.3f})")
    axis.axhline(float(np.mean(np.asarray(iou) < threshold)), linestyle="--", color="grey",
                 label="no selection")
    axis.set_xlabel("coverage (fraction of boxes kept, most certain first)")
    axis.set_ylabel(f"risk (fraction with IoU < {threshold})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.legend(loc="upper left", fontsize=8)
    axis.set_title("Risk-coverage")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_iou_vs_uncertainty(u: Sequence[float], iou: Sequence[float], path: str | Path,
                            bins: int = 10) -> None:
    """Mean IoU in u-quantile bins (box counts written above the bars)."""
    u, iou = np.asarray(u, float), np.asarray(iou, float)
    order = np.argsort(u, kind="stable")
    groups = [g for g in np.array_split(order, min(bins, len(u))) if len(g)]
    centres = [float(np.mean(u[g])) for g in groups]
    means = [float(np.mean(iou[g])) for g in groups]
    figure, axis = plt.subplots(figsize=(5, 4), dpi=120)
    positions = np.arange(len(groups))
    axis.bar(positions, means, color="tab:blue")
    for x, group, value in zip(positions, groups, means):
        axis.text(x, value + 0.01, str(len(group)), ha="center", fontsize=7)
    axis.set_xticks(positions, [f"{c:.1e}" for c in centres], rotation=45, fontsize=7)
    axis.set_xlabel("mean u of the bin (u quantile bins)")
    axis.set_ylabel("mean IoU")
    axis.set_ylim(0, 1)
    axis.set_title("IoU against uncertainty")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
