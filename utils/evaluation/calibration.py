"""Calibrating the boxes and their u on a validation split, and scoring the calibration.

Pure functions on arrays (boxes are pixel xyxy of the real image), plus the glue that fits a
:class:`model.calibration.BoxCalibration` from ``test.py``'s records and applies it.

**Conformal boxes** (split conformal prediction with normalised residuals; Papadopoulos et al.
2002, Lei et al. 2018 "Distribution-free predictive inference for regression"). For a box b,
its N hypotheses and the target t, the outward residual of each side is
``(b_x0 - t_x0, b_y0 - t_y0, t_x1 - b_x1, t_y1 - b_y1)`` (positive where the target sticks out
of the box), and the side's scale is the hypotheses' standard deviation of that coordinate,
at least :data:`SCALE_FLOOR` times the image side (hypotheses that coincide would otherwise
divide by 0). A finding's score is its largest residual / scale over the four sides, so one
quantile q covers all four sides at once: moving every side out by q times its scale gives a
box that contains the target exactly when the score is at most q. With q the
``ceil((n+1)(1-alpha))``-th smallest of the n calibration scores, a new exchangeable finding's
inflated box contains its target with probability at least ``1 - alpha`` (and below
``1 - alpha + 1/(n+1)`` for continuous scores). q is taken at least 0: a box is never shrunk.

**Selective prediction** (Learn then Test, Angelopoulos, Bates, Candès, Jordan and Lei 2021,
arXiv:2110.01052, with the binomial tail p-value of a 0-1 loss). A box fails when its IoU is
below 0.5; accepting the boxes whose u is below a threshold λ, the selective risk R(λ) is the
failure rate among accepted boxes. The candidate thresholds are the calibration u's order
statistics at :data:`SELECTIVE_LEVELS` coverage levels j/L (j = 1..L): λ_j is the
(k_j + 1)-th smallest u with k_j = ceil(j n / L), or no threshold at all for j = L. Given
λ_j, the calibration boxes below it are i.i.d. draws of the boxes a new sample would accept,
so their failure count is Binomial(k_j, R(λ_j)) and ``P(Binomial(k_j, target) <= failures)``
is a valid p-value for the null hypothesis R(λ_j) > target. Two procedures turn the L
p-values into a threshold; with probability at least 1 - delta over the calibration draw the
selective risk at the returned threshold is then at most the target:

- ``fixed_sequence`` (the default): test the levels from the most selective up, at delta
  each, and keep the last one certified before the first failure. Valid when the chance that
  a box fails does not fall as u grows (u ranks boxes as an uncertainty should): then the
  first level above the target risk accepts only boxes that fail at least at the target rate,
  and it is certified with probability at most delta.
- ``bonferroni``: test every level at delta / L and keep the largest certified; valid
  whatever u is, and more conservative.

A level too small to be certified even without a failure (``(1 - target)^k`` above the
level's delta) is skipped; which levels those are depends on n, the target and delta only.
When no level is certified, the threshold abstains on every box.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.stats import binom

from model.calibration import RISK_CONTROLS, BoxCalibration
from utils.annotations import enclosing_box
from utils.evaluation.uncertainty import FAILURE_IOU

SCALE_FLOOR = 0.0025  # a side's scale is at least this fraction of the image side
SELECTIVE_LEVELS = 10  # coverage levels tested for the selective threshold: 0.1, 0.2, …, 1.0


def conformal_quantile(scores: Sequence[float], alpha: float) -> float:
    """The split-conformal quantile: the ``ceil((n+1)(1-alpha))``-th smallest of n scores.

    Returns ``inf`` when that rank exceeds n (fewer than ``1/alpha - 1`` scores: no finite
    quantile has the guarantee).
    """
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if values.ndim != 1 or not np.isfinite(values).all():
        raise ValueError("conformal scores must be a list of finite numbers")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha {alpha} must lie in (0, 1)")
    rank = math.ceil((len(values) + 1) * (1.0 - alpha))
    return float(values[rank - 1]) if rank <= len(values) else math.inf


def side_scales(hypotheses: np.ndarray, sizes: np.ndarray, floor: float = SCALE_FLOOR
                ) -> np.ndarray:
    """(n,4) the scale of each side: the hypotheses' std of x0, y0, x1, y1, at least ``floor``
    times the image width (x sides) or height (y sides).

    Arguments:
      hypotheses: (n,N,4) pixel xyxy.
      sizes: (n,2) image width and height in pixels.
    """
    spread = np.asarray(hypotheses, dtype=np.float64).std(axis=1)
    sizes = np.asarray(sizes, dtype=np.float64)
    return np.maximum(spread, floor * sizes[:, [0, 1, 0, 1]])


def outward_residuals(boxes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(n,4) how far each side of the target lies outside the box (negative: inside)."""
    boxes, targets = np.asarray(boxes, np.float64), np.asarray(targets, np.float64)
    return np.concatenate([boxes[:, :2] - targets[:, :2], targets[:, 2:] - boxes[:, 2:]], axis=1)


