"""Annotation readers: canonical JSONL, reference .pth, and every bad-input case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from utils.annotations import AnnotationError, load_annotations
from utils.reference_pth import reference_to_canonical_rows
from utils.text_io import write_jsonl


def make_image(folder: Path, name: str, size: tuple[int, int] = (200, 100)) -> str:
    (folder / "images").mkdir(exist_ok=True)
    Image.new("L", size, 80).save(folder / "images" / name)
    return f"images/{name}"


def row(image: str, **changes) -> dict:
    base = {
        "id": image,
        "image": image,
        "patient": "p1",
        "report": "Small left effusion. No pneumothorax.",
        "findings": [{"phrase": "Small left effusion", "boxes": [[10, 20, 50, 60]]}],
        "task": "report",
        "question": "",
        "answer": "",
        "label": "",
    }
    base.update(changes)
    return base


def write(folder: Path, rows: list) -> Path:
    path = folder / "ann.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_valid_rows_are_normalised_by_real_image_size(tmp_path):
    image = make_image(tmp_path, "a.png", (200, 100))
    samples = load_annotations(write(tmp_path, [row(image)]))
    assert samples[0].width == 200 and samples[0].height == 100
    assert samples[0].findings[0].boxes[0] == pytest.approx((0.05, 0.2, 0.25, 0.6))


def test_every_problem_is_reported_with_file_and_row(tmp_path):
    good = make_image(tmp_path, "a.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    rows = [
        row(good),  # 1 ok
        row("images/missing.png", id="m"),  # 2 missing image
        row("images/broken.png", id="b"),  # 3 unreadable
        row(good, id="o", findings=[{"phrase": "x", "boxes": [[150, 20, 260, 60]]}]),  # 4 outside
        row(good, id="z", findings=[{"phrase": "x", "boxes": [[10, 20, 10, 60]]}]),  # 5 zero area
        row(good, id="n", findings=[{"phrase": " ", "boxes": [[10, 20, 30, 60]]}]),  # 6 no phrase
        row(good, id="e", report=""),  # 7 empty report
        {"id": "u", "img": good, "findings": []},  # 8 unknown schema
        "{not json",  # 9 invalid JSON
        row(good),  # 10 duplicate id
    ]
    path = write(tmp_path, rows)
    with pytest.raises(AnnotationError) as raised:
        load_annotations(path)
    by_row = {p.row: p.message for p in raised.value.problems}
    assert set(by_row) == {2, 3, 4, 5, 6, 7, 8, 9, 10}
    assert "does not exist" in by_row[2]
    assert "cannot be read" in by_row[3]
    assert "outside" in by_row[4]
    assert "zero or negative area" in by_row[5]
    assert "no phrase" in by_row[6]
    assert "empty report" in by_row[7]
    assert "unknown key" in by_row[8] or "missing key" in by_row[8]
    assert "invalid JSON" in by_row[9]
    assert "duplicate id" in by_row[10]
    assert all(p.file == str(path) for p in raised.value.problems)
    assert f"{path}:4:" in str(raised.value)


def test_skip_invalid_drops_and_counts(tmp_path, caplog):
    good = make_image(tmp_path, "a.png")
    path = write(tmp_path, [row(good), row("images/missing.png", id="m")])
    samples = load_annotations(path, skip_invalid=True)
    assert [s.id for s in samples] == [good]
    assert "dropped 1 invalid row(s), kept 1" in caplog.text


def test_unknown_file_schema(tmp_path):
    path = tmp_path / "ann.csv"
    path.write_text("a,b\n")
    with pytest.raises(AnnotationError, match="unknown schema"):
        load_annotations(path)
    bad_pth = tmp_path / "bad.pth"
    torch.save({"images": []}, bad_pth)
    with pytest.raises(AnnotationError, match="unknown schema"):
        load_annotations(bad_pth)


def test_reference_pth_round_trip(tmp_path):
    image = make_image(tmp_path, "a.png", (320, 320))
    data = {
        "image_paths": [image, image],
        "bboxes": [(64, 64, 128, 64), [(0, 0, 64, 64), (320, 320, 64, 64)]],
        "phrases": ["left effusion", "bilateral nodules"],
        "all_reports": [["Left effusion. Bilateral nodules."]] * 2,
    }
    torch.save(data, tmp_path / "ref.pth")
    read = reference_to_canonical_rows(tmp_path / "ref.pth")
    assert not read.problems and len(read.rows) == 1 and len(read.rows[0]["findings"]) == 2
    assert read.indices == [[0, 1]]
    samples = load_annotations(tmp_path / "ref.pth")
    first, second = samples[0].findings
    assert first.boxes[0] == pytest.approx((0.1, 0.1, 0.3, 0.2))  # 640-px frame → normalised
    assert len(second.boxes) == 2
    assert second.target_box() == pytest.approx((0.0, 0.0, 0.6, 0.6))
    out = tmp_path / "out.jsonl"
    write_jsonl([s.to_canonical(tmp_path) for s in samples], out)
    again = load_annotations(out, tmp_path)
    assert again[0].findings == samples[0].findings


@pytest.mark.parametrize("changes, where", [
    ({"report": "Small left \ud800 effusion."}, "'report'"),
    ({"findings": [{"phrase": "Small \udfff effusion", "boxes": [[10, 20, 50, 60]]}]},
     "'findings[0].phrase'"),
    ({"task": "vqa", "question": "Where \ud800?", "answer": "left"}, "'question'"),
    ({"image": "images/a\ud800.png"}, "'image'"),
], ids=["report", "phrase", "question", "image"])
def test_lone_surrogates_are_row_problems(tmp_path, changes, where):
    good = make_image(tmp_path, "a.png")
    path = write(tmp_path, [row(good), {**row(good, id="bad"), **changes}])  # "\\ud800" escapes
    with pytest.raises(AnnotationError) as raised:
        load_annotations(path)
    assert [(p.row, p.reason) for p in raised.value.problems] == [(2, "invalid text")]
    assert f"{path}:2: {where} holds a lone surrogate" in str(raised.value)
    assert [s.id for s in load_annotations(path, skip_invalid=True)] == [good]


@pytest.mark.parametrize("column, value, where", [
    ("image_paths", "images/a\ud800.png", "'image'"),
    ("phrases", "left \ud800 effusion", "'findings[0].phrase'"),
], ids=["image", "phrase"])
def test_lone_surrogates_in_reference_pth(tmp_path, column, value, where):
    images = [make_image(tmp_path, name, (320, 320)) for name in ("a.png", "b.png")]
    data = {"image_paths": images, "bboxes": [(64, 64, 128, 64), (0, 0, 64, 64)],
            "phrases": ["left effusion", "nodule"], "all_reports": [["Left effusion."]] * 2}
    data[column][1] = value
    torch.save(data, tmp_path / "ref.pth")
    with pytest.raises(AnnotationError) as raised:
        load_annotations(tmp_path / "ref.pth")
    assert f"ref.pth:1: {where} holds a lone surrogate" in str(raised.value)
