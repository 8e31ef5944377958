"""The end of every converter: check each row against the canonical schema, then write."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Mapping

from utils.annotations import ReadOptions, parse_canonical_row
from utils.convert.log import EXIT_FAILED, EXIT_OK, ConversionLog
from utils.image_io import DEFAULT_MAX_PIXELS
from utils.text_io import DEFAULT_ENCODING, check_encoding, write_jsonl

logger = logging.getLogger("convert")

INVALID = "not a valid canonical row"
DUPLICATE_ID = "duplicate output id"


def add_output_arguments(parser: argparse.ArgumentParser, text_inputs: bool = True) -> None:
    """``--out``, ``--strict`` and the input rules (docs/data.md), shared by every converter;
    ``text_inputs``: the converter reads text files, so ``--encoding`` applies."""
    parser.add_argument("--out", type=Path, required=True,
                        help="the canonical JSON Lines file to write (e.g. out/mscxr.jsonl)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on any problem (exit code 2, nothing written) instead of "
                             "leaving the bad rows out")
    add_input_arguments(parser, text_inputs)


def add_input_arguments(parser: argparse.ArgumentParser, text_inputs: bool = True) -> None:
    """``--encoding`` (with ``text_inputs``), ``--max_image_pixels`` and
    ``--allow_outside_root``."""
    if text_inputs:
        parser.add_argument("--encoding", type=check_encoding, default=DEFAULT_ENCODING,
                            help="text encoding of every text input (CSV, JSON, JSONL, report "
                                 ".txt; default utf-8, e.g. latin-1 or cp1252)")
    parser.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels (decompression bombs; default "
                             f"{DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--allow_outside_root", action="store_true",
                        help="accept image paths (../, absolute, symlinks) that resolve outside "
                             "--image_root")


def add_stretched_copies_argument(parser: argparse.ArgumentParser) -> None:
    """``--stretched_copies``, for the converters that scale boxes to the images on disk."""
    parser.add_argument("--stretched_copies", action="store_true",
                        help="the images on disk may be stretched resizes of the annotated ones "
                             "(e.g. 512x512 copies of non-square radiographs): scale the boxes "
                             "per axis to them (counted) instead of refusing an image of "
                             "another aspect ratio")


def read_options(args: argparse.Namespace) -> ReadOptions:
    """The validation rules of a converter's command line."""
    return ReadOptions(allow_outside_root=args.allow_outside_root,
                       max_image_pixels=args.max_image_pixels,
                       stretched_copies=getattr(args, "stretched_copies", False))


def finish(rows: list[dict[str, Any]], out: Path, image_root: Path, log: ConversionLog,
           strict: bool, options: ReadOptions, splits: Mapping[str, str] | None = None) -> int:
    """Validate ``rows``, write them unless ``strict`` found problems, print the summary.

    Arguments:
      rows: canonical rows; image paths relative to ``image_root``, boxes in pixels.
      out: the output file.
      image_root: the folder the image paths are relative to.
      log: the conversion's problems and counts (rows failing validation are added).
      strict: any problem means failure: nothing is written.
      options: the rules rows are checked with (image paths inside ``image_root``, ...).
      splits: row id -> split name; when given, ``<out stem>_<split>.jsonl`` files are
        written beside ``out`` instead of ``out``.
    Returns:
      the exit code: 0, or 2 (nothing written) when ``strict`` and there were problems, or
      when no row is left to write.
    """
    valid = []
    first: dict[str, int] = {}
    for index, row in enumerate(rows, start=1):
        sample, problems = parse_canonical_row(row, image_root, str(out), index, options)
        for number, problem in enumerate(problems):
            log.problem(str(out), index, INVALID, f"row {row.get('id')!r}: {problem.message}",
                        rows=int(number == 0))
        if sample is not None and sample.id in first:
            log.problem(str(out), index, DUPLICATE_ID,
                        f"row id {sample.id!r} repeats output row {first[sample.id]} (two input "
                        "entries for one image?); merge or rename them")
        elif sample is not None:
            first[sample.id] = index
            valid.append(row)
    if log.problems:
        logger.warning("%d problem(s):\n%s", len(log.problems), log.problem_lines())
    if strict and log.problems:
        logger.error("--strict: %d problem(s), nothing written", len(log.problems))
        return EXIT_FAILED
    if not valid:
        logger.info("%s", log.summary(0, str(out)))
        logger.error("no row to write (the input yielded %d row(s), none valid); nothing "
                     "written", len(rows))
        return EXIT_FAILED
    if splits is None:
        written = {out: valid}
    else:
        written = {}
        for row in valid:
            target = out.with_name(f"{out.stem}_{splits[row['id']]}.jsonl")
            written.setdefault(target, []).append(row)
    for path, part in written.items():
        write_jsonl(part, path)
    where = ", ".join(f"{p} ({len(r)})" for p, r in written.items()) or str(out)
    logger.info("%s", log.summary(len(valid), where))
    logger.info("image paths are relative to %s (pass it as --image_root to train.py / "
                "test.py unless the JSONL lies there)", image_root)
    return EXIT_OK
