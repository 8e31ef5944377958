"""Image preprocessing, conversations, truncation and collation."""

from __future__ import annotations

import dataclasses
import io
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from model.constants import BOX_TOKEN, IGNORE_INDEX
from model.llava_builder import load_processor
from utils.annotations import Sample, load_annotations
from utils.dataset import (
    GroundingCollator,
    GroundingDataset,
    PromptTooLongError,
    ordered_findings,
)
from utils.image_io import ImageReadError, read_image
from utils.prompts import answer_text, question_text
from utils.sam_transforms import image_to_padded_boxes, padded_to_image_boxes, preprocess_for_sam


def test_real_radiographs_through_sam_preprocessing(nih_images):
    for path in nih_images:
        image = read_image(path)
        assert image.shape == (512, 512, 3) and image.dtype == np.uint8
        pixels, scale = preprocess_for_sam(image, 1024)
        assert pixels.shape == (3, 1024, 1024) and scale == (1.0, 1.0)
        assert abs(float(pixels.mean())) < 3.0
    wide = np.zeros((300, 600, 3), np.uint8) + 200
    pixels, scale = preprocess_for_sam(wide, 256)
    assert scale == (1.0, 0.5)
    assert float(pixels[:, 200:, :].abs().sum()) == 0.0  # zero padding below the image
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.8]])
    padded = image_to_padded_boxes(boxes, torch.tensor(scale))
    assert padded[0].tolist() == pytest.approx([0.1, 0.1, 0.5, 0.4])
    assert padded_to_image_boxes(padded, torch.tensor(scale))[0].tolist() == pytest.approx(
        boxes[0].tolist()
    )


def test_tiny_llava_folder_loads_with_autoprocessor(tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir / "llava")
    assert BOX_TOKEN in processor.tokenizer.get_vocab()
    assert processor.image_token == "<image>"


def test_only_the_answer_is_supervised_in_report_order(tiny_dir, synth_dir):
    processor = load_processor(tiny_dir / "llava")
    samples = [
        s for s in load_annotations(synth_dir / "report_train.jsonl") if len(s.findings) >= 2
    ]
    dataset = GroundingDataset(samples[:1], processor, 256, train=True)
    item = dataset[0]
    tokenizer = processor.tokenizer
    supervised = item["labels"][item["labels"] != IGNORE_INDEX]
    answer = tokenizer.decode(supervised, skip_special_tokens=True)
    assert answer == answer_text(item["phrases"])
    positions = [samples[0].report.lower().find(p.lower()) for p in item["phrases"]]
    assert positions == sorted(positions)
    assert int((supervised == tokenizer.convert_tokens_to_ids(BOX_TOKEN)).sum()) == len(
        item["phrases"]
    )
    assert item["box_targets"].shape == (len(item["phrases"]), 4)


def test_long_reports_are_cut_in_the_report_never_the_answer(tiny_dir, synth_dir, caplog):
    processor = load_processor(tiny_dir / "llava")
    samples = [
        s for s in load_annotations(synth_dir / "report_train.jsonl") if len(s.findings) >= 2
    ][:3]
    dataset = GroundingDataset(samples, processor, 256, model_max_length=80)
    assert dataset.truncated == 3
    assert "3 of 3 sample(s) may not fit model_max_length=80" in caplog.text
    box_id = processor.tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    for index, sample in enumerate(samples):
        item = dataset[index]
        assert len(item["input_ids"]) <= 80
        assert int((item["labels"] == box_id).sum()) == len(sample.findings)
    with pytest.raises(PromptTooLongError, match="cannot fit model_max_length=20") as error:
        GroundingDataset(samples, processor, 256, model_max_length=20)
    assert all(s.source in str(error.value) for s in samples)  # every offender, up front


@pytest.mark.parametrize(
    "task, changes, cut_field",
    [
        ("vqa", {"question": "Where is the effusion? " * 40, "answer": "left base"}, "question"),
        (
            "class",
            {"label": "Pleural Effusion", "description": "A long paragraph. " * 60},
            "description",
        ),
    ],
)
def test_vqa_and_class_prompts_are_cut_in_question_or_description(
    tiny_dir, synth_dir, task, changes, cut_field
):
    processor = load_processor(tiny_dir / "llava")
    sample = load_annotations(synth_dir / "report_train.jsonl")[0]
    sample = dataclasses.replace(sample, task=task, **changes)
    dataset = GroundingDataset([sample], processor, 256, model_max_length=120)
    assert dataset.truncated == 1
    item = dataset[0]
    assert len(item["input_ids"]) <= 120
    tokenizer = processor.tokenizer
    answer = tokenizer.decode(item["input_ids"][item["prompt_length"] :], skip_special_tokens=False)
    assert answer.replace(tokenizer.eos_token, "").strip() == answer_text(item["phrases"])
    prompt = tokenizer.decode(item["input_ids"][: item["prompt_length"]])
    assert sample.label in prompt if task == "class" else "left base" in prompt
    assert changes[cut_field][:60].split()[0] in prompt  # cut, not dropped


