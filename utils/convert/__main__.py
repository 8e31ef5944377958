"""``python -m utils.convert <source> ...``: one subcommand per source, each with ``--help``."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from utils.convert import chestxray8, coco, diffvqa, msclass, mscxr, reference, split, stats
from utils.convert.log import EXIT_FAILED, ConversionError
from utils.logs import setup_logging

logger = logging.getLogger("convert")


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``mscxr``, ``chestxray8``, ``diffvqa``, ``msclass``, ``coco``,
    ``reference``, ``split`` and ``stats``."""
    parser = argparse.ArgumentParser(
        prog="python -m utils.convert",
        description="Turn public releases on disk into canonical annotation JSONL "
                    "(see docs/data.md). Bad input rows are reported as file:row and left out; "
                    "--strict fails instead (exit code 2, nothing written).")
    subparsers = parser.add_subparsers(dest="source", required=True)
    for module in (mscxr, chestxray8, diffvqa, msclass, coco, reference, split, stats):
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns its exit code (2 when an input cannot be used)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return args.func(args)
    except ConversionError as error:
        logger.error("%s\nnothing written", error)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
