"""MS-CXR based converters (mscxr, msclass, diffvqa) on hand-written fixtures (official layouts)."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.convert_helpers import convert, rows_of
from utils.annotations import load_annotations

FIXTURES = Path(__file__).parent / "fixtures" / "convert" / "mscxr"
CSV = FIXTURES / "MS_CXR_Local_Alignment_v1.1.0.csv"
JSON = FIXTURES / "MS_CXR_Local_Alignment_v1.1.0.json"
A = "files/p10/p10000001/s50000001/aaaaaaaa-00000000-00000000-00000000-00000001.jpg"
B = "files/p10/p10000002/s50000002/bbbbbbbb-00000000-00000000-00000000-00000002.jpg"
E = "files/p12/p12000004/s52000004/eeeeeeee-00000000-00000000-00000000-00000004.jpg"


@pytest.fixture
def mimic_root(tmp_path: Path) -> Path:
    """A MIMIC-CXR-JPG-like tree with the fixture's images (B is stored at half its size)."""
    root = tmp_path / "mimic-cxr-jpg"
    for path, size in ((A, (800, 1000)), (B, (800, 1000)), (E, (100, 100))):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", size, 90).save(root / path)
    return root


def test_mscxr_csv_rows_boxes_reports_and_problems(tmp_path, mimic_root, capsys):
    out = tmp_path / "out" / "mscxr.jsonl"
    code, err = convert(capsys, "mscxr", "--annotations", CSV, "--image_root", mimic_root,
                        "--reports_root", FIXTURES / "reports", "--out", out)
    assert code == 0
    rows = rows_of(out)
    assert sorted(rows) == ["aaaaaaaa-00000000-00000000-00000000-00000001",
                            "bbbbbbbb-00000000-00000000-00000000-00000002"]
    a = rows["aaaaaaaa-00000000-00000000-00000000-00000001"]
    assert a["patient"] == "p10000001" and a["image"] == A and a["source"] == "MS-CXR"
    assert a["report"] == ("There is a small left apical pneumothorax. Small bilateral pleural "
                           "effusions are present. The cardiomediastinal silhouette is normal. "
                           "Small left apical pneumothorax.")
    assert a["findings"] == [
        {"phrase": "Small left apical pneumothorax", "boxes": [[500, 80, 650, 200]],
         "category": "Pneumothorax"},
        {"phrase": "Small bilateral pleural effusions",
         "boxes": [[80, 700, 280, 900], [520, 720, 720, 900]], "category": "Pleural Effusion"}]
    assert a["label"] == "Pneumothorax, Pleural Effusion"
    b = rows["bbbbbbbb-00000000-00000000-00000000-00000002"]
    # annotated on the 1600 x 2000 original, stored at 800 x 1000: boxes halve
    assert b["findings"][0]["boxes"] == [[200, 400, 600, 700]]
    assert (b["width"], b["height"]) == (800, 1000)
    samples = load_annotations(out, mimic_root)
    assert samples[0].findings[1].boxes[1] == pytest.approx((0.65, 0.72, 0.9, 0.9))
    lines = {line.split(": ")[0].rsplit(":", 1)[1]: line for line in err.splitlines()
             if str(CSV) in line}
    assert "duplicate row" in lines["7"] and "row 5" in lines["7"]
    assert "box beyond the image" in lines["8"] and "800x1000" in lines["8"]
    assert "malformed row" in lines["9"] and "'abc'" in lines["9"]
    assert "missing image" in lines["10"] and "does not exist" in lines["10"]
    assert "missing report" in lines["11"] and "s52000004.txt" in lines["11"]
    assert "malformed row" in lines["12"] and "12 fields" in lines["12"]
    assert "unexpected image path" in lines["13"]
    assert "wrote 2 row(s)" in err and "left out 7 input row(s)" in err
    assert "note: phrase not verbatim in its report: 1" in err


def test_mscxr_json_matches_csv(tmp_path, mimic_root, capsys):
    from_csv, from_json = tmp_path / "csv.jsonl", tmp_path / "json.jsonl"
    convert(capsys, "mscxr", "--annotations", CSV, "--image_root", mimic_root,
            "--reports_root", FIXTURES / "reports", "--out", from_csv)
    code, err = convert(capsys, "mscxr", "--annotations", JSON, "--image_root", mimic_root,
                        "--reports_root", FIXTURES / "reports", "--out", from_json)
    assert code == 0 and rows_of(from_csv) == rows_of(from_json)
    assert "json:6: box beyond the image" in err and "json:7: malformed row" in err


