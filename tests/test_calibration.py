"""The calibration maths on synthetic data of known distribution, calibration.json, and the
test-split guard of ``test.py --calibrate``."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from model.calibration import CALIBRATION_NAME, BoxCalibration
from utils.evaluation.calibration import (
    SCALE_FLOOR,
    apply_calibration,
    area_inflation,
    conformal_quantile,
    contains,
    fit_calibration,
    inflate_boxes,
    normalised_scores,
    selective_threshold,
)

_SPEC = importlib.util.spec_from_file_location(
    "umedground_test_cli", Path(__file__).resolve().parents[1] / "test.py")
_TEST_CLI = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_TEST_CLI)  # `import test` would be the standard library's
SIZE = 1000.0  # synthetic images are SIZE x SIZE pixels


def synthetic_findings(rng: np.random.Generator, n: int, hypotheses: int = 3):
    """Boxes whose sides miss the target by sigma * z, z standard normal, with hypotheses whose
    per-side standard deviation is exactly sigma (which varies from box to box by 10x)."""
    targets = np.column_stack([rng.uniform(200, 400, (n, 2)), rng.uniform(600, 800, (n, 2))])
    sigma = rng.uniform(3.0, 30.0, (n, 1)) * np.ones((1, 4))
    boxes = targets + sigma * rng.standard_normal((n, 4))
    offsets = rng.standard_normal((n, hypotheses, 4))
    offsets = (offsets - offsets.mean(axis=1, keepdims=True)) / offsets.std(axis=1, keepdims=True)
    return boxes, boxes[:, None] + sigma[:, None] * offsets, targets, np.full((n, 2), SIZE)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_conformal_boxes_reach_the_nominal_coverage(alpha):
    """Over many calibration draws of n = 200 the mean coverage lies in [1 - alpha,
    1 - alpha + 1/(n+1)] up to sampling error, and each draw's within its spread."""
    rng = np.random.default_rng(0)
    n, trials, fresh = 200, 300, 1000
    coverages = []
    for _ in range(trials):
        boxes, hypotheses, targets, sizes = synthetic_findings(rng, n)
        q = conformal_quantile(normalised_scores(boxes, hypotheses, targets, sizes), alpha)
        boxes, hypotheses, targets, sizes = synthetic_findings(rng, fresh)
        inflated = inflate_boxes(boxes, hypotheses, sizes, q)
        coverages.append(contains(inflated, targets).mean())
    coverages = np.array(coverages)
    error = 4 * coverages.std() / math.sqrt(trials)
    assert 1 - alpha - error <= coverages.mean() <= 1 - alpha + 1 / (n + 1) + error
    spread = math.sqrt(alpha * (1 - alpha) / (n + 2) + alpha * (1 - alpha) / fresh)
    assert np.abs(coverages - (1 - alpha)).max() < 4.5 * spread


def test_finite_sample_quantile_rank():
    scores = np.arange(1.0, 20.0)  # n = 19: rank ceil(20 * 0.9) = 18
    assert conformal_quantile(scores, 0.1) == 18.0
    assert conformal_quantile(scores[:8], 0.1) == math.inf  # rank 9 > n = 8
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(scores, 1.0)


def test_inflation_follows_the_hypotheses_spread_and_the_floor():
    boxes = np.array([[100.0, 100.0, 200.0, 200.0], [100.0, 100.0, 200.0, 200.0]])
    spread = np.array([4.0, 0.0, 0.0, 0.0])  # std 4 on x0 only
    hypotheses = np.stack([boxes[0] + spread, boxes[0] - spread])[None].repeat(2, axis=0)
    hypotheses[1] = boxes[1]  # the second box's hypotheses coincide: its scale is the floor
    sizes = np.full((2, 2), 400.0)
    inflated = inflate_boxes(boxes, hypotheses, sizes, 2.0)
    floor = SCALE_FLOOR * 400.0
    np.testing.assert_allclose(inflated[0], [92.0, 100 - 2 * floor, 200 + 2 * floor,
                                             200 + 2 * floor])
    np.testing.assert_allclose(inflated[1], [100 - 2 * floor, 100 - 2 * floor, 200 + 2 * floor,
                                             200 + 2 * floor])
    assert (area_inflation(inflated, boxes) > 1).all()
    np.testing.assert_allclose(inflate_boxes(boxes, hypotheses, sizes, -3.0), boxes)  # no shrink
    clipped = inflate_boxes(boxes, hypotheses, np.full((2, 2), 201.0), 1000.0)
    assert clipped.min() == 0.0 and clipped.max() == 201.0


