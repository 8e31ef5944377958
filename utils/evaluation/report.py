"""Readable stdout tables of the evaluation results (metrics.json and the noise experiment)."""
from __future__ import annotations

from typing import Any

GROUNDING_KEYS = ("acc@0.1", "acc@0.3", "acc@0.5", "miou")
PHRASE_NAMES = {"exact_match": "exact match", "bleu_1": "BLEU-1", "bleu_4": "BLEU-4",
                "rouge_l": "ROUGE-L", "cider": "CIDEr-D (0-10)", "meteor": "METEOR"}
BOX_ROWS = (("box acc@0.5", None, "acc@0.5"), ("box mIoU", None, "miou"),
            ("box precision@0.5", None, "precision@0.5"), ("box recall@0.5", None, "recall@0.5"),
            ("box count accuracy", None, "count_accuracy"),
            ("multi-box acc@0.5", "multi_box", "acc@0.5"),
            ("multi-box count accuracy", "multi_box", "count_accuracy"),
            ("single-box acc@0.5", "single_box", "acc@0.5"))
UNCERTAINTY_NAMES = {"aurc": "AURC (lower is better)",
                     "auroc_failure@0.5": "AUROC of u for IoU < 0.5",
                     "spearman_u_iou": "Spearman(u, IoU)", "n": "boxes"}
CALIBRATION_NAMES = {"coverage": "coverage of inflated boxes",
                     "mean_area_inflation": "mean area inflation (x)",
                     "selective_risk": "selective risk",
                     "selective_coverage": "selective coverage"}


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _rows(title: str, values: dict[str, Any], names: dict[str, str]) -> list[str]:
    """A title and one line per value; nested blocks (per-signal metrics) become sub-tables."""
    lines = [title]
    for key, value in values.items():
        if isinstance(value, dict):
            lines += ["  " + line for line in _rows(f"{key}:", value, names)]
        else:
            lines.append(f"  {names.get(key, key):28s} {_number(value):>10s}")
    return lines


def _calibration_rows(block: dict[str, Any]) -> list[str]:
    """The headline figures of the ``calibration`` block."""
    lines = [f"calibration (alpha {block['alpha']}, target risk {block['target_risk']}, "
             f"delta {block['delta']}, signal {block['signal']})"]
    for key, name in CALIBRATION_NAMES.items():
        lines.append(f"  {name:28s} {_number(block.get(key)):>10s} "
                     f"{_number(block['end_to_end'].get(key)):>13s}")
    return lines


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """A summary of one metrics.json dict for stdout.

    Grounding end to end (from generated text; its strict-matching column when present) beside
    grounding given the true phrase, the same per ground-truth box, then the phrase metrics,
    the uncertainty metrics (each signal) and the calibration (given phrase beside end to
    end); blocks that are missing or empty are left out. ``n_extra_predictions`` and
    ``baseline`` are shown when present.
    """
    header = (f"{metrics['dataset']} / {metrics['split']}: {metrics['n_samples']} samples, "
              f"{metrics['n_findings']} findings")
    if "seconds" in metrics:
        header += f", {metrics['seconds']:.1f} s"
    if metrics.get("baseline"):
        header += f"  [baseline: {metrics['baseline']}]"
    strict = metrics.get("grounding_strict")
    lines = [header, f"  {'grounding':28s} {'end-to-end':>10s}"
                     + (f" {'strict':>8s}" if strict else "") + f" {'given phrase':>13s}"]
    for key in GROUNDING_KEYS:
        lines.append(f"  {key:28s} {_number(metrics['grounding'][key]):>10s}"
                     + (f" {_number(strict[key]):>8s}" if strict else "")
                     + f" {_number(metrics['grounding_given_phrase'][key]):>13s}")
    no_strict = f" {'':>8s}" if strict else ""  # the strict column is of phrases only
    if metrics.get("grounding_boxes"):
        lines.append(f"  {'per ground-truth box':28s} {'end-to-end':>10s}{no_strict} "
                     f"{'given phrase':>13s}")
        for name, block, key in BOX_ROWS:
            values = [metrics[path] if block is None else metrics[path][block]
                      for path in ("grounding_boxes", "grounding_boxes_given_phrase")]
            lines.append(f"  {name:28s} {_number(values[0][key]):>10s}{no_strict} "
                         f"{_number(values[1][key]):>13s}")
    if "n_extra_predictions" in metrics:
        lines.append(f"  {'extra generated phrases':28s} {metrics['n_extra_predictions']:>10d}")
    if metrics.get("phrase"):
        lines += _rows("phrases (generated vs true)", metrics["phrase"], PHRASE_NAMES)
    if metrics.get("uncertainty"):
        signal = f", u = {metrics['uncertainty_signal']}" if "uncertainty_signal" in metrics else ""
        lines += _rows(f"uncertainty (given phrase{signal})", metrics["uncertainty"],
                       UNCERTAINTY_NAMES)
    if metrics.get("uncertainty_end_to_end"):
        lines += _rows("uncertainty (end to end, matched phrases)",
                       metrics["uncertainty_end_to_end"], UNCERTAINTY_NAMES)
    if metrics.get("calibration"):
        lines += _calibration_rows(metrics["calibration"])
    return "\n".join(lines)


def format_noise_table(rows: list[dict[str, Any]]) -> str:
    """One line per image-noise level of the robustness experiment.

    Arguments:
      rows: metrics dicts, each with ``image_noise_std``, ``grounding``,
        ``grounding_given_phrase``, ``mean_u`` and ``uncertainty``.

    Returns:
      Columns: noise std, end-to-end acc@0.5 and mIoU, given-phrase acc@0.5 and mIoU,
      mean u, AURC and the AUROC of u for failures; for a calibrated model also the coverage
      of the inflated boxes and the selective risk and coverage (given phrase).
    """
    calibrated = all("calibration" in row for row in rows)
    lines = [f"{'noise std':>9s} {'acc@0.5':>8s} {'mIoU':>7s} {'gp acc@0.5':>10s} "
             f"{'gp mIoU':>8s} {'mean u':>9s} {'AURC':>7s} {'AUROC':>7s}"
             + (f" {'coverage':>8s} {'sel risk':>8s} {'sel cov':>8s}" if calibrated else "")]
    for row in rows:
        line = (f"{row['image_noise_std']:9.1f} {row['grounding']['acc@0.5']:8.4f} "
                f"{row['grounding']['miou']:7.4f} "
                f"{row['grounding_given_phrase']['acc@0.5']:10.4f} "
                f"{row['grounding_given_phrase']['miou']:8.4f} {row['mean_u']:9.2e} "
                f"{row['uncertainty']['aurc']:7.4f} "
                f"{row['uncertainty']['auroc_failure@0.5']:7.4f}")
        if calibrated:
            block = row["calibration"]
            line += "".join(f" {_number(block[key]):>8s}" for key in
                            ("coverage", "selective_risk", "selective_coverage"))
        lines.append(line)
    lines.append("gp = true phrase teacher-forced; AURC/AUROC use the given-phrase boxes")
    return "\n".join(lines)
