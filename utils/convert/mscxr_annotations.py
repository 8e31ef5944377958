"""MS-CXR's local-alignment annotations (CSV or COCO JSON), grouped per image with checks.

Shared by the ``mscxr``, ``diffvqa`` and ``msclass`` converters. MS-CXR gives, per image and
phrase, one row per box: ``dicom_id, category_name, label_text, path, x, y, w, h,
image_width, image_height`` (+ ``split`` in v1.1.0), boxes in pixels of the MIMIC-CXR-JPG
image whose size is ``image_width x image_height``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from utils.annotations import ReadOptions, is_number
from utils.convert.geometry import (
    ASPECT,
    PixelBox,
    box_problem,
    clip_box,
    refuse_aspect,
    scale_box,
    xywh_to_xyxy,
)
from utils.convert.images import image_size_under
from utils.convert.log import ConversionLog
from utils.convert.paths import mimic_ids
from utils.convert.tables import MALFORMED, parse_numbers, read_coco, read_table
from utils.text_io import DEFAULT_ENCODING

BAD_BOX = "box beyond the image"
BAD_PATH = "unexpected image path"
DUPLICATE = "duplicate row"
MISSING_IMAGE = "missing image"
SPLIT_CONFLICT = "conflicting split"
CSV_COLUMNS = {name: (name,) for name in ("dicom_id", "category_name", "label_text", "path", "x",
                                           "y", "w", "h", "image_width", "image_height", "split")}


@dataclass(frozen=True)
class MsCxrBox:
    """One annotation row: a phrase and one of its boxes (pixel xyxy, annotated image size)."""

    file: str
    row: int
    dicom_id: str
    category: str
    phrase: str
    path: str
    box: tuple[float, float, float, float]
    image_width: float
    image_height: float
    split: str


@dataclass
class MsCxrFinding:
    """One phrase of one image with all of its boxes (pixels of the image on disk)."""

    phrase: str
    category: str
    boxes: list[PixelBox] = field(default_factory=list)


@dataclass
class MsCxrImage:
    """One annotated image as found on disk, with its findings in annotation order."""

    path: str
    dicom_id: str
    patient: str
    study: str
    width: int
    height: int
    split: str
    file: str
    first_row: int
    findings: list[MsCxrFinding] = field(default_factory=list)

    def categories(self) -> list[str]:
        """The image's finding categories, each once, in annotation order."""
        return list(dict.fromkeys(f.category for f in self.findings))


def read_mscxr(path: Path, log: ConversionLog, encoding: str = DEFAULT_ENCODING
               ) -> list[MsCxrBox]:
    """Every usable annotation row of an MS-CXR ``.csv`` or COCO ``.json`` file."""
    if path.suffix == ".json":
        return _read_json(path, log, encoding)
    return _read_csv(path, log, encoding)


def _checked(file: str, row: int, values: dict[str, str], numbers: list[float],
             log: ConversionLog) -> MsCxrBox | None:
    x, y, w, h, image_width, image_height = numbers
    if image_width <= 0 or image_height <= 0:
        log.problem(file, row, MALFORMED, f"image size {image_width:g}x{image_height:g} is not "
                                          "positive; fix image_width/image_height")
        return None
    box = xywh_to_xyxy(x, y, w, h)
    message = box_problem(box, image_width, image_height)
    if message:
        log.problem(file, row, BAD_BOX, f"{message} (x, y, w, h = {x:g}, {y:g}, {w:g}, {h:g}); "
                                        "fix the box or delete the row")
        return None
    ids = mimic_ids(values["path"])
    if ids is None:
        log.problem(file, row, BAD_PATH, f"path {values['path']!r} is not "
                                         "files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg")
        return None
    if values["dicom_id"] != ids[2]:
        log.problem(file, row, BAD_PATH, f"dicom_id {values['dicom_id']!r} is not the file name "
                                         f"of path {values['path']!r}; fix one of them")
        return None
    return MsCxrBox(file, row, values["dicom_id"], values["category_name"], values["label_text"],
                    values["path"], tuple(clip_box(box, image_width, image_height)),
                    image_width, image_height, values.get("split", ""))


def _read_csv(path: Path, log: ConversionLog, encoding: str) -> list[MsCxrBox]:
    boxes = []
    for row in read_table(path, CSV_COLUMNS, log, optional=("split",), encoding=encoding):
        numbers = parse_numbers(row, ("x", "y", "w", "h", "image_width", "image_height"))
        if isinstance(numbers, str):
            log.problem(str(path), row.line, MALFORMED, f"{numbers}; fix the value")
            continue
        box = _checked(str(path), row.line, row.values, numbers, log)
        if box:
            boxes.append(box)
    return boxes


