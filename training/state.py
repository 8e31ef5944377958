"""Where a training run is: the counters a checkpoint stores and a resume restores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TrainState:
    """``epoch`` epochs are done and ``step_in_epoch`` optimizer steps of the next one;
    ``global_step`` counts every optimizer step. ``best_value`` / ``best_tag`` are the best
    validation value so far and the checkpoint that holds it (read from ``best.json``).
    ``rng`` is each rank's generator state (:func:`training.rng.capture_rng`) at the last
    save or resume; it is not part of :meth:`counters`."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_tag: str | None = None
    rng: list[dict[str, Any]] | None = None

    @property
    def tag(self) -> str:
        """The checkpoint tag of the current step."""
        return f"step_{self.global_step:06d}"

    def counters(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step}

    @classmethod
    def from_counters(cls, raw: dict[str, Any], source: str) -> "TrainState":
        try:
            values = {key: int(raw[key]) for key in ("epoch", "step_in_epoch", "global_step")}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: the training counters are missing or malformed "
                             f"({error!r})") from error
        return cls(**values)
