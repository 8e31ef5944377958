"""Reading text inputs strictly: a named encoding with file:line errors, and guarded JSON.

Every text input of the project (annotation JSONL, converter CSV/JSON/JSONL, report ``.txt``)
is decoded here, so a wrong byte is reported with its file, line and column instead of a
``UnicodeDecodeError`` traceback, and JSON that is malformed, nested too deeply or holds an
integer too long to convert is a row error, not an exception.
"""
from __future__ import annotations

import codecs
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

DEFAULT_ENCODING = "utf-8"
MAX_ROW_BYTES = 16 * 2**20  # one JSONL row; a radiology report is a few kB
_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds only lone ones: JSON pairs combine


class TextDecodeError(ValueError):
    """A text file that is not in the expected encoding; ``line`` is 1-based."""

    def __init__(self, path: Path, line: int, message: str):
        self.path, self.line = path, line
        super().__init__(f"{path}:{line}: {message}")


def check_encoding(encoding: str) -> str:
    """``encoding`` if Python knows it, else ValueError naming it."""
    try:
        codecs.lookup(encoding)
    except LookupError as error:
        raise ValueError(f"unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)"
                         ) from error
    return encoding


def _decode_message(raw: bytes, error: UnicodeDecodeError, encoding: str) -> tuple[int, str]:
    """(column, message) of a decoding error within one line."""
    column = error.start + 1
    return column, (f"not valid {encoding} (byte 0x{raw[error.start]:02x} at column {column}); "
                    f"re-save the file as UTF-8, or name its encoding with --encoding")


def read_text(path: str | Path, encoding: str = DEFAULT_ENCODING) -> str:
    """The whole file decoded with ``encoding`` (a UTF-8 byte-order mark is dropped).

    Raises TextDecodeError naming the line and column of the first undecodable byte.
    """
    path = Path(path)
    data = path.read_bytes()
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8") and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        start = data.rfind(b"\n", 0, error.start) + 1
        end = data.find(b"\n", error.start)
        raw = data[start:end if end >= 0 else len(data)]
        shifted = UnicodeDecodeError(error.encoding, raw, error.start - start,
                                     error.end - start, error.reason)
        raise TextDecodeError(path, line, _decode_message(raw, shifted, encoding)[1]) from error


def read_lines(path: str | Path, encoding: str = DEFAULT_ENCODING
               ) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, None)`` or ``(line number, None, problem)`` for every line.

    A line that cannot be decoded, or is longer than ``MAX_ROW_BYTES``, yields a problem and
    the reading goes on with the next line.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if len(raw) > MAX_ROW_BYTES:
                yield number, None, (f"line of {len(raw):,} bytes, over the limit of "
                                     f"{MAX_ROW_BYTES:,} bytes for one row")
                continue
            try:
                yield number, raw.decode(encoding), None
            except UnicodeDecodeError as error:
                yield number, None, _decode_message(raw, error, encoding)[1]


def loads_json(text: str) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, why the text is not usable JSON)``."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        return None, f"invalid JSON ({error.msg} at column {error.colno})"
    except RecursionError:
        return None, "JSON nested too deeply"
    except ValueError as error:  # e.g. an integer literal over Python's 4300-digit limit
        return None, f"unusable JSON value ({error})"


def lone_surrogate(value: Any, where: str = "") -> str | None:
    """Why a JSON value cannot be written as UTF-8, or None.

    A JSON escape such as ``"\\ud800"`` without its pair decodes to a lone surrogate, which
    no UTF-8 file (and no tokenizer) takes. The message names the key path of the first one
    (e.g. ``'findings[0].phrase'``; ``where`` is the path of ``value`` itself) and its place.
    The walk is iterative: JSON nested as deep as the parser allows is fine.
    """
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        name, item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                return (f"{repr(name) if name else 'the text'} holds a lone surrogate "
                        f"\\u{ord(found.group()):04x} at character {found.start() + 1} (half of "
                        "an escaped character pair); fix or remove it")
        elif isinstance(item, dict):
            for key in item:
                if isinstance(key, str) and _SURROGATE.search(key):
                    return f"key {key!r} holds a lone surrogate; fix or remove it"
            stack.extend((f"{name}.{key}" if name else str(key), item[key])
                         for key in reversed(list(item)))
        elif isinstance(item, list):
            stack.extend((f"{name}[{index}]", item[index])
                         for index in reversed(range(len(item))))
    return None


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write rows as JSON Lines (sorted keys, UTF-8, "\\n" line ends), creating the folder;
    returns the row count. Non-finite numbers are refused (``allow_nan=False``): no file holds
    a NaN box.

    The whole content is encoded first and written to a temporary file beside ``path``, which
    then replaces ``path``: an error (e.g. a lone surrogate) leaves an existing file as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
             for row in rows]
    data = "".join(lines).encode("utf-8")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return len(lines)
