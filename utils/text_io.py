"""Reading text inputs strictly: a named encoding with file:line errors, and guarded JSON.

Every text input of the project (annotation JSONL, converter CSV/JSON/JSONL, report ``.txt``)
is decoded here, so a wrong byte is reported with its file, line and column instead of a
``UnicodeDecodeError`` traceback, and JSON that is malformed, nested too deeply, holds an
integer too long to convert or gives one key twice in an object is a row error, not an exception.
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
    """A text file that is not in the expected encoding; ``line`` is 1-based, ``message`` the
    reason without the file and line."""

    def __init__(self, path: Path, line: int, message: str):
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}")


class _DuplicateKeyError(Exception):
    """A JSON object that gives ``key`` twice (``json`` would keep the last value silently);
    ``where`` is the start of the object, to find it in a file of many objects."""

    def __init__(self, key: str, where: str):
        self.key, self.where = key, where
        super().__init__(key)


def check_encoding(encoding: str) -> str:
    """``encoding`` if Python knows it as a text encoding, else ValueError naming it."""
    try:
        "".encode(encoding)  # also refuses codecs that are no text encoding, e.g. rot13
    except LookupError as error:
        raise ValueError(f"unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)"
                         ) from error
    return encoding


def _splits_on_newline_byte(encoding: str) -> bool:
    """Whether ``encoding`` writes a line end as the one byte ``\\n`` (UTF-8, Latin-1, cp1252,
    ...), so that a file can be cut into lines before it is decoded; UTF-16 and UTF-32 cannot."""
    encoder = codecs.getincrementalencoder(encoding)()
    encoder.encode("{")  # a byte-order mark (utf-16, utf-8-sig) comes before the first character
    return encoder.encode("\n") == b"\n"


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
    if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig"):
        # the mark is dropped here, so that an error's offset counts the bytes of ``data``
        if data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8):]
        encoding = "utf-8"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        if not _splits_on_newline_byte(encoding):  # a 0x0a byte may be half of a character
            line = data[:error.start].decode(encoding, errors="replace").count("\n") + 1
            raise TextDecodeError(path, line, f"not valid {encoding} (byte "
                                              f"0x{data[error.start]:02x} at byte {error.start + 1}"
                                              " of the file); re-save the file as UTF-8, or name "
                                              "its encoding with --encoding") from error
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

    A line that cannot be decoded, is longer than ``MAX_ROW_BYTES`` or starts with a UTF-8
    byte-order mark (files joined with their marks; only the first line may have one) yields a
    problem, and the reading goes on with the next line. In an encoding whose line end is not
    the byte ``\\n`` (UTF-16, UTF-32) the whole file is decoded first; an undecodable byte then
    yields one problem at its line and no line at all, since the lines after it cannot be told
    apart.
    """
    if not _splits_on_newline_byte(encoding):
        yield from _read_decoded_lines(Path(path), encoding)
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.startswith(codecs.BOM_UTF8):
                if number > 1:
                    yield number, None, ("a UTF-8 byte-order mark starts this line (files joined "
                                         "with their marks?); remove it")
                    continue
                raw = raw[len(codecs.BOM_UTF8):]
            if len(raw) > MAX_ROW_BYTES:
                yield number, None, _row_too_long(len(raw))
                continue
            try:
                yield number, raw.decode(encoding), None
            except UnicodeDecodeError as error:
                yield number, None, _decode_message(raw, error, encoding)[1]


def _row_too_long(size: int) -> str:
    return f"line of {size:,} bytes, over the limit of {MAX_ROW_BYTES:,} bytes for one row"


def _read_decoded_lines(path: Path, encoding: str
                        ) -> Iterator[tuple[int, str | None, str | None]]:
    """:func:`read_lines` for an encoding whose line end is not the byte ``\\n``."""
    try:
        text = read_text(path, encoding)
    except TextDecodeError as error:
        yield error.line, None, f"{error.message}; no line of the file was read"
        return
    lines = text.split("\n")
    if lines[-1] == "":  # the file's final line end
        lines.pop()
    for number, line in enumerate(lines, start=1):
        size = len(line.encode(encoding))
        if size > MAX_ROW_BYTES:
            yield number, None, _row_too_long(size)
        else:
            yield number, line, None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of ``pairs``; _DuplicateKeyError if a key is given twice."""
    value = dict(pairs)
    if len(value) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                start = "{" + ", ".join(
                    f"{json.dumps(k, ensure_ascii=False)}: "
                    f"{json.dumps(v, ensure_ascii=False, default=str)}" for k, v in pairs[:3])
                raise _DuplicateKeyError(key, start if len(start) <= 120 else start[:117] + "...")
            seen.add(key)
    return value


def loads_json(text: str) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, why the text is not usable JSON)``.

    An object that gives a key twice is refused: ``json`` would keep the last value silently.
    """
    try:
        return json.loads(text, object_pairs_hook=_unique_keys), None
    except json.JSONDecodeError as error:
        if error.msg == "Invalid control character at":  # a raw tab, NUL, ... in a string
            return None, (f"invalid JSON (a raw control character {error.doc[error.pos]!r} in a "
                          f"string at column {error.colno}); write it escaped, e.g. \\t or "
                          "\\u0000, or remove it")
        hint = ("; the text goes on after a complete JSON value (in JSON Lines, one object a "
                "line: two rows joined, a pretty-printed file, or bare-CR line ends?)"
                ) if error.msg == "Extra data" else ""
        return None, f"invalid JSON ({error.msg} at column {error.colno}){hint}"
    except _DuplicateKeyError as error:
        return None, (f"key {error.key!r} appears twice in one JSON object (a JSON reader would "
                      f"keep the last value silently), the object that starts {error.where}; "
                      "remove one of them")
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
