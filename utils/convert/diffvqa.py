"""``diffvqa``: Medical-Diff-VQA questions on MS-CXR studies -> MRG-MIMIC-VQA.

Medical-Diff-VQA's ``mimic_pair_questions.csv`` (``study_id, subject_id, ref_id,
question_type, question, answer, split``) is joined to the MS-CXR images of the same study
(``s<study_id>`` in the MS-CXR path). Each selected question becomes a task-"vqa" row per
MS-CXR image of its study, grounded by the MS-CXR phrases whose category the question or the
answer names (e.g. "where is the pneumothorax?" -> "left apical area" grounds the image's
Pneumothorax phrases). Questions answered "no", questions that name none of the image's
categories, studies without MS-CXR boxes and unselected question types are counted as left
out; "difference" questions compare two studies, so they are not selected by default.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from utils.convert.log import ConversionLog
from utils.convert.mscxr import add_mscxr_input_arguments
from utils.convert.mscxr_annotations import MsCxrImage, group_images, read_mscxr
from utils.convert.output import add_output_arguments, finish, read_options
from utils.convert.tables import MALFORMED, read_table

SOURCE = "Medical-Diff-VQA+MS-CXR"
DUPLICATE = "duplicate question"
WRONG_PATIENT = "subject_id differs from MS-CXR"
NOT_IN_MSCXR = "study has no MS-CXR boxes"
NOT_SELECTED = "question type not selected"
ANSWER_NO = "answer is 'no' (nothing to ground)"
UNGROUNDED = "names no MS-CXR category of the image"
QA_COLUMNS = {"study": ("study_id",), "subject": ("subject_id",),
              "type": ("question_type",), "question": ("question",), "answer": ("answer",)}
DEFAULT_TYPES = "abnormality,location,level,type,presence"
CATEGORY_WORDS = {"Pleural Effusion": ("pleural effusion", "effusion"),
                  "Lung Opacity": ("lung opacity", "opacity")}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``diffvqa`` subcommand."""
    parser = subparsers.add_parser("diffvqa", help="Medical-Diff-VQA + MS-CXR -> MRG-MIMIC-VQA",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qa_csv", type=Path, required=True,
                        help="Medical-Diff-VQA's mimic_pair_questions.csv")
    add_mscxr_input_arguments(parser)
    parser.add_argument("--question_types", default=DEFAULT_TYPES,
                        help="comma-separated question_type values to keep "
                             f"(default {DEFAULT_TYPES})")
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def named_categories(text: str, categories: list[str]) -> list[str]:
    """The categories that ``text`` names (whole words, any case), in ``categories`` order."""
    lowered = text.lower()
    return [c for c in categories
            if any(re.search(rf"\b{re.escape(w)}\b", lowered)
                   for w in CATEGORY_WORDS.get(c, (c.lower(),)))]


def vqa_rows(qa_csv: Path, images: list[MsCxrImage], types: set[str],
             log: ConversionLog, encoding: str = "utf-8") -> list[dict[str, Any]]:
    """Task-"vqa" rows for every selected question on a study with MS-CXR boxes."""
    by_study: dict[str, list[MsCxrImage]] = {}
    for image in images:
        by_study.setdefault(image.study, []).append(image)
    rows = []
    seen: dict[tuple[str, str], int] = {}
    for row in read_table(qa_csv, QA_COLUMNS, log, encoding=encoding):
        values, file = row.values, str(qa_csv)
        if not values["study"].isdigit() or not values["subject"].isdigit():
            log.problem(file, row.line, MALFORMED, f"study_id {values['study']!r} / subject_id "
                                                   f"{values['subject']!r} are not numbers")
            continue
        study = by_study.get(f"s{values['study']}")
        if study is None:
            log.exclude(NOT_IN_MSCXR)
            continue
        if values["type"] not in types:
            log.exclude(NOT_SELECTED)
            continue
        key = (values["study"], values["question"])
        if key in seen:
            log.problem(file, row.line, DUPLICATE,
                        f"study {values['study']} asks this question already on line {seen[key]}; "
                        "delete one")
            continue
        seen[key] = row.line
        if values["answer"].strip().lower() == "no":
            log.exclude(ANSWER_NO)
            continue
        for image in study:
            if image.patient != f"p{values['subject']}":
                log.problem(file, row.line, WRONG_PATIENT,
                            f"subject_id {values['subject']}, but MS-CXR puts study "
                            f"{image.study} under {image.patient}; check the files")
                continue
            named = named_categories(f"{values['question']} {values['answer']}",
                                     image.categories())
            if not named:
                log.exclude(UNGROUNDED)
                continue
            rows.append({
                "id": f"{image.dicom_id}-{row.line}", "image": image.path,
                "patient": image.patient, "report": "",
                "findings": [{"phrase": f.phrase, "boxes": f.boxes, "category": f.category}
                             for f in image.findings if f.category in named],
                "task": "vqa", "question": values["question"], "answer": values["answer"],
                "label": "", "width": image.width, "height": image.height, "source": SOURCE,
            })
    return rows


def run(args: argparse.Namespace) -> int:
    """Convert, then write (see :func:`utils.convert.output.finish`)."""
    log = ConversionLog()
    options = read_options(args)
    images = group_images(read_mscxr(args.annotations, log, args.encoding), args.image_root,
                          log, options)
    types = {t.strip() for t in args.question_types.split(",") if t.strip()}
    rows = vqa_rows(args.qa_csv, images, types, log, args.encoding)
    return finish(rows, args.out, args.image_root, log, args.strict, options)
