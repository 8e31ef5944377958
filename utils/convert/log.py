"""The record of one conversion: problems (with file and row), rows left out, counted notes."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from utils.annotations import Problem

EXIT_OK = 0
EXIT_FAILED = 2  # --strict with problems, or an input that cannot be used at all: nothing written


class ConversionError(RuntimeError):
    """An input that cannot be used at all (missing file, wrong header); nothing is written."""


@dataclass
class ConversionLog:
    """Everything a converter found wrong or worth counting.

    ``problems`` are bad input rows (each names the file and the row, what is wrong and what
    to do); ``left_out`` counts the input rows that were not written, by reason (problems and
    deliberate exclusions alike); ``notes`` counts observations that are not errors (e.g. a
    phrase that is not verbatim in its report).
    """

    problems: list[Problem] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def problem(self, file: str, row: int | None, reason: str, message: str, rows: int = 1) -> None:
        """Record a bad input: ``rows`` input rows are left out for ``reason``."""
        self.problems.append(Problem(file, row, f"{reason}: {message}"))
        self.left_out[reason] += rows

    def exclude(self, reason: str, rows: int = 1) -> None:
        """Count input rows left out on purpose (not a problem, e.g. a study not in MS-CXR)."""
        self.left_out[reason] += rows

    def note(self, what: str, count: int = 1) -> None:
        """Count an observation that is not an error."""
        self.notes[what] += count

    def problem_lines(self) -> str:
        """Every problem, one an indented line, ordered by file and row."""
        return "\n".join(f"  {problem}" for problem in
                         sorted(self.problems, key=lambda p: (p.file, p.row or 0)))

    def summary(self, written: int, destination: str) -> str:
        """A few lines: rows written, rows left out per reason, notes."""
        lines = [f"wrote {written} row(s) to {destination}"]
        if self.left_out:
            lines.append(f"left out {sum(self.left_out.values())} input row(s):")
            lines += [f"  {reason}: {count}" for reason, count in sorted(self.left_out.items())]
        lines += [f"note: {what}: {count}" for what, count in sorted(self.notes.items())]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s), listed above")
        return "\n".join(lines)
