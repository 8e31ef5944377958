"""``split``: patient-level train/val/test files from one canonical JSONL, or ``--check`` them.

Patients, not rows, are assigned: no patient lands in two splits. The assignment is greedy
and deterministic for a seed: patients are shuffled with the seed, then taken rarest label
first (a patient's rarest finding category over the whole file; more rows first on ties),
and each goes to the split that lacks the most of that patient's labels relative to its
fraction (then the most rows). ``--check`` reports patients (and images) that occur in more
than one of the given files, canonical ``.jsonl`` or reference ``.pth`` (whose patient ids
come from the image paths); exit code 2 when there is any overlap.
"""
from __future__ import annotations

import argparse
import logging
import random
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

from utils.annotations import SPLITS
from utils.convert.labels import read_rows, row_labels, row_patient
from utils.convert.log import EXIT_FAILED, EXIT_OK, ConversionError, ConversionLog
from utils.text_io import DEFAULT_ENCODING, check_encoding, write_jsonl

logger = logging.getLogger("convert")

NO_PATIENT = "no patient id"
SHOWN = 10


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not three numbers") from error
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"{text!r}: need three fractions >= 0 that sum to 1")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``split`` subcommand."""
    parser = subparsers.add_parser("split", help="patient-level train/val/test split, or --check",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--input", type=Path, help="the canonical JSONL to split")
    mode.add_argument("--check", type=Path, nargs="+",
                      help="existing split files (.jsonl or reference .pth) to check for overlaps")
    parser.add_argument("--out_dir", type=Path, help="where to write <name>_<split>.jsonl "
                                                     "(default: the input's folder)")
    parser.add_argument("--name", help="file name prefix (default: the input's stem)")
    parser.add_argument("--fractions", type=_fractions, default=(0.7, 0.1, 0.2),
                        help="train,val,test fractions of the rows (default 0.7,0.1,0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient shuffle")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit code 2, nothing written) when a row has no patient id")
    parser.add_argument("--encoding", type=check_encoding, default=DEFAULT_ENCODING,
                        help="text encoding of the input files (default utf-8)")
    parser.set_defaults(func=run)


def assign_patients(patients: dict[str, list[dict[str, Any]]], fractions: Sequence[float],
                    seed: int) -> dict[str, int]:
    """Patient -> split index, stratified by finding label (greedy, deterministic for ``seed``)."""
    counts = {p: Counter(label for row in rows for label in row_labels(row))
              for p, rows in patients.items()}
    total = sum(counts.values(), Counter())
    total_rows = sum(len(rows) for rows in patients.values())
    order = sorted(patients)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda p: (min(total[label] for label in counts[p]), -len(patients[p])))
    have = [Counter() for _ in fractions]
    have_rows = [0] * len(fractions)

    def need(split: int, patient: str) -> tuple[float, float, int]:
        labels = sum(n * (fractions[split] * total[label] - have[split][label]) / total[label]
                     for label, n in counts[patient].items())
        return labels, fractions[split] * total_rows - have_rows[split], -split

    assignment = {}
    for patient in order:
        split = max((s for s, f in enumerate(fractions) if f > 0), key=lambda s: need(s, patient))
        assignment[patient] = split
        have[split].update(counts[patient])
        have_rows[split] += len(patients[patient])
    return assignment


def split_file(path: Path, out_dir: Path, name: str, fractions: Sequence[float], seed: int,
               strict: bool, encoding: str = DEFAULT_ENCODING) -> int:
    """Write ``<out_dir>/<name>_<split>.jsonl``; returns the exit code.

    Nothing is written (exit code 2) when ``strict`` finds problems or no row has a patient;
    a :class:`ConversionError` when an output would overwrite the input.
    """
    targets = {s: out_dir / f"{name}_{SPLITS[s]}.jsonl" for s, f in enumerate(fractions) if f > 0}
    for split, target in targets.items():
        if target.exists() and path.exists() and target.samefile(path):
            raise ConversionError(f"{path}: the {SPLITS[split]} split would be written over this "
                                  "input file; pass another --name or --out_dir")
    log = ConversionLog()
    patients: dict[str, list[dict[str, Any]]] = {}
    for line, row in read_rows(path, log, encoding):
        patient = row_patient(row)
        if not patient:
            log.problem(str(path), line, NO_PATIENT,
                        "the row has no 'patient' and its image path holds none; add it")
            continue
        patients.setdefault(patient, []).append(row)
    if log.problems:
        logger.warning("%d problem(s):\n%s", len(log.problems), log.problem_lines())
    if strict and log.problems:
        logger.error("--strict: %d problem(s), nothing written", len(log.problems))
        return EXIT_FAILED
    if not patients:
        logger.info("%s", log.summary(0, str(out_dir)))
        logger.error("%s: %s, nothing to split; nothing written", path,
                     "no row has a patient id" if log.problems else "the file holds no row")
        return EXIT_FAILED
    assignment = assign_patients(patients, fractions, seed)
    parts: dict[int, list[dict[str, Any]]] = {s: [] for s in targets}
    for patient, rows in patients.items():
        parts[assignment[patient]].extend(rows)
    written = 0
    for split, rows in parts.items():
        target = targets[split]
        written += write_jsonl(rows, target)
        labels = Counter(label for row in rows for label in row_labels(row))
        n_patients = sum(1 for s in assignment.values() if s == split)
        logger.info("%s: %d row(s), %d patient(s); %s", target, len(rows), n_patients,
                    ", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
    logger.info("%s", log.summary(written, str(out_dir)))
    return EXIT_OK


def check_overlaps(paths: Sequence[Path], encoding: str = DEFAULT_ENCODING) -> int:
    """Print the patients and images shared by any two of ``paths``; 2 when there are any."""
    log = ConversionLog()
    patients: dict[Path, set[str]] = {}
    images: dict[Path, set[str]] = {}
    for path in paths:
        rows = read_rows(path, log, encoding)
        patients[path] = {row_patient(r) for _, r in rows} - {""}
        images[path] = {str(r.get("image", "")) for _, r in rows}
        unknown = sum(1 for _, r in rows if not row_patient(r))
        if unknown:
            logger.warning("%s: %d row(s) without a patient id are not checked", path, unknown)
    if log.problems:
        logger.warning("%d problem(s):\n%s", len(log.problems), log.problem_lines())
    overlaps = 0
    for a, b in combinations(paths, 2):
        for what, sets in (("patient", patients), ("image", images)):
            shared = sorted(sets[a] & sets[b])
            if shared:
                overlaps += 1
                more = f" (first {SHOWN} shown)" if len(shared) > SHOWN else ""
                logger.warning("%s and %s share %d %s(s)%s: %s", a, b, len(shared), what, more,
                               ", ".join(shared[:SHOWN]))
    if not overlaps:
        logger.info("no patient or image in two of the %d files", len(paths))
    return EXIT_FAILED if overlaps or log.problems else EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Split ``--input`` or check ``--check``."""
    if args.check:
        return check_overlaps(args.check, args.encoding)
    out_dir = args.out_dir or args.input.parent
    return split_file(args.input, out_dir, args.name or args.input.stem, args.fractions,
                      args.seed, args.strict, args.encoding)