def normalised_scores(boxes: np.ndarray, hypotheses: np.ndarray, targets: np.ndarray,
                      sizes: np.ndarray, floor: float = SCALE_FLOOR) -> np.ndarray:
    """(n,) each finding's conformal score: the largest outward residual / scale of a side."""
    return (outward_residuals(boxes, targets) / side_scales(hypotheses, sizes, floor)).max(axis=1)


def inflate_boxes(boxes: np.ndarray, hypotheses: np.ndarray, sizes: np.ndarray, quantile: float,
                  floor: float = SCALE_FLOOR) -> np.ndarray:
    """(n,4) the boxes with every side moved out by ``quantile`` times its scale, clipped to
    the image (the target lies inside it, so clipping never loses coverage)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    margins = max(quantile, 0.0) * side_scales(hypotheses, sizes, floor)
    inflated = np.concatenate([boxes[:, :2] - margins[:, :2], boxes[:, 2:] + margins[:, 2:]],
                              axis=1)
    sizes = np.asarray(sizes, dtype=np.float64)
    return np.clip(inflated, 0.0, sizes[:, [0, 1, 0, 1]])


def contains(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """(n,) whether each ``outer`` xyxy box contains the ``inner`` one."""
    outer, inner = np.asarray(outer, np.float64), np.asarray(inner, np.float64)
    return (outer[:, :2] <= inner[:, :2]).all(axis=1) & (outer[:, 2:] >= inner[:, 2:]).all(axis=1)


def _areas(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


def area_inflation(inflated: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(n,) area of each inflated box / area of its box (a box of under 1 px² counts as 1)."""
    return _areas(inflated) / np.maximum(_areas(boxes), 1.0)


def binomial_p_value(failures: int, accepted: int, target_risk: float) -> float:
    """``P(Binomial(accepted, target_risk) <= failures)``: small when ``failures`` out of
    ``accepted`` is unlikely under a risk of ``target_risk`` or more (1.0 for none accepted)."""
    if accepted == 0:
        return 1.0
    return float(binom.cdf(failures, accepted, target_risk))


@dataclass
class SelectiveThreshold:
    """The result of :func:`selective_threshold`.

    ``threshold``: accept a box when u < threshold; ``None`` accepts every box and 0.0
    abstains on every one (no level certified; u is never negative). ``level``: the certified
    coverage level (0.0 when none), ``accepted``/``failures``/``risk``/``p_value``: what the
    calibration set showed there. ``tested``: one dict per level.
    """

    threshold: float | None
    level: float
    accepted: int
    failures: int
    risk: float | None
    p_value: float | None
    tested: list[dict[str, Any]] = field(default_factory=list)


def selective_threshold(u: Sequence[float], failed: Sequence[bool], target_risk: float,
                        delta: float, risk_control: str = "fixed_sequence",
                        levels: int = SELECTIVE_LEVELS) -> SelectiveThreshold:
    """The Learn-then-Test threshold of the module docstring.

    Arguments:
      u: (n,) uncertainty per calibration box (higher = less sure), every value >= 0.
      failed: (n,) whether each box failed (IoU < 0.5).
      target_risk: the selective risk to guarantee, in (0, 1).
      delta: the allowed probability that the guarantee fails, in (0, 1).
      risk_control: ``fixed_sequence`` or ``bonferroni`` (see the module docstring).
      levels: L, the number of coverage levels.
    """
    u, failed = np.asarray(u, dtype=np.float64), np.asarray(failed, dtype=bool)
    if u.ndim != 1 or u.shape != failed.shape or len(u) == 0:
        raise ValueError(f"u and failed must be two non-empty lists of the same length, got "
                         f"shapes {u.shape} and {failed.shape}")
    if not np.isfinite(u).all() or (u < 0).any():
        raise ValueError("u must be finite and >= 0")
    if not (0.0 < target_risk < 1.0 and 0.0 < delta < 1.0):
        raise ValueError(f"target_risk {target_risk} and delta {delta} must lie in (0, 1)")
    if risk_control not in RISK_CONTROLS:
        raise ValueError(f"risk_control {risk_control!r} is not one of {RISK_CONTROLS}")
    level_delta = delta if risk_control == "fixed_sequence" else delta / levels
    smallest = math.ceil(math.log(level_delta) / math.log(1.0 - target_risk))
    ordered = np.sort(u, kind="stable")
    n = len(u)
    best = SelectiveThreshold(0.0, 0.0, 0, 0, None, None)
    stopped = False
    for j in range(1, levels + 1):
        k = math.ceil(j * n / levels)
        if k < smallest:  # not certifiable even with no failure
            continue
        threshold = None if k >= n else float(ordered[k])
        accept = np.ones(n, dtype=bool) if threshold is None else u < threshold
        accepted, failures = int(accept.sum()), int(failed[accept].sum())
        p_value = binomial_p_value(failures, accepted, target_risk)
        certified = p_value <= level_delta and not stopped
        stopped = stopped or (risk_control == "fixed_sequence" and not certified)
        best.tested.append({"level": j / levels, "threshold": threshold, "accepted": accepted,
                            "failures": failures, "p_value": p_value, "certified": certified})
        if certified:
            best = SelectiveThreshold(threshold, j / levels, accepted, failures,
                                      failures / accepted, p_value, best.tested)
    return best


@dataclass
class CalibrationInputs:
    """The arrays a calibration needs, from ``test.py`` records (one row per finding).

    boxes (n,4), hypotheses (n,N,4), targets (n,4): pixel xyxy; sizes (n,2) width, height;
    iou (n,); u (n,) of the chosen signal; finding_types (n,).
    """

    boxes: np.ndarray
    hypotheses: np.ndarray
    targets: np.ndarray
    sizes: np.ndarray
    iou: np.ndarray
    u: np.ndarray
    finding_types: list[str]


def calibration_inputs(records: Sequence[dict[str, Any]], signal: str, path: str = "given_phrase"
                       ) -> CalibrationInputs:
    """The findings of ``records`` that have a box on ``path`` (``given_phrase``: the box read at
    the true phrase; ``end_to_end``: the box of the matched generated phrase)."""
    rows = [(r, r["given_phrase"] if path == "given_phrase" else r) for r in records]
    rows = [(r, boxed) for r, boxed in rows if boxed.get("box") is not None]
    missing = [r["id"] for r, boxed in rows if signal not in boxed.get("u_signals", {})]
    if missing:
        raise ValueError(f"the predictions have no {signal!r} uncertainty (finding of "
                         f"{missing[0]}): a model without the IoU head has only 'spread'")
    return CalibrationInputs(
        boxes=np.array([boxed["box"] for _, boxed in rows], dtype=np.float64).reshape(-1, 4),
        hypotheses=np.array([boxed["hypotheses"] for _, boxed in rows], dtype=np.float64)
        if rows else np.zeros((0, 1, 4)),
        targets=np.array([enclosing_box(r["gt_boxes"]) for r, _ in rows],
                         dtype=np.float64).reshape(-1, 4),
        sizes=np.array([(r["width"], r["height"]) for r, _ in rows],
                       dtype=np.float64).reshape(-1, 2),
        iou=np.array([boxed["iou"] for _, boxed in rows], dtype=np.float64),
        u=np.array([boxed["u_signals"][signal] for _, boxed in rows], dtype=np.float64),
        finding_types=[r.get("finding_type") or "unknown" for r, _ in rows])


