"""COCO detection JSON + phrase map converter."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.convert_helpers import convert, rows_of
from utils.annotations import load_annotations

FIXTURES = Path(__file__).parent / "fixtures" / "convert" / "coco"
COCO = FIXTURES / "instances.json"


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """a.png stored at twice the COCO size (400 x 200); b.png and c.png at 200 x 100."""
    root = tmp_path / "coco"
    (root / "imgs").mkdir(parents=True)
    Image.new("L", (400, 200), 60).save(root / "imgs" / "a.png")
    for name in ("b.png", "c.png"):
        Image.new("L", (200, 100), 60).save(root / "imgs" / name)
    return root


def test_templated_phrases_scaled_boxes_and_problems(tmp_path, image_root, capsys):
    out = tmp_path / "coco.jsonl"
    code, err = convert(capsys, "coco", "--coco", COCO, "--phrases", FIXTURES / "phrases.json",
                        "--image_root", image_root, "--out", out)
    assert code == 0
    rows = rows_of(out)
    assert sorted(rows) == ["imgs/a", "imgs/b"]
    a = rows["imgs/a"]
    assert a["templated"] is True and a["patient"] == "a"
    assert a["findings"] == [
        {"phrase": "Nodule in the right upper lung zone", "boxes": [[40, 20, 100, 60]],
         "category": "nodule"},
        {"phrase": "Left pleural effusion", "boxes": [[300, 120, 380, 180]],
         "category": "effusion"}]
    assert a["report"] == "Nodule in the right upper lung zone. Left pleural effusion."
    assert rows["imgs/b"]["patient"] == "patient-b"
    assert len(load_annotations(out, image_root)) == 2
    for row, what in ((3, "duplicate annotation"), (4, "category without a phrase"),
                      (5, "box beyond the image"), (6, "malformed row"), (8, "missing image")):
        assert f"{COCO}:{row}: {what}" in err
    assert "image without annotations or report: 1" in err


def test_user_reports(tmp_path, image_root, capsys):
    out = tmp_path / "coco.jsonl"
    code, _ = convert(capsys, "coco", "--coco", COCO, "--phrases", FIXTURES / "phrases.json",
                      "--image_root", image_root, "--reports", FIXTURES / "reports.jsonl",
                      "--out", out)
    assert code == 0
    rows = rows_of(out)
    assert [f["phrase"] for f in rows["imgs/a"]["findings"]] == [
        "Small nodule in the right upper lung", "Left pleural effusion is present"]
    assert rows["imgs/c"]["findings"] == [] and "templated" not in rows["imgs/c"]
    assert len(load_annotations(out, image_root)) == 3


def test_bad_phrase_map_fails_before_writing(tmp_path, image_root, capsys):
    phrases = tmp_path / "phrases.json"
    phrases.write_text(json.dumps({"nodule": "Nodule in the {lobe}"}))
    out = tmp_path / "coco.jsonl"
    code, err = convert(capsys, "coco", "--coco", COCO, "--phrases", phrases,
                        "--image_root", image_root, "--out", out)
    assert code == 2 and not out.exists() and "'nodule'" in err and "{side}" in err


def coco_with(tmp_path: Path, **changes: dict) -> Path:
    """The fixture COCO file with entries changed: ``images={1: {"id": 1}}`` updates images[1]."""
    data = json.loads(COCO.read_text())
    for key, entries in changes.items():
        for position, values in entries.items():
            data[key][position].update(values)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("key", ["images", "categories", "annotations"])
def test_repeated_ids_fail_naming_the_list_and_index(tmp_path, image_root, capsys, key):
    coco = coco_with(tmp_path, **{key: {2: {"id": 1}}})
    out = tmp_path / "coco.jsonl"
    code, err = convert(capsys, "coco", "--coco", coco, "--phrases", FIXTURES / "phrases.json",
                        "--image_root", image_root, "--out", out)
    assert code == 2 and not out.exists() and "nothing written" in err
    assert f"{coco}: {key}[2] repeats id 1 ({key}[0])" in err and "own id" in err


@pytest.mark.parametrize("width, height", [(400, 100), (200, 200), (100, 100), (203, 100)])
def test_boxes_are_not_stretched_to_another_aspect_ratio(tmp_path, image_root, capsys, width,
                                                         height):
    """a.png is 400 x 200 on disk; b.png (200 x 100, declared so) is still converted."""
    coco = coco_with(tmp_path, images={0: {"width": width, "height": height}})
    out = tmp_path / "coco.jsonl"
    code, err = convert(capsys, "coco", "--coco", coco, "--phrases", FIXTURES / "phrases.json",
                        "--image_root", image_root, "--out", out)
    assert code == 0 and sorted(rows_of(out)) == ["imgs/b"]
    assert f"{coco}:1: image of another aspect ratio: image id 1 (imgs/a.png)" in err
    assert f"{width}x{height} image" in err and "on disk is 400x200" in err


@pytest.mark.parametrize("template", ["Nodule {side[0]}", "Nodule {side.upper}",
                                      "Nodule {side!r}", "Nodule {zone:>9}"])
def test_template_fields_must_be_plain_names(tmp_path, image_root, capsys, template):
    phrases = tmp_path / "phrases.json"
    phrases.write_text(json.dumps({"nodule": template, "effusion": "Effusion"}))
    out = tmp_path / "coco.jsonl"
    code, err = convert(capsys, "coco", "--coco", COCO, "--phrases", phrases,
                        "--image_root", image_root, "--out", out)
    field = template[template.index("{"):]
    assert code == 2 and not out.exists()
    assert f"phrase of 'nodule' ({template!r}) uses the field {field}" in err
    assert "only the plain fields {side} and {zone}" in err