def _read_json(path: Path, log: ConversionLog, encoding: str) -> list[MsCxrBox]:
    coco = read_coco(path, log, encoding)
    boxes = []
    for ann_id in sorted(coco.anns):
        ann = coco.anns[ann_id]
        image = coco.imgs.get(ann.get("image_id"))
        category = coco.cats.get(ann.get("category_id"))
        bbox = ann.get("bbox")
        if image is None or category is None or not isinstance(bbox, list) or len(bbox) != 4 \
                or not ann.get("label_text"):
            log.problem(str(path), ann_id, MALFORMED,
                        f"annotation id {ann_id} lacks a known image_id, a known category_id, "
                        "a 4-number bbox or label_text; fix it or delete it")
            continue
        values = {"dicom_id": Path(str(image.get("file_name", ""))).stem,
                  "category_name": str(category.get("name", "")),
                  "label_text": str(ann["label_text"]).strip(),
                  "path": str(image.get("path", image.get("file_name", ""))),
                  "split": str(ann.get("split", image.get("split", "")))}
        numbers = [*bbox, image.get("width"), image.get("height")]
        if not all(is_number(v) for v in numbers):
            log.problem(str(path), ann_id, MALFORMED, f"annotation id {ann_id}: bbox {bbox!r} or "
                                                      "the image's width/height is not a finite "
                                                      "number")
            continue
        numbers = [float(v) for v in numbers]
        box = _checked(str(path), ann_id, values, numbers, log)
        if box:
            boxes.append(box)
    return boxes


def group_images(boxes: list[MsCxrBox], image_root: Path, log: ConversionLog,
                 options: ReadOptions = ReadOptions()) -> list[MsCxrImage]:
    """Group annotation rows into images; rows of one phrase on one image become one finding.

    Duplicate rows (same image, phrase and box) and images missing under ``image_root`` are
    reported and left out. Boxes are scaled from ``image_width x image_height`` to the size of
    the image on disk (they differ when the user keeps a resized copy of MIMIC-CXR-JPG); a row
    whose image on disk has another aspect ratio is reported and left out.
    Image paths must resolve inside ``image_root`` and images stay under the pixel limit
    (``options``).
    """
    by_image: dict[str, list[MsCxrBox]] = {}
    seen: dict[tuple, int] = {}
    for box in boxes:
        key = (box.dicom_id, box.phrase, box.box)
        if key in seen:
            log.problem(box.file, box.row, DUPLICATE,
                        f"same image, phrase and box as row {seen[key]}; delete one")
            continue
        seen[key] = box.row
        rows = by_image.setdefault(box.path, [])
        if rows and box.split != rows[0].split:
            log.problem(box.file, box.row, SPLIT_CONFLICT,
                        f"split {box.split!r}, but row {rows[0].row} of this image says "
                        f"{rows[0].split!r}; fix the split")
            continue
        rows.append(box)
    images = []
    for path, rows in by_image.items():
        size = image_size_under(image_root, path, options)
        if isinstance(size, str):
            log.problem(rows[0].file, rows[0].row, MISSING_IMAGE,
                        f"{size}; row(s) {', '.join(str(r.row) for r in rows)} left out",
                        rows=len(rows))
            continue
        rows = [row for row in rows if _same_aspect(row, path, size, options, log)]
        if not rows:
            continue
        width, height = size
        findings: dict[tuple[str, str], MsCxrFinding] = {}
        for row in rows:
            finding = findings.setdefault((row.phrase, row.category),
                                          MsCxrFinding(row.phrase, row.category))
            finding.boxes.append(scale_box(row.box, width / row.image_width,
                                           height / row.image_height))
        patient, study, dicom_id = mimic_ids(path)
        images.append(MsCxrImage(path, dicom_id, patient, study, width, height, rows[0].split,
                                 rows[0].file, rows[0].row, list(findings.values())))
    return images


def _same_aspect(row: MsCxrBox, path: str, size: tuple[int, int], options: ReadOptions,
                 log: ConversionLog) -> bool:
    """Whether the row's boxes can be scaled to the image on disk; reports the row if not."""
    message = refuse_aspect((row.image_width, row.image_height), size, options.stretched_copies,
                            log)
    if message:
        log.problem(row.file, row.row, ASPECT,
                    f"{path}: {message}; use the image the boxes were drawn on (or a uniformly "
                    "resized copy), or fix image_width/image_height")
    return message is None
