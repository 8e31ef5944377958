"""``mscxr``: MS-CXR phrase boxes + MIMIC-CXR(-JPG) images + MIMIC-CXR reports -> MRG-MS-CXR.

One row per image: the report's FINDINGS + IMPRESSION text, and every MS-CXR phrase of the
image with all of its boxes (pixels of the image on disk, xyxy). A phrase that is not verbatim
in that text is counted (MS-CXR phrases are sometimes edited), not an error.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Mapping

from utils.annotations import SPLITS
from utils.convert.geometry import scale_box
from utils.convert.images import KEPT_16_BIT, resized_copy
from utils.convert.log import EXIT_FAILED, EXIT_OK, ConversionError, ConversionLog
from utils.convert.mscxr_annotations import MsCxrImage, group_images, read_mscxr
from utils.convert.output import (
    add_output_arguments,
    add_stretched_copies_argument,
    finish,
    read_options,
)
from utils.convert.paths import mimic_report_path
from utils.convert.text import is_verbatim, mimic_findings_impression
from utils.image_io import ImageReadError
from utils.text_io import DEFAULT_ENCODING, TextDecodeError, read_text

logger = logging.getLogger("convert")

SOURCE = "MS-CXR"
MISSING_REPORT = "missing report"
UNREADABLE_REPORT = "undecodable report"
NO_SPLIT = "no split"
BAD_SPLIT = "unknown split"
UNREADABLE_IMAGE = "unreadable image"
NOT_VERBATIM = "phrase not verbatim in its report"
NO_SECTIONS = "report without FINDINGS/IMPRESSION (whole text kept)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``mscxr`` subcommand."""
    parser = subparsers.add_parser("mscxr", help="MS-CXR + MIMIC-CXR -> MRG-MS-CXR",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mscxr_input_arguments(parser)
    parser.add_argument("--reports_root", type=Path, required=True,
                        help="folder holding MIMIC-CXR's report files/pXX/pXXXXXXXX/sXXXXXXXX.txt "
                             "(mimic-cxr-reports.zip unpacked)")
    parser.add_argument("--resize_max_side", type=int, choices=(640, 1024),
                        help="write copies of the images, longer side shrunk to this size, under "
                             "<out folder>/images/ and scale the boxes to them")
    parser.add_argument("--by_split", action="store_true",
                        help="write <out stem>_<split>.jsonl per value of MS-CXR's split column "
                             "(v1.1.0: train, val or test) instead of one file")
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def add_mscxr_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--annotations`` and ``--image_root``, shared by the MS-CXR based converters."""
    parser.add_argument("--annotations", type=Path, required=True,
                        help="MS_CXR_Local_Alignment_v1.x.0.csv, or its COCO-style .json")
    parser.add_argument("--image_root", type=Path, required=True,
                        help="MIMIC-CXR-JPG root: the folder holding files/pXX/...")
    add_stretched_copies_argument(parser)


def report_rows(images: list[MsCxrImage], reports_root: Path, log: ConversionLog,
                encoding: str = DEFAULT_ENCODING) -> list[dict[str, Any]]:
    """Canonical task-"report" rows for annotated images; images without a report are left out."""
    rows = []
    for image in images:
        report_file = reports_root / mimic_report_path(image.path)
        n_rows = sum(len(f.boxes) for f in image.findings)
        if not report_file.is_file():
            log.problem(image.file, image.first_row, MISSING_REPORT,
                        f"report {report_file} does not exist (--reports_root must hold "
                        "files/pXX/pXXXXXXXX/sXXXXXXXX.txt)", rows=n_rows)
            continue
        try:
            text = read_text(report_file, encoding)
        except TextDecodeError as error:
            log.problem(image.file, image.first_row, UNREADABLE_REPORT,
                        f"{error} (report of {image.path})", rows=n_rows)
            continue
        report, has_sections = mimic_findings_impression(text)
        if not report:
            log.problem(image.file, image.first_row, MISSING_REPORT,
                        f"report {report_file} is empty", rows=n_rows)
            continue
        if not has_sections:
            log.note(NO_SECTIONS)
        for finding in image.findings:
            if not is_verbatim(finding.phrase, report):
                log.note(NOT_VERBATIM)
        rows.append({
            "id": image.dicom_id, "image": image.path, "patient": image.patient, "report": report,
            "findings": [{"phrase": f.phrase, "boxes": f.boxes, "category": f.category}
                         for f in image.findings],
            "task": "report", "question": "", "answer": "", "label": ", ".join(image.categories()),
            "width": image.width, "height": image.height, "source": SOURCE,
        })
    return rows


def resize_rows(rows: list[dict[str, Any]], images: Mapping[str, MsCxrImage], image_root: Path,
                copy_root: Path, max_side: int, log: ConversionLog,
                created: list[Path]) -> list[dict[str, Any]]:
    """Copy each row's image to ``copy_root/images/`` at ``max_side`` and scale its boxes.

    16-bit images stay 16-bit (PNG copies); this is counted in the summary. An image that
    cannot be decoded is reported with its annotation file and row, and its row is left out.
    Copies that are new files are appended to ``created`` (see :func:`remove_copies`).
    """
    resized = []
    for row in rows:
        try:
            copy = resized_copy(image_root / row["image"], copy_root / "images" / row["image"],
                                max_side)
        except ImageReadError as error:
            image = images[row["id"]]
            log.problem(image.file, image.first_row, UNREADABLE_IMAGE, str(error),
                        rows=sum(len(f["boxes"]) for f in row["findings"]))
            continue
        if copy.new:
            created.append(copy.path)
        if copy.high_depth:
            log.note(KEPT_16_BIT)
        width, height = copy.size
        sx, sy = width / row["width"], height / row["height"]
        findings = [{**f, "boxes": [scale_box(b, sx, sy) for b in f["boxes"]]}
                    for f in row["findings"]]
        resized.append({**row, "image": copy.path.relative_to(copy_root).as_posix(),
                        "findings": findings, "width": width, "height": height})
    return resized


def remove_copies(paths: list[Path], copy_root: Path) -> None:
    """Delete the image copies of a failed run, and the folders under ``copy_root/images``
    that this leaves empty."""
    top = (copy_root / "images").resolve()
    for path in paths:
        path.unlink(missing_ok=True)
        folder = path.parent.resolve()
        while (folder == top or top in folder.parents) and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    if paths:
        logger.info("removed the image copies this run wrote (%d)", len(paths))


def split_rows(rows: list[dict[str, Any]], images: Mapping[str, MsCxrImage], file: Path,
               log: ConversionLog) -> dict[str, str]:
    """Row id -> split for ``--by_split``; rows without one of :data:`SPLITS` are reported
    and removed from ``rows``."""
    if not any(image.split for image in images.values()):
        raise ConversionError(f"{file}: --by_split, but no row has a split")
    for row in list(rows):
        image = images[row["id"]]
        if image.split in SPLITS:
            continue
        if image.split:
            reason, message = BAD_SPLIT, (
                f"--by_split, but split {image.split!r} is not one of {', '.join(SPLITS)} (it "
                "names the output file <out stem>_<split>.jsonl); fix the split column")
        else:
            reason, message = NO_SPLIT, ("--by_split, but this image has no split; fill the "
                                         "split column in")
        log.problem(image.file, image.first_row, reason, message,
                    rows=sum(len(f["boxes"]) for f in row["findings"]))
        rows.remove(row)
    return {r["id"]: images[r["id"]].split for r in rows}


def run(args: argparse.Namespace) -> int:
    """Convert, then write (see :func:`utils.convert.output.finish`); the image copies of a
    run that fails are removed."""
    log = ConversionLog()
    options = read_options(args)
    images = group_images(read_mscxr(args.annotations, log, args.encoding), args.image_root,
                          log, options)
    by_id = {image.dicom_id: image for image in images}
    rows = report_rows(images, args.reports_root, log, args.encoding)
    splits = split_rows(rows, by_id, args.annotations, log) if args.by_split else None
    if args.strict and log.problems:
        return finish([], args.out, args.image_root, log, True, options)
    image_root = args.image_root
    created: list[Path] = []
    code = EXIT_FAILED
    try:
        if args.resize_max_side:
            image_root = args.out.parent
            rows = resize_rows(rows, by_id, args.image_root, image_root, args.resize_max_side,
                               log, created)
        code = finish(rows, args.out, image_root, log, args.strict, options, splits)
    finally:
        if code != EXIT_OK:
            remove_copies(created, image_root)
    return code
