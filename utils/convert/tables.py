"""Reading CSV and JSON Lines inputs with their line numbers, and parsing their values."""
from __future__ import annotations

import contextlib
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from pycocotools.coco import COCO

from utils.convert.log import ConversionError, ConversionLog
from utils.text_io import (
    DEFAULT_ENCODING,
    TextDecodeError,
    loads_json,
    lone_surrogate,
    read_lines,
    read_text,
)

MALFORMED = "malformed row"
COCO_LISTS = ("images", "annotations", "categories")
SHOWN_CHARS = 60  # of a value or a line quoted in a message


@dataclass(frozen=True)
class TableRow:
    """One data row of a table: its line number in the file and its values by logical column."""

    line: int
    values: dict[str, str]


def _normal(name: str) -> str:
    return " ".join(name.split()).lower()


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`ConversionError` naming ``what`` it should be."""
    if not Path(path).is_file():
        raise ConversionError(f"{path}: {what} does not exist (check the path)")
    return Path(path)


def read_table(path: Path, columns: Mapping[str, Sequence[str]], log: ConversionLog,
               optional: Sequence[str] = (), encoding: str = DEFAULT_ENCODING
               ) -> Iterator[TableRow]:
    """The rows of a CSV file whose first line is a header.

    Arguments:
      path: the CSV file.
      columns: logical column -> the header names it may have (matched ignoring case and
        repeated spaces; e.g. NIH's ``Bbox [x`` / ``y`` / ``w`` / ``h]``, which its header splits
        over four columns).
      log: where malformed rows are reported (and counted as left out).
      optional: logical columns that may be missing from the header (their value is then "").
      encoding: the file's text encoding (``--encoding``); a byte it cannot decode is a
        :class:`ConversionError` naming its line.
    Yields:
      every well-formed row, with stripped values; its line is the one it starts on (a quoted
      field may hold line breaks). A row with too few fields, an empty required value, values
      beyond the header or bad quoting is reported and skipped. Blank lines are skipped.
      Raises :class:`ConversionError` when a required column is not in the header, or when a
      quote is never closed (see :func:`_records`).
    """
    lines = io.StringIO(read_input_text(path, "input table", encoding), newline="").readlines()
    yield from _rows(path, _records(path, lines), columns, log, optional)


def read_input_text(path: Path, what: str, encoding: str = DEFAULT_ENCODING) -> str:
    """The text of an input file; a missing file or an undecodable byte is a ConversionError."""
    require_file(path, what)
    try:
        return read_text(path, encoding)
    except TextDecodeError as error:
        raise ConversionError(str(error)) from error


def _excerpt(text: str) -> str:
    """``text`` quoted, cut to ``SHOWN_CHARS`` characters: a value or a line in a message."""
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…")


def _records(path: Path, lines: list[str]) -> Iterator[tuple[int, list[str] | None, str]]:
    """``(first line, fields, "")`` for every CSV record, or ``(line, None, problem)`` for a
    one-line record that is not readable CSV (e.g. text after a closing quote).

    Quotes are parsed strictly, so a quoted field may hold line breaks, but a quote never
    closed, or a multi-line record that turns unreadable, is a :class:`ConversionError` naming
    the line the quote opened on: the rows it swallowed cannot be told apart.
    """
    reader = csv.reader(lines, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            end, shown = reader.line_num, _excerpt(lines[start - 1].rstrip("\r\n"))
            if "end of data" in str(error):
                rest = f" (the rest of the file, to line {end}, would be one field)" \
                    if end > start else ""
                message = (f"a quote opened on this line is never closed{rest}: {shown}; close "
                           "the quote or remove it")
            elif end > start:
                message = (f"a quoted field opened on this line runs to line {end}, where it is "
                           f"not readable CSV ({error}); is a quote never closed? {shown}; fix "
                           "the quoting")
            else:
                message = f"not readable CSV ({error}): {shown}; fix the quoting of this line"
            if end > start:
                raise ConversionError(f"{path}:{start}: {message}") from error
            yield start, None, message
            continue
        yield start, fields, ""


def _rows(path: Path, records: Iterator[tuple[int, list[str] | None, str]],
          columns: Mapping[str, Sequence[str]], log: ConversionLog, optional: Sequence[str]
          ) -> Iterator[TableRow]:
    """The rows after the header: see :func:`read_table`."""
    line, header, problem = next(records, (1, None, ""))
    if problem:
        raise ConversionError(f"{path}:{line}: header: {problem}")
    if header is None:
        raise ConversionError(f"{path}: empty file, expected a CSV header")
    names = [_normal(h) for h in header]
    while names and not names[-1]:
        names.pop()
    index: dict[str, int] = {}
    for logical, accepted in columns.items():
        found = [position for position, name in enumerate(names)
                 if name in {_normal(a) for a in accepted}]
        if len(found) > 1:
            raise ConversionError(
                f"{path}:1: header names column {' / '.join(repr(a) for a in accepted)} "
                f"{len(found)} times (columns {', '.join(str(p + 1) for p in found)}); keep one")
        if found:
            index[logical] = found[0]
        elif logical not in optional:
            raise ConversionError(
                f"{path}:1: header has no column {' / '.join(repr(a) for a in accepted)} "
                f"(header: {header}); is this the right file?")
    needed = [c for c in columns if c not in optional]
    for line, fields, problem in records:
        if fields is None:
            log.problem(str(path), line, MALFORMED, problem)
            continue
        if not any(f.strip() for f in fields):
            continue
        extra = [f for f in fields[len(names):] if f.strip()]
        if extra:
            log.problem(str(path), line, MALFORMED,
                        f"{len(fields)} fields, the header has {len(names)}; fix the quoting "
                        "or the separators of this row")
            continue
        values = {c: fields[i].strip() if i < len(fields) else "" for c, i in index.items()}
        empty = [c for c in needed if not values.get(c)]
        if empty:
            log.problem(str(path), line, MALFORMED,
                        f"no value for {', '.join(repr(columns[c][0]) for c in empty)}; "
                        "fill it in or delete the row")
            continue
        yield TableRow(line, values)


def read_jsonl(path: Path, log: ConversionLog, encoding: str = DEFAULT_ENCODING
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for every line of a JSON Lines file; bad lines (also text that is no
    valid Unicode, which could not be written back) are reported."""
    require_file(path, "JSON Lines file")
    for line, text, message in read_lines(path, encoding):
        if message:
            log.problem(str(path), line, MALFORMED, f"{message}; fix the line")
            continue
        if not text.strip():
            continue
        value, message = loads_json(text)
        if message:
            log.problem(str(path), line, MALFORMED, f"{message}; fix the line")
            continue
        if not isinstance(value, dict):
            log.problem(str(path), line, MALFORMED,
                        f"expected a JSON object, got {type(value).__name__}")
            continue
        message = lone_surrogate(value)
        if message:
            log.problem(str(path), line, MALFORMED, message)
            continue
        yield line, value