def fit_calibration(records: Sequence[dict[str, Any]], alpha: float, target_risk: float,
                    delta: float, signal: str, dataset: str = "", split: str = "",
                    risk_control: str = "fixed_sequence", test_time_shift: int = 0
                    ) -> BoxCalibration:
    """Fit the conformal quantile and the selective threshold on the given-phrase boxes of a
    calibration split's records (``test.py`` predictions, made with ``test_time_shift``)."""
    inputs = calibration_inputs(records, signal)
    n = len(inputs.iou)
    scores = normalised_scores(inputs.boxes, inputs.hypotheses, inputs.targets, inputs.sizes)
    quantile = conformal_quantile(scores, alpha)
    if not math.isfinite(quantile):
        raise ValueError(f"{n} calibration findings are too few for alpha {alpha}: the "
                         f"conformal quantile needs at least {math.ceil(1 / alpha) - 1}; use a "
                         "larger split or a larger --alpha")
    quantile = max(quantile, 0.0)
    selective = selective_threshold(inputs.u, inputs.iou < FAILURE_IOU, target_risk, delta,
                                    risk_control)
    inflated = inflate_boxes(inputs.boxes, inputs.hypotheses, inputs.sizes, quantile)
    details = {"coverage": float(contains(inflated, inputs.targets).mean()),
               "mean_area_inflation": float(area_inflation(inflated, inputs.boxes).mean()),
               "selective_level": selective.level, "selective_accepted": selective.accepted,
               "selective_failures": selective.failures, "selective_risk": selective.risk,
               "selective_p_value": selective.p_value, "levels_tested": selective.tested,
               "method": {"boxes": "split conformal, residuals normalised by the hypotheses' "
                                   "per-side std, largest side score",
                          "selective": f"Learn then Test, binomial tail p-values, "
                                       f"{risk_control} over {SELECTIVE_LEVELS} coverage "
                                       "levels"}}
    return BoxCalibration(alpha=alpha, quantile=quantile, scale_floor=SCALE_FLOOR, signal=signal,
                          target_risk=target_risk, delta=delta, threshold=selective.threshold,
                          n_findings=n, dataset=dataset, split=split,
                          risk_control=risk_control, test_time_shift=test_time_shift,
                          details=details)


def _block(inputs: CalibrationInputs, calibration: BoxCalibration, inflated: np.ndarray,
           rows: np.ndarray, n_findings: int) -> dict[str, Any]:
    """Coverage, area inflation and selective risk/coverage of the boxes ``rows``."""
    accept = np.array([not calibration.abstains(float(v)) for v in inputs.u[rows]], dtype=bool)
    failed = inputs.iou[rows] < FAILURE_IOU
    return {"n": int(rows.sum()),
            "coverage": float(contains(inflated[rows], inputs.targets[rows]).mean())
            if rows.any() else None,
            "mean_area_inflation": float(area_inflation(inflated[rows], inputs.boxes[rows]).mean())
            if rows.any() else None,
            "selective_risk": float(failed[accept].mean()) if accept.any() else None,
            "selective_coverage": float(accept.sum() / n_findings) if n_findings else 0.0}


def apply_calibration(records: list[dict[str, Any]], calibration: BoxCalibration
                      ) -> dict[str, Any]:
    """Add ``inflated_box`` and ``abstain`` to every box of ``records`` (in place, both paths)
    and return the ``calibration`` block of metrics.json.

    The block scores the given-phrase boxes (every finding has one): ``coverage`` (the inflated
    box contains the target), ``mean_area_inflation`` (inflated / predicted area),
    ``selective_risk`` (IoU < 0.5 among accepted boxes; ``None`` when none is accepted) and
    ``selective_coverage`` (accepted / findings), overall and under ``by_finding`` per finding
    type; ``end_to_end`` scores the boxes of matched generated phrases the same way (its
    ``selective_coverage`` counts every finding, matched or not, in the denominator).
    """
    block: dict[str, Any] = {key: getattr(calibration, key) for key in
                             ("alpha", "quantile", "target_risk", "delta", "signal", "threshold",
                              "risk_control")}
    for path in ("given_phrase", "end_to_end"):
        inputs = calibration_inputs(records, calibration.signal, path)
        inflated = inflate_boxes(inputs.boxes, inputs.hypotheses, inputs.sizes,
                                 calibration.quantile, calibration.scale_floor)
        boxed = [r["given_phrase"] if path == "given_phrase" else r for r in records]
        boxed = [fields for fields in boxed if fields.get("box") is not None]
        for fields, box, u in zip(boxed, inflated.tolist(), inputs.u.tolist()):
            fields["inflated_box"] = [round(v, 2) for v in box]
            fields["abstain"] = calibration.abstains(u)
        everything = np.ones(len(inputs.u), dtype=bool)
        scores = _block(inputs, calibration, inflated, everything, len(records))
        if path == "given_phrase":
            block.update(scores)
            kinds = defaultdict(list)
            for index, kind in enumerate(inputs.finding_types):
                kinds[kind].append(index)
            block["by_finding"] = {
                kind: _block(inputs, calibration, inflated,
                             np.isin(np.arange(len(inputs.u)), indices), len(indices))
                for kind, indices in sorted(kinds.items())}
        else:
            block["end_to_end"] = scores
    for record in records:
        if record.get("box") is None:
            record["inflated_box"], record["abstain"] = None, None
    return block
