"""The reference code's ``.pth`` annotation files, read without loss.

A reference file is a ``torch.save``d dict of parallel lists (read with ``weights_only=True``,
never unpickled): ``image_paths`` (str), ``bboxes`` (an ``(x, y, w, h)`` tuple in pixels of the
image resized to 640 x 640, or a list of 1-3 such tuples in the VQA files), ``phrases`` (a str,
or a list parallel to the boxes) and text columns:

* ``all_reports`` (a list of one string, or a string) and ``report_gpt`` (str) → ``report``;
* ``Answer_all`` (str) → ``answer`` (task ``vqa``);
* ``all_report_answer`` (a list of one string, sometimes empty): a question/answer transcript
  ("Question: ... Answer: ...", or a question sentence followed by its answer) is split into
  ``question`` and ``answer`` (task ``vqa``); any other text is a full report → ``report``;
* ``class_all`` (str, or ``[]`` when absent) → ``label`` (the class name), and
  ``all_report_class`` (a list of one string, the class paragraph) → ``description``
  (task ``class``; a row needs one of the two: in the reference class files half the rows
  have an empty ``class_all``, and the reference code reads ``all_report_class`` alone).

The task follows from the columns present (class, else vqa, else report); ``text_column``
overrides it. A column that cannot become a field (``report_gpt`` beside ``all_reports``) is
counted and named. Rows that share an image and all their text are merged into one sample, in
file order; problems count every input row they leave out.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.constants import REFERENCE_BOX_FRAME
from utils.annotations import (
    Problem,
    ReadOptions,
    Sample,
    is_number,
    parse_canonical_row,
    resolve_image,
)
from utils.image_io import ImageReadError, image_size

logger = logging.getLogger(__name__)

LIST_COLUMNS = ("image_paths", "bboxes", "phrases")
TEXT_COLUMNS = {"all_reports": "report", "report_gpt": "report", "Answer_all": "vqa",
                "all_report_answer": "vqa", "all_report_class": "class", "class_all": "class"}
REPORT_COLUMNS = ("all_reports", "report_gpt")
QUESTION_WORDS = {"what", "where", "which", "is", "are", "does", "do", "how", "can", "was",
                  "were", "has", "have", "any"}
_TRANSCRIPT = re.compile(r"^\s*(?:question|q)\s*:\s*(?P<question>.+?)\s*"
                         r"(?:answer|a)\s*:\s*(?P<answer>.+?)\s*$", re.IGNORECASE | re.DOTALL)

WRONG_TYPE = "wrong type"
BAD_BOX = "bad box"
NO_TEXT = "no text for the task"
NO_CLASS = "no class name or description"
MEDRPG_FIELDS = 8  # a MedRPG annotation file is a list of 8-tuples, not this schema
# the fields a row of each task needs one of
NEEDED = {"report": ("report",), "vqa": ("answer",), "class": ("label", "description")}


class ReferenceFileError(ValueError):
    """A ``.pth`` that cannot be used at all (not readable, not the schema, ragged lists)."""

    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(str(problem))


@dataclass
class ReferenceRows:
    """Canonical rows of a reference file, boxes still pixel xyxy of the 640 x 640 frame.

    ``indices[i]`` lists the input rows merged into ``rows[i]``; ``unused`` counts what was
    read but not kept, by description.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    indices: list[list[int]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unused: Counter[str] = field(default_factory=Counter)


def split_transcript(text: str) -> tuple[str, str] | None:
    """``(question, answer)`` of a question/answer transcript, or None for other text."""
    match = _TRANSCRIPT.match(text)
    if match:
        return match["question"].strip(), match["answer"].strip()
    head, mark, tail = text.partition("?")
    words = head.strip().split()
    if mark and tail.strip() and words and words[0].lower() in QUESTION_WORDS:
        return f"{head.strip()}?", tail.strip()
    return None


def _one_text(value: Any) -> str | None:
    """A string, a list of strings (joined) or ``[]`` (→ ""); None for any other type."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return " ".join(v.strip() for v in value).strip()
    return None


def _boxes(raw: Any) -> list[tuple[float, ...]] | str:
    """An ``(x, y, w, h)`` tuple or a list of them → 4-tuples, or why not."""
    if isinstance(raw, (list, tuple)) and len(raw) == 4 and not any(
            isinstance(v, (list, tuple)) for v in raw):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw or not all(
            isinstance(b, (list, tuple)) and len(b) == 4 for b in raw):
        return f"bbox {raw!r} is neither (x, y, w, h) nor a list of them"
    if not all(is_number(v) for b in raw for v in b):
        return f"bbox {raw!r} holds a value that is not a finite number"
    return [tuple(float(v) for v in b) for b in raw]


def _load(path: Path) -> dict[str, Any]:
    file = str(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign pickles and bad zips
        raise ReferenceFileError(Problem(
            file, None, f"cannot be read with torch.load(weights_only=True) "
                        f"({type(error).__name__}: {str(error).splitlines()[0][:300]}); only "
                        "dicts of lists, tuples and strings are accepted, never pickled code",
            "unreadable file")) from error
    if not isinstance(data, dict):
        medrpg = (isinstance(data, (list, tuple)) and data and isinstance(data[0], (list, tuple))
                  and len(data[0]) == MEDRPG_FIELDS)
        hint = (f"; its rows have {MEDRPG_FIELDS} fields, as MedRPG's (anno_id, image_id, "
                "category_id, img_file, bbox, width, height, phrase) files do, which this "
                "converter does not read: convert MS-CXR from its own CSV or JSON with "
                "`python -m utils.convert mscxr`" if medrpg else "")
        raise ReferenceFileError(Problem(file, None, f"expected a dict of lists, got "
                                                     f"{type(data).__name__}{hint}",
                                         "unknown schema"))
    missing = [k for k in LIST_COLUMNS if k not in data]
    if missing or not any(k in data for k in TEXT_COLUMNS):
        raise ReferenceFileError(Problem(
            file, None, f"unknown schema: keys {sorted(map(str, data))}; the reference schema "
                        f"needs {', '.join(LIST_COLUMNS)} and one of {sorted(TEXT_COLUMNS)}",
            "unknown schema"))
    columns = [k for k in (*LIST_COLUMNS, *TEXT_COLUMNS) if k in data]
    not_lists = [k for k in columns if not isinstance(data[k], (list, tuple))]
    if not_lists:
        raise ReferenceFileError(Problem(
            file, None, f"column(s) {not_lists} must be lists, got "
                        f"{[type(data[k]).__name__ for k in not_lists]}", "unknown schema"))
    lengths = {k: len(data[k]) for k in columns}
    if len(set(lengths.values())) != 1:
        raise ReferenceFileError(Problem(file, None, f"the lists have different lengths "
                                                     f"{lengths}", "unknown schema"))
    return data


def _task(data: dict[str, Any], text_column: str | None, transcript: tuple | None) -> str:
    if text_column:
        return TEXT_COLUMNS[text_column]
    if "class_all" in data or "all_report_class" in data:
        return "class"
    if "Answer_all" in data or transcript:
        return "vqa"
    return "report"


def reference_to_canonical_rows(path: Path, text_column: str | None = None) -> ReferenceRows:
    """Read a reference ``.pth`` file into canonical rows (boxes in 640-px pixels).

    Raises ReferenceFileError when the file cannot be used at all.
    """
    if text_column is not None and text_column not in TEXT_COLUMNS:
        raise ValueError(f"text column {text_column!r} is not one of {sorted(TEXT_COLUMNS)}")
    data = _load(path)
    if text_column is not None and text_column not in data:
        raise ReferenceFileError(Problem(str(path), None, f"--text_column {text_column}, but "
                                                          "the file has no such column",
                                         "unknown schema"))
    file, result = str(path), ReferenceRows()
    present = [k for k in TEXT_COLUMNS if k in data]
    report_column = text_column if text_column in REPORT_COLUMNS else \
        next((k for k in REPORT_COLUMNS if k in data), None)
    merged: dict[tuple, int] = {}
    for index, image in enumerate(data["image_paths"]):
        def bad(message: str, reason: str) -> None:
            result.problems.append(Problem(file, index, message, reason))

        texts = {k: _one_text(data[k][index]) for k in present}
        wrong = [k for k, v in texts.items() if v is None]
        if not isinstance(image, str) or wrong:
            bad(f"image path {image!r} or column(s) {wrong} are not strings", WRONG_TYPE)
            continue
        boxes = _boxes(data["bboxes"][index])
        if isinstance(boxes, str):
            bad(boxes, BAD_BOX)
            continue
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in boxes]
        raw_phrases = data["phrases"][index]
        if isinstance(raw_phrases, str):
            findings = [{"phrase": raw_phrases, "boxes": xyxy}]
        elif isinstance(raw_phrases, (list, tuple)) and len(raw_phrases) == len(xyxy) and all(
                isinstance(p, str) for p in raw_phrases):
            findings = [{"phrase": p, "boxes": [b]} for p, b in zip(raw_phrases, xyxy)]
        else:
            bad(f"{len(xyxy)} box(es) but phrases {raw_phrases!r}: need one string, or a list of "
                "strings parallel to the boxes", WRONG_TYPE)
            continue
        transcript_text = texts.get("all_report_answer", "")
        transcript = split_transcript(transcript_text) if transcript_text else None
        row = {"report": texts.get(report_column, "") if report_column else "",
               "question": transcript[0] if transcript else "",
               "answer": texts.get("Answer_all") or (transcript[1] if transcript else ""),
               "label": texts.get("class_all", ""),
               "description": texts.get("all_report_class", "")}
        for column in REPORT_COLUMNS:
            if column in texts and column != report_column and texts[column]:
                result.unused[f"column {column} (the report is {report_column}; "
                              f"--text_column {column} uses it instead)"] += 1
        if transcript_text and not transcript:
            if row["report"]:
                result.unused["all_report_answer that is neither a question/answer transcript "
                              "nor the row's only report"] += 1
            else:
                row["report"] = transcript_text
        if transcript and texts.get("Answer_all"):
            result.unused["all_report_answer's answer (Answer_all is the answer)"] += 1
        task = _task(data, text_column, transcript)
        needed = {"report": "a report", "vqa": "an answer",
                  "class": "a class name or a class description"}[task]
        if not any(row[key] for key in NEEDED[task]):
            reason = NO_CLASS if task == "class" else NO_TEXT
            bad(f"task {task!r} needs {needed}, but the row has none (text columns: "
                f"{ {k: v[:40] for k, v in texts.items()} }); fix the row, or choose the task "
                "with --text_column", reason)
            continue
        key = (image, task, *row.values())
        if key in merged:
            target = merged[key]
            result.rows[target]["findings"].extend(findings)
            result.indices[target].append(index)
            continue
        merged[key] = len(result.rows)
        result.rows.append({"id": f"{Path(image).stem}-{index}", "image": image,
                            "findings": findings, "task": task, **row,
                            "source": f"{path.name}:{index}"})
        result.indices.append([index])
    for row in result.rows:
        if not row["description"]:
            del row["description"]
    return result


def read_reference_pth(path: Path, image_root: Path, options: ReadOptions = ReadOptions(),
                       fixes: list[Problem] | None = None, text_column: str | None = None,
                       unused: Counter[str] | None = None) -> tuple[list[Sample], list[Problem]]:
    """Read and validate a reference ``.pth`` file; boxes are rescaled from 640 px.

    ``unused`` (when given) receives the counts of text read but not kept; otherwise they
    are logged.
    """
    file = str(path)
    try:
        read = reference_to_canonical_rows(path, text_column)
    except ReferenceFileError as error:
        return [], [error.problem]
    samples: list[Sample] = []
    problems = list(read.problems)
    for row, indices in zip(read.rows, read.indices):
        index, count = indices[0], len(indices)
        image_path, message = resolve_image(image_root, row["image"], options.allow_outside_root)
        if message:
            problems.append(Problem(file, index, message, "image path", count))
            continue
        try:
            width, height = image_size(image_path, max_pixels=options.max_image_pixels)
        except ImageReadError as error:
            reason = "missing image" if not image_path.is_file() else "unreadable image"
            merged = f" (input rows {indices})" if count > 1 else ""
            problems.append(Problem(file, index, f"{error}{merged}", reason, count))
            continue
        sx, sy = width / REFERENCE_BOX_FRAME, height / REFERENCE_BOX_FRAME
        for finding in row["findings"]:
            finding["boxes"] = [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
                                for b in finding["boxes"]]
        sample, row_problems = parse_canonical_row(row, image_root, file, index, options, fixes)
        problems += [Problem(p.file, p.row, p.message, p.reason, count if i == 0 else 0)
                     for i, p in enumerate(row_problems)]
        if sample is not None:
            samples.append(sample)
    if unused is not None:
        unused.update(read.unused)
    elif read.unused:
        logger.warning("%s: text read but not kept:\n%s", path,
                       "\n".join(f"  {what}: {n} row(s)" for what, n in read.unused.items()))
    return samples, problems

