"""NIH ChestX-ray8 converter: fixtures in the official layouts, and real radiographs end to end."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.convert_helpers import convert, rows_of
from utils.annotations import load_annotations

FIXTURES = Path(__file__).parent / "fixtures" / "convert" / "chestxray8"
BBOX = FIXTURES / "BBox_List_2017.csv"
ENTRY = FIXTURES / "Data_Entry_2017.csv"


@pytest.fixture
def nih_root(tmp_path: Path) -> Path:
    """00000003 at the released 1024 px, 00000004 and 00000005 as 512-px copies."""
    root = tmp_path / "images"
    root.mkdir()
    for name, size in (("00000003_000.png", 1024), ("00000004_000.png", 512),
                       ("00000005_000.png", 512)):
        Image.new("L", (size, size), 70).save(root / name)
    return root


def test_templated_reports_boxes_and_problems(tmp_path, nih_root, capsys):
    out = tmp_path / "cxr8.jsonl"
    code, err = convert(capsys, "chestxray8", "--bbox_csv", BBOX, "--data_entry", ENTRY,
                        "--image_root", nih_root, "--out", out)
    assert code == 0
    rows = rows_of(out)
    assert sorted(rows) == ["00000003_000", "00000004_000"]
    three = rows["00000003_000"]
    assert three["templated"] is True and three["patient"] == "3"
    assert [f["phrase"] for f in three["findings"]] == [
        "Nodule in the right upper lung zone", "Left pleural effusion",
        "Nodule in the right lower lung zone"]
    assert three["report"] == ("Nodule in the right upper lung zone. Left pleural effusion. "
                               "Nodule in the right lower lung zone.")
    assert three["findings"][0]["boxes"] == [[200.5, 300.25, 260.5, 350.25]]
    four = rows["00000004_000"]  # 512-px copy: the 1024-px box halves
    assert four["findings"] == [{"phrase": "Cardiomegaly", "boxes": [[150, 200, 375, 350]],
                                 "category": "Cardiomegaly"}]
    assert len(load_annotations(out, nih_root)) == 2
    for where, what in ((f"{ENTRY}:6", "duplicate row"), (f"{BBOX}:6", "duplicate row"),
                        (f"{BBOX}:7", "box beyond the image"), (f"{BBOX}:8", "missing image"),
                        (f"{BBOX}:9", "no Data_Entry row"), (f"{BBOX}:10", "unknown finding label"),
                        (f"{BBOX}:11", "malformed row"), (f"{BBOX}:12", "malformed row")):
        assert f"{where}: {what}" in err
    assert "wrote 2 row(s)" in err


def test_user_reports_give_verbatim_sentences(tmp_path, nih_root, capsys):
    out = tmp_path / "cxr8.jsonl"
    code, err = convert(capsys, "chestxray8", "--bbox_csv", BBOX, "--data_entry", ENTRY,
                        "--image_root", nih_root, "--reports", FIXTURES / "reports.csv",
                        "--out", out)
    assert code == 0
    rows = rows_of(out)
    three = rows["00000003_000"]
    assert "templated" not in three
    assert [f["phrase"] for f in three["findings"]] == [
        "A small nodule projects over the right upper lung", "Moderate left pleural effusion"]
    assert len(three["findings"][0]["boxes"]) == 2  # both nodules: the one sentence that names them
    for finding in three["findings"]:
        assert finding["phrase"] in three["report"]
    assert rows["00000004_000"]["findings"][0]["phrase"] == \
        "The heart is enlarged, consistent with cardiomegaly"
    assert len(load_annotations(out, nih_root)) == 2


def test_jsonl_reports_missing_and_unnamed_findings_are_reported(tmp_path, nih_root, capsys):
    reports = FIXTURES / "reports.jsonl"
    code, err = convert(capsys, "chestxray8", "--bbox_csv", BBOX, "--data_entry", ENTRY,
                        "--image_root", nih_root, "--reports", reports,
                        "--out", tmp_path / "cxr8.jsonl")
    assert code == 0
    assert f"{reports}:2: duplicate report" in err
    assert f"{BBOX}:3: finding not named in its report" in err  # "No effusion is seen."
    assert f"{BBOX}:5: no report" in err  # 00000004 has none
    strict = tmp_path / "strict.jsonl"
    code, err = convert(capsys, "chestxray8", "--bbox_csv", BBOX, "--data_entry", ENTRY,
                        "--image_root", nih_root, "--reports", reports, "--out", strict, "--strict")
    assert code == 2 and not strict.exists()


def test_real_radiographs_end_to_end(tmp_path, nih_images, capsys):
    """A 1024-px BBox_List box on the real 512-px NIH copies: pixels -> normalised -> pixels."""
    root = tmp_path / "images"
    root.mkdir()
    for image in nih_images:
        shutil.copy(image, root / image.name)
    names = sorted(p.name for p in nih_images)
    assert names == ["00000001_000.png", "00027426_000.png"]
    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00000001_000.png,Cardiomegaly,256,400,512,300,,,\n"
                    "00027426_000.png,Nodule,600,300,80,80,,,\n")
    entry = tmp_path / "Data_Entry_2017.csv"
    entry.write_text(ENTRY.read_text().splitlines()[0] + "\n"
                     "00000001_000.png,Cardiomegaly|Emphysema,0,1,58,M,PA,2682,2749,0.143,0.143\n"
                     "00027426_000.png,Nodule,0,27426,50,F,PA,2992,2991,0.143,0.143\n")
    out = tmp_path / "cxr8.jsonl"
    code, _ = convert(capsys, "chestxray8", "--bbox_csv", bbox, "--data_entry", entry,
                      "--image_root", root, "--out", out)
    assert code == 0
    samples = {s.id: s for s in load_annotations(out, root)}
    heart = samples["00000001_000"]
    assert (heart.width, heart.height) == (512, 512) and heart.patient == "1"
    assert heart.findings[0].boxes[0] == pytest.approx((0.25, 400 / 1024, 0.75, 700 / 1024))
    assert heart.to_canonical(root)["findings"][0]["boxes"] == [[128, 200, 384, 350]]
    nodule = samples["00027426_000"]
    assert nodule.findings[0].phrase == "Nodule in the left upper lung zone"  # image right
    assert nodule.to_canonical(root)["findings"][0]["boxes"] == [[300, 150, 340, 190]]


@pytest.mark.parametrize("size", [(1024, 800), (512, 1024), (1024, 1021)])
def test_boxes_are_not_stretched_to_a_non_square_image(tmp_path, nih_root, capsys, size):
    """00000003 on disk at ``size`` against the square 1024-px frame: its lines are refused;
    00000004 (a 512-px copy) is converted."""
    Image.new("L", size, 70).save(nih_root / "00000003_000.png")
    out = tmp_path / "cxr8.jsonl"
    code, err = convert(capsys, "chestxray8", "--bbox_csv", BBOX, "--data_entry", ENTRY,
                        "--image_root", nih_root, "--out", out)
    assert code == 0 and sorted(rows_of(out)) == ["00000004_000"]
    assert f"{BBOX}:2: image of another aspect ratio: 00000003_000.png: the boxes are in " \
           f"pixels of a 1024x1024 image, but the image on disk is {size[0]}x{size[1]}" in err
    assert "(--box_frame 1024); line(s) 2, 3, 4 left out" in err
    assert "image of another aspect ratio: 3" in err
    code, err = convert(capsys, "chestxray8", "--bbox_csv", BBOX, "--data_entry", ENTRY,
                        "--image_root", nih_root, "--out", out, "--stretched_copies")
    assert code == 0 and sorted(rows_of(out)) == ["00000003_000", "00000004_000"]
    assert "boxes scaled per axis (--stretched_copies): 1" in err