@pytest.mark.parametrize("risk_control, least_coverage", [("fixed_sequence", 0.2),
                                                         ("bonferroni", 0.1)])
def test_the_selective_threshold_holds_its_risk(risk_control, least_coverage):
    """u uniform on [0, 1] and P(failure | u) = u: accepting u < t gives a selective risk of
    t / 2, so a target of 0.2 allows at most t = 0.4. Over many calibration draws the
    certified threshold exceeds it at most delta of the time, and is not vacuous."""
    rng = np.random.default_rng(1)
    target, delta, n, trials = 0.2, 0.1, 400, 400
    risks, coverages = [], []
    for _ in range(trials):
        u = rng.uniform(0.0, 1.0, n)
        failed = rng.uniform(0.0, 1.0, n) < u
        chosen = selective_threshold(u, failed, target, delta, risk_control)
        threshold = 1.0 if chosen.threshold is None else chosen.threshold
        risks.append(threshold / 2 if threshold > 0 else 0.0)
        coverages.append(threshold)
    violations = np.mean(np.array(risks) > target)
    assert violations <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    assert np.mean(coverages) > least_coverage


def test_bonferroni_needs_no_monotone_u():
    """Failures concentrated at the lowest u (a u that ranks backwards at first): Bonferroni
    still holds the risk of the threshold it returns."""
    rng = np.random.default_rng(5)
    target, delta, n, trials = 0.2, 0.1, 400, 300
    violations = 0
    for _ in range(trials):
        u = rng.uniform(0.0, 1.0, n)
        failed = rng.uniform(0.0, 1.0, n) < np.where(u < 0.05, 0.9, 0.1)
        chosen = selective_threshold(u, failed, target, delta, "bonferroni")
        t = 1.0 if chosen.threshold is None else chosen.threshold
        if t > 0:  # risk of accepting u < t: (0.05 * 0.9 + (t - 0.05) * 0.1) / t for t > 0.05
            risk = 0.9 if t <= 0.05 else (0.045 + (t - 0.05) * 0.1) / t
            violations += risk > target
    assert violations / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)


def test_selective_threshold_levels_and_abstention():
    """n = 100: the level 0.1 (10 boxes) cannot be certified at delta 0.1 (0.8^10 > 0.1) and
    is skipped."""
    u = np.linspace(0.0, 1.0, 100, endpoint=False)
    never = selective_threshold(u, np.zeros(100, bool), 0.2, 0.1)
    assert never.threshold is None and never.level == 1.0 and never.risk == 0.0
    always = selective_threshold(u, np.ones(100, bool), 0.2, 0.1)
    assert always.threshold == 0.0 and always.level == 0.0 and always.risk is None
    assert len(always.tested) == 9 and not any(t["certified"] for t in always.tested)
    with pytest.raises(ValueError, match="risk_control"):
        selective_threshold(u, u > 0.5, 0.2, 0.1, "holm")
    half = selective_threshold(u, u >= 0.5, 0.2, 0.1)  # the better half never fails
    assert half.threshold == pytest.approx(0.5) and half.accepted == 50 and half.failures == 0
    with pytest.raises(ValueError, match="u must be finite"):
        selective_threshold(-u, u > 0.5, 0.2, 0.1)


