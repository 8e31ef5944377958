"""``stats``: what canonical files hold, per split.

Rows (per task), findings per category, boxes per phrase, how many phrases occur verbatim in
their row's report, templated rows, and the range of image sizes (from the rows' ``width`` /
``height``, else read from the image files under ``--image_root``). The split of a file is the
part of its name after the last "_" (``mscxr_train.jsonl`` -> ``train``), else its stem.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from utils.annotations import ReadOptions
from utils.convert.images import image_size_under
from utils.convert.labels import finding_label, read_rows
from utils.convert.log import EXIT_FAILED, EXIT_OK, ConversionLog
from utils.convert.output import add_input_arguments, read_options
from utils.convert.text import is_verbatim

logger = logging.getLogger("convert")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``stats`` subcommand."""
    parser = subparsers.add_parser("stats", help="counts of canonical files, per split",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+",
                        help="canonical .jsonl files (or reference .pth files)")
    parser.add_argument("--image_root", type=Path,
                        help="image folder, for rows without width/height (default: each "
                             "file's folder)")
    parser.add_argument("--json", type=Path, help="also write the statistics to this JSON file")
    add_input_arguments(parser)
    parser.set_defaults(func=run)


def split_name(path: Path) -> str:
    """``mscxr_train.jsonl`` -> ``train``; a name without "_" -> its stem."""
    return path.stem.rsplit("_", 1)[-1]


def file_stats(rows: Sequence[dict[str, Any]], image_root: Path,
               options: ReadOptions = ReadOptions()) -> dict[str, Any]:
    """The statistics of one file's rows (see the module docstring)."""
    tasks: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    boxes_per_phrase: Counter[int] = Counter()
    verbatim = in_reports = templated = 0
    widths: list[int] = []
    heights: list[int] = []
    for row in rows:
        tasks[str(row.get("task", "report"))] += 1
        templated += bool(row.get("templated"))
        report = str(row.get("report", ""))
        findings = row.get("findings") if isinstance(row.get("findings"), list) else []
        for finding in (f for f in findings if isinstance(f, dict)):
            categories[finding_label(row, finding)] += 1
            boxes = finding.get("boxes")
            boxes_per_phrase[len(boxes) if isinstance(boxes, list) else 0] += 1
            if report:
                in_reports += 1
                verbatim += is_verbatim(str(finding.get("phrase", "")), report)
        size = (row.get("width"), row.get("height"))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            size = image_size_under(image_root, row.get("image"), options)
        if not isinstance(size, str):
            widths.append(size[0])
            heights.append(size[1])
    return {
        "rows": len(rows), "tasks": dict(sorted(tasks.items())), "templated_rows": templated,
        "findings": sum(categories.values()),
        "findings_per_category": dict(sorted(categories.items())),
        "boxes_per_phrase": {str(k): v for k, v in sorted(boxes_per_phrase.items())},
        "phrases_in_reports": in_reports, "phrases_verbatim_in_report": verbatim,
        "image_width": [min(widths), max(widths)] if widths else None,
        "image_height": [min(heights), max(heights)] if heights else None,
        "images_unreadable": len(rows) - len(widths),
    }


def run(args: argparse.Namespace) -> int:
    """Print (and optionally write) the statistics of every file."""
    log = ConversionLog()
    result = {}
    for path in args.files:
        rows = [row for _, row in read_rows(path, log, args.encoding)]
        stats = file_stats(rows, args.image_root or path.parent, read_options(args))
        result[split_name(path)] = stats
        print(f"== {path} (split {split_name(path)})")
        for key, value in stats.items():
            print(f"  {key}: {value}")
    if log.problems:
        logger.warning("%d problem(s):\n%s", len(log.problems), log.problem_lines())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return EXIT_FAILED if log.problems else EXIT_OK
