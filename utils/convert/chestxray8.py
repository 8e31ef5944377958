"""``chestxray8``: NIH ChestX-ray8 boxes (BBox_List_2017.csv) -> MRG-ChestX-ray8.

One row per boxed image. Boxes are given in pixels of the released 1024 x 1024 PNGs
(``--box_frame``); they are scaled to the size of the image on disk (e.g. 512 px copies); an
image on disk that is not square is reported, as its boxes would be stretched.
Data_Entry_2017.csv gives the patient id. Its ``OriginalImage[Width, Height]`` is the size
*before* NIH resized the images to 1024 px, so it plays no part in the box scale.

Report text comes from ``--reports`` (e.g. reports generated with GPT-4 / LLaMA-2, as in the
paper); each finding's phrase is then the first report sentence that names its label. Without
``--reports`` a sentence is built from the label and the box position (the patient's right is
the image's left), e.g. "Nodule in the right upper lung zone.", and rows get
``"templated": true``.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from utils.convert.geometry import (
    ASPECT,
    box_problem,
    clip_box,
    position_words,
    refuse_aspect,
    scale_box,
    xywh_to_xyxy,
)
from utils.convert.images import image_size_under
from utils.convert.log import ConversionLog
from utils.convert.output import (
    add_output_arguments,
    add_stretched_copies_argument,
    finish,
    read_options,
)
from utils.convert.tables import MALFORMED, TableRow, parse_numbers, read_table
from utils.convert.text import grounded_report_row, render_phrase, sentence_with
from utils.convert.user_reports import NO_REPORT, UserReports, read_user_reports

SOURCE = "ChestX-ray8"
BAD_BOX = "box beyond the image"
DUPLICATE = "duplicate row"
MISSING_IMAGE = "missing image"
NO_ENTRY = "no Data_Entry row"
UNKNOWN_LABEL = "unknown finding label"
NOT_IN_REPORT = "finding not named in its report"
BBOX_COLUMNS = {"image": ("Image Index",), "label": ("Finding Label",),
                "x": ("Bbox [x", "x"), "y": ("y",), "w": ("w",), "h": ("h]", "h")}
ENTRY_COLUMNS = {"image": ("Image Index",), "patient": ("Patient ID",)}
# label -> (phrase template for templated reports, words that name it in a report)
LABELS = {
    "Atelectasis": ("Atelectasis in the {side} {zone} lung zone", ("atelecta",)),
    "Cardiomegaly": ("Cardiomegaly", ("cardiomegaly", "enlarged heart", "cardiac silhouette",
                                      "heart size")),
    "Effusion": ("{side} pleural effusion", ("effusion",)),
    "Infiltrate": ("Infiltrate in the {side} {zone} lung zone", ("infiltrat",)),
    "Mass": ("Mass in the {side} {zone} lung zone", ("mass",)),
    "Nodule": ("Nodule in the {side} {zone} lung zone", ("nodul",)),
    "Pneumonia": ("Pneumonia in the {side} {zone} lung zone", ("pneumonia",)),
    "Pneumothorax": ("{side} pneumothorax", ("pneumothora",)),
}
LABEL_ALIASES = {"Infiltration": "Infiltrate"}
BoxRows = list[tuple[TableRow, str, list[float]]]  # (row, label, xyxy in the box frame)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``chestxray8`` subcommand."""
    parser = subparsers.add_parser("chestxray8", help="NIH ChestX-ray8 boxes -> MRG-ChestX-ray8",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bbox_csv", type=Path, required=True, help="BBox_List_2017.csv")
    parser.add_argument("--data_entry", type=Path, required=True, help="Data_Entry_2017.csv")
    parser.add_argument("--image_root", type=Path, required=True,
                        help="the folder holding the PNGs (e.g. images/00000001_000.png)")
    parser.add_argument("--reports", type=Path,
                        help="report texts: CSV 'Image Index, report' or JSONL "
                             '{"image": ..., "report": ...}; default: templated sentences')
    parser.add_argument("--box_frame", type=_box_frame, default=1024.0,
                        help="size of the square image the BBox_List coordinates refer to")
    add_output_arguments(parser)
    add_stretched_copies_argument(parser)
    parser.set_defaults(func=run)


def _box_frame(text: str) -> float:
    """``--box_frame``: a finite size > 0 (NaN or inf would make every box NaN)."""
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from error
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: need a finite size > 0, e.g. 1024")
    return value


def read_patients(path: Path, log: ConversionLog, encoding: str) -> dict[str, str]:
    """Image Index -> patient id (leading zeros dropped, like the image names' prefix)."""
    patients: dict[str, str] = {}
    first: dict[str, int] = {}
    for row in read_table(path, ENTRY_COLUMNS, log, encoding=encoding):
        image, patient = row.values["image"], row.values["patient"]
        if image in patients:
            log.problem(str(path), row.line, DUPLICATE,
                        f"image {image} already listed on line {first[image]}; delete one")
            continue
        patients[image] = str(int(patient)) if patient.isdigit() else patient
        first[image] = row.line
    return patients


def _box(path: Path, row: TableRow, frame: float, log: ConversionLog) -> list[float] | None:
    numbers = parse_numbers(row, ("x", "y", "w", "h"))
    if isinstance(numbers, str):
        log.problem(str(path), row.line, MALFORMED, f"{numbers}; fix the value")
        return None
    box = xywh_to_xyxy(*numbers)
    message = box_problem(box, frame, frame)
    if message:
        log.problem(str(path), row.line, BAD_BOX,
                    f"{message} (the {frame:g}-px frame of the released images); fix or delete")
        return None
    return clip_box(box, frame, frame)


def read_boxes(path: Path, frame: float, log: ConversionLog, encoding: str) -> dict[str, BoxRows]:
    """Image -> its ``(row, label, xyxy box in the frame)`` rows; bad and repeated rows reported."""
    images: dict[str, BoxRows] = {}
    seen: dict[tuple, int] = {}
    for row in read_table(path, BBOX_COLUMNS, log, encoding=encoding):
        label = LABEL_ALIASES.get(row.values["label"], row.values["label"])
        if label not in LABELS:
            log.problem(str(path), row.line, UNKNOWN_LABEL,
                        f"{row.values['label']!r} is not one of {sorted(LABELS)}")
            continue
        box = _box(path, row, frame, log)
        if box is None:
            continue
        key = (row.values["image"], label, tuple(box))
        if key in seen:
            log.problem(str(path), row.line, DUPLICATE,
                        f"same image, label and box as line {seen[key]}; delete one")
            continue
        seen[key] = row.line
        images.setdefault(row.values["image"], []).append((row, label, box))
    return images


def build_row(image: str, boxes: BoxRows, size: tuple[int, int],
              patient: str, reports: UserReports | None, file: str, frame: float,
              log: ConversionLog) -> dict[str, Any] | None:
    """The canonical row of one image, or None when none of its findings can be phrased."""
    width, height = size
    report = reports.get(image) if reports else None
    if reports and report is None:
        log.problem(file, boxes[0][0].line, NO_REPORT,
                    f"{reports.file} has no report for {image}; add one, or leave --reports out "
                    "for templated text", rows=len(boxes))
        return None
    findings: dict[str, dict[str, Any]] = {}
    for row, label, box in boxes:
        template, keywords = LABELS[label]
        pixels = scale_box(box, width / frame, height / frame)
        if report is None:
            phrase = render_phrase(template, position_words(pixels, width, height))
        else:
            phrase = sentence_with(report, keywords)
            if phrase is None:
                log.problem(file, row.line, NOT_IN_REPORT,
                            f"the report of {image} names no {label} ({', '.join(keywords)}); "
                            "fix the report or leave the row out")
                continue
        finding = findings.setdefault(phrase, {"phrase": phrase, "boxes": [], "category": label})
        finding["boxes"].append(pixels)
    if not findings:
        return None
    return grounded_report_row(Path(image).stem, image, patient, report, list(findings.values()),
                               width, height, SOURCE)


def run(args: argparse.Namespace) -> int:
    """Convert, then write (see :func:`utils.convert.output.finish`)."""
    log = ConversionLog()
    options = read_options(args)
    reports = read_user_reports(args.reports, log, args.encoding) if args.reports else None
    patients = read_patients(args.data_entry, log, args.encoding)
    file = str(args.bbox_csv)
    rows = []
    for image, boxes in read_boxes(args.bbox_csv, args.box_frame, log, args.encoding).items():
        lines = ", ".join(str(b[0].line) for b in boxes)
        if image not in patients:
            log.problem(file, boxes[0][0].line, NO_ENTRY,
                        f"{args.data_entry} has no row for {image} (patient unknown); "
                        f"line(s) {lines} left out", rows=len(boxes))
            continue
        size = image_size_under(args.image_root, image, options)
        if isinstance(size, str):
            log.problem(file, boxes[0][0].line, MISSING_IMAGE, f"{size}; line(s) {lines} left out",
                        rows=len(boxes))
            continue
        message = refuse_aspect((args.box_frame, args.box_frame), size, options.stretched_copies,
                                log)
        if message:
            log.problem(file, boxes[0][0].line, ASPECT,
                        f"{image}: {message} (--box_frame {args.box_frame:g}); line(s) {lines} "
                        "left out; use the released square image or a uniformly resized copy",
                        rows=len(boxes))
            continue
        row = build_row(image, boxes, size, patients[image], reports, file, args.box_frame, log)
        if row:
            rows.append(row)
    return finish(rows, args.out, args.image_root, log, args.strict, options)
