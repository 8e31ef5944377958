"""Fuzz the input layer with hypothesis: the JSONL reader, the .pth reader and the converters.

Property: for any input, the result is valid rows, a file:row error or a counted skip; never
another exception and never a non-finite box.

The CI profile (default) is derandomised and runs a few dozen examples per target, well
under 60 s. The long mode draws many more, at random:

    UMEDGROUND_FUZZ=long .venv/bin/python -m pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from utils.annotations import AnnotationError, Sample, load_annotations
from utils.convert.__main__ import main as convert_main

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=3000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile(os.environ.get("UMEDGROUND_FUZZ", "ci"))

IMAGES = [
    "images/a.png",
    "images/deep.png",
    "images/none.png",
    "../outside.png",
    "",
    "/etc/passwd",
    "images/",
    "images/a.png\0",
    "files/p10/p10000001/s50000001/d1.jpg",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**40), 10**40)
    | st.text(max_size=12)
    | st.floats(allow_nan=True, allow_infinity=True)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(10**30), 10**30)
    | st.sampled_from([0, 1, 10, 50, 99.5, 100, 200.4, -0.4])
)
boxes = st.lists(numbers, min_size=0, max_size=5) | json_values
findings = (
    st.lists(
        st.fixed_dictionaries(
            {
                "phrase": st.text(max_size=10) | json_values,
                "boxes": st.lists(boxes, max_size=3) | json_values,
            },
            optional={"category": json_scalars, "junk": json_scalars},
        ),
        max_size=3,
    )
    | json_values
)
rows = st.fixed_dictionaries(
    {
        "id": st.text(max_size=6) | json_scalars,
        "image": st.sampled_from(IMAGES) | json_scalars,
        "findings": findings,
    },
    optional={
        "report": st.text(max_size=30) | json_scalars,
        "task": st.sampled_from(["report", "vqa", "class", "other"]) | json_scalars,
        "answer": st.text(max_size=8),
        "label": st.text(max_size=8) | json_scalars,
        "width": numbers | json_scalars,
        "height": numbers | json_scalars,
        "templated": json_scalars,
        "extra": json_scalars,
    },
)


def mutated(base: dict, values: st.SearchStrategy) -> st.SearchStrategy:
    """``base`` as it is, or with one key replaced by (or set to) a drawn value, or dropped."""

    def change(draw_key: str, value, drop: bool) -> dict:
        row = dict(base)
        if drop:
            row.pop(draw_key, None)
        else:
            row[draw_key] = value
        return row

    keys = st.sampled_from(sorted(base) + ["width", "height", "task", "junk"])
    return st.just(base) | st.builds(change, keys, values, st.booleans())


VALID_ROW = {
    "id": "v",
    "image": "images/a.png",
    "report": "Small left effusion.",
    "findings": [{"phrase": "Small left effusion", "boxes": [[10, 20, 50, 60]]}],
}
near_valid = mutated(
    VALID_ROW,
    json_values
    | numbers
    | st.sampled_from(IMAGES)
    | st.lists(boxes, max_size=2).map(lambda b: [{"phrase": "p", "boxes": b}]),
)
encoded = (rows | near_valid | near_valid).map(lambda r: json.dumps(r, allow_nan=True).encode())
lines = st.lists(
    encoded | st.binary(max_size=40) | json_values.map(lambda v: json.dumps(v).encode()), max_size=5
).map(lambda ls: [line.replace(b'"v"', f'"v{i}"'.encode(), 1) for i, line in enumerate(ls)])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "data"
    (folder / "images").mkdir(parents=True)
    Image.new("L", (100, 100), 80).save(folder / "images" / "a.png")
    deep = (np.arange(100 * 100).reshape(100, 100) * 6).astype(np.uint16)
    Image.fromarray(deep).save(folder / "images" / "deep.png")
    Image.new("L", (100, 100)).save(folder.parent / "outside.png")
    mimic = folder / "files/p10/p10000001/s50000001/d1.jpg"
    mimic.parent.mkdir(parents=True)
    Image.new("L", (100, 100)).save(mimic)
    return folder


def assert_valid(samples: list[Sample]) -> None:
    assert samples, "load_annotations never returns an empty split"
    for sample in samples:
        for finding in sample.findings:
            assert finding.phrase.strip() and finding.boxes
            for x0, y0, x1, y1 in finding.boxes:
                assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x0, y0, x1, y1))
                assert x1 > x0 and y1 > y0


def assert_rows_or_error(path: Path, image_root: Path) -> None:
    """The property, for an annotation file: valid samples or an AnnotationError with file:row."""
    for skip in (False, True):
        try:
            samples = load_annotations(path, image_root, skip_invalid=skip)
        except AnnotationError as error:
            assert error.problems and all(p.file == str(path) for p in error.problems)
            event(f"skip_invalid={skip}: file:row error")
            continue
        event(f"skip_invalid={skip}: valid rows")
        assert_valid(samples)


@settings(PROFILE)
@given(content=lines)
def test_fuzz_jsonl_reader(root, content):
    path = root / "fuzz.jsonl"
    path.write_bytes(b"\n".join(content))
    assert_rows_or_error(path, root)


pth_columns = st.fixed_dictionaries(
    {
        "image_paths": st.lists(st.sampled_from(IMAGES) | json_scalars, max_size=3),
        "bboxes": st.lists(
            st.tuples(numbers, numbers, numbers, numbers)
            | boxes
            | st.lists(st.tuples(numbers, numbers, numbers, numbers), max_size=3),
            max_size=3,
        ),
        "phrases": st.lists(
            st.text(max_size=8) | st.lists(st.text(max_size=8), max_size=3) | json_scalars,
            max_size=3,
        ),
    },
    optional={
        "all_reports": st.lists(
            st.lists(st.text(max_size=20), max_size=2) | json_scalars, max_size=3
        ),
        "Answer_all": st.lists(st.text(max_size=10), max_size=3),
        "all_report_answer": st.lists(
            st.lists(
                st.sampled_from(["Question: where? Answer: left.", "Is it? Yes.", "A report."]),
                max_size=1,
            ),
            max_size=3,
        ),
        "class_all": st.lists(st.text(max_size=8) | st.just([]), max_size=3),
        "all_report_class": st.lists(st.lists(st.text(max_size=20), max_size=1), max_size=3),
    },
)


VALID_PTH = {
    "image_paths": ["images/a.png", "images/deep.png"],
    "bboxes": [(64, 64, 128, 64), [(1, 1, 60, 60), (100, 100, 50, 50)]],
    "phrases": ["effusion", ["a", "b"]],
    "all_reports": [["R."], "S."],
}
near_valid_pth = mutated(
    VALID_PTH,
    st.lists(json_scalars | st.tuples(numbers, numbers, numbers, numbers), min_size=2, max_size=2)
    | json_values,
)


@settings(PROFILE)
@given(data=pth_columns | near_valid_pth | near_valid_pth | json_values)
def test_fuzz_pth_reader_and_reference_converter(root, data):
    path = root / "fuzz.pth"
    torch.save(data, path)
    assert_rows_or_error(path, root)
    run_converter(root, root, "reference", "--pth", path, "--image_root", root)


def run_converter(root: Path, image_root: Path, *argv: object) -> None:
    """The property, for a converter: exit 0 with loadable rows (none non-finite), or exit 2
    with nothing written."""
    out = root / "out" / "fuzz.jsonl"
    if out.exists():
        out.unlink()
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = convert_main([str(a) for a in argv] + ["--out", str(out)])
        except SystemExit as exit_:  # argparse refusing a flag value
            code = exit_.code
    assert code in (0, 2), err.getvalue()
    event(f"exit code {code}")
    if code == 2:
        assert not out.exists()
        return
    for line in out.read_text(encoding="utf-8").splitlines():  # no NaN / Infinity literal
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} written: {line}"))
    assert_valid(load_annotations(out, image_root))


csv_field = st.text(
    alphabet=st.sampled_from(list('0123456789.-e,"\n abNnaIif/_')), max_size=10
) | st.sampled_from(["00000001_000.png", "Nodule", "nan", "inf", "1e999", "", "10", "50"])
csv_rows = st.lists(st.lists(csv_field, min_size=0, max_size=8), max_size=6)


def mutated_fields(base: list[str]) -> st.SearchStrategy:
    """A valid CSV row as it is, or with one field replaced by a drawn one."""

    def change(index: int, value: str) -> list[str]:
        return [value if i == index else v for i, v in enumerate(base)]

    return st.just(base) | st.builds(change, st.integers(0, len(base) - 1), csv_field)


nih_rows = st.lists(
    mutated_fields(["00000001_000.png", "Nodule", "10", "20", "30", "40"])
    | mutated_fields(["00000001_000.png", "Mass", "50", "50", "20", "20"]),
    max_size=4,
)


def csv_bytes(header: str, table: list[list[str]], tail: bytes) -> bytes:
    return (header + "\n" + "\n".join(",".join(r) for r in table) + "\n").encode() + tail


@settings(PROFILE)
@given(table=csv_rows | nih_rows | nih_rows, tail=st.binary(max_size=6) | st.just(b""))
def test_fuzz_chestxray8_rows(root, table, tail):
    (root / "images" / "00000001_000.png").write_bytes((root / "images" / "a.png").read_bytes())
    (root / "bbox.csv").write_bytes(
        csv_bytes("Image Index,Finding Label,Bbox [x,y,w,h]", table, tail)
    )
    (root / "entry.csv").write_text("Image Index,Patient ID\n00000001_000.png,1\n")
    run_converter(
        root,
        root / "images",
        "chestxray8",
        "--bbox_csv",
        root / "bbox.csv",
        "--data_entry",
        root / "entry.csv",
        "--image_root",
        root / "images",
        "--box_frame",
        "100",
    )


MIMIC = "files/p10/p10000001/s50000001/d1.jpg"
mscxr_rows = st.lists(
    mutated_fields(["d1", "Pneumonia", "opacity", MIMIC, "10", "10", "30", "30", "100", "100"])
    | mutated_fields(["d1", "Lung Opacity", "base", MIMIC, "50", "50", "20", "20", "100", "100"]),
    max_size=4,
)


@settings(PROFILE)
@given(table=mscxr_rows)
def test_fuzz_mscxr_rows(root, table):
    header = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height"
    (root / "ms.csv").write_bytes(csv_bytes(header, table, b""))
    report = root / "reports" / "files/p10/p10000001/s50000001.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("FINDINGS: opacity.\n")
    for source in ("mscxr", "msclass"):
        extra = ["--reports_root", root / "reports"] if source == "mscxr" else []
        run_converter(
            root, root, source, "--annotations", root / "ms.csv", "--image_root", root, *extra
        )


coco_values = numbers | json_scalars | st.sampled_from(IMAGES) | st.lists(numbers, max_size=5)
coco_images = st.lists(
    mutated({"id": 1, "file_name": "images/a.png", "width": 100, "height": 100}, coco_values)
    | mutated({"id": 2, "file_name": "images/deep.png"}, coco_values),
    max_size=3,
)
coco_annotations = st.lists(
    mutated({"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]}, coco_values)
    | mutated({"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 30]}, coco_values),
    max_size=4,
)


@settings(PROFILE)
@given(images=coco_images, annotations=coco_annotations)
def test_fuzz_coco_rows(root, images, annotations):
    (root / "coco.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "nodule"}, {"id": 2, "name": "mass"}],
            }
        )
    )
    (root / "phrases.json").write_text(json.dumps({"nodule": "Nodule {side}", "mass": "Mass"}))
    run_converter(
        root,
        root,
        "coco",
        "--coco",
        root / "coco.json",
        "--phrases",
        root / "phrases.json",
        "--image_root",
        root,
    )
