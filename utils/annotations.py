"""Annotation records and the canonical JSONL reader (the reference ``.pth`` schema is in
``utils.reference_pth``).

Canonical schema (JSON Lines, one image-report pair a line, boxes in pixels of the real image):

    {"id": str, "image": "relative/path.png", "patient": str, "report": str,
     "findings": [{"phrase": str, "boxes": [[x0, y0, x1, y1], ...]}],
     "task": "report" | "vqa" | "class", "question": str, "answer": str, "label": str,
     "description": str, "width": int, "height": int}

Inside the code every box is normalised ``(x0, y0, x1, y1)`` in [0, 1] of the real image size.
Every problem of a file is collected and reported at once, each with the file and the row;
docs/data.md lists every rule and the flag that relaxes it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from model.constants import TASKS
from utils.image_io import DEFAULT_MAX_PIXELS, ImageReadError, image_size
from utils.text_io import DEFAULT_ENCODING, check_encoding, loads_json, lone_surrogate, read_lines

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")  # the <name>_<split>.jsonl files of an annotation set
REQUIRED_KEYS = {"id", "image", "findings"}
TEXT_KEYS = ("patient", "report", "question", "answer", "label", "description", "source",
             "category")
OPTIONAL_KEYS = set(TEXT_KEYS) | {"task", "width", "height", "templated"}
FINDING_KEYS = {"phrase", "boxes"}
FINDING_OPTIONAL_KEYS = {"type", "side", "zone", "category", "label"}
BOX_TOLERANCE_PX = 0.5
SHOWN_PROBLEMS = 50

Box = tuple[float, float, float, float]


def enclosing_box(boxes: Iterable[Sequence[float]]) -> Box:
    """The smallest xyxy box enclosing all of ``boxes`` (at least one), in their units."""
    x0, y0, x1, y1 = zip(*boxes)
    return (min(x0), min(y0), max(x1), max(y1))


@dataclass(frozen=True)
class Finding:
    """One diagnostic phrase and its ground-truth boxes (normalised xyxy, at least one);
    ``finding_type`` is the row's optional ``type`` (else ``category``), "" when absent."""

    phrase: str
    boxes: tuple[Box, ...]
    finding_type: str = ""

    def target_box(self) -> Box:
        """The phrase's target: the smallest box enclosing all of its boxes."""
        return enclosing_box(self.boxes)


