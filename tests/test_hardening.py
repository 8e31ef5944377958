"""Every bad input of issue #16 gets a file:row error or a counted skip: one case a line.

The tables read as the list of cases handled: readers (canonical JSONL, reference .pth),
converters, the SAM checkpoint loader and test.py.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import test as test_script
from model.sam_encoder import SAM_TINY_CONFIG, build_sam, load_sam_checkpoint, save_sam_checkpoint
from tests.convert_helpers import convert, rows_of
from utils.annotations import AnnotationError, load_annotations
from utils.prompts import question_text
from utils.reference_pth import split_transcript

GOOD_BOX = [10, 20, 50, 60]


def make_image(path: Path, size: tuple[int, int] = (200, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 80).save(path)
    return path


def canonical(image: str = "images/a.png", **changes) -> dict:
    row = {
        "id": "r1",
        "image": image,
        "patient": "p1",
        "report": "Small left effusion.",
        "findings": [{"phrase": "Small left effusion", "boxes": [GOOD_BOX]}],
        "task": "report",
    }
    row.update(changes)
    return row


def jsonl(folder: Path, *lines: str | bytes | dict) -> Path:
    path = folder / "ann.jsonl"
    data = b"".join(
        (
            line
            if isinstance(line, bytes)
            else (line if isinstance(line, str) else json.dumps(line)).encode()
        )
        + b"\n"
        for line in lines
    )
    path.write_bytes(data)
    return path


def problems_of(path: Path, **kwargs) -> str:
    with pytest.raises(AnnotationError) as error:
        load_annotations(path, **kwargs)
    return str(error.value)


@pytest.fixture
def root(tmp_path) -> Path:
    make_image(tmp_path / "images" / "a.png")
    make_image(tmp_path.parent / f"{tmp_path.name}_outside.png")
    return tmp_path


# ----------------------------------------------------------------------- canonical JSONL reader
def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


JSONL_CASES = [
    # (case, line 2 of the file, expected message)
    (
        "NaN box",
        json.dumps(canonical(findings=[{"phrase": "x", "boxes": [[float("nan"), 1, 2, 3]]}])),
        "not 4 finite numbers",
    ),
    (
        "inf box",
        json.dumps(canonical(findings=[{"phrase": "x", "boxes": [[0, 1, float("inf"), 3]]}])),
        "not 4 finite numbers",
    ),
    (
        "1e999 box",
        '{"id": "r2", "image": "images/a.png", "report": "x", "findings": '
        '[{"phrase": "x", "boxes": [[0, 1, 1e999, 3]]}]}',
        "not 4 finite numbers",
    ),
    (
        "bool box",
        json.dumps(canonical(findings=[{"phrase": "x", "boxes": [[True, 1, 2, 3]]}])),
        "not 4 finite numbers",
    ),
    ("huge integer literal", '{"id": ' + "9" * 5000 + "}", "unusable JSON value"),
    ("deep nesting", _nested(100_000), "nested too deeply"),
    (
        "non-UTF-8 bytes",
        b'{"id": "r2", "report": "caf\xe9"}',
        "not valid utf-8 (byte 0xe9 at column 28)",
    ),
    ("invalid JSON", "{not json", "invalid JSON"),
    ("not an object", "[1, 2]", "expected a JSON object, got list"),
    (
        "report not a string",
        json.dumps(canonical(id="r2", report=["x"])),
        "'report' must be a string",
    ),
    (
        "width not a number",
        json.dumps(canonical(id="r2", width="abc")),
        "'width' must be a positive integer",
    ),
    (
        "width without height",
        json.dumps(canonical(id="r2", width=400)),
        "'width' and 'height' are the frame of the boxes: give both, or neither",
    ),
    ("id an object", json.dumps(canonical(id={"a": 1})), "'id' must be a non-empty string"),
    (
        "findings not a list",
        json.dumps(canonical(id="r2", findings={"phrase": "x"})),
        "'findings' must be a list",
    ),
    (
        "image not a string",
        json.dumps(canonical(id="r2", image=5)),
        "'image' must be a non-empty path",
    ),
    ("../ path", json.dumps(canonical(id="r2", image="../{outside}")), "outside the image root"),
    (
        "absolute path",
        json.dumps(canonical(id="r2", image="{root_parent}/{outside}")),
        "outside the image root",
    ),
    (
        "declared size differs",
        json.dumps(canonical(id="r2", width=400, height=200)),
        "declared width x height 400x200 differ",
    ),
    ("missing image", json.dumps(canonical(id="r2", image="images/none.png")), "does not exist"),
]


@pytest.mark.parametrize("case, line, message", JSONL_CASES, ids=[c[0] for c in JSONL_CASES])
def test_canonical_reader_reports_file_and_row(root, case, line, message):
    if isinstance(line, str):
        line = line.replace("{outside}", f"{root.name}_outside.png").replace(
            "{root_parent}", str(root.parent)
        )
    path = jsonl(root, canonical(), line)
    text = problems_of(path)
    assert f"{path}:2: " in text and message in text, text
    samples = load_annotations(path, skip_invalid=True)  # the good row survives, counted skip
    assert [s.id for s in samples] == ["r1"]


def test_outside_root_flag_and_symlinks(root):
    outside = f"{root.name}_outside.png"
    os.symlink(root.parent / outside, root / "images" / "link_out.png")
    os.symlink(root / "images" / "a.png", root / "images" / "link_in.png")
    path = jsonl(
        root,
        canonical(),
        canonical(id="r2", image="images/link_in.png"),
        canonical(id="r3", image="images/link_out.png"),
        canonical(id="r4", image=f"../{outside}"),
    )
    text = problems_of(path)
    assert f"{path}:3: " in text and f"{path}:4: " in text and f"{path}:2: " not in text
    assert "--allow_outside_root" in text
    assert len(load_annotations(path, allow_outside_root=True)) == 4


def test_declared_size_fix_is_counted_and_rescales(root, caplog):
    path = jsonl(root, canonical(width=400, height=200))  # boxes given in a 400 x 200 frame
    sample = load_annotations(path, fix_declared_size=True)[0]
    assert (sample.width, sample.height) == (200, 100)
    assert sample.findings[0].boxes[0] == pytest.approx((10 / 400, 20 / 200, 50 / 400, 60 / 200))
    assert "1 row(s) with a declared size" in caplog.text
    assert load_annotations(jsonl(root, canonical(width=200, height=100)))  # agreeing: fine


def test_pixel_limit_is_a_row_error_or_a_counted_skip(root, caplog):
    make_image(root / "images" / "big.png", (300, 300))
    path = jsonl(root, canonical(), canonical(id="r2", image="images/big.png"))
    text = problems_of(path, max_image_pixels=50_000)
    assert f"{path}:2: " in text and "--max_image_pixels" in text
    assert len(load_annotations(path, skip_invalid=True, max_image_pixels=50_000)) == 1
    assert "dropped 1 invalid row(s), kept 1" in caplog.text


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "holds no annotation rows"),
        (["", "   "], "holds no annotation rows"),
        ([json.dumps(canonical(image="images/none.png"))], "has no valid row left"),
    ],
)
def test_empty_or_emptied_split_names_the_file(root, lines, message):
    path = jsonl(root, *lines) if lines else root / "ann.jsonl"
    if not lines:
        path.write_bytes(b"")
    for skip in (False, True):
        text = problems_of(path, skip_invalid=skip)
        assert f"{path}: the split {message}" in text and "--skip_invalid" not in text


def test_utf8_bom_and_other_encodings(root):
    row = json.dumps(canonical(report="Café effusion."), ensure_ascii=False)
    (root / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + row.encode())
    assert load_annotations(root / "bom.jsonl")[0].report == "Café effusion."
    (root / "latin.jsonl").write_bytes(row.encode("latin-1"))
    assert "not valid utf-8" in problems_of(root / "latin.jsonl")
    assert load_annotations(root / "latin.jsonl", encoding="latin-1")[0].report == "Café effusion."


# ------------------------------------------------------------------------- reference .pth reader
def ref(**columns) -> dict:
    data = {
        "image_paths": ["images/a.png"],
        "bboxes": [(64, 64, 128, 64)],
        "phrases": ["left effusion"],
        "all_reports": [["Left effusion."]],
    }
    data.update(columns)
    return data


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


PTH_CASES = [
    ("NaN bbox", ref(bboxes=[(float("nan"), 1, 2, 3)]), ":0: bbox", "not a finite number"),
    (
        "inf in a nested bbox",
        ref(bboxes=[[(1, 1, 2, 2), (1, float("inf"), 2, 2)]], phrases=[["a", "b"]]),
        ":0: bbox",
        "not a finite number",
    ),
    (
        "None in a nested bbox",
        ref(bboxes=[[(1, 1, 2, 2), (None, 1, 2, 2)]], phrases=[["a", "b"]]),
        ":0: bbox",
        "not a finite number",
    ),
    ("image_paths an int", ref(image_paths=5), ": column(s) ['image_paths'] must be lists", ""),
    ("ragged lists", ref(phrases=["a", "b"]), ": the lists have different lengths", ""),
    ("phrase not a string", ref(phrases=[None]), ":0: 1 box(es) but phrases None", ""),
    ("report not a string", ref(all_reports=[[5]]), ":0: image path", "are not strings"),
    ("no text column", {"image_paths": [], "bboxes": [], "phrases": []}, ": unknown schema", ""),
    ("a list", [("a.png", "x")], ": expected a dict of lists, got list", ""),
    ("MedRPG's list of 8-tuples", [(1, 2, 3, "a.png", (1, 1, 5, 5), 10, 10, "mass")],
     ": expected a dict of lists, got list", "as MedRPG's (anno_id, image_id"),
    ("zero-area box", ref(bboxes=[(1, 1, 0, 5)]), ":0: finding 0", "zero or negative area"),
]


@pytest.mark.parametrize("case, data, where, message", PTH_CASES, ids=[c[0] for c in PTH_CASES])
def test_reference_reader_reports_file_and_row(root, case, data, where, message):
    path = root / "ref.pth"
    torch.save(data, path)
    text = problems_of(path)
    assert f"{path}{where}" in text and message in text, text


def test_pickle_payload_in_a_pth_is_refused_with_the_path(root, capsys):
    path = root / "evil.pth"
    path.write_bytes(pickle.dumps(Payload()))
    text = problems_of(path)
    assert f"{path}: cannot be read with torch.load(weights_only=True)" in text
    assert "pickled code ran" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------ converters
def coco_files(folder: Path, annotations: list, images: list | None = None) -> list[str]:
    make_image(folder / "img" / "tb" / "tb0005.png", (100, 100))
    images = images or [{"id": 1, "file_name": "tb/tb0005.png", "width": 100, "height": 100}]
    (folder / "coco.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "nodule"}],
            }
        )
    )
    (folder / "phrases.json").write_text(json.dumps({"nodule": "Nodule in the {side} lung"}))
    return [
        "coco",
        "--coco",
        folder / "coco.json",
        "--phrases",
        folder / "phrases.json",
        "--image_root",
        folder / "img",
        "--out",
        folder / "out" / "coco.jsonl",
    ]


def ann(ann_id: int, bbox: list, **changes) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": bbox, **changes}


COCO_CASES = [
    ("NaN bbox", [ann(1, [float("nan"), 1, 5, 5])], "coco.json:1: malformed row"),
    ("inf bbox", [ann(1, [1, 1, float("inf"), 5])], "coco.json:1: malformed row"),
    ("string bbox", [ann(1, ["1", 1, 5, 5])], "coco.json:1: malformed row"),
    ("image_id a list", [ann(1, [1, 1, 5, 5], image_id=[1])], "coco.json:annotations[1]"),
]


@pytest.mark.parametrize("case, annotations, message", COCO_CASES, ids=[c[0] for c in COCO_CASES])
def test_coco_converter_never_writes_a_bad_box(tmp_path, capsys, case, annotations, message):
    argv = coco_files(tmp_path, [ann(2, [10, 10, 20, 20])] + annotations)
    code, err = convert(capsys, *argv)
    assert code == 0 and message in err, err
    rows = rows_of(tmp_path / "out" / "coco.jsonl")
    assert [b for r in rows.values() for f in r["findings"] for b in f["boxes"]] == [
        [10, 10, 30, 30]
    ]


@pytest.mark.parametrize(
    "case, images, message",
    [
        (
            "width not a number",
            [{"id": 1, "file_name": "tb/tb0005.png", "width": "abc", "height": 100}],
            "width/height ('abc', 100) are not positive finite numbers",
        ),
        (
            "image outside the root",
            [{"id": 1, "file_name": "../../outside.png"}],
            "outside the image root",
        ),
    ],
)
def test_coco_unusable_input_exits_2_and_writes_nothing(tmp_path, capsys, case, images, message):
    make_image(tmp_path / "outside.png")
    argv = coco_files(tmp_path, [ann(1, [10, 10, 20, 20])], images)
    code, err = convert(capsys, *argv)
    assert code == 2 and message in err and "nothing written" in err, err
    assert not (tmp_path / "out" / "coco.jsonl").exists()


def test_coco_two_entries_for_one_image_are_not_written_twice(tmp_path, capsys):
    images = [{"id": 1, "file_name": "tb/tb0005.png"}, {"id": 2, "file_name": "tb/tb0005.png"}]
    argv = coco_files(
        tmp_path, [ann(1, [10, 10, 20, 20]), ann(2, [30, 30, 20, 20], image_id=2)], images
    )
    code, err = convert(capsys, *argv)
    assert code == 0 and "duplicate output id" in err, err
    assert len(load_annotations(tmp_path / "out" / "coco.jsonl", tmp_path / "img")) == 1


def test_coco_ids_with_subfolders_and_outside_root_flag(tmp_path, capsys):
    make_image(tmp_path / "outside.png", (100, 100))
    images = [{"id": 1, "file_name": "../outside.png", "width": 100, "height": 100}]
    argv = coco_files(tmp_path, [ann(1, [10, 10, 20, 20])], images)
    code, err = convert(capsys, *argv, "--allow_outside_root")
    assert code == 0, err
    assert list(rows_of(tmp_path / "out" / "coco.jsonl")) == ["../outside"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (b'{"nodule": "caf\xe9"}', "phrases.json:1: not valid utf-8 (byte 0xe9 at column 16)"),
        ('{"nodule": ', "invalid JSON"),
    ],
)
def test_bad_json_inputs_name_the_file(tmp_path, capsys, content, message):
    argv = coco_files(tmp_path, [ann(1, [10, 10, 20, 20])])
    path = tmp_path / "phrases.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, err = convert(capsys, *argv)
    assert code == 2 and message in err and "nothing written" in err, err


def chestxray8_files(folder: Path, bbox_lines: list[bytes]) -> list[str]:
    make_image(folder / "images" / "00000001_000.png", (512, 512))
    (folder / "bbox.csv").write_bytes(
        b"Image Index,Finding Label,Bbox [x,y,w,h]\n"
        + b"".join(line + b"\n" for line in bbox_lines)
    )
    (folder / "entry.csv").write_text("Image Index,Patient ID\n00000001_000.png,1\n")
    return [
        "chestxray8",
        "--bbox_csv",
        folder / "bbox.csv",
        "--data_entry",
        folder / "entry.csv",
        "--image_root",
        folder / "images",
        "--out",
        folder / "out" / "c.jsonl",
    ]


def test_csv_decoding_error_names_the_right_line(tmp_path, capsys):
    good = [b"00000001_000.png,Nodule,100,100,50,50"] * 600
    argv = chestxray8_files(tmp_path, good + [b"00000001_000.png,Nodule \xe9,1,1,5,5"])
    code, err = convert(capsys, *argv)
    assert code == 2 and "bbox.csv:602: not valid utf-8" in err and "--encoding" in err, err
    code, err = convert(capsys, *argv, "--encoding", "latin-1")
    assert code == 0 and "bbox.csv:602: unknown finding label" in err, err


@pytest.mark.parametrize("frame", ["nan", "inf", "0", "-5", "abc"])
def test_box_frame_must_be_finite_and_positive(tmp_path, capsys, frame):
    argv = chestxray8_files(tmp_path, [b"00000001_000.png,Nodule,100,100,50,50"])
    with pytest.raises(SystemExit) as error:
        convert(capsys, *argv, "--box_frame", frame)
    assert error.value.code == 2 and "--box_frame" in capsys.readouterr().err


def test_mimic_report_that_is_not_utf8(tmp_path, capsys):
    image = "files/p10/p10000001/s50000001/aaaa.jpg"
    make_image(tmp_path / "jpg" / image, (100, 100))
    (tmp_path / "ann.csv").write_text(
        "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
        f"aaaa,Pneumonia,opacity,{image},10,10,20,20,100,100\n"
    )
    report = tmp_path / "rep" / "files/p10/p10000001/s50000001.txt"
    report.parent.mkdir(parents=True)
    report.write_bytes(b"FINDINGS: opacity.\nIMPRESSION: caf\xe9.\n")
    argv = [
        "mscxr",
        "--annotations",
        tmp_path / "ann.csv",
        "--image_root",
        tmp_path / "jpg",
        "--reports_root",
        tmp_path / "rep",
        "--out",
        tmp_path / "out" / "m.jsonl",
    ]
    code, err = convert(capsys, *argv)
    assert code == 2 and f"{report}:2: not valid utf-8" in err and "nothing written" in err, err
    code, err = convert(capsys, *argv, "--encoding", "latin-1")
    assert code == 0, err


def test_mscxr_resize_keeps_16_bit(tmp_path, capsys):
    image = "files/p10/p10000001/s50000001/aaaa.png"
    (tmp_path / "jpg" / image).parent.mkdir(parents=True)
    ramp = (np.arange(200 * 100).reshape(100, 200) % 4096).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "jpg" / image)
    (tmp_path / "ann.csv").write_text(
        "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
        f"aaaa,Pneumonia,opacity,{image},10,10,20,20,200,100\n"
    )
    report = tmp_path / "rep" / "files/p10/p10000001/s50000001.txt"
    report.parent.mkdir(parents=True)
    report.write_text("FINDINGS: opacity.\n")
    out = tmp_path / "out" / "m.jsonl"
    code, err = convert(
        capsys,
        "mscxr",
        "--annotations",
        tmp_path / "ann.csv",
        "--image_root",
        tmp_path / "jpg",
        "--reports_root",
        tmp_path / "rep",
        "--out",
        out,
        "--resize_max_side",
        "640",
    )
    assert code == 0 and "written as 16-bit PNG" in err, err
    with Image.open(out.parent / rows_of(out)["aaaa"]["image"]) as copy:
        assert copy.mode.startswith("I;16") and np.asarray(copy).max() == 4095


# ----------------------------------------------------------------- reference converter (item 9)
def reference_run(tmp_path, capsys, data: dict, *flags: str, name: str = "MS_CXR_train.pth"):
    make_image(tmp_path / "img" / "a.png", (320, 320))
    make_image(tmp_path / "img" / "b.png", (640, 640))
    pth = tmp_path / name
    torch.save(data, pth)
    out = tmp_path / "out" / "ref.jsonl"
    code, err = convert(
        capsys, "reference", "--pth", pth, "--image_root", tmp_path / "img", "--out", out, *flags
    )
    return code, err, out


def test_reference_report_gpt_and_answer_all(tmp_path, capsys):
    data = {
        "image_paths": ["a.png"],
        "bboxes": [(64, 64, 128, 64)],
        "phrases": ["effusion"],
        "all_reports": [["Left effusion."]],
        "report_gpt": ["GPT: a left effusion."],
        "Answer_all": ["left lower lobe effusion"],
    }
    code, err, out = reference_run(tmp_path, capsys, data)
    row = rows_of(out)["a-0"]
    assert code == 0, err
    assert (row["task"], row["report"], row["answer"]) == (
        "vqa",
        "Left effusion.",
        "left lower lobe effusion",
    )
    assert row["source"] == "MS_CXR_train.pth:0"
    assert "not kept: column report_gpt" in err
    code, err, out = reference_run(tmp_path, capsys, data, "--text_column", "report_gpt")
    row = rows_of(out)["a-0"]
    assert (row["task"], row["report"]) == ("report", "GPT: a left effusion.")


def test_reference_class_file_keeps_name_and_paragraph(tmp_path, capsys):
    """A class row needs its name or its paragraph: half the rows of the reference code's
    class files have no name, and that code reads the paragraph alone."""
    paragraph = "Pleural effusion is an accumulation of fluid. " * 12
    data = {
        "image_paths": ["a.png", "b.png", "c.png"],
        "bboxes": [(64, 64, 128, 64), (1, 1, 9, 9), (1, 1, 9, 9)],
        "phrases": ["effusion", "x", "y"],
        "all_report_class": [[paragraph], [paragraph], [""]],
        "class_all": ["Pleural Effusion", [], ""],
    }
    code, err, out = reference_run(tmp_path, capsys, data)
    rows = rows_of(out)
    assert (rows["a-0"]["task"], rows["a-0"]["label"], rows["a-0"]["description"]) == (
        "class",
        "Pleural Effusion",
        paragraph.strip(),
    )
    assert (rows["b-1"]["label"], rows["b-1"]["description"]) == ("", paragraph.strip())
    assert "c-2" not in rows and "MS_CXR_train.pth:2: no class name or description" in err
    named, unnamed = load_annotations(out, tmp_path / "img")
    assert named.description == paragraph.strip()
    assert question_text(named).endswith("The chest X-ray shows Pleural Effusion. Ground it in "
                                         "the image.")
    assert question_text(unnamed) == (f"Description: {paragraph.strip()}\nGround the findings "
                                      "this description names in the chest X-ray.")


def test_reference_transcripts_split_into_question_and_answer(tmp_path, capsys):
    data = {
        "image_paths": ["a.png", "b.png"],
        "bboxes": [[(64, 64, 128, 64)], [(1, 1, 9, 9)]],
        "phrases": [["effusion"], ["nodule"]],
        "all_report_answer": [
            ["Question: where is the effusion? Answer: left base."],
            ["Findings: a small nodule in the right lung."],
        ],
    }
    code, err, out = reference_run(tmp_path, capsys, data)
    rows = rows_of(out)
    assert code == 0, err
    assert (rows["a-0"]["task"], rows["a-0"]["question"], rows["a-0"]["answer"]) == (
        "vqa",
        "where is the effusion?",
        "left base.",
    )
    assert (rows["b-1"]["task"], rows["b-1"]["report"]) == (
        "report",
        "Findings: a small nodule in the right lung.",
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Q: is there an effusion? A: yes, on the left",
            ("is there an effusion?", "yes, on the left"),
        ),
        ("Where is the nodule? Right upper lobe.", ("Where is the nodule?", "Right upper lobe.")),
        ("Small effusion. ? pneumonia", None),
        ("No acute findings.", None),
    ],
)
def test_split_transcript(text, expected):
    assert split_transcript(text) == expected


def test_reference_missing_image_counts_every_merged_row(tmp_path, capsys):
    data = {
        "image_paths": ["a.png", "gone.png", "gone.png"],
        "bboxes": [(64, 64, 128, 64), (1, 1, 5, 5), (2, 2, 5, 5)],
        "phrases": ["effusion", "x", "y"],
        "all_reports": [["R."], ["S."], ["S."]],
    }
    code, err, out = reference_run(
        tmp_path, capsys, data, "--split_name", "test", name="MS_CXR_test_gpt.pth"
    )
    assert code == 0 and "missing image: 2" in err and "MS_CXR_test_gpt.pth:1: missing image" in err
    assert (tmp_path / "out" / "ref_test.jsonl").is_file() and not out.exists()


@pytest.mark.parametrize(
    "data",
    [
        {"image_paths": 5, "bboxes": [], "phrases": [], "all_reports": []},
        {"images": []},
        {"image_paths": [], "bboxes": [], "phrases": [], "all_reports": []},
        {
            "image_paths": ["gone.png"],
            "bboxes": [(1, 1, 5, 5)],
            "phrases": ["x"],
            "all_reports": ["R"],
        },
    ],
)
def test_reference_unusable_file_exits_2_and_writes_nothing(tmp_path, capsys, data):
    code, err, out = reference_run(tmp_path, capsys, data)
    assert code == 2 and "nothing written" in err and not out.exists(), err


@pytest.mark.parametrize("subcommand", ["split", "stats"])
def test_split_and_stats_leave_out_non_finite_rows(root, capsys, subcommand):
    path = jsonl(
        root,
        canonical(),
        canonical(id="r2", findings=[{"phrase": "x", "boxes": [[float("nan"), 1, 2, 3]]}]),
    )
    argv = ["split", "--input", path, "--name", "s"] if subcommand == "split" else ["stats", path]
    code, err = convert(capsys, *argv)
    assert f"{path}:2: non-finite number" in err, err
    if subcommand == "split":
        assert code == 0 and sum(len(rows_of(p)) for p in root.glob("s_*.jsonl")) == 1


# -------------------------------------------------------------------------- SAM checkpoint files
def _pickle_payload(path: Path) -> None:
    torch.save({"x": Payload()}, path)


def _truncated(path: Path) -> None:
    save_sam_checkpoint(build_sam(SAM_TINY_CONFIG), SAM_TINY_CONFIG, path)
    path.write_bytes(path.read_bytes()[:5000])


def _heads_do_not_divide(path: Path) -> None:
    save_sam_checkpoint(build_sam(SAM_TINY_CONFIG), SAM_TINY_CONFIG, path)
    sidecar = path.with_name(path.name + ".json")
    heads = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**heads, "encoder_num_heads": 3}))


def _wrong_rank(path: Path) -> None:
    state = build_sam(SAM_TINY_CONFIG).state_dict()
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(4, 4)
    torch.save(state, path)


@pytest.mark.parametrize(
    "make, message",
    [
        (_pickle_payload, "holds pickled objects, which are never loaded"),
        (_truncated, "truncated or corrupt"),
        (_heads_do_not_divide, "width 64 is not divisible by its 3 attention heads"),
        (_wrong_rank, "a tensor has an unexpected shape"),
    ],
    ids=["pickle payload", "truncated", "heads do not divide the width", "tensor of wrong rank"],
)
def test_sam_checkpoint_errors_name_the_path(tmp_path, capsys, make, message):
    path = tmp_path / "sam.pth"
    make(path)
    with pytest.raises(ValueError) as error:
        load_sam_checkpoint(path)
    assert str(path) in str(error.value) and message in str(error.value), str(error.value)
    assert "pickled code ran" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- test.py
def test_overlay_names_are_flat_and_unique():
    taken: set[str] = set()
    names = [
        test_script.overlay_name(i, taken) for i in ("tb/tb0005", "tb_tb0005", "../../etc/x", "..")
    ]
    assert names == ["tb_tb0005.png", "tb_tb0005-2.png", "etc_x.png", "sample.png"]


@pytest.mark.parametrize(
    "files, message",
    [
        ({"set_test.jsonl": ""}, "the split holds no annotation rows"),
        ({"set_test.jsonl": json.dumps(canonical(findings=[]))}, "have no finding to ground"),
        ({"set_test.jsonl": json.dumps(canonical())}, "needs a train split"),
    ],
)
def test_test_py_never_writes_metrics_for_nothing(root, tmp_path, files, message):
    for name, text in files.items():
        (root / name).write_text(text)
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as error:
        test_script.main(
            [
                "--baseline",
                "phrase_prior",
                "--dataset_dir",
                str(root),
                "--test_dataset",
                "set",
                "--out",
                str(out),
            ]
        )
    text = str(error.value.code).replace(
        "is fitted on the train split's findings, and this dataset has no train split",
        "needs a train split",
    )
    assert message in text, text
    assert "--skip_invalid" not in text and not (out / "metrics.json").exists()
