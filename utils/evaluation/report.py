"""Readable stdout tables of the evaluation results."""
from __future__ import annotations

from typing import Any


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """Grounding (end to end) beside grounding given the phrase, then phrases and u."""
    lines = [f"{metrics['dataset']} / {metrics['split']}: {metrics['n_samples']} samples, "
             f"{metrics['n_findings']} findings, {metrics.get('seconds', 0):.1f} s",
             f"{'grounding':18s} {'end-to-end':>12s} {'given phrase':>14s}"]
    for key in ("acc@0.1", "acc@0.3", "acc@0.5", "miou"):
        lines.append(f"{key:18s} {_number(metrics['grounding'][key]):>12s} "
                     f"{_number(metrics['grounding_given_phrase'][key]):>14s}")
    if metrics.get("phrase"):
        lines.append("phrases     " + "  ".join(f"{k} {_number(v)}" for k, v in metrics["phrase"].items()))
    if metrics.get("uncertainty"):
        lines.append("uncertainty " + "  ".join(f"{k} {_number(v)}"
                                                for k, v in metrics["uncertainty"].items()))
    if "n_extra_predictions" in metrics:
        lines.append(f"extra generated phrases (unmatched): {metrics['n_extra_predictions']}")
    return "\n".join(lines)


def format_noise_table(rows: list[dict[str, Any]]) -> str:
    """One line per image-noise level: end-to-end and given-phrase acc@0.5, mIoU, mean u."""
    lines = [f"{'noise std':>9s} {'acc@0.5':>8s} {'mIoU':>7s} {'gp acc@0.5':>10s} {'gp mIoU':>8s} "
             f"{'mean u':>9s} {'AURC':>7s}"]
    for row in rows:
        lines.append(f"{row['image_noise_std']:9.1f} {row['grounding']['acc@0.5']:8.4f} "
                     f"{row['grounding']['miou']:7.4f} {row['grounding_given_phrase']['acc@0.5']:10.4f} "
                     f"{row['grounding_given_phrase']['miou']:8.4f} {row['mean_u']:9.2e} "
                     f"{row['uncertainty']['aurc']:7.4f}")
    return "\n".join(lines)