@dataclass(frozen=True)
class Sample:
    """One image-text pair. ``source`` is "file:row" for error messages."""

    id: str
    image_path: Path
    width: int
    height: int
    findings: tuple[Finding, ...]
    task: str = "report"
    report: str = ""
    question: str = ""
    answer: str = ""
    label: str = ""
    description: str = ""
    patient: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_canonical(self, image_root: Path) -> dict[str, Any]:
        """The canonical JSONL row of this sample, boxes back in pixels."""
        try:
            image = self.image_path.relative_to(image_root).as_posix()
        except ValueError:
            image = str(self.image_path)
        row = {
            "id": self.id, "image": image, "patient": self.patient, "report": self.report,
            "findings": [{"phrase": f.phrase,
                          "boxes": [[round(b[0] * self.width, 3), round(b[1] * self.height, 3),
                                     round(b[2] * self.width, 3), round(b[3] * self.height, 3)]
                                    for b in f.boxes]} for f in self.findings],
            "task": self.task, "question": self.question, "answer": self.answer,
            "label": self.label, "width": self.width, "height": self.height, **self.extra,
        }
        if self.description:
            row["description"] = self.description
        return row


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row of one file.

    ``reason`` is a short category for counts ("missing image", ...); ``rows`` is how many
    input rows the problem leaves out (a merged reference row may stand for several).
    """

    file: str
    row: int | None
    message: str
    reason: str = ""
    rows: int = 1

    def __str__(self) -> str:
        where = f"{self.file}:{self.row}" if self.row is not None else self.file
        return f"{where}: {self.message}"


class AnnotationError(ValueError):
    """Raised with every problem found in an annotation file."""

    def __init__(self, problems: Sequence[Problem], hint: str | None = None):
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems[:SHOWN_PROBLEMS])
        extra = len(self.problems) - SHOWN_PROBLEMS
        more = f"\n  … and {extra} more" if extra > 0 else ""
        hint = hint or "Fix these rows, or pass --skip_invalid to drop them (the count is printed)."
        super().__init__(f"{len(self.problems)} problem(s) in the annotations:\n{lines}{more}\n"
                         f"{hint}")


@dataclass(frozen=True)
class ReadOptions:
    """The validation rules a user may relax (see docs/data.md).

    allow_outside_root: accept image paths (``../``, absolute, symlinks) that resolve outside
      the image root.
    max_image_pixels: refuse larger images (decompression bombs).
    fix_declared_size: a row's ``width``/``height`` that differ from the image file are taken
      as the frame of its boxes, which are rescaled to the file (counted); otherwise an error.
    encoding: the text encoding of the annotation file.
    stretched_copies: (the converters) boxes drawn on an image of another aspect ratio than
      the image on disk are scaled per axis to it, counted, as for a stretched copy such as a
      512 x 512 resize; otherwise such an image is refused (a crop or a rotation would put
      the boxes in the wrong place).
    """

    allow_outside_root: bool = False
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    fix_declared_size: bool = False
    encoding: str = DEFAULT_ENCODING
    stretched_copies: bool = False


def is_number(value: Any) -> bool:
    """A JSON number that is finite (bools, NaN, inf and over-large integers are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def resolve_image(image_root: Path, image: Any, allow_outside_root: bool
                  ) -> tuple[Path | None, str | None]:
    """``image_root / image``, or why that is not an acceptable image path.

    The path must be a non-empty string without NUL or lone surrogates and, unless
    ``allow_outside_root``, resolve (after ``..`` and symlinks) inside ``image_root``.
    """
    if not isinstance(image, str) or not image.strip():
        return None, f"'image' must be a non-empty path string, got {image!r}"
    if "\0" in image:
        return None, f"image path {image!r} holds a NUL character"
    message = lone_surrogate(image, "image")
    if message:  # no file name can hold it
        return None, message
    path = image_root / image
    if allow_outside_root:
        return path, None
    root = image_root.resolve()
    try:
        inside = path.resolve().is_relative_to(root)
    except (OSError, RuntimeError) as error:  # symlink loops
        return None, f"image path {image!r} cannot be resolved ({error})"
    if not inside:
        return None, (f"image path {image!r} resolves to {path.resolve()}, outside the image "
                      f"root {root}; move the image under the root, or pass --allow_outside_root")
    return path, None


def parse_box(raw: Any, width: float | None, height: float | None
              ) -> tuple[Box | None, str | None]:
    """Pixel xyxy → normalised xyxy, or an error message (non-finite values included).

    With ``width``/``height`` None (the image could not be read) only the numbers and the
    area are checked, and the box returned is None.
    """
    if not isinstance(raw, (list, tuple)) or len(raw) != 4 or not all(is_number(v) for v in raw):
        return None, f"box {raw!r} is not 4 finite numbers [x0, y0, x1, y1]"
    x0, y0, x1, y1 = (float(v) for v in raw)
    if x1 <= x0 or y1 <= y0:
        return None, f"box {list(raw)} has zero or negative area (need x1 > x0 and y1 > y0)"
    if width is None or height is None:
        return None, None
    tol = BOX_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        return None, f"box {list(raw)} lies outside the {width:g}x{height:g} image"

    def clamp(value: float) -> float:  # within the tolerance only
        return min(max(value, 0.0), 1.0)

    box = (clamp(x0 / width), clamp(y0 / height), clamp(x1 / width), clamp(y1 / height))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, f"box {list(raw)} lies in the margin outside the {width:g}x{height:g} image"
    return box, None


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key, "")
    return value.strip() if isinstance(value, str) else ""


def _usable_id(value: Any) -> bool:
    """A row's ``id`` is a non-empty string (an integer is taken as its digits)."""
    return (not isinstance(value, bool) and isinstance(value, (str, int))
            and bool(str(value).strip()))


def _type_problems(row: dict[str, Any]) -> list[str]:
    messages = []
    if not _usable_id(row["id"]):
        messages.append(f"'id' must be a non-empty string, got {row['id']!r}")
    for key in TEXT_KEYS:
        if key in row and not isinstance(row[key], str) and not (
                key == "patient" and isinstance(row[key], int) and not isinstance(row[key], bool)):
            messages.append(f"{key!r} must be a string, got {type(row[key]).__name__}")
    for key in ("width", "height"):
        if key in row and (not isinstance(row[key], int) or isinstance(row[key], bool)
                           or row[key] <= 0):
            messages.append(f"{key!r} must be a positive integer, got {row[key]!r}")
    if ("width" in row) != ("height" in row):
        messages.append("'width' and 'height' are the frame of the boxes: give both, or neither")
    if "templated" in row and not isinstance(row["templated"], bool):
        messages.append(f"'templated' must be true or false, got {row['templated']!r}")
    return messages


