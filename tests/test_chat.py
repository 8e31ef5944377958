"""chat.py and utils.inference: same boxes as test.py, every image kind in its own frame, the
JSON and overlay files, the three tasks, the interactive loop, and one message per bad input."""
from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import chat
from model.build import build_umedground
from model.config import GroundingConfig
from model.grounding_model import UMedGround
from tests.scripted import script_from_pretrained
from tests.test_image_io import write_dicom
from utils.annotations import load_annotations
from utils.dataset import ordered_findings
from utils.image_io import read_image
from utils.inference import Grounder
from utils.prompts import answer_text

REPO = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("umedground_test_cli", REPO / "test.py")
_TEST_CLI = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_TEST_CLI)  # `import test` would be the standard library's


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = GroundingConfig(version=str(tiny_dir / "llava"),
                             vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=4)
    model, processor, _ = build_umedground(config)
    return model.save_pretrained(tmp_path_factory.mktemp("chat_export"), processor)


@pytest.fixture(scope="module")
def row(synth_dir):
    """A SynthCXR test row with two or more findings (one if none has two)."""
    samples = [s for s in load_annotations(synth_dir / "report_test.jsonl") if s.findings]
    return max(samples, key=lambda s: min(len(s.findings), 2))


def scripted_answer(sample) -> str:
    return answer_text([f.phrase for f in ordered_findings(sample)])


def run_chat(*args: str) -> None:
    chat.main([str(a) for a in args])


