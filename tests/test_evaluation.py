"""test.py: no answer in the prompt, reproducible numbers, the baseline, the output files."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from model.build import build_umedground
from model.config import GroundingConfig
from model.constants import BOX_TOKEN
from model.llava_builder import load_processor
from utils.annotations import load_annotations
from utils.dataset import GroundingCollator, GroundingDataset
from utils.prompts import answer_text
from utils.span_decoding import DEFAULT_PHRASE_START_RATIO

_SPEC = importlib.util.spec_from_file_location(
    "umedground_test_cli", Path(__file__).resolve().parents[1] / "test.py"
)
_TEST_CLI = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_TEST_CLI)
run_test_cli = _TEST_CLI.main  # test.py, loaded by path: `import test` is the standard library's


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    torch.manual_seed(0)
    config = GroundingConfig(
        version=str(tiny_dir / "llava"), vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=4
    )
    model, processor, _ = build_umedground(config)
    return model.save_pretrained(tmp_path_factory.mktemp("exported"), processor)


@pytest.mark.parametrize("task", ["report", "vqa", "class"])
def test_evaluation_prompts_never_hold_the_answer(tiny_dir, synth_dir, task):
    processor = load_processor(tiny_dir / "llava")
    samples = [s for s in load_annotations(synth_dir / f"{task}_test.jsonl") if s.findings][:4]
    dataset = GroundingDataset(samples, processor, 256, train=False)
    batch = GroundingCollator(processor.tokenizer.pad_token_id, "generate")(
        [dataset[i] for i in range(len(samples))]
    )
    box_id = processor.tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    for row, sample in enumerate(samples):
        prompt = processor.tokenizer.decode(batch["input_ids"][row], skip_special_tokens=True)
        answer = answer_text([f.phrase for f in sample.findings])
        assert BOX_TOKEN not in prompt and int((batch["input_ids"][row] == box_id).sum()) == 0
        assert answer not in prompt and "It is" not in prompt.split("ASSISTANT:")[-1]
        assert prompt.rstrip().endswith("ASSISTANT:")


def test_two_runs_give_the_same_numbers_and_all_files(exported, synth_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        run_test_cli(
            [
                "--version",
                str(exported),
                "--dataset_dir",
                str(synth_dir),
                "--split",
                "test",
                "--out",
                str(out),
                "--max_new_tokens",
                "12",
                "--batch_size",
                "4",
                "--vis",
                "2",
                "--image_noise_std",
                "0,20",
            ]
        )
        metrics = json.loads((out / "metrics.json").read_text())
        metrics.pop("seconds")
        runs.append(metrics)
        assert (out / "risk_coverage.png").is_file() and (out / "iou_vs_u.png").is_file()
        assert len(list((out / "vis").glob("*.png"))) == 2
        noise = json.loads((out / "noise.json").read_text())
        assert [row["image_noise_std"] for row in noise] == [0.0, 20.0]
        lines = (out / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == metrics["n_findings"]
    assert runs[0] == runs[1]
    box_keys = {"acc@0.1", "acc@0.3", "acc@0.5", "miou", "precision@0.5", "recall@0.5",
                "count_accuracy", "n_findings", "n_boxes"}
    for block in ("grounding_boxes", "grounding_boxes_given_phrase"):
        assert set(runs[0][block]) == box_keys | {"multi_box", "single_box"}
        assert set(runs[0][block]["multi_box"]) == box_keys
    assert set(runs[0]["grounding_strict"]) == set(runs[0]["grounding"])
    assert all(runs[0]["grounding_strict"][k] <= runs[0]["grounding"][k]
               for k in runs[0]["grounding"])
    assert runs[0]["match_threshold"] == 0.5
    assert runs[0]["decoding"] == "spans"
    assert runs[0]["phrase_start_ratio"] == DEFAULT_PHRASE_START_RATIO
    assert runs[0]["test_time_shift"] == 0
    assert runs[0]["n_phrases_outside_text"] == 0  # SynthCXR's phrases are report spans
    assert set(runs[0]["uncertainty"]) == {"aurc", "auroc_failure@0.5", "spearman_u_iou", "spread"}
    assert set(runs[0]["uncertainty"]["spread"]) == {"aurc", "auroc_failure@0.5", "spearman_u_iou",
                                                     "n"}
    assert "calibration" not in runs[0]  # the model has no calibration.json
    assert set(runs[0]["phrase"]) == {
        "exact_match",
        "bleu_1",
        "bleu_4",
        "rouge_l",
        "cider",
        "meteor",
    }


def test_phrase_prior_baseline_on_tiny_synthcxr(synth_dir, tmp_path):
    run_test_cli(
        [
            "--baseline",
            "phrase_prior",
            "--dataset_dir",
            str(synth_dir),
            "--split",
            "test",
            "--out",
            str(tmp_path),
        ]
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["baseline"] == "phrase_prior" and metrics["n_findings"] > 0
    assert 0.0 < metrics["grounding_given_phrase"]["miou"] < 1.0
    assert metrics["grounding"] == metrics["grounding_given_phrase"]
    record = json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])
    assert record["pred_phrase"] == record["phrase"] and len(record["box"]) == 4


@pytest.mark.parametrize("max_boxes,phrase_box", [(1, False), (3, False), (3, True)])
def test_every_box_of_a_phrase_is_recorded_and_scored(tiny_dir, synth_dir, max_boxes,
                                                       phrase_box):
    """Given the phrase: each finding's record lists the boxes its phrase reports (one for a
    single-box model, where the per-box IoU of a one-box finding is its IoU) and one IoU per
    ground-truth box; the phrase's box encloses its boxes; the blocks count the findings."""
    from utils.evaluate import build_eval_dataset, evaluate_model

    torch.manual_seed(0)
    config = GroundingConfig(version=str(tiny_dir / "llava"),
                             vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=4,
                             max_boxes_per_phrase=max_boxes, phrase_box=phrase_box)
    model, processor, _ = build_umedground(config)
    model.eval()
    samples = load_annotations(synth_dir / "report_train.jsonl")
    several = [s for s in samples if any(len(f.boxes) > 1 for f in s.findings)]
    samples = several[:3] + [s for s in samples if s.findings and s not in several][:3]
    assert several, "the SynthCXR fixture has findings with several boxes"
    result = evaluate_model(model, processor, build_eval_dataset(model, processor, samples),
                            batch_size=3, max_new_tokens=4, progress=False, meteor=False)
    for record in result.records:
        given = record["given_phrase"]
        assert len(given["box_ious"]) == len(record["gt_boxes"])
        assert 1 <= len(given["boxes"]) <= max_boxes
        if max_boxes == 1 or (phrase_box and len(given["boxes"]) == 1):  # one box: the phrase's
            assert [{**b, "presence": None} for b in given["boxes"]] == [
                {"box": given["box"], "hypotheses": given["hypotheses"], "u": given["u"],
                 "presence": None}]
            if len(record["gt_boxes"]) == 1:
                assert given["box_ious"][0] == pytest.approx(given["iou"], abs=1e-6)
        for part in given["boxes"]:
            x0, y0, x1, y1 = part["box"]
            assert given["box"][0] <= x0 + 0.02 and given["box"][1] <= y0 + 0.02
            assert given["box"][2] >= x1 - 0.02 and given["box"][3] >= y1 - 0.02
    block = result.metrics["grounding_boxes_given_phrase"]
    multi = sum(len(r["gt_boxes"]) > 1 for r in result.records)
    assert block["multi_box"]["n_findings"] == multi > 0
    assert block["n_boxes"] == sum(len(r["gt_boxes"]) for r in result.records)
    if max_boxes == 1:
        assert block["count_accuracy"] == pytest.approx(1 - multi / len(result.records))