def _finding_type(raw: dict[str, Any]) -> str:
    """A finding's ``type``, else its ``category``, else ""; a null one counts as absent."""
    for key in ("type", "category"):
        if raw.get(key) is not None:
            return raw[key]
    return ""


def _finding_problems(raw: Any) -> list[tuple[str, str]]:
    """``(message, reason)`` for what is wrong with the keys and value types of one finding
    (its phrase's text and its boxes' numbers are checked by the caller)."""
    if not isinstance(raw, dict):
        return [(f'expected an object {{"phrase": ..., "boxes": [[x0, y0, x1, y1], ...]}}, got '
                 f"{type(raw).__name__}", "malformed row")]
    problems = []
    unknown = raw.keys() - FINDING_KEYS - FINDING_OPTIONAL_KEYS
    if unknown:
        problems.append((f"unknown key(s) {sorted(map(str, unknown))}; the known ones are "
                         f"{sorted(FINDING_KEYS | FINDING_OPTIONAL_KEYS)}", "malformed row"))
    if "phrase" in raw and not isinstance(raw["phrase"], str):
        problems.append((f"'phrase' must be a string, got {type(raw['phrase']).__name__}",
                         "wrong type"))
    if "boxes" in raw and not isinstance(raw["boxes"], list):
        problems.append((f"'boxes' must be a list of [x0, y0, x1, y1] boxes, got "
                         f"{type(raw['boxes']).__name__}", "wrong type"))
    problems += [(f"{key!r} must be a string (or null), got {raw[key]!r}", "wrong type")
                 for key in sorted(FINDING_OPTIONAL_KEYS & raw.keys())
                 if raw[key] is not None and not isinstance(raw[key], str)]
    return problems


