"""``reference``: the reference code's ``.pth`` annotation files -> canonical JSONL, without loss.

The reference files hold ``(x, y, w, h)`` boxes in pixels of the image resized to 640 x 640
(``model.constants.REFERENCE_BOX_FRAME``); they are rescaled to the real size of each image
under ``--image_root``. The 640-px frame is an assumption about how the reference files were
made: files made at another size would get boxes off by that ratio (check one by drawing it).
Every text column becomes a field of the canonical row (``report``, ``question``/``answer``,
``label`` = the class name, ``description`` = the class paragraph); the task follows from the
columns present, or ``--text_column`` (see ``utils.reference_pth``). Rows that share an image
and all their text are merged into one row, in file order. Text read but not kept is counted
and named in the summary. The patient id is taken from the image path (MIMIC ``pXXXXXXXX`` or
the NIH ``00000001_000.png`` prefix); ``source`` is ``<input file name>:<list index>``.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from utils.convert.labels import INVALID
from utils.convert.log import ConversionError, ConversionLog
from utils.convert.output import add_output_arguments, finish, read_options
from utils.convert.paths import patient_from_path
from utils.convert.tables import require_file
from utils.reference_pth import TEXT_COLUMNS, read_reference_pth


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``reference`` subcommand."""
    parser = subparsers.add_parser("reference", help="reference-code .pth -> canonical JSONL",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pth", type=Path, required=True,
                        help="a reference annotation file (e.g. MS_CXR_train.pth)")
    parser.add_argument("--image_root", type=Path, required=True,
                        help="the folder its image_paths are relative to")
    parser.add_argument("--text_column", choices=sorted(TEXT_COLUMNS),
                        help="the text column that decides the task (default: class if "
                             "class_all/all_report_class, else vqa if Answer_all or a Q/A "
                             "transcript, else report)")
    parser.add_argument("--split_name",
                        help="write <out stem>_<split_name>.jsonl (e.g. --split_name test for "
                             "MS_CXR_test_gpt.pth), so train.py/test.py find it as <name>_<split>")
    add_output_arguments(parser, text_inputs=False)  # a .pth holds no encoded text
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert, then write (see :func:`utils.convert.output.finish`)."""
    log = ConversionLog()
    options = read_options(args)
    pth = require_file(args.pth, "reference .pth file")
    unused: Counter[str] = Counter()
    samples, problems = read_reference_pth(pth, args.image_root, options,
                                           text_column=args.text_column, unused=unused)
    file_problems = [p for p in problems if p.row is None]
    if file_problems:
        raise ConversionError("; ".join(str(p) for p in file_problems))
    for problem in problems:
        log.problem(problem.file, problem.row, problem.reason or INVALID, problem.message,
                    rows=problem.rows)
    for what, count in unused.items():
        log.note(f"not kept: {what}", count)
    rows = []
    for sample in samples:
        row = sample.to_canonical(args.image_root)
        row["patient"] = row["patient"] or patient_from_path(row["image"])
        rows.append(row)
    out = args.out.with_name(f"{args.out.stem}_{args.split_name}.jsonl") if args.split_name \
        else args.out
    return finish(rows, out, args.image_root, log, args.strict, options)