def test_bad_dataset_is_a_clear_error(exported, tmp_path):
    with pytest.raises(SystemExit, match="no annotation file report_test.jsonl"):
        run_test_cli(
            ["--version", str(exported), "--dataset_dir", str(tmp_path), "--out", str(tmp_path)]
        )


def two_pass_records(model, processor, samples, batch_size, max_new_tokens):
    """The evaluation as it was before the single pass: two loaders over the same samples,
    SAM run in generation and again in the teacher-forced pass, phrases read back from the
    decoded text. Returns the records ``evaluate_model`` writes."""
    import re

    from torch.utils.data import DataLoader

    from utils.dataset import ordered_findings
    from utils.evaluate import _box_fields, _pixel_predictions, _target_pixels
    from utils.evaluation.matching import LEADING, TRAILING, match_phrases

    dataset = GroundingDataset(samples, processor, model.sam_encoder.img_size, train=False)
    pad = processor.tokenizer.pad_token_id
    loaders = [
        DataLoader(dataset, batch_size=batch_size, collate_fn=GroundingCollator(pad, mode))
        for mode in ("generate", "train")
    ]
    records = []
    for generate_batch, forced_batch in zip(*loaders):
        generated = model.generate(
            *(
                generate_batch[k]
                for k in ("sam_images", "pixel_values", "input_ids", "attention_mask")
            ),
            processor.tokenizer,
            max_new_tokens=max_new_tokens,
        )
        with torch.no_grad():
            forced = model(
                **{
                    k: forced_batch[k]
                    for k in ("sam_images", "pixel_values", "input_ids", "attention_mask", "labels")
                }
            )
        generated_px = _pixel_predictions(
            generated.prediction, generated.box_batch_index, generate_batch
        )
        forced_px = _pixel_predictions(forced.prediction, forced.box_batch_index, forced_batch)
        for row, sample in enumerate(generate_batch["samples"]):
            findings = ordered_findings(sample)
            phrases = [
                TRAILING.sub("", LEADING.sub("", piece))
                for piece in re.split(re.escape(BOX_TOKEN), generated.texts[row])[:-1]
            ]
            gen_idx = (generated_px.rows == row).nonzero(as_tuple=True)[0].tolist()
            phrases = phrases[: len(gen_idx)]
            matches = dict((g, p) for p, g in match_phrases(phrases, [f.phrase for f in findings]))
            forced_idx = (forced_px.rows == row).nonzero(as_tuple=True)[0].tolist()
            for index, finding in enumerate(findings):
                target = _target_pixels(sample, finding)
                record = {
                    "phrase": finding.phrase,
                    "generated_text": generated.texts[row],
                    "pred_phrase": None,
                    "box": None,
                    "iou": 0.0,
                    "given_phrase": _box_fields(forced_px, forced_idx[index], target),
                }
                if index in matches:
                    record.update(_box_fields(generated_px, gen_idx[matches[index]], target))
                    record["pred_phrase"] = phrases[matches[index]]
                records.append(record)
    return records


