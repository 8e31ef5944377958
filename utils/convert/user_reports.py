"""User-supplied report texts (``--reports``), e.g. reports generated with GPT-4 or LLaMA-2."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from utils.convert.log import ConversionLog
from utils.convert.tables import read_jsonl, read_table
from utils.text_io import DEFAULT_ENCODING

DUPLICATE = "duplicate report"
NO_REPORT = "no report"


@dataclass(frozen=True)
class UserReports:
    """Report texts keyed by image (its path as given, or its file name)."""

    texts: dict[str, str]
    file: str

    def get(self, image: str) -> str | None:
        """The report of ``image`` (looked up by its path, then by its file name)."""
        return self.texts.get(image, self.texts.get(PurePosixPath(image).name))


def _string(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def read_user_reports(path: Path, log: ConversionLog, encoding: str = DEFAULT_ENCODING
                      ) -> UserReports:
    """Read ``--reports``: a CSV with columns ``Image Index, report`` (or ``image, report``), or a
    JSON Lines file of ``{"image": ..., "report": ...}``. Empty or repeated images are reported."""
    texts: dict[str, str] = {}
    first: dict[str, int] = {}
    if path.suffix == ".jsonl":
        rows = ((line, _string(obj.get("image")), _string(obj.get("report")))
                for line, obj in read_jsonl(path, log, encoding))
    else:
        columns = {"image": ("Image Index", "image"), "report": ("report",)}
        rows = ((row.line, row.values["image"], row.values["report"])
                for row in read_table(path, columns, log, encoding=encoding))
    for line, image, report in rows:
        if not image or not report:
            log.problem(str(path), line, NO_REPORT, "empty (or non-string) image name or report "
                                                    "text; fill both in as strings")
        elif image in texts:
            log.problem(str(path), line, DUPLICATE,
                        f"image {image!r} already has a report (line {first[image]}); keep one")
        else:
            texts[image], first[image] = report, line
    return UserReports(texts, str(path))
