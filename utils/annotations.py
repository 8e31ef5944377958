"""Annotation records and readers for the two on-disk schemas.

Canonical schema (JSON Lines, one image-report pair a line, boxes in pixels of the real image):

    {"id": str, "image": "relative/path.png", "patient": str, "report": str,
     "findings": [{"phrase": str, "boxes": [[x0, y0, x1, y1], ...]}],
     "task": "report" | "vqa" | "class", "question": str, "answer": str, "label": str}

Reference-code schema (``torch.save``d dict of parallel lists, read with ``weights_only=True``):
``image_paths``, ``bboxes`` (``(x, y, w, h)`` in pixels of the image resized to 640 x 640, or a
list of such tuples), ``phrases`` (str, or a list parallel to the boxes) and the text under
``all_reports`` / ``report_gpt`` (task "report"), ``Answer_all`` / ``all_report_answer``
(task "vqa") or ``all_report_class`` (task "class"). Rows that share an image and a text are
merged into one sample, in file order.

Inside the code every box is normalised ``(x0, y0, x1, y1)`` in [0, 1] of the real image size.
Every problem of a file is collected and reported at once, each with the file and the row.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image

TASKS = ("report", "vqa", "class")
REFERENCE_SIZE = 640  # the reference code's boxes are pixels of the image resized to 640 x 640
REQUIRED_KEYS = {"id", "image", "findings"}
OPTIONAL_KEYS = {"patient", "report", "task", "question", "answer", "label", "width", "height",
                 "templated", "source", "category"}
FINDING_KEYS = {"phrase", "boxes"}
FINDING_OPTIONAL_KEYS = {"type", "side", "zone", "category", "label"}
BOX_TOLERANCE_PX = 0.5
REFERENCE_TEXT_KEYS = {"all_reports": "report", "report_gpt": "report",
                       "Answer_all": "vqa", "all_report_answer": "vqa",
                       "all_report_class": "class"}

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Finding:
    """One diagnostic phrase and its ground-truth boxes (normalised xyxy, at least one)."""

    phrase: str
    boxes: tuple[Box, ...]

    def target_box(self) -> Box:
        """The phrase's target: the smallest box enclosing all of its boxes."""
        return (min(b[0] for b in self.boxes), min(b[1] for b in self.boxes),
                max(b[2] for b in self.boxes), max(b[3] for b in self.boxes))


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
    patient: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_canonical(self, image_root: Path) -> dict[str, Any]:
        """The canonical JSONL row of this sample, boxes back in pixels."""
        try:
            image = str(self.image_path.relative_to(image_root))
        except ValueError:
            image = str(self.image_path)
        return {
            "id": self.id, "image": image, "patient": self.patient, "report": self.report,
            "findings": [{"phrase": f.phrase,
                          "boxes": [[round(b[0] * self.width, 3), round(b[1] * self.height, 3),
                                     round(b[2] * self.width, 3), round(b[3] * self.height, 3)]
                                    for b in f.boxes]} for f in self.findings],
            "task": self.task, "question": self.question, "answer": self.answer,
            "label": self.label, "width": self.width, "height": self.height, **self.extra,
        }


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row of one file."""

    file: str
    row: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.row}" if self.row is not None else self.file
        return f"{where}: {self.message}"


class AnnotationError(ValueError):
    """Raised with every problem found in an annotation file."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems[:50])
        more = f"\n  … and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(
            f"{len(self.problems)} problem(s) in the annotations:\n{lines}{more}\n"
            "Fix these rows, or pass --skip_invalid to drop them (the count is printed).")


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file; raises OSError/ValueError when it cannot be read."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def _parse_box(raw: Any, width: int, height: int) -> tuple[Box | None, str | None]:
    """Pixel xyxy → normalised xyxy, or an error message."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        return None, f"box {raw!r} is not 4 numbers [x0, y0, x1, y1]"
    x0, y0, x1, y1 = (float(v) for v in raw)
    if x1 <= x0 or y1 <= y0:
        return None, f"box {list(raw)} has zero or negative area (need x1 > x0 and y1 > y0)"
    tol = BOX_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        return None, f"box {list(raw)} lies outside the {width}x{height} image"
    clamp = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731 - within tolerance only
    return (clamp(x0 / width), clamp(y0 / height), clamp(x1 / width), clamp(y1 / height)), None


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key, "")
    return value.strip() if isinstance(value, str) else ""


def parse_canonical_row(row: Any, image_root: Path, file: str, line: int
                        ) -> tuple[Sample | None, list[Problem]]:
    """Validate one canonical row; returns the sample or the list of its problems."""
    problems: list[Problem] = []

    def bad(message: str) -> None:
        problems.append(Problem(file, line, message))

    if not isinstance(row, dict):
        bad(f"expected a JSON object, got {type(row).__name__}")
        return None, problems
    missing = REQUIRED_KEYS - row.keys()
    unknown = row.keys() - REQUIRED_KEYS - OPTIONAL_KEYS
    if missing:
        bad(f"missing key(s) {sorted(missing)}: not the canonical schema (see README, Data)")
    if unknown:
        bad(f"unknown key(s) {sorted(unknown)}: not the canonical schema (see README, Data)")
    if missing or unknown:
        return None, problems
    task = row.get("task", "report")
    if task not in TASKS:
        bad(f"task {task!r} is not one of {list(TASKS)}")
    if task == "report" and not _text(row, "report"):
        bad("empty report")
    if task == "vqa" and not _text(row, "answer"):
        bad("vqa row without an answer")
    if task == "class" and not _text(row, "label"):
        bad("class row without a label")

    image_path = image_root / str(row["image"])
    width = height = 0
    try:
        width, height = _image_size(image_path)
    except FileNotFoundError:
        bad(f"image {image_path} does not exist (check --dataset_dir / the image root)")
    except (OSError, ValueError, SyntaxError) as error:
        bad(f"image {image_path} cannot be read ({error})")

    findings: list[Finding] = []
    if not isinstance(row["findings"], list):
        bad("'findings' must be a list")
    else:
        for index, raw in enumerate(row["findings"]):
            tag = f"finding {index}"
            if not isinstance(raw, dict) or not isinstance(raw.get("phrase"), str) \
                    or not raw["phrase"].strip():
                bad(f"{tag} has no phrase")
                continue
            extra_keys = raw.keys() - FINDING_KEYS - FINDING_OPTIONAL_KEYS
            if extra_keys:
                bad(f"{tag} has unknown key(s) {sorted(extra_keys)}")
            boxes_raw = raw.get("boxes")
            if not isinstance(boxes_raw, list) or not boxes_raw:
                bad(f"{tag} ({raw['phrase']!r}) has no boxes")
                continue
            boxes: list[Box] = []
            for raw_box in boxes_raw:
                if width == 0:
                    break
                box, message = _parse_box(raw_box, width, height)
                if message:
                    bad(f"{tag} ({raw['phrase']!r}): {message}")
                else:
                    boxes.append(box)
            if len(boxes) == len(boxes_raw):
                findings.append(Finding(raw["phrase"].strip(), tuple(boxes)))
    if problems:
        return None, problems
    extra = {k: row[k] for k in ("templated", "source", "category") if k in row}
    return Sample(
        id=str(row["id"]), image_path=image_path, width=width, height=height,
        findings=tuple(findings), task=task, report=_text(row, "report"),
        question=_text(row, "question"), answer=_text(row, "answer"), label=_text(row, "label"),
        patient=str(row.get("patient", "")), source=f"{file}:{line}", extra=extra,
    ), []


def read_canonical_jsonl(path: Path, image_root: Path) -> tuple[list[Sample], list[Problem]]:
    """Parse and validate every line of a canonical JSONL file."""
    samples: list[Sample] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(Problem(str(path), line_number, f"invalid JSON ({error.msg})"))
                continue
            sample, row_problems = parse_canonical_row(row, image_root, str(path), line_number)
            if sample is not None and sample.id in seen:
                row_problems = [Problem(str(path), line_number,
                                        f"duplicate id {sample.id!r} (first on line {seen[sample.id]})")]
                sample = None
            problems.extend(row_problems)
            if sample is not None:
                seen[sample.id] = line_number
                samples.append(sample)
    return samples, problems


def _reference_boxes(raw: Any) -> list[tuple[float, ...]]:
    """A ``(x, y, w, h)`` tuple or a list of them → a list of 4-tuples."""
    if isinstance(raw, (list, tuple)) and len(raw) == 4 and all(
            isinstance(v, (int, float)) for v in raw):
        return [tuple(float(v) for v in raw)]
    if isinstance(raw, (list, tuple)) and raw and all(
            isinstance(b, (list, tuple)) and len(b) == 4 for b in raw):
        return [tuple(float(v) for v in b) for b in raw]
    raise ValueError(f"bbox {raw!r} is neither (x, y, w, h) nor a list of them")


def reference_to_canonical_rows(path: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Read a reference-code ``.pth`` file into canonical rows (boxes in 640-px pixels).

    Returns rows whose boxes are still in the 640 x 640 frame, as pixel xyxy, with
    ``"width": 640, "height": 640`` placeholders; :func:`read_reference_pth` rescales them to
    the real image size.
    """
    file = str(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign pickles
        return [], [Problem(file, None, f"cannot be read with torch.load(weights_only=True) "
                                        f"({type(error).__name__}: {error}); only lists, tuples "
                                        "and strings are accepted")]
    if not isinstance(data, dict):
        return [], [Problem(file, None, f"expected a dict of lists, got {type(data).__name__}")]
    text_keys = [k for k in REFERENCE_TEXT_KEYS if k in data]
    missing = [k for k in ("image_paths", "bboxes", "phrases") if k not in data]
    if missing or not text_keys:
        return [], [Problem(file, None,
                            f"unknown schema: keys {sorted(data)}; the reference schema needs "
                            f"image_paths, bboxes, phrases and one of {sorted(REFERENCE_TEXT_KEYS)}")]
    text_key = text_keys[0]
    task = REFERENCE_TEXT_KEYS[text_key]
    columns = [data["image_paths"], data["bboxes"], data["phrases"], data[text_key]]
    if len({len(c) for c in columns}) != 1:
        return [], [Problem(file, None, "the lists image_paths, bboxes, phrases and "
                                        f"{text_key} have different lengths "
                                        f"{[len(c) for c in columns]}")]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    problems: list[Problem] = []
    for index, (image, raw_boxes, raw_phrases, raw_text) in enumerate(zip(*columns)):
        text = raw_text[0] if isinstance(raw_text, (list, tuple)) and raw_text else raw_text
        if not isinstance(text, str) or not isinstance(image, str):
            problems.append(Problem(file, index, f"image path or {text_key} is not a string"))
            continue
        try:
            boxes = _reference_boxes(raw_boxes)
        except ValueError as error:
            problems.append(Problem(file, index, str(error)))
            continue
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in boxes]
        if isinstance(raw_phrases, str):
            findings = [{"phrase": raw_phrases, "boxes": xyxy}]
        elif isinstance(raw_phrases, (list, tuple)) and len(raw_phrases) == len(xyxy):
            findings = [{"phrase": p, "boxes": [b]} for p, b in zip(raw_phrases, xyxy)]
        else:
            problems.append(Problem(file, index, f"{len(xyxy)} boxes but phrases {raw_phrases!r}"))
            continue
        key = (image, text)
        if key not in rows:
            rows[key] = {"id": f"{Path(image).stem}-{index}", "image": image, "findings": [],
                         "task": task, "report": text if task == "report" else "",
                         "answer": text if task == "vqa" else "",
                         "label": text if task == "class" else "", "source": f"{file}:{index}"}
        rows[key]["findings"].extend(findings)
    return list(rows.values()), problems


