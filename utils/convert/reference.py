"""``reference``: the reference code's ``.pth`` annotation files -> canonical JSONL, without loss.

The reference files hold ``(x, y, w, h)`` boxes in pixels of the image resized to 640 x 640
(``utils.annotations.REFERENCE_SIZE``); they are rescaled to the real size of each image under
``--image_root``. The 640-px frame is an assumption about how the reference files were made:
files made at another size would get boxes off by that ratio (check one by drawing it).
Rows that share an image and a text are merged into one row, in file order (see
``utils.annotations``). The patient id is taken from the image path (MIMIC ``pXXXXXXXX`` or
the NIH ``00000001_000.png`` prefix).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.annotations import read_reference_pth
from utils.convert.labels import INVALID
from utils.convert.log import ConversionLog
from utils.convert.output import add_output_arguments, finish
from utils.convert.paths import patient_from_path
from utils.convert.tables import require_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``reference`` subcommand."""
    parser = subparsers.add_parser("reference", help="reference-code .pth -> canonical JSONL",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pth", type=Path, required=True,
                        help="a reference annotation file (e.g. MS_CXR_train.pth)")
    parser.add_argument("--image_root", type=Path, required=True,
                        help="the folder its image_paths are relative to")
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert, then write (see :func:`utils.convert.output.finish`)."""
    log = ConversionLog()
    samples, problems = read_reference_pth(require_file(args.pth, "reference .pth file"),
                                           args.image_root)
    for problem in problems:
        log.problem(problem.file, problem.row, INVALID, problem.message)
    rows = []
    for sample in samples:
        row = sample.to_canonical(args.image_root)
        row["patient"] = row["patient"] or patient_from_path(row["image"])
        rows.append(row)
    return finish(rows, args.out, args.image_root, log, args.strict)
