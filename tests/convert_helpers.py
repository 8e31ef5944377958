"""Helpers shared by the converter tests: run the CLI, read its JSONL output."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.convert.__main__ import main


def convert(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str]:
    """Run ``python -m utils.convert`` in-process; returns (exit code, stderr)."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def rows_of(path: Path) -> dict[str, dict]:
    """The rows of a canonical JSONL file by id."""
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}
