"""``calibration.json``: what ``test.py --calibrate`` fitted on a validation split for a model.

It sits in the exported folder beside ``config.json``; :meth:`UMedGround.from_pretrained`
loads it into ``model.calibration`` and :meth:`UMedGround.save_pretrained` writes it back (or
removes a stale one). The maths that fits and applies it is in
:mod:`utils.evaluation.calibration`; this module only holds the numbers and reads and writes
them, checked, so that a damaged file is an error naming it.

- Conformal boxes: each side of a box moves out by ``quantile`` times that side's scale, the
  hypotheses' standard deviation of the side coordinate (pixels), at least ``scale_floor``
  times the image side. On exchangeable data the moved box contains the ground-truth box
  for at least ``1 - alpha`` of findings.
- Selective prediction: a box whose u (the ``signal``) is below ``threshold`` is accepted,
  any other is an abstention; ``threshold`` ``None`` accepts every box and 0 abstains on
  every box. The selective risk (IoU < 0.5 among accepted boxes) is at most ``target_risk``
  with probability at least ``1 - delta`` over the calibration draw (``risk_control`` names
  the multiple-testing procedure, one of ``RISK_CONTROLS``).
- ``test_time_shift``: the test-time shift (:mod:`model.test_time_shifts`) the boxes and u
  were fitted with; the guarantees hold for that setting only (0: none; a file written before
  the setting existed has 0).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from model.constants import UNCERTAINTY_SIGNALS

CALIBRATION_NAME = "calibration.json"
CALIBRATION_SCHEMA = 1
RISK_CONTROLS = ("fixed_sequence", "bonferroni")  # Learn-then-Test procedures


@dataclass
class BoxCalibration:
    """The fitted calibration of one model (see the module docstring).

    ``details`` holds what the fit saw on the calibration split (coverage, risk, p-value, the
    tested levels), for the record; nothing reads it back.
    """

    alpha: float
    quantile: float
    scale_floor: float
    signal: str
    target_risk: float
    delta: float
    threshold: float | None
    n_findings: int
    dataset: str = ""
    split: str = ""
    risk_control: str = "fixed_sequence"
    test_time_shift: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = CALIBRATION_SCHEMA

    def __post_init__(self) -> None:
        for name in ("alpha", "target_risk", "delta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
                raise ValueError(f"{name} {value!r} must lie in (0, 1)")
        for name in ("quantile", "scale_floor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} {value!r} must be a finite number >= 0")
        if not isinstance(self.n_findings, int) or self.n_findings < 1:
            raise ValueError(f"n_findings {self.n_findings!r} must be an integer >= 1")
        if (not isinstance(self.test_time_shift, int) or isinstance(self.test_time_shift, bool)
                or self.test_time_shift < 0):
            raise ValueError(f"test_time_shift {self.test_time_shift!r} must be an integer >= 0")
        if self.risk_control not in RISK_CONTROLS:
            raise ValueError(f"risk_control {self.risk_control!r} is not one of {RISK_CONTROLS}")
        if self.signal not in UNCERTAINTY_SIGNALS:
            raise ValueError(f"signal {self.signal!r} is not one of {UNCERTAINTY_SIGNALS}")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float))
                                               and math.isfinite(self.threshold)):
            raise ValueError(f"threshold {self.threshold!r} must be a finite number or null")
        if self.schema_version != CALIBRATION_SCHEMA:
            raise ValueError(f"schema_version {self.schema_version!r} is not "
                             f"{CALIBRATION_SCHEMA}; calibrate the model again")

    def abstains(self, u: float) -> bool:
        """Whether a box of uncertainty ``u`` (of :attr:`signal`) is an abstention."""
        return self.threshold is not None and not u < self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CALIBRATION_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> "BoxCalibration":
        """A calibration from its JSON form; errors name ``source``."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: a calibration must be a JSON object, got "
                             f"{type(raw).__name__}")
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}; run test.py --calibrate again") from None

    @classmethod
    def load(cls, folder: str | Path) -> "BoxCalibration | None":
        """The folder's calibration, or ``None`` when it has no ``calibration.json``."""
        path = Path(folder) / CALIBRATION_NAME
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not valid JSON ({error}); run test.py --calibrate "
                             "again") from None
        return cls.from_dict(raw, str(path))
