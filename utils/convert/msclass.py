"""``msclass``: MS-CXR categories -> MRG-MIMIC-Class.

One task-"class" row per MS-CXR image and category: ``label`` is the category name (e.g.
"Pneumothorax") and the findings are that category's MS-CXR phrases (``label_text``) with
all of their boxes.
"""
from __future__ import annotations

import argparse
import hashlib
import re
from collections import Counter
from typing import Any, Iterable

from utils.convert.log import ConversionLog
from utils.convert.mscxr import SOURCE, add_mscxr_input_arguments
from utils.convert.mscxr_annotations import MsCxrImage, group_images, read_mscxr
from utils.convert.output import add_output_arguments, finish, read_options

HASH_CHARS = 8


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``msclass`` subcommand."""
    parser = subparsers.add_parser("msclass", help="MS-CXR categories -> MRG-MIMIC-Class",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mscxr_input_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def category_slugs(categories: Iterable[str]) -> dict[str, str]:
    """Category name -> the id part of its rows, distinct for distinct names.

    The slug is the lower-cased name with every run of other characters than (unicode)
    letters and digits made one ``_`` ("Pleural Effusion" -> "pleural_effusion", "气胸" ->
    "气胸"). A name whose slug is empty or shared with another name gets a short stable hash
    of the name appended ("Lung opacity" and "lung-opacity" -> "lung_opacity_<hash>").
    """
    names = sorted(set(categories))
    slugs = {name: re.sub(r"[\W_]+", "_", name.lower()).strip("_") for name in names}
    shared = Counter(slugs.values())
    for name, slug in slugs.items():
        if not slug or shared[slug] > 1:
            digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:HASH_CHARS]
            slugs[name] = f"{slug}_{digest}" if slug else digest
    return slugs


def class_rows(images: list[MsCxrImage]) -> list[dict[str, Any]]:
    """One task-"class" row per image and category (id ``<dicom_id>-<category slug>``)."""
    slugs = category_slugs(c for image in images for c in image.categories())
    rows = []
    for image in images:
        for category in image.categories():
            rows.append({
                "id": f"{image.dicom_id}-{slugs[category]}", "image": image.path,
                "patient": image.patient,
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