def parse_canonical_row(row: Any, image_root: Path, file: str, line: int,
                        options: ReadOptions = ReadOptions(), fixes: list[Problem] | None = None
                        ) -> tuple[Sample | None, list[Problem]]:
    """Validate one canonical row; returns the sample or the list of its problems.

    A declared size that differs from the image file is rescaled when
    ``options.fix_declared_size``, and the fix is appended to ``fixes``.
    """
    problems: list[Problem] = []

    def bad(message: str, reason: str = "invalid row") -> None:
        problems.append(Problem(file, line, message, reason))

    if not isinstance(row, dict):
        hint = ("; JSON Lines holds one object a line: write each element of a JSON array on "
                "a line of its own") if isinstance(row, list) else ""
        bad(f"expected a JSON object, got {type(row).__name__}{hint}", "malformed row")
        return None, problems
    missing = REQUIRED_KEYS - row.keys()
    unknown = row.keys() - REQUIRED_KEYS - OPTIONAL_KEYS
    if missing:
        bad(f"missing key(s) {sorted(missing)}: not the canonical schema (see docs/data.md)",
            "malformed row")
    if unknown:
        bad(f"unknown key(s) {sorted(map(str, unknown))}: not the canonical schema "
            "(see docs/data.md)", "malformed row")
    if missing or unknown:
        return None, problems
    for message in _type_problems(row):
        bad(message, "wrong type")
    message = lone_surrogate(row)
    if message:  # no tokenizer, UTF-8 file or file name takes it
        bad(message, "invalid text")
        return None, problems
    task = row.get("task", "report")
    if task not in TASKS:
        bad(f"task {task!r} is not one of {list(TASKS)}")
    if task == "report" and not _text(row, "report"):
        bad("empty report" + ("" if "task" in row else " (a row without 'task' is a 'report' "
                                                       "row; give its \"task\" if it is another)"))
    if task == "vqa" and not _text(row, "answer"):
        bad("vqa row without an answer")
    if task == "class" and not _text(row, "label") and not _text(row, "description"):
        bad("class row without a label or a description")

    image_path, message = resolve_image(image_root, row["image"], options.allow_outside_root)
    width = height = 0
    if message:
        bad(message, "image path")
    else:
        try:
            width, height = image_size(image_path, max_pixels=options.max_image_pixels)
        except ImageReadError as error:
            if image_path.exists() or image_path.is_symlink():
                bad(str(error), "unreadable image")
            else:
                bad(f"image {image_path} does not exist (check --dataset_dir / --image_root)",
                    "missing image")
    frame_w, frame_h = width, height
    declared = (row.get("width"), row.get("height"))
    if width and all(is_number(v) and v > 0 for v in declared) and declared != (width, height):
        if options.fix_declared_size:
            frame_w, frame_h = declared
            if fixes is not None:
                fixes.append(Problem(file, line, f"declared {declared[0]}x{declared[1]}, image "
                                                 f"is {width}x{height}: boxes rescaled",
                                     "declared size fixed"))
        else:
            bad(f"declared width x height {declared[0]}x{declared[1]} differ from the image "
                f"{image_path} ({width}x{height}); fix them, or pass --fix_declared_size to "
                "take them as the boxes' frame and rescale the boxes", "declared size")

    findings: list[Finding] = []
    if not isinstance(row["findings"], list):
        bad(f"'findings' must be a list (`[]` for a study without findings), got "
            f"{type(row['findings']).__name__}", "wrong type")
    else:
        for index, raw in enumerate(row["findings"]):
            tag = f"finding {index}"
            for message, reason in _finding_problems(raw):
                bad(f"{tag}: {message}", reason)
            phrase = raw.get("phrase", "") if isinstance(raw, dict) else None
            boxes_raw = raw.get("boxes", []) if isinstance(raw, dict) else None
            if not isinstance(phrase, str) or not isinstance(boxes_raw, list):
                continue  # listed by _finding_problems
            if not phrase.strip():
                bad(f"{tag} has no phrase")
                continue
            if not boxes_raw:
                bad(f"{tag} ({phrase!r}) has no boxes")
                continue
            if not any(isinstance(b, (list, tuple)) for b in boxes_raw):
                bad(f"{tag} ({phrase!r}): 'boxes' {boxes_raw!r} is not a list of boxes; write "
                    "[[x0, y0, x1, y1], ...] (a single box too is wrapped in a list)", "bad box")
                continue
            boxes: list[Box] = []
            # without a readable image, the boxes are still checked for everything but bounds
            frame = (frame_w, frame_h) if width else (None, None)
            for raw_box in boxes_raw:
                box, message = parse_box(raw_box, *frame)
                if message:
                    bad(f"{tag} ({phrase!r}): {message}", "bad box")
                elif width:
                    boxes.append(box)
            if width and len(boxes) == len(boxes_raw):
                findings.append(Finding(phrase.strip(), tuple(boxes),
                                        _finding_type(raw)))
    if problems:
        return None, problems
    extra = {k: row[k] for k in ("templated", "source", "category") if k in row}
    return Sample(
        id=str(row["id"]), image_path=image_path, width=width, height=height,
        findings=tuple(findings), task=task, report=_text(row, "report"),
        question=_text(row, "question"), answer=_text(row, "answer"), label=_text(row, "label"),
        description=_text(row, "description"), patient=str(row.get("patient", "")),
        source=f"{file}:{line}", extra=extra,
    ), []


def read_canonical_jsonl(path: Path, image_root: Path, options: ReadOptions = ReadOptions(),
                         fixes: list[Problem] | None = None
                         ) -> tuple[list[Sample], list[Problem]]:
    """Parse and validate every line of a canonical JSONL file.

    An id is a duplicate also of an earlier row that is invalid for another reason, so that
    every problem is listed at once.
    """
    samples: list[Sample] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line_number, text, message in read_lines(path, options.encoding):
        if message:
            problems.append(Problem(str(path), line_number, message, "malformed row"))
            continue
        if not text.strip():
            continue
        row, message = loads_json(text)
        if message:
            problems.append(Problem(str(path), line_number, message, "malformed row"))
            continue
        sample, row_problems = parse_canonical_row(row, image_root, str(path), line_number,
                                                   options, fixes)
        if isinstance(row, dict) and _usable_id(row.get("id")):
            key = str(row["id"])
            if key in seen:
                row_problems.append(Problem(str(path), line_number, f"duplicate id {key!r} "
                                            f"(first on line {seen[key]})", "duplicate id"))
                sample = None
            else:
                seen[key] = line_number
        problems.extend(row_problems)
        if sample is not None:
            samples.append(sample)
    return samples, problems


