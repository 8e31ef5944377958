"""Patient-level split (stratified, deterministic), --check for overlaps, and stats."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from utils.annotations import load_annotations
from utils.convert.__main__ import main
from utils.text_io import write_jsonl


def make_rows(folder: Path) -> list[dict]:
    """40 patients, 2 rows each; "Pneumothorax" is rare (every 5th patient)."""
    rows = []
    for p in range(40):
        Image.new("L", (64, 48), 40).save(folder / f"x{p}.png")
        category = "Pneumothorax" if p % 5 == 0 else "Effusion"
        for r in range(2):
            rows.append({"id": f"p{p}-{r}", "image": f"x{p}.png", "patient": f"p{p}",
                         "report": f"Small {category.lower()}.", "task": "report",
                         "findings": [{"phrase": f"Small {category.lower()}",
                                       "boxes": [[1, 2, 30, 40]], "category": category}],
                         "width": 64, "height": 48})
    return rows


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_is_patient_disjoint_stratified_and_deterministic(tmp_path, capsys):
    source = tmp_path / "all.jsonl"
    write_jsonl(make_rows(tmp_path), source)
    splits = {}
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["split", "--input", str(source), "--out_dir", str(out), "--name", "mrg",
                     "--fractions", "0.6,0.2,0.2", "--seed", "3"]) == 0
        splits[run] = {s: read(out / f"mrg_{s}.jsonl") for s in ("train", "val", "test")}
    assert splits["a"] == splits["b"]
    parts = splits["a"]
    assert [len(parts[s]) for s in ("train", "val", "test")] == [48, 16, 16]
    patients = {s: {r["patient"] for r in rows} for s, rows in parts.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    rare = [sum(r["findings"][0]["category"] == "Pneumothorax" for r in parts[s])
            for s in ("train", "val", "test")]
    assert rare in ([8, 4, 4], [10, 4, 2], [10, 2, 4])  # 8 rare patients: ~4.8 / 1.6 / 1.6
    assert len(load_annotations(tmp_path / "a" / "mrg_test.jsonl", tmp_path)) == 16
    assert main(["split", "--check", *(str(tmp_path / "a" / f"mrg_{s}.jsonl")
                                       for s in ("train", "val", "test"))]) == 0
    assert "no patient or image in two" in capsys.readouterr().err


def test_rows_without_patient_are_reported(tmp_path, capsys):
    rows = make_rows(tmp_path)[:4]
    rows[1]["patient"] = ""
    rows[2]["patient"] = ""
    rows[2]["image"] = "files/p10/p10000001/s50000001/a.jpg"  # the id comes from the path
    source = tmp_path / "all.jsonl"
    write_jsonl(rows, source)
    assert main(["split", "--input", str(source), "--strict"]) == 2
    assert f"{source}:2: no patient id" in capsys.readouterr().err
    assert not (tmp_path / "all_train.jsonl").exists()
    assert main(["split", "--input", str(source)]) == 0
    written = sum(len(read(tmp_path / f"all_{s}.jsonl")) for s in ("train", "val", "test"))
    assert written == 3


def test_check_reports_overlapping_patients_in_jsonl_and_pth(tmp_path, capsys):
    rows = make_rows(tmp_path)
    write_jsonl(rows[:10], tmp_path / "train.jsonl")
    write_jsonl(rows[9:12], tmp_path / "test.jsonl")
    pth = tmp_path / "MS_CXR_val.pth"
    torch.save({"image_paths": ["files/p10/p4/s1/a.jpg", "00000004_000.png"],
                "bboxes": [(1, 1, 5, 5), (1, 1, 5, 5)], "phrases": ["a", "b"],
                "all_reports": [["a."], ["b."]]}, pth)
    code = main(["split", "--check", str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl"),
                 str(pth)])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.jsonl and" in err and "share 1 patient(s): p4" in err


def test_stats(tmp_path, capsys):
    rows = make_rows(tmp_path)[:4]
    rows[0]["findings"][0]["boxes"].append([5, 5, 9, 9])
    rows[1]["findings"][0]["phrase"] = "A phrase the report lacks"
    write_jsonl(rows, tmp_path / "mrg_test.jsonl")
    out = tmp_path / "stats.json"
    assert main(["stats", str(tmp_path / "mrg_test.jsonl"), "--json", str(out)]) == 0
    stats = json.loads(out.read_text())["test"]
    assert stats["rows"] == 4
    assert stats["findings_per_category"] == {"Effusion": 2, "Pneumothorax": 2}
    assert stats["boxes_per_phrase"] == {"1": 3, "2": 1}
    assert stats["phrases_verbatim_in_report"] == 3 and stats["phrases_in_reports"] == 4
    assert stats["image_width"] == [64, 64] and stats["image_height"] == [48, 48]
    assert "== " in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    (lambda rows: [], "the file holds no row"),
    (lambda rows: [{**r, "patient": ""} for r in rows], "no row has a patient id"),
], ids=["empty file", "no patient"])
def test_nothing_to_split_writes_nothing(tmp_path, capsys, change, message):
    source = tmp_path / "all.jsonl"
    write_jsonl(change(make_rows(tmp_path)[:4]), source)
    assert main(["split", "--input", str(source), "--out_dir", str(tmp_path / "out")]) == 2
    assert f"{source}: {message}, nothing to split" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_integer_patient_ids_are_patients(tmp_path, capsys):
    rows = [{**r, "patient": int(r["patient"][1:])} for r in make_rows(tmp_path)[:4]]
    assert rows[0]["patient"] == 0  # the schema allows integers, and 0 is one
    source = tmp_path / "all.jsonl"
    write_jsonl(rows, source)
    assert main(["split", "--input", str(source), "--strict"]) == 0
    assert "no patient id" not in capsys.readouterr().err
    written = [r for s in ("train", "val", "test") for r in read(tmp_path / f"all_{s}.jsonl")]
    assert sorted(r["id"] for r in written) == sorted(r["id"] for r in rows)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_split_never_writes_over_its_input(tmp_path, capsys, split):
    source = tmp_path / f"report_{split}.jsonl"
    write_jsonl(make_rows(tmp_path)[:10], source)
    before = source.read_bytes()
    assert main(["split", "--input", str(source), "--name", "report"]) == 2
    assert f"{source}: the {split} split would be written over this input file" in \
        capsys.readouterr().err
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [source.name]