def test_single_pass_evaluation_equals_the_two_pass_one(tiny_dir, synth_dir, monkeypatch):
    """An untrained model writes no phrase close to a finding, so every pair is kept here
    (similarity >= 0) and the generated boxes are compared too."""
    from functools import partial

    import utils.evaluation.matching
    from tests.test_grounding_model import BoxEveryThirdStep
    from utils.evaluate import build_eval_dataset, evaluate_model

    keep_all = partial(utils.evaluation.matching.match_phrases, min_similarity=0.0)
    monkeypatch.setattr(utils.evaluation.matching, "match_phrases", keep_all)

    torch.manual_seed(0)
    config = GroundingConfig(
        version=str(tiny_dir / "llava"), vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=4
    )
    model, processor, _ = build_umedground(config)
    model.eval()
    tokenizer = processor.tokenizer
    samples = load_annotations(synth_dir / "report_test.jsonl")
    records = {}
    for name in ("two-pass", "single-pass"):
        hook = model.llava.get_output_embeddings().register_forward_hook(
            BoxEveryThirdStep(tokenizer.convert_tokens_to_ids(BOX_TOKEN), tokenizer.eos_token_id)
        )
        try:
            if name == "two-pass":
                records[name] = two_pass_records(model, processor, samples, 4, 12)
            else:
                dataset = build_eval_dataset(model, processor, samples)
                records[name] = evaluate_model(
                    model,
                    processor,
                    dataset,
                    batch_size=4,
                    max_new_tokens=12,
                    progress=False,
                    meteor=False,
                    match_threshold=0.0,
                    decoding="free",  # the scripted [BOX] steps are in no span of the report
                ).records
        finally:
            hook.remove()
    assert len(records["single-pass"]) == len(records["two-pass"]) > 0
    assert any(r["box"] is not None for r in records["two-pass"])
    for single, double in zip(records["single-pass"], records["two-pass"]):
        for key in ("phrase", "generated_text", "pred_phrase", "box"):
            assert single[key] == pytest.approx(double[key], abs=0.02), key
        assert single["iou"] == pytest.approx(double["iou"], abs=1e-4)
        assert single["given_phrase"]["box"] == pytest.approx(
            double["given_phrase"]["box"], abs=0.02
        )


def test_report_phrases_outside_their_report_are_counted_and_warned(exported, synth_dir,
                                                                     tmp_path, capfd):
    """Span decoding cannot write a phrase its report does not hold: test.py counts those
    findings (n_phrases_outside_text) and says so."""
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    rows = [json.loads(line) for line in (data / "report_test.jsonl").read_text().splitlines()]
    rows = [row for row in rows if row["findings"]][:2]
    rows[0]["findings"][0]["phrase"] = "a paraphrase the report does not hold"
    (data / "report_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    run_test_cli(["--version", str(exported), "--dataset_dir", str(data), "--split", "test",
                  "--out", str(out), "--max_new_tokens", "8", "--batch_size", "2"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_phrases_outside_text"] == 1 and metrics["decoding"] == "spans"
    warned = capfd.readouterr().err  # test.py's logging writes to stderr
    assert "1 of the" in warned and "--decoding free" in warned