def read_json(path: Path, what: str, encoding: str = DEFAULT_ENCODING) -> Any:
    """A whole JSON file; undecodable, malformed or over-deep JSON is a ConversionError."""
    value, message = loads_json(read_input_text(path, what, encoding))
    if message:
        raise ConversionError(f"{path}: {message}; is this the right file?")
    return value


def parse_numbers(row: TableRow, names: Sequence[str]) -> list[float] | str:
    """The finite numbers in ``row`` under ``names``, or an error message naming the bad one."""
    numbers: list[float] = []
    for name in names:
        text = row.values[name]
        try:
            if "_" in text:  # Python's float() reads "2_00" as 200; no table means that
                raise ValueError(text)
            value = float(text)
        except ValueError:
            return f"{name}={_excerpt(text)} is not a number"
        if not math.isfinite(value):
            return f"{name}={_excerpt(text)} is not a finite number"
        numbers.append(value)
    return numbers


def _repeated_ids(path: Path, data: dict[str, Any]) -> list[str]:
    """Every integer id repeated within one of a COCO file's lists, as a message each."""
    repeats = []
    for key in COCO_LISTS:
        first: dict[int, int] = {}
        for position, entry in enumerate(data[key]):
            entry_id = entry.get("id") if isinstance(entry, dict) else None
            if not _int_id(entry_id):
                continue  # reported as malformed
            if entry_id in first:
                repeats.append(f"{path}: {key}[{position}] repeats id {entry_id} "
                               f"({key}[{first[entry_id]}])")
            else:
                first[entry_id] = position
    return repeats


def _int_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_coco(path: Path, log: ConversionLog, encoding: str = DEFAULT_ENCODING) -> COCO:
    """A COCO-style JSON file indexed by ``pycocotools`` (its progress prints are silenced).

    An entry of ``images``, ``annotations`` or ``categories`` that is not an object with an
    integer ``id`` (and, for annotations, integer ``image_id`` and ``category_id``), or that
    holds a lone surrogate, is reported as ``<file>:<list>[<position>]`` and left out; the
    rest is converted. An id repeated within one list is a :class:`ConversionError` listing
    every repeat as ``<file>: <list>[<position>] repeats id <id> (<list>[<first position>])``
    (pycocotools would silently keep one of the entries).
    """
    data = read_json(path, "COCO JSON file", encoding)
    if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in COCO_LISTS):
        raise ConversionError(f"{path}: not a COCO-style JSON file; it needs the lists "
                              "'images', 'annotations' and 'categories'")
    repeats = _repeated_ids(path, data)
    if repeats:
        raise ConversionError("\n".join(repeats) + f"\n{path}: ids must be unique within each "
                              "list; give every entry its own id, or delete the repeated entry")
    for key, id_keys in (("images", ("id",)), ("categories", ("id",)),
                         ("annotations", ("id", "image_id", "category_id"))):
        kept = []
        for position, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or not all(_int_id(entry.get(k)) for k in id_keys):
                log.problem(f"{path}:{key}[{position}]", None, MALFORMED,
                            f"not an object with integer {', '.join(id_keys)} "
                            f"({entry!r:.80}); fix it or delete it")
            elif message := lone_surrogate(entry):
                log.problem(f"{path}:{key}[{position}]", None, MALFORMED, message)
            else:
                kept.append(entry)
        data[key] = kept
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