def test_collate_pads_both_ways(tiny_dir, synth_dir):
    processor = load_processor(tiny_dir / "llava")
    samples = load_annotations(synth_dir / "report_train.jsonl")[:4]
    dataset = GroundingDataset(samples, processor, 256)
    items = [dataset[i] for i in range(4)]
    pad = processor.tokenizer.pad_token_id
    train = GroundingCollator(pad, "train")(items)
    generate = GroundingCollator(pad, "generate")(items)
    assert train["attention_mask"][:, 0].all() and generate["attention_mask"][:, -1].all()
    assert generate["input_ids"].shape[1] == max(item["prompt_length"] for item in items)
    assert len(train["box_batch_index"]) == sum(len(s.findings) for s in samples)


def test_every_box_of_a_finding_is_a_target_with_its_box_number(tiny_dir, synth_dir):
    """The single-box target of a finding encloses its boxes; ``box_set_targets`` holds each
    box, and ``box_set_index`` names the batch-wide [BOX] (row of ``box_targets``) it belongs
    to, in report order."""
    processor = load_processor(tiny_dir / "llava")
    samples = load_annotations(synth_dir / "report_train.jsonl")
    several = next(s for s in samples if any(len(f.boxes) > 1 for f in s.findings))
    plain = next(s for s in samples if s.findings and s is not several)
    empty = next(s for s in samples if not s.findings)
    dataset = GroundingDataset([plain, empty, several], processor, 256)
    batch = GroundingCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    findings = ordered_findings(plain) + ordered_findings(several)
    scale = torch.stack([batch["content_scale"][r] for r in (0, 2)])
    expected_index = [number for number, finding in enumerate(findings) for _ in finding.boxes]
    assert batch["box_set_index"].tolist() == expected_index
    every = torch.tensor([box for finding in findings for box in finding.boxes])
    sample_of_box = [0 if number < len(plain.findings) else 1 for number in expected_index]
    torch.testing.assert_close(batch["box_set_targets"],
                               every * scale[sample_of_box].repeat(1, 2))
    for number, finding in enumerate(findings):
        mine = batch["box_set_targets"][batch["box_set_index"] == number]
        enclosing = torch.cat([mine[:, :2].min(dim=0).values, mine[:, 2:].max(dim=0).values])
        torch.testing.assert_close(batch["box_targets"][number], enclosing)


def test_pixels_corrupt_after_a_valid_header_name_the_row(tiny_dir, synth_dir, tmp_path):
    """Validation reads headers only; a JPEG cut after its header fails when its sample loads,
    naming the annotation row and the file."""
    sample = load_annotations(synth_dir / "report_train.jsonl")[0]
    buffer = io.BytesIO()
    Image.open(sample.image_path).convert("L").save(buffer, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    dataset = GroundingDataset([dataclasses.replace(sample, image_path=cut)],
                               load_processor(tiny_dir / "llava"), 256, train=True)
    with pytest.raises(ImageReadError, match=rf"{re.escape(sample.source)}: image .*cut\.jpg"):
        dataset[0]


@pytest.mark.parametrize("texts, prompt", [
    ({"task": "vqa", "question": "Is there an effusion?", "answer": "Yes, on the left."},
     "Question: Is there an effusion?\nAnswer: Yes, on the left.\nGround the answer in the "
     "chest X-ray."),
    ({"task": "vqa", "answer": "what is seen?effusion.\n is there a mass?no."},
     "Answer: what is seen?effusion.\n is there a mass?no.\nGround the answer in the chest "
     "X-ray."),
    ({"task": "class", "label": "nodule"}, "The chest X-ray shows nodule. Ground it in the image."),
    ({"task": "class", "description": "A nodule is a small opacity."},
     "Description: A nodule is a small opacity.\nGround the findings this description names in "
     "the chest X-ray."),
])
def test_the_evaluation_prompt_of_each_kind_of_row(texts, prompt):
    """A VQA row without a question (a whole transcript as the answer) and a class row without
    a class name get templates without the missing field."""
    sample = Sample("s", Path("x.png"), 8, 8, (), **texts)
    assert question_text(sample) == prompt
    assert all(question_text(sample, rng=random.Random(seed)) for seed in range(4))