def test_chat_gives_the_same_phrases_and_boxes_as_test_py(exported, synth_dir, row, tmp_path,
                                                          monkeypatch):
    script_from_pretrained(monkeypatch, scripted_answer(row))
    rows = load_annotations(synth_dir / "report_test.jsonl")
    index = next(i for i, s in enumerate(rows) if s.id == row.id)
    # test.py on exactly that row: the first index+1 rows, batch 1, and keep that row's records
    _TEST_CLI.main(["--version", str(exported), "--dataset_dir", str(synth_dir), "--split", "test",
                    "--out", str(tmp_path / "eval"), "--batch_size", "1",
                    "--max_samples", str(index + 1), "--max_new_tokens", "64"])
    records = [json.loads(line) for line in
               (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    records = [r for r in records if r["id"] == row.id]
    assert len(records) == len(row.findings) and all(r["pred_phrase"] for r in records)
    run_chat("--version", exported, "--image", row.image_path, "--report", row.report,
             "--out", tmp_path / "chat", "--max_new_tokens", "64")
    document = json.loads((tmp_path / "chat" / f"{row.image_path.stem}.json").read_text())
    assert [p["phrase"] for p in document["phrases"]] == [r["pred_phrase"] for r in records]
    for phrase, record in zip(document["phrases"], records):
        assert phrase["box"] == record["box"]
        assert phrase["hypotheses"] == record["hypotheses"]
        assert phrase["u"] == pytest.approx(record["u"], rel=1e-6)
    assert (tmp_path / "chat" / f"{row.image_path.stem}.png").is_file()


def test_json_schema_and_overlay(exported, row, tmp_path, monkeypatch, capsys):
    script_from_pretrained(monkeypatch, scripted_answer(row))
    run_chat("--version", exported, "--image", row.image_path, "--report", row.report,
             "--out", tmp_path)
    document = json.loads((tmp_path / f"{row.image_path.stem}.json").read_text())
    assert set(document) == {"schema_version", "image", "width", "height", "task", "inputs",
                             "truncated", "generated_text", "box_format", "phrases"}
    assert (document["width"], document["height"]) == (row.width, row.height)
    assert document["task"] == "report" and document["truncated"] is False
    assert len(document["phrases"]) == len(row.findings)
    assert document["schema_version"] == 2
    for phrase in document["phrases"]:
        assert set(phrase) == {"phrase", "box", "hypotheses", "variance", "u", "boxes"}
        # a single-box model: its one box, as the phrase's fields, and no presence
        assert phrase["boxes"] == [{"box": phrase["box"], "hypotheses": phrase["hypotheses"],
                                    "variance": phrase["variance"], "u": phrase["u"],
                                    "presence": None}]
        x0, y0, x1, y1 = phrase["box"]
        assert 0 <= x0 <= x1 <= row.width and 0 <= y0 <= y1 <= row.height
        assert len(phrase["hypotheses"]) == 3 and all(len(h) == 4 for h in phrase["hypotheses"])
        assert len(phrase["variance"]) == 4 and min(phrase["variance"]) >= 0
        assert phrase["u"] >= 0
    with Image.open(tmp_path / f"{row.image_path.stem}.png") as picture:
        assert picture.width == row.width and picture.height > row.height  # caption band
    printed = capsys.readouterr().out
    assert all(f.phrase in printed for f in row.findings) and "box [" in printed


def test_a_several_box_model_lists_every_box_of_a_phrase(tiny_dir, row, tmp_path, monkeypatch,
                                                         capsys):
    """An export with 3 box slots per phrase and the phrase box loads and reports each box the
    count head asks for (one: the phrase box; 2..3: the most present slots first); the
    phrase's hypotheses enclose them."""
    torch.manual_seed(0)
    config = GroundingConfig(version=str(tiny_dir / "llava"),
                             vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=4,
                             max_boxes_per_phrase=3, phrase_box=True)
    model, processor, _ = build_umedground(config)
    folder = model.save_pretrained(tmp_path / "export", processor)
    script_from_pretrained(monkeypatch, scripted_answer(row))
    run_chat("--version", folder, "--image", row.image_path, "--report", row.report,
             "--out", tmp_path / "out")
    document = json.loads((tmp_path / "out" / f"{row.image_path.stem}.json").read_text())
    assert len(document["phrases"]) == len(row.findings)
    for phrase in document["phrases"]:
        boxes = phrase["boxes"]
        presence = [b["presence"] for b in boxes]
        assert 1 <= len(boxes) <= 3 and presence == sorted(presence, reverse=True)
        for n, hypothesis in enumerate(phrase["hypotheses"]):
            parts = [b["hypotheses"][n] for b in boxes]
            assert hypothesis[0] == pytest.approx(min(p[0] for p in parts), abs=0.02)
            assert hypothesis[3] == pytest.approx(max(p[3] for p in parts), abs=0.02)
    printed = capsys.readouterr().out
    assert "box [" in printed


def test_overlay_hides_boxes_above_max_u(exported, row, monkeypatch):
    from utils.inference import overlay, shown
    from utils.visualize import BOX_COLOUR

    script_from_pretrained(monkeypatch, scripted_answer(row))
    model, processor = UMedGround.from_pretrained(exported)
    image = read_image(row.image_path)
    result = Grounder(model, processor).ground(image, report=row.report)
    lowest = min(p.u for p in result.phrases)

    def red(picture: Image.Image) -> int:
        pixels = np.asarray(picture)[: row.height]
        return int((pixels == BOX_COLOUR).all(axis=-1).sum())

    assert red(overlay(image, result)) > 0 and len(shown(result, None)) == len(result.phrases)
    assert red(overlay(image, result, max_u=lowest / 2)) == 0
    assert shown(result, lowest) and all(p.u <= lowest for p in shown(result, lowest))


def full_range(image: np.ndarray) -> np.ndarray:
    """The grayscale of ``image`` stretched to 0..255, so every bit depth maps back to it."""
    gray = image[..., 0].astype(np.float64)
    return np.rint((gray - gray.min()) / (gray.max() - gray.min()) * 255).astype(np.uint8)


def test_16bit_png_and_dicom_give_boxes_in_the_frame_of_the_file(exported, row, tmp_path,
                                                                monkeypatch):
    script_from_pretrained(monkeypatch, scripted_answer(row))
    model, processor = UMedGround.from_pretrained(exported)
    grounder = Grounder(model, processor)
    reference = full_range(read_image(row.image_path))
    files = {"8bit.png": tmp_path / "8bit.png", "16bit.png": tmp_path / "16bit.png"}
    Image.fromarray(reference).save(files["8bit.png"])
    Image.fromarray(reference.astype(np.uint16) * 257).save(files["16bit.png"])
    twelve_bit = reference.astype(np.uint16) * 16
    files["mono2.dcm"] = write_dicom(tmp_path / "mono2.dcm", twelve_bit, "MONOCHROME2",
                                     RescaleSlope=2, RescaleIntercept=-1024)
    files["mono1.dcm"] = write_dicom(tmp_path / "mono1.dcm", 4080 - twelve_bit, "MONOCHROME1")
    boxes = {}
    for name, path in files.items():
        image = read_image(path)
        assert (image[..., 0] == reference).all(), name
        result = grounder.ground(image, report=row.report)
        assert len(result.phrases) == len(row.findings), name
        boxes[name] = [p.box for p in result.phrases]
    assert all(value == boxes["8bit.png"] for value in boxes.values()), boxes
    # a non-square crop at 1x and, as a 16-bit file, at 2x: the boxes come back in each
    # file's own pixels, so the 2x boxes are twice the 1x ones
    crop = reference[:, : row.width * 5 // 8]
    small = grounder.ground(np.repeat(crop[..., None], 3, axis=2), report=row.report)
    Image.fromarray(np.kron(crop, np.ones((2, 2), dtype=np.uint8)).astype(np.uint16) * 257).save(
        tmp_path / "crop2x.png")
    large = grounder.ground(read_image(tmp_path / "crop2x.png"), report=row.report)
    assert (large.width, large.height) == (2 * small.width, 2 * small.height)
    for one, two in zip(small.phrases, large.phrases):
        assert np.allclose(np.array(two.box) / 2, one.box, atol=0.02 * row.width), (one, two)
        assert max(one.box[2], two.box[2] / 2) <= small.width + 1e-6


@pytest.mark.parametrize("task_args, task, inputs", [
    (["--question", "Is the heart enlarged?", "--answer", "Yes, moderately."], "vqa",
     {"question": "Is the heart enlarged?", "answer": "Yes, moderately."}),
    (["--label", "cardiomegaly"], "class", {"label": "cardiomegaly"}),
])
def test_vqa_and_class_tasks(exported, row, tmp_path, monkeypatch, task_args, task, inputs):
    script_from_pretrained(monkeypatch, "Moderate enlargement of the heart. It is [BOX].")
    run_chat("--version", exported, "--image", row.image_path, *task_args, "--out", tmp_path)
    document = json.loads((tmp_path / f"{row.image_path.stem}.json").read_text())
    assert document["task"] == task and document["inputs"] == inputs
    assert [p["phrase"] for p in document["phrases"]] == ["Moderate enlargement of the heart"]


def test_long_report_is_cut_with_a_warning(exported, row, tmp_path, caplog):
    model, processor = UMedGround.from_pretrained(exported)
    grounder = Grounder(model, processor, model_max_length=200, max_new_tokens=16)
    long_report = " ".join([row.report] * 20)
    with caplog.at_level(logging.WARNING, logger="utils.inference"):
        result = grounder.ground(read_image(row.image_path), report=long_report)
    assert result.truncated and long_report.startswith(result.inputs["report"][:50])
    assert len(result.inputs["report"]) < len(long_report)
    assert "was cut" in caplog.text


def test_interactive_mode_asks_for_image_and_report(exported, row, tmp_path, monkeypatch,
                                                    capsys):
    script_from_pretrained(monkeypatch, scripted_answer(row))
    answers = iter([str(tmp_path / "missing.png"), row.report,  # an error, and the loop goes on
                    str(row.image_path), row.report, ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    run_chat("--version", exported, "--out", tmp_path / "out")
    captured = capsys.readouterr()
    assert "missing.png does not exist" in captured.err
    assert (tmp_path / "out" / f"{row.image_path.stem}.json").is_file()
    assert f"{len(row.findings)} phrase(s)" in captured.out


BAD_INPUTS = [  # (case, model folder, arguments, message); {tmp} and {image} are filled in
    ("missing image", "export", ["--image", "{tmp}/nope.png", "--report", "x"],
     "nope.png does not exist"),
    ("unreadable image", "export", ["--image", "{tmp}/notes.png", "--report", "x"], "notes.png"),
    ("empty report", "export", ["--image", "{image}", "--report", "   "], "the report is empty"),
    ("empty report file", "export", ["--image", "{image}", "--report_file", "{tmp}/empty.txt"],
     "the report is empty"),
    ("missing report file", "export", ["--image", "{image}", "--report_file", "{tmp}/no.txt"],
     "--report_file"),
    ("base llava folder", "base", ["--image", "{image}", "--report", "x"],
     "not an exported uMedGround folder"),
    ("no folder", "nowhere", ["--image", "{image}", "--report", "x"],
     "not an exported uMedGround folder"),
]


@pytest.mark.parametrize("case, folder, args, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gives_one_message(exported, row, tiny_dir, tmp_path, case, folder, args,
                                     message):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.txt").write_text("  \n")
    version = {"export": exported, "base": tiny_dir / "llava", "nowhere": tmp_path / "nowhere"}
    args = [a.format(tmp=tmp_path, image=row.image_path) for a in args]
    with pytest.raises(SystemExit) as raised:
        run_chat("--version", version[folder], *args, "--out", tmp_path / "out")
    assert message in str(raised.value.code), raised.value.code
    assert not (tmp_path / "out").exists()


def test_bad_input_exits_non_zero_without_a_traceback(tiny_dir, row, tmp_path):
    result = subprocess.run(
        [sys.executable, "chat.py", "--version", str(tiny_dir / "llava"), "--image",
         str(row.image_path), "--report", "x", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "not an exported uMedGround folder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--report", "x"], "without --image chat.py asks for each image and its text"),
    (["--label", "nodule", "--task", "class"], "without --image chat.py asks"),
    (["--image", "x.png", "--report", "x", "--task", "vqa"],
     "--task vqa does not match the report text given"),
    (["--image", "x.png"], "--image needs its text"),
    (["--image", "x.png", "--report", "caf\udce9 effusion"], "--report holds bytes that are not"),
])
def test_text_flags_are_checked_at_parse_time(args, message, capsys):
    with pytest.raises(SystemExit):
        chat.parse_args(["--version", "v", *args])
    assert message in capsys.readouterr().err


def test_out_must_not_be_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    with pytest.raises(SystemExit):
        chat.parse_args(["--version", "v", "--out", str(tmp_path / "taken")])
    assert "is a file; give a folder" in capsys.readouterr().err


@pytest.mark.parametrize("task, flags", [(None, []), ("vqa", ["--task", "vqa"])])
def test_interactive_task(task, flags):
    assert chat.parse_args(["--version", "v", *flags]).task == (task or "report")


@pytest.mark.parametrize("flag", ["--load_in_8bit", "--load_in_4bit"])
def test_quantisation_flags_refuse_on_cpu(exported, row, tmp_path, flag):
    with pytest.raises(SystemExit, match=f"{flag} needs a CUDA GPU"):
        run_chat("--version", exported, "--image", row.image_path, "--report", "x",
                 "--device", "cpu", flag, "--out", tmp_path)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        UMedGround.from_pretrained(exported, "cpu", quantization=flag.split("_")[-1])
