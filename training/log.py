"""Training logs: TensorBoard scalars and a JSON-lines record of the same values (rank 0)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class TrainLog:
    """Writes ``tensorboard/`` event files and ``log.jsonl`` under the run folder.

    Each JSON line holds a kind ("train", "val", or "cache": the embedding cache's counts at
    an epoch's end), the global step, and the values.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.writer = SummaryWriter(str(run_dir / "tensorboard")) if enabled else None
        self.path = run_dir / "log.jsonl"

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Log ``values``; nested dicts become ``kind/group/key`` scalars in TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, "step": step, **values}, sort_keys=True) + "\n")
        for key, value in _flatten(values).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat
