"""SynthCXR: determinism, spans, boxes, splits, reports, vqa/class rows, the .pth schema and the
label prior."""
from __future__ import annotations

import filecmp
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from utils.annotations import SPLITS, load_annotations
from utils.synthcxr.__main__ import main
from utils.synthcxr.findings import FINDING_TYPES, MULTIFOCAL_P
from utils.synthcxr.generate import CALIBRATION_SPLIT
from utils.synthcxr.prior import label_prior_rates

SIZES = ["--n_train", "24", "--n_val", "6", "--n_test", "6", "--n_calibration", "6",
         "--n_pretrain", "24"]  # as synth_dir
ALL_SPLITS = (*SPLITS, CALIBRATION_SPLIT)
HEART_NORMAL = ("Heart size is normal", "normal in size", "cardiomediastinal silhouette is normal")


def rows(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def all_report_rows(folder: Path) -> list[dict]:
    return [row for split in ALL_SPLITS for row in rows(folder, f"report_{split}.jsonl")]


def is_multifocal(finding: dict) -> bool:
    """A multifocal nodule or consolidation: several lesions, no single zone."""
    return finding["zone"] == "" and finding["type"] != "cardiomegaly"


def test_same_seed_gives_identical_files_whatever_the_workers_and_another_seed_differs(
        tmp_path, synth_dir):
    main(["--out", str(tmp_path / "a"), "--seed", "0", "--workers", "1", *SIZES])
    names = sorted(p.name for p in synth_dir.iterdir() if p.is_file())
    assert names == sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(synth_dir, tmp_path / "a", names, shallow=False)
    assert not mismatch and not errors
    for sub in ("images", "pretrain", "pretrain/images", "pretrain/masks"):
        files = sorted(p.name for p in (synth_dir / sub).iterdir() if p.is_file())
        assert files == sorted(p.name for p in (tmp_path / "a" / sub).iterdir() if p.is_file())
        _, mismatch, errors = filecmp.cmpfiles(synth_dir / sub, tmp_path / "a" / sub, files,
                                               shallow=False)
        assert files and not mismatch and not errors, sub
    main(["--out", str(tmp_path / "b"), "--seed", "1", *SIZES])
    assert (tmp_path / "b" / "report_train.jsonl").read_bytes() != \
        (synth_dir / "report_train.jsonl").read_bytes()
    first = sorted((synth_dir / "images").iterdir())[0].name
    assert (tmp_path / "b" / "images" / first).read_bytes() != \
        (synth_dir / "images" / first).read_bytes()


def test_images_are_square_8_bit_grayscale(synth_dir):
    from PIL import Image

    for row in all_report_rows(synth_dir):
        with Image.open(synth_dir / row["image"]) as image:
            assert image.mode == "L" and image.size == (256, 256) == (row["width"], row["height"])


def test_phrases_are_unique_spans_and_boxes_lie_inside_images(synth_dir):
    for row in all_report_rows(synth_dir):
        assert row["task"] == "report"
        assert 3 <= row["report"].count(".") <= 8, row["report"]
        phrases = [f["phrase"] for f in row["findings"]]
        for finding in row["findings"]:
            assert row["report"].count(finding["phrase"]) == 1, (finding["phrase"], row["report"])
            assert not any(finding["phrase"] in other for other in phrases
                           if other != finding["phrase"])
            assert finding["type"] in FINDING_TYPES
            if is_multifocal(finding):
                assert finding["type"] in MULTIFOCAL_P and 2 <= len(finding["boxes"]) <= 3
            else:
                assert len(finding["boxes"]) == (2 if finding["side"] == "bilateral" else 1)
            for x0, y0, x1, y1 in finding["boxes"]:
                assert 0 <= x0 < x1 <= row["width"] and 0 <= y0 < y1 <= row["height"]


def test_finding_counts_types_and_locations(synth_dir):
    report_rows = all_report_rows(synth_dir)
    counts = Counter(len(row["findings"]) for row in report_rows)
    assert set(counts) <= {0, 1, 2, 3} and counts[0] > 0 and max(counts) >= 2
    for row in report_rows:
        kinds = [f["type"] for f in row["findings"]]
        assert len(set(kinds)) == len(kinds)
        for finding in row["findings"]:
            if finding["type"] == "cardiomegaly":
                assert finding["side"] == finding["zone"] == ""
            else:
                assert finding["side"] in ("left", "right", "bilateral")
                assert finding["zone"] in ("upper", "middle", "lower") or is_multifocal(finding)
                assert finding["side"] in finding["phrase"].lower()


def test_reports_never_contradict_their_findings(synth_dir):
    for row in all_report_rows(synth_dir):
        kinds = {f["type"] for f in row["findings"]}
        if "cardiomegaly" in kinds:
            assert not any(text in row["report"] for text in HEART_NORMAL), row["report"]
        if kinds - {"cardiomegaly"}:
            assert "The lungs are clear." not in row["report"]
        for kind in kinds:
            assert f"No {kind}." not in row["report"] and f"no {kind}." not in row["report"]


def test_splits_are_patient_disjoint_with_one_to_three_studies(synth_dir):
    patients = {split: Counter(r["patient"] for r in rows(synth_dir, f"report_{split}.jsonl"))
                for split in ALL_SPLITS}
    for index, split in enumerate(ALL_SPLITS):
        for other in ALL_SPLITS[index + 1:]:
            assert not set(patients[split]) & set(patients[other]), (split, other)
    assert all(1 <= n <= 3 for counter in patients.values() for n in counter.values())
    assert [len(rows(synth_dir, f"report_{split}.jsonl")) for split in ALL_SPLITS] == \
        [24, 6, 6, 6]


def test_the_calibration_split_leaves_the_other_splits_as_they_were(tmp_path, synth_dir):
    """The calibration split is planned after test: without it, train, val and test are the
    same files and images, and no calibration file is written."""
    main(["--out", str(tmp_path), "--seed", "0", "--n_calibration", "0", "--n_pretrain", "0",
          *SIZES[:SIZES.index("--n_calibration")]])
    assert not list(tmp_path.glob(f"*_{CALIBRATION_SPLIT}.*"))
    assert json.loads((tmp_path / "meta.json").read_text())["counts"] == \
        {"train": 24, "val": 6, "test": 6}
    for split in SPLITS:
        for kind in ("report", "vqa", "class"):
            name = f"{kind}_{split}.jsonl"
            assert (tmp_path / name).read_bytes() == (synth_dir / name).read_bytes(), name
        for row in rows(tmp_path, f"report_{split}.jsonl"):
            assert (tmp_path / row["image"]).read_bytes() == \
                (synth_dir / row["image"]).read_bytes()
    calibration = rows(synth_dir, f"report_{CALIBRATION_SPLIT}.jsonl")
    assert len(calibration) == 6 and all((synth_dir / r["image"]).is_file() for r in calibration)
    written = {f"images/{path.name}" for path in tmp_path.glob("images/*")}
    assert len(written) == 36 and not {r["image"] for r in calibration} & written


def test_vqa_and_class_rows_are_well_formed(synth_dir):
    for split in SPLITS:
        report_rows = rows(synth_dir, f"report_{split}.jsonl")
        vqa = rows(synth_dir, f"vqa_{split}.jsonl")
        abnormal = {r["id"] for r in report_rows if r["findings"]}
        assert {q["id"].rsplit("_q", 1)[0] for q in vqa} == abnormal
        for row in vqa:
            assert row["task"] == "vqa" and row["question"].endswith("?")
            assert len(row["findings"]) == 1 and row["findings"][0]["phrase"] in row["answer"]
        classes = rows(synth_dir, f"class_{split}.jsonl")
        assert len(classes) == sum(len(r["findings"]) for r in report_rows)
        for row in classes:
            assert row["task"] == "class" and row["label"] in FINDING_TYPES
            assert [f["phrase"] for f in row["findings"]] == [row["label"]]
    for sample in load_annotations(synth_dir / "vqa_train.jsonl"):
        assert sample.findings[0].phrase in sample.answer
    for sample in load_annotations(synth_dir / "class_train.jsonl"):
        assert sample.findings[0].phrase == sample.label


def test_reference_pth_agrees_with_the_jsonl(synth_dir):
    data = torch.load(synth_dir / "report_test.pth", weights_only=True)
    assert set(data) == {"image_paths", "bboxes", "phrases", "all_reports"}
    assert len({len(v) for v in data.values()}) == 1
    report_rows = {r["image"]: r for r in rows(synth_dir, "report_test.jsonl")}
    expected = [(r["image"], f) for r in report_rows.values() for f in r["findings"]]
    assert len(data["phrases"]) == len(expected)
    for path, box, phrase, report, (image, finding) in zip(
            data["image_paths"], data["bboxes"], data["phrases"], data["all_reports"], expected):
        assert path == image and phrase == finding["phrase"]
        assert report == [report_rows[image]["report"]]
        boxes = box if isinstance(box, list) else [box]
        assert all(isinstance(b, tuple) and len(b) == 4 for b in boxes)
        scale = 640 / report_rows[image]["width"]
        for (x, y, w, h), (x0, y0, x1, y1) in zip(boxes, finding["boxes"]):
            assert (x, y, w, h) == pytest.approx((x0 * scale, y0 * scale, (x1 - x0) * scale,
                                                  (y1 - y0) * scale), abs=0.01)
    from_jsonl = [s for s in load_annotations(synth_dir / "report_test.jsonl") if s.findings]
    assert len(load_annotations(synth_dir / "report_test.pth")) == len(from_jsonl)


def test_meta_records_the_prior_rate(synth_dir):
    meta = json.loads((synth_dir / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["image_size"] == 256
    assert meta["counts"] == {"train": 24, "val": 6, "test": 6, CALIBRATION_SPLIT: 6}
    assert len(meta["finding_types"]) >= 6
    assert 0.0 <= meta["label_prior_acc@0.5"] <= 1.0
    rate = label_prior_rates(rows(synth_dir, "report_train.jsonl"),
                             rows(synth_dir, "report_test.jsonl"))["all"]
    assert meta["label_prior_acc@0.5"] == pytest.approx(rate, abs=1e-4)


def test_meta_counts_the_findings_with_several_boxes(synth_dir):
    meta = json.loads((synth_dir / "meta.json").read_text())
    for split in ALL_SPLITS:
        findings = [f for row in rows(synth_dir, f"report_{split}.jsonl") for f in row["findings"]]
        assert meta["findings"][split] == len(findings)
        assert meta["findings_with_several_boxes"][split] == sum(len(f["boxes"]) > 1
                                                                for f in findings)
    assert meta["findings_with_several_boxes"]["train"] > 0


def test_multifocal_findings_have_one_box_and_mask_per_lesion():
    """A study with a multifocal finding: one phrase in the report, a box per lesion (2 or 3,
    apart), one pretraining mask layer per lesion inside its box."""
    from utils.synthcxr.study import MAX_LAYERS, make_study

    found = []
    for patient in range(40):
        _, study, layers = make_study(0, patient, 0, 256)
        found += [(study, layers, lesion) for lesion in study.lesions if lesion.part_sides]
        if len(found) >= 3:
            break
    assert found, "no multifocal finding in the first 40 patients"
    for study, layers, lesion in found:
        phrase = study.phrases[study.lesions.index(lesion)]
        assert study.report.count(phrase) == 1 and lesion.zone == ""
        assert 2 <= len(lesion.boxes) == len(lesion.part_sides) <= 3
        assert lesion.side == (lesion.part_sides[0] if len(set(lesion.part_sides)) == 1
                               else "bilateral")
        assert lesion.side in phrase.lower()
        assert len(set(lesion.boxes)) == len(lesion.boxes)
        masks = [layer.mask for layer in layers if layer.kind == "lesion"
                 and layer.name.startswith(lesion.type)]
        assert len(masks) == len(lesion.boxes) and len(layers) <= MAX_LAYERS
        for mask, (x0, y0, x1, y1) in zip(masks, lesion.boxes):
            assert mask.any() and not mask[:y0].any() and not mask[y1:].any()
            assert not mask[:, :x0].any() and not mask[:, x1:].any()
        assert not (masks[0] & masks[1]).any()


def test_label_prior_rate_by_hand():
    def row(*findings):
        return {"width": 100, "height": 100, "findings": list(findings)}

    def finding(boxes, kind="nodule", side="left", zone="upper"):
        return {"type": kind, "side": side, "zone": zone, "boxes": boxes}

    train = [row(finding([[0, 0, 20, 20]])), row(finding([[20, 20, 40, 40]])),  # mean 10..30
             row(finding([[0, 50, 10, 60], [80, 50, 100, 70]], "effusion", "bilateral", "lower"))]
    test = [row(finding([[10, 10, 30, 30]])),  # IoU 1.0
            row(finding([[20, 20, 40, 40]])),  # IoU 100 / 700
            row(finding([[0, 50, 40, 60], [60, 50, 100, 70]], "effusion", "bilateral", "lower")),
            row(finding([[0, 0, 20, 20]], "mass"))]  # unseen key: mean of all train targets
    # the effusion target is the enclosing box [0, 50, 100, 70] in both: IoU 1.0;
    # all-target mean box [10, 23.33, 50, 43.33] vs [0, 0, 20, 20]: no overlap.
    assert label_prior_rates(train, test) == pytest.approx(
        {"all": 0.5, "effusion": 1.0, "mass": 0.0, "nodule": 0.5})
    assert label_prior_rates(train, [row()]) == {"all": 0.0}


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--n_train" in capsys.readouterr().out
    for bad in (["--seed", "-1"], ["--image_size", "128"], ["--n_test", "0"], ["--workers", "0"],
                ["--n_pretrain", "-1"], ["--pretrain_seed", "-2"]):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path), *bad])
