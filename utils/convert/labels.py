"""Reading canonical rows back: their patient and the labels used to stratify and count them."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from utils.convert.log import ConversionError, ConversionLog
from utils.convert.paths import patient_from_path
from utils.convert.tables import read_jsonl
from utils.reference_pth import ReferenceFileError, reference_to_canonical_rows
from utils.text_io import DEFAULT_ENCODING

NO_FINDING = "(no finding)"
NO_CATEGORY = "(no category)"
INVALID = "invalid reference row"
NON_FINITE = "non-finite number"


def finding_label(row: dict[str, Any], finding: dict[str, Any]) -> str:
    """A finding's category (else its row's class label, else "(no category)")."""
    return str(finding.get("category") or row.get("label") or NO_CATEGORY)


def row_labels(row: dict[str, Any]) -> list[str]:
    """The labels of a row's findings ("(no finding)" for a row without any)."""
    findings = row.get("findings") if isinstance(row.get("findings"), list) else []
    return [finding_label(row, f) for f in findings if isinstance(f, dict)] or [NO_FINDING]


def row_patient(row: dict[str, Any]) -> str:
    """The row's ``patient`` (a string or, as the schema allows, an integer: 0 is an id), else
    the patient id in its image path, else ""."""
    patient = row.get("patient")
    if patient is None or patient == "" or isinstance(patient, bool):
        return patient_from_path(str(row.get("image", "")))
    return str(patient)


def read_rows(path: Path, log: ConversionLog, encoding: str = DEFAULT_ENCODING
              ) -> list[tuple[int, dict[str, Any]]]:
    """``(line, row)`` of a canonical ``.jsonl``, or ``(index, row)`` of a reference ``.pth``."""
    if path.suffix == ".pth":
        try:
            read = reference_to_canonical_rows(path)
        except ReferenceFileError as error:
            raise ConversionError(str(error)) from error
        for problem in read.problems:
            log.problem(problem.file, problem.row, problem.reason or INVALID, problem.message,
                        rows=problem.rows)
        return [(indices[0], row) for row, indices in zip(read.rows, read.indices)]
    rows = []
    for line, row in read_jsonl(path, log, encoding):
        if _non_finite(row):
            log.problem(str(path), line, NON_FINITE, "holds NaN or inf (e.g. in a box); fix the "
                                                     "row")
            continue
        rows.append((line, row))
    return rows


def _non_finite(value: Any) -> bool:
    """Whether a JSON value holds NaN or inf anywhere."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False
