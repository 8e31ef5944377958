"""MS-CXR based converters (mscxr, msclass, diffvqa) on hand-written fixtures (official layouts)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.convert_helpers import convert, rows_of
from tests.test_image_io import write_dicom
from utils.annotations import load_annotations
from utils.image_io import read_image

FIXTURES = Path(__file__).parent / "fixtures" / "convert" / "mscxr"
CSV = FIXTURES / "MS_CXR_Local_Alignment_v1.1.0.csv"
JSON = FIXTURES / "MS_CXR_Local_Alignment_v1.1.0.json"
A = "files/p10/p10000001/s50000001/aaaaaaaa-00000000-00000000-00000000-00000001.jpg"
B = "files/p10/p10000002/s50000002/bbbbbbbb-00000000-00000000-00000000-00000002.jpg"
E = "files/p12/p12000004/s52000004/eeeeeeee-00000000-00000000-00000000-00000004.jpg"
A_ID, B_ID = A.rsplit("/", 1)[1][:-4], B.rsplit("/", 1)[1][:-4]


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


def clean_csv(tmp_path: Path, *replace: tuple[str, str]) -> Path:
    """The fixture CSV's rows without problems (A: lines 2-4, B: lines 5-6), with text replaced
    in A's lines."""
    lines = CSV.read_text().splitlines()[:6]
    for old, new in replace:
        lines[1:4] = [line.replace(old, new) for line in lines[1:4]]
    path = tmp_path / "ms_cxr.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def mscxr_args(annotations: Path, image_root: Path, out: Path) -> list[object]:
    return ["mscxr", "--annotations", annotations, "--image_root", image_root,
            "--reports_root", FIXTURES / "reports", "--out", out]


@pytest.mark.parametrize("key", ["images", "categories", "annotations"])
def test_json_repeated_ids_fail_naming_the_list_and_index(tmp_path, mimic_root, capsys, key):
    data = json.loads(JSON.read_text())
    data[key][1]["id"] = 1
    path = tmp_path / "ms_cxr.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "mscxr.jsonl"
    code, err = convert(capsys, *mscxr_args(path, mimic_root, out))
    assert code == 2 and not out.exists() and "nothing written" in err
    assert f"{path}: {key}[1] repeats id 1 ({key}[0])" in err


@pytest.mark.parametrize("size", [(1000, 800), (400, 1000), (403, 500)])
def test_boxes_are_not_stretched_to_another_aspect_ratio(tmp_path, mimic_root, capsys, size):
    """A (annotated at 800 x 1000) on disk at ``size`` is refused, row by row; B (1600 x 2000)
    stored at 801 x 1000, a resized copy within a pixel, is converted."""
    Image.new("L", size, 90).save(mimic_root / A)
    Image.new("L", (801, 1000), 90).save(mimic_root / B)
    csv = clean_csv(tmp_path)
    out = tmp_path / "mscxr.jsonl"
    code, err = convert(capsys, *mscxr_args(csv, mimic_root, out))
    assert code == 0 and list(rows_of(out)) == [B_ID]
    assert rows_of(out)[B_ID]["findings"][0]["boxes"] == [[200.25, 400, 600.75, 700]]
    for line in (2, 3, 4):
        assert f"{csv}:{line}: image of another aspect ratio: {A}: the boxes are in pixels of " \
               f"a 800x1000 image, but the image on disk is {size[0]}x{size[1]}" in err


def test_stretched_copies_scale_the_boxes_per_axis(tmp_path, mimic_root, capsys):
    """With --stretched_copies, A (annotated at 800 x 1000) stored stretched to 400 x 400 is
    converted with its boxes scaled per axis, and counted."""
    Image.new("L", (400, 400), 90).save(mimic_root / A)
    out = tmp_path / "mscxr.jsonl"
    code, err = convert(capsys, *mscxr_args(clean_csv(tmp_path), mimic_root, out),
                        "--stretched_copies")
    assert code == 0 and "image of another aspect ratio" not in err.replace(
        "image of another aspect ratio, boxes scaled per axis (--stretched_copies): 3", "")
    row = next(r for r in rows_of(out).values() if r["image"] == A)
    assert (row["width"], row["height"]) == (400, 400)


