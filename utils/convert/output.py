"""The end of every converter: check each row against the canonical schema, then write."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping

from utils.annotations import parse_canonical_row, write_canonical_jsonl
from utils.convert.log import EXIT_FAILED, EXIT_OK, ConversionLog

INVALID = "not a valid canonical row"


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out`` and ``--strict``, shared by every converter."""
    parser.add_argument("--out", type=Path, required=True,
                        help="the canonical JSON Lines file to write (e.g. out/mscxr.jsonl)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on any problem (exit code 2, nothing written) instead of "
                             "leaving the bad rows out")


def finish(rows: list[dict[str, Any]], out: Path, image_root: Path, log: ConversionLog,
           strict: bool, splits: Mapping[str, str] | None = None) -> int:
    """Validate ``rows``, write them unless ``strict`` found problems, print the summary.

    Arguments:
      rows: canonical rows; image paths relative to ``image_root``, boxes in pixels.
      out: the output file.
      image_root: the folder the image paths are relative to.
      log: the conversion's problems and counts (rows failing validation are added).
      strict: any problem means failure: nothing is written.
      splits: row id -> split name; when given, ``<out stem>_<split>.jsonl`` files are
        written beside ``out`` instead of ``out``.
    Returns:
      the exit code: 0, or 2 when ``strict`` and there were problems.
    """
    valid = []
    for index, row in enumerate(rows, start=1):
        _, problems = parse_canonical_row(row, image_root, str(out), index)
        for number, problem in enumerate(problems):
            log.problem(str(out), index, INVALID, f"row {row.get('id')!r}: {problem.message}",
                        rows=int(number == 0))
        if not problems:
            valid.append(row)
    if log.problems:
        print(f"{len(log.problems)} problem(s):", file=sys.stderr)
        log.print_problems()
    if strict and log.problems:
        print(f"--strict: {len(log.problems)} problem(s), nothing written", file=sys.stderr)
        return EXIT_FAILED
    if splits is None:
        written = {out: valid}
    else:
        written = {}
        for row in valid:
            target = out.with_name(f"{out.stem}_{splits[row['id']]}.jsonl")
            written.setdefault(target, []).append(row)
    for path, part in written.items():
        write_canonical_jsonl(part, path)
    where = ", ".join(f"{p} ({len(r)})" for p, r in written.items()) or str(out)
    print(log.summary(len(valid), where), file=sys.stderr)
    print(f"image paths are relative to {image_root} (pass it as --image_root to train.py / "
          "test.py unless the JSONL lies there)", file=sys.stderr)
    return EXIT_OK
