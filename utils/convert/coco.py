"""``coco``: a COCO detection JSON + a category -> phrase map -> canonical rows.

The phrase map is a JSON object ``{"category name": "phrase template"}``; a template may use
``{side}`` (the patient's right/left, from the box centre; the patient's right is the image's
left) and ``{zone}`` (upper/middle/lower third), e.g. ``"Nodule in the {side} {zone} lung
zone"``. Without ``--reports`` the report is the rendered phrases joined as sentences and rows
get ``"templated": true``; with ``--reports`` each annotation's phrase is the first report
sentence that holds its rendered phrase or its category name. Boxes (COCO ``[x, y, w, h]``
in pixels of the image's ``width x height``) are scaled to the image on disk; an image on disk
of another aspect ratio is reported, as its boxes would be stretched. The patient is
the image entry's ``patient_id``, else the id in a MIMIC/NIH file name, else the image name.
An id repeated within ``images``, ``categories`` or ``annotations`` is an error (nothing is
written, :func:`utils.convert.tables.read_coco`), as is a template field other than plain
``{side}`` / ``{zone}``.
"""
from __future__ import annotations

import argparse
import string
from pathlib import Path
from typing import Any

from utils.annotations import ReadOptions, is_number
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
from utils.convert.log import ConversionError, ConversionLog
from utils.convert.output import (
    add_output_arguments,
    add_stretched_copies_argument,
    finish,
    read_options,
)
from utils.convert.paths import patient_from_path
from utils.convert.tables import MALFORMED, read_coco, read_json
from utils.convert.text import grounded_report_row, render_phrase, sentence_with
from utils.convert.user_reports import NO_REPORT, UserReports, read_user_reports
from utils.text_io import DEFAULT_ENCODING

SOURCE = "COCO"
BAD_BOX = "box beyond the image"
DUPLICATE = "duplicate annotation"
MISSING_IMAGE = "missing image"
NO_PHRASE = "category without a phrase"
NOT_IN_REPORT = "finding not named in its report"
NO_ANNOTATIONS = "image without annotations or report"
NO_PATIENT = "no patient id (image name used)"
TEMPLATE_FIELDS = ("side", "zone")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``coco`` subcommand."""
    parser = subparsers.add_parser("coco", help="COCO detection JSON + phrase map -> canonical",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco", type=Path, required=True, help="COCO detection JSON")
    parser.add_argument("--phrases", type=Path, required=True,
                        help='JSON {"category name": "phrase template"} (fields {side}, {zone})')
    parser.add_argument("--image_root", type=Path, required=True,
                        help="the folder the COCO file_name entries are relative to")
    parser.add_argument("--reports", type=Path,
                        help="report texts: CSV 'image, report' or JSONL "
                             '{"image": ..., "report": ...}; default: templated sentences')
    add_output_arguments(parser)
    add_stretched_copies_argument(parser)
    parser.set_defaults(func=run)


def read_phrase_map(path: Path, encoding: str = DEFAULT_ENCODING) -> dict[str, str]:
    """The category -> template map; raises :class:`ConversionError` naming a bad entry."""
    phrases = read_json(path, "phrase map", encoding)
    if not isinstance(phrases, dict):
        raise ConversionError(f"{path}: expected a JSON object {{\"category\": \"phrase\"}}")
    for category, template in phrases.items():
        if not isinstance(template, str) or not template.strip():
            raise ConversionError(f"{path}: phrase of {category!r} is not a non-empty string")
        problem = template_problem(template)
        if problem:
            raise ConversionError(
                f"{path}: phrase of {category!r} ({template!r}) {problem}; a template may hold "
                "only the plain fields {side} and {zone} (no index, attribute, conversion or "
                "format), e.g. \"Nodule in the {side} {zone} lung zone\"; write {{ and }} for a "
                "literal brace")
    return phrases


def template_problem(template: str) -> str | None:
    """What is wrong with a phrase template, or None when its fields are plain ``{side}`` and
    ``{zone}`` (an index such as ``{side[0]}`` or an attribute such as ``{side.upper}`` is not
    a field)."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion
                  in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        return f"is not a valid template ({error})"
    for name, spec, conversion in fields:
        if name not in TEMPLATE_FIELDS or spec or conversion:
            field = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            return f"uses the field {{{field}}}"
    return None