def load_annotations(path: str | Path, image_root: str | Path | None = None,
                     skip_invalid: bool = False, *, allow_outside_root: bool = False,
                     max_image_pixels: int = DEFAULT_MAX_PIXELS, fix_declared_size: bool = False,
                     encoding: str = DEFAULT_ENCODING, text_column: str | None = None
                     ) -> list[Sample]:
    """Load and validate a ``.jsonl`` (canonical) or ``.pth`` (reference) annotation file.

    Arguments:
      path: the annotation file.
      image_root: the folder image paths are relative to (default: the file's folder).
      skip_invalid: drop invalid rows and log how many, instead of raising.
      allow_outside_root, max_image_pixels, fix_declared_size, encoding: see
        :class:`ReadOptions`.
      text_column: for a ``.pth``, the text column that decides the task
        (``utils.reference_pth.TEXT_COLUMNS``; default: inferred from the columns present).
    Returns:
      the valid samples, in file order; never empty.
    Raises:
      AnnotationError listing every problem, when any row is invalid and ``skip_invalid`` is
      off, and whenever no valid row is left (an empty split is an error naming the file).
    """
    from utils.reference_pth import read_reference_pth  # reference_pth builds on this module

    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    try:
        check_encoding(encoding)
    except ValueError as error:
        raise AnnotationError([Problem(str(path), None, str(error))],
                              "Name the file's text encoding, e.g. utf-8.") from None
    options = ReadOptions(allow_outside_root, max_image_pixels, fix_declared_size, encoding)
    fixes: list[Problem] = []
    if not path.is_file():
        raise AnnotationError([Problem(str(path), None, "annotation file does not exist")],
                              "Check --dataset_dir and the annotation set name.")
    if path.suffix == ".jsonl":
        samples, problems = read_canonical_jsonl(path, root, options, fixes)
    elif path.suffix == ".pth":
        samples, problems = read_reference_pth(path, root, options, fixes, text_column)
    else:
        raise AnnotationError([Problem(str(path), None, "unknown schema: expected a canonical "
                                                        ".jsonl or a reference-code .pth file")],
                              "Convert the file with python -m utils.convert (docs/data.md).")
    if not samples:
        empty = "holds no annotation rows" if not problems else \
            "has no valid row left (every row is listed above)"
        raise AnnotationError(problems + [Problem(str(path), None, f"the split {empty}")],
                              f"An empty split cannot be used: fix or replace {path}.")
    if problems and not skip_invalid:
        raise AnnotationError(problems)
    if problems:
        rows_left_out: dict[tuple[str, int | None], int] = {}
        for problem in problems:
            key = (problem.file, problem.row)
            rows_left_out[key] = max(rows_left_out.get(key, 0), problem.rows)
        dropped = sum(rows_left_out.values())
        logger.warning("%s: dropped %d invalid row(s), kept %d:\n%s", path, dropped,
                       len(samples), "\n".join(f"  {p}" for p in problems))
    if fixes:
        logger.warning("%s: %d row(s) with a declared size that differs from the image, boxes "
                       "rescaled (--fix_declared_size):\n%s", path, len(fixes),
                       "\n".join(f"  {p}" for p in fixes))
    return samples


def annotation_file(dataset_dir: str | Path, name: str, split: str) -> Path:
    """``<name>_<split>.jsonl``, else ``<name>_<split>.pth``, in ``dataset_dir``.

    A file of another name (e.g. the reference code's ``MS_CXR_test_gpt.pth``) is converted
    with ``python -m utils.convert reference --split_name`` or renamed.
    """
    for suffix in (".jsonl", ".pth"):
        path = Path(dataset_dir) / f"{name}_{split}{suffix}"
        if path.is_file():
            return path
    near = sorted(p.name for p in Path(dataset_dir).glob(f"{name}_{split}*")) \
        if Path(dataset_dir).is_dir() else []
    hint = f"; found {near}: rename it, or convert it with --split_name" if near else ""
    raise AnnotationError([Problem(str(dataset_dir), None,
                                   f"no annotation file {name}_{split}.jsonl or .pth here{hint} "
                                   "(see docs/data.md)")],
                          "Check --dataset_dir, the annotation set name and the split.")
