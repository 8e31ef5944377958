"""``msclass``: MS-CXR categories -> MRG-MIMIC-Class.

One task-"class" row per MS-CXR image and category: ``label`` is the category name (e.g.
"Pneumothorax") and the findings are that category's MS-CXR phrases (``label_text``) with
all of their boxes.
"""
from __future__ import annotations

import argparse
import re
from typing import Any

from utils.convert.log import ConversionLog
from utils.convert.mscxr import SOURCE, add_mscxr_input_arguments
from utils.convert.mscxr_annotations import MsCxrImage, group_images, read_mscxr
from utils.convert.output import add_output_arguments, finish, read_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``msclass`` subcommand."""
    parser = subparsers.add_parser("msclass", help="MS-CXR categories -> MRG-MIMIC-Class",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mscxr_input_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def class_rows(images: list[MsCxrImage]) -> list[dict[str, Any]]:
    """One task-"class" row per image and category."""
    rows = []
    for image in images:
        for category in image.categories():
            slug = re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")
            rows.append({
                "id": f"{image.dicom_id}-{slug}", "image": image.path, "patient": image.patient,
                "report": "",
                "findings": [{"phrase": f.phrase, "boxes": f.boxes, "category": f.category}
                             for f in image.findings if f.category == category],
                "task": "class", "question": "", "answer": "", "label": category,
                "width": image.width, "height": image.height, "source": SOURCE,
            })
    return rows


def run(args: argparse.Namespace) -> int:
    """Convert, then write (see :func:`utils.convert.output.finish`)."""
    log = ConversionLog()
    options = read_options(args)
    images = group_images(read_mscxr(args.annotations, log, args.encoding), args.image_root,
                          log, options)
    return finish(class_rows(images), args.out, args.image_root, log, args.strict, options)