def synthetic_records(rng: np.random.Generator, n: int) -> list[dict]:
    boxes, hypotheses, targets, _ = synthetic_findings(rng, n)
    records = []
    for index in range(n):
        iou = float(rng.uniform(0, 1))
        fields = {"box": boxes[index].tolist(), "hypotheses": hypotheses[index].tolist(),
                  "iou": iou, "u": 1 - iou, "u_signals": {"spread": 1 - iou}}
        records.append({"id": f"s{index}", "gt_boxes": [targets[index].tolist()],
                        "width": SIZE, "height": SIZE,
                        "finding_type": "nodule" if index % 2 else "mass",
                        **(fields if index % 3 else {"box": None}), "given_phrase": dict(fields)})
    return records


def test_fit_save_load_and_apply(tmp_path):
    rng = np.random.default_rng(2)
    calibration = fit_calibration(synthetic_records(rng, 300), 0.1, 0.2, 0.1, "spread",
                                  "report", "val")
    assert calibration.quantile > 0 and calibration.threshold is not None
    assert calibration.details["coverage"] >= 0.9
    calibration.save(tmp_path)
    loaded = BoxCalibration.load(tmp_path)
    assert loaded == calibration
    records = synthetic_records(rng, 300)
    block = apply_calibration(records, loaded)
    for key in ("alpha", "coverage", "mean_area_inflation", "target_risk", "selective_risk",
                "selective_coverage"):
        assert isinstance(block[key], float), key
    assert set(block["by_finding"]) == {"mass", "nodule"}
    assert block["end_to_end"]["n"] == sum(1 for r in records if r["box"] is not None)
    assert all(isinstance(r["given_phrase"]["abstain"], bool) for r in records)
    assert all((r["inflated_box"] is None) == (r["box"] is None) for r in records)
    assert abs(block["coverage"] - 0.9) < 0.06


@pytest.mark.parametrize("change, message", [
    ({"alpha": 1.5}, "alpha"), ({"signal": "entropy"}, "signal"), ({"quantile": -1.0}, "quantile"),
    ({"risk_control": "holm"}, "risk_control"),
    ({"surprise": 1}, "unknown key"), ({"schema_version": 9}, "schema_version")])
def test_a_damaged_calibration_file_names_itself(tmp_path, change, message):
    rng = np.random.default_rng(3)
    calibration = fit_calibration(synthetic_records(rng, 50), 0.1, 0.2, 0.1, "spread")
    raw = {**calibration.to_dict(), **change}
    (tmp_path / CALIBRATION_NAME).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message) as error:
        BoxCalibration.load(tmp_path)
    assert CALIBRATION_NAME in str(error.value)


def test_too_few_findings_for_alpha_is_refused():
    with pytest.raises(ValueError, match="too few"):
        fit_calibration(synthetic_records(np.random.default_rng(4), 5), 0.1, 0.2, 0.1, "spread")


def test_a_missing_signal_is_refused():
    with pytest.raises(ValueError, match="no 'iou' uncertainty"):
        fit_calibration(synthetic_records(np.random.default_rng(4), 50), 0.1, 0.2, 0.1, "iou")


@pytest.mark.parametrize("extra, message", [
    ([], "fitting them on the test split"),
    (["--weight", "w"], "exported folder"),
])
def test_calibration_refuses_the_test_split_and_non_exports(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        _TEST_CLI.parse_args(["--version", "m", "--split", "test", "--calibrate", "--out",
                              str(tmp_path), *extra]
                             + (["--allow_test_calibration"] if extra else []))
    assert message in capsys.readouterr().err


def test_calibration_settings_need_calibrate_and_test_calibration_can_be_allowed(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _TEST_CLI.parse_args(["--version", "m", "--alpha", "0.05", "--out", str(tmp_path)])
    assert "--alpha only apply with --calibrate" in capsys.readouterr().err
    args = _TEST_CLI.parse_args(["--version", "m", "--split", "test", "--calibrate",
                                 "--allow_test_calibration", "--out", str(tmp_path)])
    assert (args.alpha, args.target_risk, args.delta, args.risk_control) == (
        0.1, 0.2, 0.1, "fixed_sequence")
    args = _TEST_CLI.parse_args(["--version", "m", "--split", "val", "--calibrate",
                                 "--alpha", "0.05", "--out", str(tmp_path)])
    assert args.alpha == 0.05
