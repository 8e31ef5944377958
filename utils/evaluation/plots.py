"""Pictures of the uncertainty quality: the risk-coverage curve and IoU against u.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no
global backend switch) and saved as PNG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.evaluation.uncertainty import aurc, risk_coverage_curve

FIGURE_SIZE = (5.5, 4.2)
DPI = 130


def _figure() -> Figure:
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _require_boxes(u: Sequence[float], what: str) -> None:
    if len(u) == 0:
        raise ValueError(f"{what} needs at least one box with a u and an IoU")


def plot_risk_coverage(u: Sequence[float], iou: Sequence[float], path: str | Path,
                       threshold: float = 0.5) -> None:
    """Selective risk against coverage, boxes kept by ascending u, saved as PNG at ``path``.

    Beside the curve: the risk without selection (all boxes) and the oracle curve (boxes
    kept by descending IoU), the best any u could do.

    Arguments:
      u: (n,) uncertainty per box.
      iou: (n,) IoU per box.
      path: the PNG to write.
      threshold: a box with IoU below it is a failure.
    """
    _require_boxes(u, "the risk-coverage plot")
    coverage, risk = risk_coverage_curve(u, iou, threshold)
    _, oracle = risk_coverage_curve(-np.asarray(iou, dtype=np.float64), iou, threshold)
    figure = _figure()
    axis = figure.add_subplot()
    axis.plot(coverage, risk, color="tab:red", linewidth=2,
              label=f"ranked by u (AURC {aurc(u, iou, threshold):.3f})")
    axis.plot(coverage, oracle, color="tab:green", linestyle=":",
              label=f"oracle, ranked by IoU (AURC {float(oracle.mean()):.3f})")
    axis.axhline(float(risk[-1]), color="grey", linestyle="--",
                 label=f"all boxes (risk {float(risk[-1]):.3f})")
    axis.set_xlabel("coverage (fraction of boxes kept, most certain first)")
    axis.set_ylabel(f"selective risk (fraction with IoU < {threshold})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    axis.set_title(f"Risk-coverage of u ({len(risk)} boxes)")
    figure.tight_layout()
    figure.savefig(path)


def plot_iou_vs_uncertainty(u: Sequence[float], iou: Sequence[float], path: str | Path,
                            bins: int = 10) -> None:
    """Mean IoU in u-quantile bins, saved as PNG at ``path``.

    Boxes sorted by ascending u (stable) are split into ``bins`` groups of near-equal size
    (fewer when there are fewer boxes). Each bar is a group's mean IoU, with its box count
    above it and its u range below it.

    Arguments:
      u: (n,) uncertainty per box.
      iou: (n,) IoU per box.
      path: the PNG to write.
      bins: the number of quantile bins.
    """
    _require_boxes(u, "the IoU-against-u plot")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    u, iou = np.asarray(u, dtype=np.float64), np.asarray(iou, dtype=np.float64)
    groups = np.array_split(np.argsort(u, kind="stable"), min(bins, len(u)))
    means = [float(iou[g].mean()) for g in groups]
    positions = np.arange(len(groups))
    figure = _figure()
    axis = figure.add_subplot()
    axis.bar(positions, means, color="tab:blue", alpha=0.8)
    for x, group, value in zip(positions, groups, means):
        axis.text(x, value + 0.015, f"n={len(group)}", ha="center", fontsize=7)
    axis.set_xticks(positions, [f"{u[g].min():.2g}\n–{u[g].max():.2g}" for g in groups],
                    fontsize=7)
    axis.set_xlabel("u range of the bin (equal-count bins, ascending u)")
    axis.set_ylabel("mean IoU")
    axis.set_ylim(0, 1.05)
    axis.grid(axis="y", alpha=0.3)
    axis.set_title(f"IoU against uncertainty ({len(u)} boxes)")
    figure.tight_layout()
    figure.savefig(path)
