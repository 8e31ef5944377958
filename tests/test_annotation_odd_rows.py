"""Odd annotation inputs found by an audit of the canonical JSONL reader: each is refused with
its file:line and what to do, or read exactly, never silently changed.

Every case of ROW_CASES is line 2 of a file whose line 1 is valid: the strict reader names
line 2 only, and ``skip_invalid`` keeps line 1 and counts the drop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from utils.annotations import AnnotationError, load_annotations

BOX = [10, 20, 50, 60]


def good_row(**changes) -> dict:
    """A valid row on ``images/a.png`` (200 x 100), like a SynthCXR row."""
    row = {
        "id": "r1", "image": "images/a.png", "patient": "p1", "task": "report",
        "report": "Right pleural effusion is noted.", "question": "", "answer": "", "label": "",
        "width": 200, "height": 100,
        "findings": [{"phrase": "Right pleural effusion", "boxes": [BOX],
                      "type": "pleural effusion", "side": "right", "zone": "lower"}],
    }
    row.update(changes)
    return row


def finding(**changes) -> dict:
    return good_row(id="r2", findings=[{**good_row()["findings"][0], **changes}])


def without(key: str, **changes) -> dict:
    return {k: v for k, v in good_row(id="r2", **changes).items() if k != key}


def line(value: dict | list) -> bytes:
    return json.dumps(value).encode()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "images" / "folder.png").mkdir(parents=True)
    Image.new("L", (200, 100), 80).save(tmp_path / "images" / "a.png")
    return tmp_path


def write(root: Path, *lines: bytes) -> Path:
    path = root / "ann.jsonl"
    path.write_bytes(b"".join(data + b"\n" for data in lines))
    return path


ROW_CASES = [
    # (case, line 2, every expected part of its messages)
    ("duplicate key in the row", line(good_row(id="r2"))[:-1] + b', "findings": []}',
     ["key 'findings' appears twice in one JSON object", "remove one of them"]),
    ("duplicate key in a finding",
     line(good_row(id="r2")).replace(b'"phrase": ', b'"phrase": "x", "phrase": ', 1),
     ["key 'phrase' appears twice"]),
    ("finding type a number", line(finding(type=5)),
     ["finding 0: 'type' must be a string (or null), got 5"]),
    ("finding type NaN", line(finding(type=float("nan"))),
     ["'type' must be a string (or null), got nan"]),
    ("finding side a list", line(finding(side=["right"])), ["'side' must be a string"]),
    ("finding a string", line(good_row(id="r2", findings=["effusion"])),
     ['finding 0: expected an object {"phrase": ..., "boxes"', "got str"]),
    ("phrase a number", line(finding(phrase=5)), ["finding 0: 'phrase' must be a string, got int"]),
    ("'text' for 'phrase'", line(good_row(id="r2", findings=[{"text": "x", "boxes": [BOX]}])),
     ["finding 0: unknown key(s) ['text']; the known ones are", "finding 0 has no phrase"]),
    ("boxes one flat box", line(finding(boxes=BOX)),
     ["'boxes' [10, 20, 50, 60] is not a list of boxes; write [[x0, y0, x1, y1], ...]"]),
    ("boxes an object", line(finding(boxes={"x0": 10})),
     ["'boxes' must be a list of [x0, y0, x1, y1] boxes, got dict"]),
    ("findings null", line(good_row(id="r2", findings=None)),
     ["'findings' must be a list (`[]` for a study without findings), got NoneType"]),
    ("row a JSON array", line([good_row(id="r2")]),
     ["expected a JSON object, got list; JSON Lines holds one object a line"]),
    ("byte-order mark on line 2", b"\xef\xbb\xbf" + line(good_row(id="r2")),
     ["a UTF-8 byte-order mark starts this line", "remove it"]),
    ("two rows on one line", line(good_row(id="r2")) + line(good_row(id="r3")),
     ["Extra data", "the text goes on after a complete JSON value (in JSON Lines"]),
    ("raw tab in the report", line(good_row(id="r2")).replace(b"is noted", b"is\tnoted"),
     ["invalid JSON (a raw control character '\\t' in a string at column", "write it escaped"]),
    ("image a folder", line(good_row(id="r2", image="images/folder.png")),
     ["folder.png is a directory, not an image file"]),
    ("vqa row without task", line(without("task", report="", question="Where?", answer="right")),
     ["empty report (a row without 'task' is a 'report' row"]),
]


@pytest.mark.parametrize("case, data, messages", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_odd_row_is_refused_with_file_line_and_fix(root, caplog, case, data, messages):
    path = write(root, line(good_row()), data)
    with pytest.raises(AnnotationError) as raised:
        load_annotations(path, root)
    assert {p.row for p in raised.value.problems} == {2}, str(raised.value)
    text = str(raised.value)
    for message in messages:
        assert f"{path}:2: " in text and message in text, text
    assert [s.id for s in load_annotations(path, root, skip_invalid=True)] == ["r1"]
    assert "dropped 1 invalid row(s), kept 1" in caplog.text


def test_flat_boxes_are_one_problem_not_four(root):
    path = write(root, line(good_row()), line(finding(boxes=BOX)))
    with pytest.raises(AnnotationError) as raised:
        load_annotations(path, root)
    assert len(raised.value.problems) == 1


def test_duplicate_id_of_an_invalid_row_is_listed_with_it(root):
    path = write(root, line(good_row(width=5, height=5)), line(good_row()),
                 line(good_row(id="r3")))
    with pytest.raises(AnnotationError) as raised:
        load_annotations(path, root)
    assert [(p.row, p.reason) for p in raised.value.problems] == [
        (1, "declared size"), (2, "duplicate id")]
    assert "duplicate id 'r1' (first on line 1)" in str(raised.value)
    assert [s.id for s in load_annotations(path, root, skip_invalid=True)] == ["r3"]


@pytest.mark.parametrize("fields, expected", [
    ({"type": "nodule"}, "nodule"), ({"category": "Nodule"}, "Nodule"),
    ({"type": None, "category": "Nodule"}, "Nodule"), ({"type": None, "side": None}, ""),
    ({"type": "", "category": "Nodule"}, "")])
def test_finding_type_is_kept_as_given_and_null_is_absent(root, fields, expected):
    row = good_row(findings=[{"phrase": "Right pleural effusion", "boxes": [BOX], **fields}])
    assert load_annotations(write(root, line(row)), root)[0].findings[0].finding_type == expected


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_encodings_without_a_newline_byte_are_read_by_line(root, encoding):
    rows = [good_row(), good_row(id="r2", report="Café: right pleural effusion.")]
    path = root / "ann.jsonl"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                     .encode(encoding))
    samples = load_annotations(path, root, encoding=encoding)
    assert [(s.id, s.source) for s in samples] == [("r1", f"{path}:1"), ("r2", f"{path}:2")]
    assert samples[1].report == "Café: right pleural effusion."


def test_undecodable_utf16_names_its_line_and_reads_nothing(root):
    text = json.dumps(good_row()) + "\n" + json.dumps(good_row(id="r2")) + "\n"
    data = text.encode("utf-16-le")
    at = data.index('"r2"'.encode("utf-16-le"))
    path = root / "ann.jsonl"
    path.write_bytes(data[:at] + b"\x00\xd8" + data[at + 2:])  # a lone high surrogate
    for skip in (False, True):
        with pytest.raises(AnnotationError) as raised:
            load_annotations(path, root, skip_invalid=skip, encoding="utf-16-le")
        first = raised.value.problems[0]
        assert first.row == 2 and "not valid utf-16-le" in first.message
        assert "no line of the file was read" in first.message
        assert "the split has no valid row left" in str(raised.value)


@pytest.mark.parametrize("encoding", ["no-such-codec", "rot13"])
def test_unknown_encoding_is_an_annotation_error(root, encoding):
    path = write(root, line(good_row()))
    with pytest.raises(AnnotationError, match=f"{path}: unknown text encoding '{encoding}'"):
        load_annotations(path, root, encoding=encoding)
