"""Reading canonical rows back: their patient and the labels used to stratify and count them."""
from __future__ import annotations

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


def finding_label(row: dict[str, Any], finding: dict[str, Any]) -> str:
    """A finding's category (else its row's class label, else "(no category)")."""
    return str(finding.get("category") or row.get("label") or NO_CATEGORY)


def row_labels(row: dict[str, Any]) -> list[str]:
    """The labels of a row's findings ("(no finding)" for a row without any)."""
    findings = row.get("findings") if isinstance(row.get("findings"), list) else []
    return [finding_label(row, f) for f in findings if isinstance(f, dict)] or [NO_FINDING]


def row_patient(row: dict[str, Any]) -> str:
    """The row's ``patient``, else the patient id in its image path, else ""."""
    return str(row.get("patient") or "") or patient_from_path(str(row.get("image", "")))


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
    return list(read_jsonl(path, log, encoding))
