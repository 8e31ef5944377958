"""SynthCXR: determinism, spans, boxes, splits, the .pth schema and the phrase prior."""
from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import torch

from utils.annotations import load_annotations
from utils.synthcxr.__main__ import main
from utils.synthcxr.prior import phrase_prior_rate

SIZES = ["--n_train", "24", "--n_val", "6", "--n_test", "6"]  # as the synth_dir fixture


def rows(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path, synth_dir):
    main(["--out", str(tmp_path / "a"), "--seed", "0", *SIZES])
    compare = filecmp.dircmp(synth_dir, tmp_path / "a")
    assert not compare.diff_files and not compare.left_only and not compare.right_only
    images = filecmp.cmpfiles(synth_dir / "images", tmp_path / "a" / "images",
                              [p.name for p in (synth_dir / "images").iterdir()], shallow=False)
    assert not images[1] and not images[2]
    main(["--out", str(tmp_path / "b"), "--seed", "1", *SIZES])
    assert (tmp_path / "b" / "report_train.jsonl").read_bytes() != \
        (synth_dir / "report_train.jsonl").read_bytes()


def test_phrases_are_spans_and_boxes_lie_inside_images(synth_dir):
    for split in ("train", "val", "test"):
        for row in rows(synth_dir, f"report_{split}.jsonl"):
            sentences = row["report"].count(".")
            assert 3 <= sentences <= 8, row["report"]
            assert 0 <= len(row["findings"]) <= 3
            phrases = [f["phrase"] for f in row["findings"]]
            assert len(set(phrases)) == len(phrases)
            for finding in row["findings"]:
                assert finding["phrase"] in row["report"]
                for x0, y0, x1, y1 in finding["boxes"]:
                    assert 0 <= x0 < x1 <= row["width"] and 0 <= y0 < y1 <= row["height"]
    counts = [len(r["findings"]) for r in rows(synth_dir, "report_train.jsonl")]
    assert 0 in counts and max(counts) >= 2


def test_splits_are_patient_disjoint(synth_dir):
    patients = {split: {r["patient"] for r in rows(synth_dir, f"report_{split}.jsonl")}
                for split in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_vqa_and_class_rows_load_and_ground_their_text(synth_dir):
    for sample in load_annotations(synth_dir / "vqa_train.jsonl"):
        assert sample.task == "vqa" and sample.question and len(sample.findings) == 1
        assert sample.findings[0].phrase in sample.answer
    for sample in load_annotations(synth_dir / "class_train.jsonl"):
        assert sample.task == "class" and sample.findings[0].phrase == sample.label


def test_reference_pth_agrees_with_the_jsonl(synth_dir):
    data = torch.load(synth_dir / "report_test.pth", weights_only=True)
    assert set(data) == {"image_paths", "bboxes", "phrases", "all_reports"}
    assert len({len(v) for v in data.values()}) == 1
    from_jsonl = {s.id: s for s in load_annotations(synth_dir / "report_test.jsonl")}
    from_pth = load_annotations(synth_dir / "report_test.pth")
    abnormal = [s for s in from_jsonl.values() if s.findings]
    assert len(from_pth) == len(abnormal)
    for sample in from_pth:
        twin = next(s for s in abnormal if s.image_path == sample.image_path)
        assert sample.report == twin.report
        assert [f.phrase for f in sample.findings] == [f.phrase for f in twin.findings]
        for mine, theirs in zip(sample.findings, twin.findings):
            assert torch.allclose(torch.tensor(mine.boxes), torch.tensor(theirs.boxes), atol=1e-4)


def test_phrase_prior_rate_by_hand():
    def row(box, kind="nodule"):
        return {"width": 100, "height": 100,
                "findings": [{"type": kind, "side": "left", "zone": "upper", "boxes": [box]}]}

    train = [row([0, 0, 20, 20]), row([20, 20, 40, 40])]  # mean box: [10, 10, 30, 30]
    test = [row([10, 10, 30, 30]), row([20, 20, 40, 40])]  # IoU 1.0 and 100/700
    assert phrase_prior_rate(train, test) == pytest.approx(0.5)