def truncated_jpeg(path: Path) -> str:
    noise = np.random.default_rng(0).integers(0, 256, (1000, 800), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return "cannot be decoded (image file is truncated"


def dicom(path: Path) -> str:
    write_dicom(path, np.full((1000, 800), 900, dtype=np.uint16))
    return "--resize_max_side does not copy DICOM"


def nan_float(path: Path) -> str:
    values = np.full((1000, 800), 0.5, dtype=np.float32)
    values[0, 0] = np.nan
    Image.fromarray(values, "F").save(path, format="TIFF")
    return "holds non-finite pixel values (NaN or inf)"


@pytest.mark.parametrize("write", [truncated_jpeg, dicom, nan_float])
def test_resize_reports_undecodable_images_and_leaves_no_copies(tmp_path, mimic_root, capsys,
                                                                 write):
    message = write(mimic_root / A)
    csv = clean_csv(tmp_path)
    out = tmp_path / "out" / "mscxr.jsonl"
    code, err = convert(capsys, *mscxr_args(csv, mimic_root, out), "--resize_max_side", 640)
    assert code == 0 and list(rows_of(out)) == [B_ID]
    assert f"{csv}:2: unreadable image: image {mimic_root / A}" in err and message in err
    strict = tmp_path / "strict" / "mscxr.jsonl"
    (strict.parent / "images").mkdir(parents=True)
    (strict.parent / "images" / "other.png").write_bytes(b"kept")
    code, err = convert(capsys, *mscxr_args(csv, mimic_root, strict), "--resize_max_side", 640,
                        "--strict")
    assert code == 2 and "removed the image copies this run wrote (1)" in err
    assert [p.name for p in strict.parent.rglob("*") if p.is_file()] == ["other.png"]


@pytest.mark.parametrize("image", [Image.new("RGBA", (800, 1000), (90, 90, 90, 128)),
                                   Image.new("LA", (800, 1000), (90, 128)),
                                   Image.new("L", (800, 1000), 90).convert("P")],
                         ids=["RGBA", "LA", "P"])
def test_resize_writes_png_modes_that_jpeg_cannot_hold(tmp_path, mimic_root, capsys, image):
    """PNG content under a .jpg name: the JPEG copy holds the pixels the reader sees."""
    image.save(mimic_root / A, format="PNG")
    out = tmp_path / "out" / "mscxr.jsonl"
    code, err = convert(capsys, *mscxr_args(clean_csv(tmp_path), mimic_root, out),
                        "--resize_max_side", 640)
    assert code == 0, err
    copy = out.parent / rows_of(out)[A_ID]["image"]
    with Image.open(copy) as written:
        assert (written.format, written.size) == ("JPEG", (512, 640))
        assert written.mode in ("L", "RGB")
    assert np.abs(read_image(copy).astype(int) - 90).max() <= 1


@pytest.mark.parametrize("split", ["train/val", "validation", ".."])
def test_by_split_refuses_split_values_that_are_not_train_val_test(tmp_path, mimic_root, capsys,
                                                                   split):
    csv = clean_csv(tmp_path, (",test", f",{split}"))
    out = tmp_path / "out" / "mscxr.jsonl"
    code, err = convert(capsys, *mscxr_args(csv, mimic_root, out), "--by_split")
    assert code == 0 and [p.name for p in out.parent.iterdir()] == ["mscxr_train.jsonl"]
    assert list(rows_of(out.with_name("mscxr_train.jsonl"))) == [B_ID]
    assert f"{csv}:2: unknown split: --by_split, but split {split!r} is not one of train, " \
           "val, test" in err


@pytest.mark.parametrize("names", [("气胸", "胸腔积液"), ("Lung Opacity", "lung-opacity"),
                                   ("?", "!")])
def test_msclass_ids_are_distinct_for_distinct_categories(tmp_path, mimic_root, capsys, names):
    csv = clean_csv(tmp_path, ("Pneumothorax", names[0]), ("Pleural Effusion", names[1]))
    out = tmp_path / "msclass.jsonl"
    code, err = convert(capsys, "msclass", "--annotations", csv, "--image_root", mimic_root,
                        "--out", out)
    assert code == 0 and "duplicate output id" not in err
    labels = {s.id: s.label for s in load_annotations(out, mimic_root)}
    assert len(labels) == 4 and {*names, "Cardiomegaly", "Lung Opacity"} == set(labels.values())
    assert all(i.startswith((f"{A_ID}-", f"{B_ID}-")) and not i.endswith("-") for i in labels)