def read_reference_pth(path: Path, image_root: Path) -> tuple[list[Sample], list[Problem]]:
    """Read and validate a reference-code ``.pth`` file; boxes are rescaled from 640 px."""
    rows, problems = reference_to_canonical_rows(path)
    samples: list[Sample] = []
    for row in rows:
        index = int(row["source"].rsplit(":", 1)[1])
        image_path = image_root / row["image"]
        try:
            width, height = _image_size(image_path)
        except (OSError, ValueError, SyntaxError) as error:
            problems.append(Problem(str(path), index, f"image {image_path} cannot be read ({error})"))
            continue
        sx, sy = width / REFERENCE_SIZE, height / REFERENCE_SIZE
        for finding in row["findings"]:
            finding["boxes"] = [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
                                for b in finding["boxes"]]
        sample, row_problems = parse_canonical_row(row, image_root, str(path), index)
        problems.extend(row_problems)
        if sample is not None:
            samples.append(sample)
    return samples, problems


def load_annotations(path: str | Path, image_root: str | Path | None = None,
                     skip_invalid: bool = False) -> list[Sample]:
    """Load and validate a ``.jsonl`` (canonical) or ``.pth`` (reference) annotation file.

    Arguments:
      path: the annotation file.
      image_root: the folder image paths are relative to (default: the file's folder).
      skip_invalid: drop invalid rows and print how many, instead of raising.
    Returns:
      the valid samples, in file order.
    Raises:
      AnnotationError listing every problem, when any row is invalid and ``skip_invalid`` is off.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if not path.is_file():
        raise AnnotationError([Problem(str(path), None, "annotation file does not exist")])
    if path.suffix == ".jsonl":
        samples, problems = read_canonical_jsonl(path, root)
    elif path.suffix == ".pth":
        samples, problems = read_reference_pth(path, root)
    else:
        raise AnnotationError([Problem(str(path), None, "unknown schema: expected a canonical "
                                                        ".jsonl or a reference-code .pth file")])
    if problems and not skip_invalid:
        raise AnnotationError(problems)
    if problems:
        bad_rows = {(p.file, p.row) for p in problems}
        print(f"[annotations] {path}: dropped {len(bad_rows)} invalid row(s), kept {len(samples)}:",
              file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    return samples


def annotation_file(dataset_dir: str | Path, name: str, split: str) -> Path:
    """``<name>_<split>.jsonl``, else ``<name>_<split>.pth``, in ``dataset_dir``."""
    for suffix in (".jsonl", ".pth"):
        path = Path(dataset_dir) / f"{name}_{split}{suffix}"
        if path.is_file():
            return path
    raise AnnotationError([Problem(str(dataset_dir), None,
                                   f"no annotation file {name}_{split}.jsonl or .pth here "
                                   "(see README, Data)")])


def write_canonical_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write canonical rows, one JSON object a line, with sorted keys; returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            count += 1
    return count
