"""A calibrated model end to end: ``test.py --calibrate`` on val writes calibration.json into
the folder; ``test.py`` on test then reports the calibration block (under noise too), the
inflated boxes and abstentions; chat.py shows them."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import chat
from model.build import build_umedground
from model.calibration import CALIBRATION_NAME
from model.config import GroundingConfig
from tests.scripted import script_from_pretrained
from utils.annotations import load_annotations
from utils.dataset import ordered_findings
from utils.prompts import answer_text

_SPEC = importlib.util.spec_from_file_location(
    "umedground_test_cli", Path(__file__).resolve().parents[1] / "test.py")
_TEST_CLI = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_TEST_CLI)  # `import test` would be the standard library's
pytestmark = pytest.mark.slow  # three CLI runs on the tiny model
CALIBRATION_KEYS = {"alpha", "coverage", "mean_area_inflation", "target_risk", "selective_risk",
                    "selective_coverage"}


@pytest.fixture(scope="module", params=[1, 4], ids=["one_box", "four_boxes"])
def calibrated(request, tiny_dir, synth_dir, tmp_path_factory):
    """An exported model with the IoU head, calibrated on the tiny val split (alpha 0.3: the
    split has too few findings for 0.1); with one and with four boxes per phrase (the
    calibration is of the phrase's box, the enclosing one)."""
    torch.manual_seed(0)
    config = GroundingConfig(version=str(tiny_dir / "llava"),
                             vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=4,
                             iou_head=True, max_boxes_per_phrase=request.param)
    model, processor, _ = build_umedground(config)
    folder = model.save_pretrained(tmp_path_factory.mktemp("calibrated"), processor)
    out = tmp_path_factory.mktemp("calibration_run")
    _TEST_CLI.main(["--version", str(folder), "--dataset_dir", str(synth_dir), "--split", "val",
                    "--calibrate", "--alpha", "0.3", "--uncertainty", "iou", "--out", str(out),
                    "--max_new_tokens", "8", "--batch_size", "4"])
    return folder, out


def test_calibrate_writes_calibration_json_from_val(calibrated):
    folder, out = calibrated
    written = json.loads((folder / CALIBRATION_NAME).read_text())
    assert written["split"] == "val" and written["signal"] == "iou" and written["alpha"] == 0.3
    assert written["quantile"] >= 0 and written["n_findings"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert CALIBRATION_KEYS <= set(metrics["calibration"])
    assert {"spread", "iou", "combined"} <= set(metrics["uncertainty"])
    assert metrics["uncertainty_signal"] == "iou"


def test_a_calibrated_model_reports_coverage_and_abstentions(calibrated, synth_dir, tmp_path):
    folder, _ = calibrated
    _TEST_CLI.main(["--version", str(folder), "--dataset_dir", str(synth_dir), "--split", "test",
                    "--out", str(tmp_path), "--max_new_tokens", "8", "--batch_size", "4",
                    "--vis", "1", "--image_noise_std", "0,30"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    block = metrics["calibration"]
    assert CALIBRATION_KEYS <= set(block) and 0.0 <= block["coverage"] <= 1.0
    assert block["mean_area_inflation"] >= 1.0 and block["signal"] == "iou"
    assert sum(kind["n"] for kind in block["by_finding"].values()) == metrics["n_findings"]
    assert "unknown" not in block["by_finding"]  # SynthCXR rows carry their finding type
    assert {"n", "coverage", "selective_risk"} <= set(block["end_to_end"])
    records = [json.loads(line) for line in
               (tmp_path / "predictions.jsonl").read_text().splitlines()]
    for record in records:
        given = record["given_phrase"]
        assert len(given["inflated_box"]) == 4 and isinstance(given["abstain"], bool)
        assert set(given["u_signals"]) == {"spread", "iou", "combined"}
        assert given["boxes"] and all(isinstance(box["u"], float) for box in given["boxes"])
    noise = json.loads((tmp_path / "noise.json").read_text())
    assert [row["image_noise_std"] for row in noise] == [0.0, 30.0]
    assert all(CALIBRATION_KEYS <= set(row["calibration"]) for row in noise)
    assert list((tmp_path / "vis").glob("*.png"))


def test_chat_shows_the_calibrated_box_and_the_abstention(calibrated, synth_dir, tmp_path,
                                                          monkeypatch, capsys):
    folder, _ = calibrated
    row = next(s for s in load_annotations(synth_dir / "report_test.jsonl") if s.findings)
    script_from_pretrained(monkeypatch, answer_text([f.phrase for f in ordered_findings(row)]))
    chat.main(["--version", str(folder), "--image", str(row.image_path), "--report", row.report,
               "--out", str(tmp_path)])
    document = json.loads((tmp_path / f"{row.image_path.stem}.json").read_text())
    assert document["calibration"]["alpha"] == 0.3 and document["calibration"]["signal"] == "iou"
    for phrase in document["phrases"]:
        x0, y0, x1, y1 = phrase["box"]
        i0, j0, i1, j1 = phrase["inflated_box"]
        assert i0 <= x0 and j0 <= y0 and i1 >= x1 and j1 >= y1
        assert isinstance(phrase["abstain"], bool)
        assert phrase["boxes"] and "inflated_box" not in phrase["boxes"][0]
    assert "70% box [" in capsys.readouterr().out
    with Image.open(tmp_path / f"{row.image_path.stem}.png") as picture:
        assert picture.height > row.height


def test_a_model_calibrated_with_test_time_shifts_is_evaluated_with_them(calibrated, synth_dir,
                                                                         tmp_path):
    """--calibrate --test_time_shift 8 records the shift; test.py then reads the boxes on the
    shifted copies without being told (5 x N hypotheses a box), and refuses another shift."""
    folder, _ = calibrated
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for file in folder.iterdir():
        (shifted / file.name).write_bytes(file.read_bytes())
    common = ["--dataset_dir", str(synth_dir), "--max_new_tokens", "8", "--batch_size", "4"]
    _TEST_CLI.main(["--version", str(shifted), "--split", "val", "--calibrate", "--alpha", "0.3",
                    "--test_time_shift", "8", "--out", str(tmp_path / "val"), *common])
    assert json.loads((shifted / CALIBRATION_NAME).read_text())["test_time_shift"] == 8
    _TEST_CLI.main(["--version", str(shifted), "--split", "test", "--out",
                    str(tmp_path / "test"), *common])
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["test_time_shift"] == 8
    record = json.loads((tmp_path / "test" / "predictions.jsonl").read_text().splitlines()[0])
    assert len(record["given_phrase"]["hypotheses"]) == 5 * 3
    with pytest.raises(SystemExit, match="fitted with --test_time_shift 8"):
        _TEST_CLI.main(["--version", str(shifted), "--split", "test", "--test_time_shift", "0",
                        "--out", str(tmp_path / "off"), *common])