def image_row(image: dict[str, Any], anns: list[dict[str, Any]], categories: dict[int, str],
              phrases: dict[str, str], image_root: Path, reports: UserReports | None, file: str,
              log: ConversionLog, options: ReadOptions) -> dict[str, Any] | None:
    """The canonical row of one COCO image, or None when it has nothing to write."""
    name = str(image.get("file_name", ""))
    report = reports.get(name) if reports else None
    size = image_size_under(image_root, name, options)
    if isinstance(size, str):
        log.problem(file, anns[0]["id"] if anns else None, MISSING_IMAGE,
                    f"image id {image['id']}: {size}", rows=max(len(anns), 1))
        return None
    if reports and report is None:
        log.problem(file, None, NO_REPORT, f"{reports.file} has no report for {name}; add one, "
                                           "or leave --reports out for templated text",
                    rows=max(len(anns), 1))
        return None
    if not anns and report is None:
        log.exclude(NO_ANNOTATIONS)
        return None
    width, height = size
    declared = (image.get("width"), image.get("height"))
    if not all(v is None or (is_number(v) and v > 0) for v in declared):
        log.problem(file, anns[0]["id"] if anns else None, MALFORMED,
                    f"image id {image['id']}: width/height {declared} are not positive finite "
                    "numbers; fix them", rows=max(len(anns), 1))
        return None
    frame = (float(declared[0] or width), float(declared[1] or height))
    message = refuse_aspect(frame, size, options.stretched_copies, log)
    if message:
        log.problem(file, anns[0]["id"] if anns else None, ASPECT,
                    f"image id {image['id']} ({name}): {message}; use the image the boxes were "
                    "drawn on (or a uniformly resized copy), or fix its width/height",
                    rows=max(len(anns), 1))
        return None
    findings: dict[str, dict[str, Any]] = {}
    seen: dict[tuple, int] = {}
    for ann in anns:
        category = categories.get(ann.get("category_id"))
        bbox = ann.get("bbox")
        if category is None or not isinstance(bbox, list) or len(bbox) != 4 or not all(
                is_number(v) for v in bbox):
            log.problem(file, ann["id"], MALFORMED, f"annotation id {ann['id']} lacks a known "
                                                    "category_id or a bbox of 4 finite numbers; "
                                                    "fix it")
            continue
        if category not in phrases:
            log.problem(file, ann["id"], NO_PHRASE,
                        f"annotation id {ann['id']}: category {category!r} is not in the "
                        "phrase map; add it")
            continue
        box = xywh_to_xyxy(*bbox)
        message = box_problem(box, *frame)
        if message:
            log.problem(file, ann["id"], BAD_BOX, f"annotation id {ann['id']}: {message}; fix it")
            continue
        key = (category, tuple(box))
        if key in seen:
            log.problem(file, ann["id"], DUPLICATE, f"annotation id {ann['id']} repeats "
                                                    f"annotation id {seen[key]}; delete one")
            continue
        seen[key] = ann["id"]
        pixels = scale_box(clip_box(box, *frame), width / frame[0], height / frame[1])
        phrase = render_phrase(phrases[category], position_words(pixels, width, height))
        if report is not None:
            phrase = sentence_with(report, (phrase, category))
            if phrase is None:
                log.problem(file, ann["id"], NOT_IN_REPORT,
                            f"annotation id {ann['id']}: the report of {name} names no "
                            f"{category!r}; fix the report or delete the annotation")
                continue
        finding = findings.setdefault(phrase,
                                      {"phrase": phrase, "boxes": [], "category": category})
        finding["boxes"].append(pixels)
    if not findings and report is None:
        return None
    patient = str(image.get("patient_id", "")) or patient_from_path(name)
    if not patient:
        log.note(NO_PATIENT)
        patient = Path(name).stem
    return grounded_report_row(Path(name).with_suffix("").as_posix(), name, patient, report,
                               list(findings.values()), width, height, SOURCE)


def run(args: argparse.Namespace) -> int:
    """Convert, then write (see :func:`utils.convert.output.finish`)."""
    log = ConversionLog()
    options = read_options(args)
    phrases = read_phrase_map(args.phrases, args.encoding)
    reports = read_user_reports(args.reports, log, args.encoding) if args.reports else None
    coco = read_coco(args.coco, log, args.encoding)
    categories = {cat_id: str(cat.get("name", "")) for cat_id, cat in coco.cats.items()}
    for ann_id in sorted(coco.anns):
        if coco.anns[ann_id].get("image_id") not in coco.imgs:
            log.problem(str(args.coco), ann_id, MALFORMED,
                        f"annotation id {ann_id}: image_id {coco.anns[ann_id].get('image_id')!r} "
                        "is not in 'images'; fix it or delete the annotation")
    rows = []
    for image_id in sorted(coco.imgs):
        anns = sorted(coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])
        row = image_row(coco.imgs[image_id], anns, categories, phrases, args.image_root, reports,
                        str(args.coco), log, options)
        if row:
            rows.append(row)
    return finish(rows, args.out, args.image_root, log, args.strict, options)
