"""Converter inputs and output: CSV quoting, lone surrogates in JSON, the atomic JSONL writer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.convert_helpers import convert, rows_of
from utils.convert.log import ConversionError, ConversionLog
from utils.convert.tables import parse_numbers, read_coco, read_jsonl, read_table
from utils.text_io import TextDecodeError, read_text, write_jsonl

HEADER = "image,label,x\n"
COLUMNS = {"image": ("image",), "label": ("label",), "x": ("x",)}
VALID = "".join(f"b{i}.png,Mass,{i}\n" for i in range(500))


def table(tmp_path: Path, text: str) -> tuple[Path, list[tuple[int, str]], list[str]]:
    """Read ``text`` as a CSV file: (path, (line, image) of each row, problem lines)."""
    path = tmp_path / "t.csv"
    path.write_text(text)
    log = ConversionLog()
    rows = [(row.line, row.values["image"]) for row in read_table(path, COLUMNS, log)]
    return path, rows, [str(p) for p in log.problems]


@pytest.mark.parametrize("body", [
    'a.png,Mass,1\nb.png,Nodule,"300,400\n' + VALID,  # the quote opens a middle field
    'a.png,Mass,1\nb.png,Nodule,"300\n' + VALID,  # ... the last field: no dump of the file
    'a.png,Mass,1\nb.png,"Nodule,300\n' + VALID + 'c.png,"Mass, small",1\n',  # closed later
], ids=["middle", "last field", "closed by a later quote"])
def test_a_quote_never_closed_names_its_line_and_stops(tmp_path, body):
    with pytest.raises(ConversionError) as raised:
        table(tmp_path, HEADER + body)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 't.csv'}:3: a quote")
    assert "never closed" in message and len(message) < 400 and "b7.png" not in message


@pytest.mark.parametrize("body, rows, problems", [
    # a legal quoted field with a line break: the row keeps the line it starts on
    ('a.png,"Mass\nsmall",1\nb.png,Mass,2\n', [(2, "a.png"), (4, "b.png")], []),
    # a quote that only the last line leaves open loses that line alone
    ('a.png,Mass,1\nb.png,Mass,"2', [(2, "a.png")], [":3: malformed row: a quote opened on "
                                                     "this line is never closed"]),
    # text after a closing quote: that row is reported, the next one read
    ('a.png,"Mass"x,1\nb.png,Mass,2\n', [(3, "b.png")], [":2: malformed row: not readable CSV"]),
], ids=["multi-line field", "open on the last line", "text after a quote"])
def test_quoting_on_one_row(tmp_path, body, rows, problems):
    _, read, found = table(tmp_path, HEADER + body)
    assert read == rows
    assert len(found) == len(problems)
    assert all(expected in line for expected, line in zip(problems, found))


def test_long_values_are_cut_in_messages(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(HEADER + 'a.png,Mass,"1\n' + "2" * 500 + '"\n')
    row = next(read_table(path, COLUMNS, ConversionLog()))
    message = parse_numbers(row, ["x"])
    assert "is not a number" in message and len(message) < 100


def test_a_column_named_twice_is_refused(tmp_path):
    with pytest.raises(ConversionError, match=r"t\.csv:1: header names column 'x' 2 times "
                                              r"\(columns 3, 4\); keep one"):
        table(tmp_path, "image,label,x,x\na.png,Mass,1,2\n")


@pytest.mark.parametrize("text, message", [
    ("2_00", "x='2_00' is not a number"), ("1e400", "is not a finite number"),
    (" 2.5 ", None), ("-3", None)])
def test_numbers(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(f'{HEADER}a.png,Mass,"{text}"\n')
    result = parse_numbers(next(read_table(path, COLUMNS, ConversionLog())), ["x"])
    assert result == [float(text)] if message is None else message in result


@pytest.mark.parametrize("line, where", [
    ('{"image": "a.png", "report": "Nodule \\ud800 seen."}', "'report'"),
    ('{"image": "a.png", "findings": [{"phrase": "x\\udfff"}]}', "'findings[0].phrase'"),
    ('{"image\\ud800": "a.png"}', "key 'image\\ud800'"),
], ids=["value", "nested value", "key"])
def test_jsonl_lone_surrogates_are_row_problems(tmp_path, line, where):
    path = tmp_path / "r.jsonl"
    path.write_text(line + '\n{"image": "b.png", "report": "Clear \\ud83d\\ude00."}\n')
    log = ConversionLog()
    assert [n for n, _ in read_jsonl(path, log)] == [2]  # a surrogate pair is fine
    assert len(log.problems) == 1
    assert str(log.problems[0]).startswith(f"{path}:1: malformed row: {where} holds a lone "
                                           "surrogate")


def test_coco_entry_with_a_lone_surrogate_is_left_out(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"images": [{"id": 1, "file_name": "a\\ud800.png"}, {"id": 2, "file_name": '
                    '"b.png"}], "annotations": [], "categories": []}')
    log = ConversionLog()
    assert sorted(read_coco(path, log).imgs) == [2]
    assert str(log.problems[0]).startswith(f"{path}:images[0]: malformed row: 'file_name' holds "
                                           "a lone surrogate \\ud800")


def test_writer_keeps_the_old_file_when_a_row_cannot_be_written(tmp_path):
    out = tmp_path / "out.jsonl"
    write_jsonl([{"id": "old"}], out)
    with pytest.raises(UnicodeEncodeError):
        write_jsonl([{"id": "new"}, {"id": "x\ud800"}], out)
    assert rows_of(out) == {"old": {"id": "old"}}
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left


def test_reports_with_a_lone_surrogate_are_reported_before_writing(tmp_path, capsys):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("00000003_000.png", "00000004_000.png"):
        Image.new("L", (1024, 1024), 70).save(root / name)
    bbox, entry, reports = (tmp_path / n for n in ("bbox.csv", "entry.csv", "reports.jsonl"))
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00000003_000.png,Nodule,200,300,60,50,,,\n"
                    "00000004_000.png,Cardiomegaly,300,400,450,300,,,\n")
    entry.write_text("Image Index,Finding Labels,Follow-up #,Patient ID\n"
                     "00000003_000.png,Nodule,0,3\n00000004_000.png,Cardiomegaly,0,4\n")
    reports.write_text(json.dumps({"image": "00000003_000.png", "report": "Nodule \ud800."})
                       + "\n" + json.dumps({"image": "00000004_000.png",
                                            "report": "The heart is enlarged (cardiomegaly)."})
                       + "\n")
    out = tmp_path / "out.jsonl"
    code, err = convert(capsys, "chestxray8", "--bbox_csv", bbox, "--data_entry", entry,
                        "--image_root", root, "--reports", reports, "--out", out)
    assert code == 0
    assert f"{reports}:1: malformed row: 'report' holds a lone surrogate \\ud800" in err
    assert sorted(rows_of(out)) == ["00000004_000"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "U8"])
def test_read_text_places_a_bad_byte_after_a_byte_order_mark(tmp_path, encoding):
    path = tmp_path / "report.txt"
    path.write_bytes(b"\xef\xbb\xbfabc\nx\xffyz")
    with pytest.raises(TextDecodeError, match=r":2: not valid utf-8 \(byte 0xff at column 2\)"):
        read_text(path, encoding)
    path.write_bytes(b"\xef\xbb\xbfabc\n")
    assert read_text(path, encoding) == "abc\n"
