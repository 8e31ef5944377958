"""Log-log plots of the scaling measurements (case d), each with its fitted exponent."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _plot(x: list[float], y: list[float], exponent: float, xlabel: str, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(4.5, 3.2))
    axis.loglog(x, y, "o-")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("seconds")
    axis.set_title(f"fitted exponent {exponent:.2f}")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_scaling(records: dict[str, Any], out: Path) -> None:
    steps = records["step_scaling"]
    for key, label, name in (("step_vs_batch_size", "batch size", "step_vs_batch.png"),
                             ("step_vs_sequence_tokens", "tokens per sample",
                              "step_vs_tokens.png")):
        _plot(steps[key]["x"], steps[key]["median_s"], steps[key]["exponent"], label, out / name)
    evaluation = records["eval_scaling"]["eval_vs_samples"]
    _plot(evaluation["x"], evaluation["seconds"], evaluation["exponent"], "samples",
          out / "eval_vs_samples.png")