def test_mscxr_strict_writes_nothing(tmp_path, mimic_root, capsys):
    out = tmp_path / "mscxr.jsonl"
    code, err = convert(capsys, "mscxr", "--annotations", CSV, "--image_root", mimic_root,
                        "--reports_root", FIXTURES / "reports", "--out", out, "--strict")
    assert code == 2 and not out.exists() and "nothing written" in err


def test_mscxr_resize_and_by_split(tmp_path, mimic_root, capsys):
    out = tmp_path / "out" / "mscxr.jsonl"
    code, _ = convert(capsys, "mscxr", "--annotations", CSV, "--image_root", mimic_root,
                      "--reports_root", FIXTURES / "reports", "--out", out,
                      "--resize_max_side", 640, "--by_split")
    assert code == 0 and not out.exists()
    test = rows_of(out.with_name("mscxr_test.jsonl"))
    train = rows_of(out.with_name("mscxr_train.jsonl"))
    a = test["aaaaaaaa-00000000-00000000-00000000-00000001"]
    assert a["image"] == f"images/{A}" and (a["width"], a["height"]) == (512, 640)
    assert a["findings"][0]["boxes"] == [[320, 51.2, 416, 128]]
    with Image.open(out.parent / a["image"]) as image:
        assert image.size == (512, 640)
    assert list(train) == ["bbbbbbbb-00000000-00000000-00000000-00000002"]
    samples = load_annotations(out.with_name("mscxr_test.jsonl"))
    assert samples[0].findings[0].boxes[0] == pytest.approx((0.625, 0.08, 0.8125, 0.2))


def test_msclass_one_row_per_image_and_category(tmp_path, mimic_root, capsys):
    out = tmp_path / "msclass.jsonl"
    code, err = convert(capsys, "msclass", "--annotations", CSV, "--image_root", mimic_root,
                        "--out", out)
    assert code == 0
    rows = rows_of(out)
    effusion = rows["aaaaaaaa-00000000-00000000-00000000-00000001-pleural_effusion"]
    assert effusion["task"] == "class" and effusion["label"] == "Pleural Effusion"
    assert [f["phrase"] for f in effusion["findings"]] == ["Small bilateral pleural effusions"]
    assert len(rows) == 5  # A: 2 categories, B: 2, E: 1 (no report needed)
    assert {s.label for s in load_annotations(out, mimic_root)} == {
        "Pneumothorax", "Pleural Effusion", "Cardiomegaly", "Lung Opacity", "Pneumonia"}


def test_diffvqa_joins_questions_to_mscxr_boxes(tmp_path, mimic_root, capsys):
    qa = FIXTURES / "mimic_pair_questions.csv"
    out = tmp_path / "vqa.jsonl"
    code, err = convert(capsys, "diffvqa", "--qa_csv", qa, "--annotations", CSV,
                        "--image_root", mimic_root, "--out", out)
    assert code == 0
    rows = list(rows_of(out).values())
    by_question = {r["question"]: r for r in rows}
    both = by_question["what abnormalities are seen in this image?"]
    assert both["task"] == "vqa" and both["answer"] == "pleural effusion, pneumothorax"
    assert [f["category"] for f in both["findings"]] == ["Pneumothorax", "Pleural Effusion"]
    where = by_question["where is the pneumothorax?"]
    assert [f["phrase"] for f in where["findings"]] == ["Small left apical pneumothorax"]
    level = by_question["what level is the cardiomegaly?"]
    assert level["findings"][0]["boxes"] == [[200, 400, 600, 700]]
    assert level["patient"] == "p10000002"
    assert len(rows) == 3
    assert f"{qa}:9: duplicate question" in err
    assert f"{qa}:10: malformed row" in err
    assert f"{qa}:11: subject_id differs from MS-CXR" in err
    for reason in ("answer is 'no' (nothing to ground): 1", "question type not selected: 1",
                   "study has no MS-CXR boxes: 1", "names no MS-CXR category of the image: 1"):
        assert reason in err
    assert len(load_annotations(out, mimic_root)) == 3
