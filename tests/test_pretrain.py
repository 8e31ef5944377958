"""Pretraining of the tiny backbones: its data (patient-disjoint, masks), the language model
(no ``[BOX]``, no answer format), SAM (official layout, initialises the box decoder) and
determinism."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.build import build_umedground
from model.config import GroundingConfig
from model.llava_builder import load_processor
from model.sam_encoder import SAM_TINY_CONFIG, build_sam, load_sam_checkpoint
from utils.annotations import SPLITS
from utils.pretrain.data import load_rows, read_masks, split_by_patient
from utils.pretrain.lm import LmSettings, encode, pretrain_lm
from utils.pretrain.sam import SamSettings, layer_group, pretrain_sam
from utils.prompts import BOX_TOKEN
from utils.synthcxr.findings import pixel_box
from utils.synthcxr.generate import CALIBRATION_SPLIT
from utils.synthcxr.pretrain import PRETRAIN_DIR, pack_layers, read_pretraining_rows, unpack_layers
from utils.tiny_checkpoints import REPORT_NAME, build_tiny_llava, corpus_lines, train_tokenizer


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pretraining_set_is_patient_disjoint_from_the_evaluation_splits(synth_dir):
    rows = read_pretraining_rows(synth_dir / PRETRAIN_DIR)
    pretrain_patients = {row["patient"] for row in rows}
    pretrain_images = {digest(synth_dir / PRETRAIN_DIR / row["image"]) for row in rows}
    for split in (*SPLITS, CALIBRATION_SPLIT):
        split_rows = jsonl(synth_dir / f"report_{split}.jsonl")
        assert not pretrain_patients & {row["patient"] for row in split_rows}, split
        assert not {row["id"] for row in rows} & {row["id"] for row in split_rows}, split
        assert not pretrain_images & {digest(synth_dir / row["image"]) for row in split_rows}
    assert len(rows) == 24 and len(pretrain_patients) >= 2


def test_masks_are_tight_to_their_boxes_and_anatomy_sits_where_it_should(synth_dir):
    folder = synth_dir / PRETRAIN_DIR
    for row in read_pretraining_rows(folder):
        masks = read_masks(folder, row)
        names = [layer["name"] for layer in row["layers"]]
        assert names[:3] == ["right lung", "left lung", "heart"]
        for layer, mask in zip(row["layers"], masks):
            assert list(pixel_box(mask)) == layer["box"], (row["id"], layer["name"])
            assert layer["kind"] == ("anatomy" if layer["bit"] < 3 else "lesion")
        right, left = row["layers"][0]["box"], row["layers"][1]["box"]
        assert right[2] <= left[0], row["id"]  # the patient's right is the image's left
        assert len(names) == len(set(names)), names


@pytest.mark.parametrize("count", [1, 3, 8])
def test_mask_layers_pack_into_one_png_and_back(tmp_path, count):
    rng = np.random.default_rng(count)
    masks = [rng.random((16, 12)) < 0.3 for _ in range(count)]
    Image.fromarray(pack_layers(masks)).save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as image:
        assert np.array_equal(unpack_layers(np.asarray(image), count), np.stack(masks))


def test_too_many_layers_and_bad_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="9 mask layers do not fit"):
        pack_layers([np.zeros((2, 2), bool)] * 9)
    with pytest.raises(FileNotFoundError, match="--n_pretrain"):
        read_pretraining_rows(tmp_path)
    (tmp_path / "pretrain.jsonl").write_text(json.dumps({"id": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"pretrain.jsonl, line 1: missing keys \['patient'"):
        read_pretraining_rows(tmp_path)


def test_held_out_patients_are_not_fitted():
    rows = [{"patient": f"p{1000000 + i // 2}", "id": str(i)} for i in range(200)]
    fit, held = split_by_patient(rows)
    assert fit and held and len(fit) + len(held) == len(rows)
    assert not {r["patient"] for r in fit} & {r["patient"] for r in held}
    assert split_by_patient(list(reversed(rows)))[1] == list(reversed(held))


def test_the_language_model_never_sees_box_or_the_answer_format(synth_dir, tiny_dir):
    processor = load_processor(tiny_dir / "llava")
    folder = synth_dir / PRETRAIN_DIR
    fit, held = load_rows(folder)
    data = encode(processor, folder, fit + held)
    box_id = processor.tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    texts = [processor.tokenizer.decode(p + a) for p, a in zip(data.prompts, data.answers)]
    assert not any(box_id in p + a for p, a in zip(data.prompts, data.answers))
    assert not any("It is" in text or "Ground" in text for text in texts)
    poisoned = [{**fit[0], "report": f"Left pleural effusion. It is {BOX_TOKEN}."}]
    with pytest.raises(ValueError, match=r"holds \[BOX\]"):
        encode(processor, folder, poisoned)


def test_pretrained_sam_loads_like_sam_vit_h_and_initialises_the_box_decoder(tiny_dir):
    report = json.loads((tiny_dir / REPORT_NAME).read_text())
    assert report["sam"]["steps"] > 0 and report["lm"]["steps"] > 0
    sam, config = load_sam_checkpoint(tiny_dir / "sam_tiny.pth", "auto")
    assert config == SAM_TINY_CONFIG
    torch.manual_seed(0)
    random = build_sam(SAM_TINY_CONFIG).state_dict()
    trained = sam.state_dict()
    for part in ("image_encoder.", "prompt_encoder.", "mask_decoder."):
        assert any(not torch.equal(trained[k], random[k]) for k in trained
                   if k.startswith(part) and trained[k].is_floating_point()), part
    model, _, lines = build_umedground(GroundingConfig(
        version=str(tiny_dir / "llava"), vision_pretrained=str(tiny_dir / "sam_tiny.pth")))
    decoder_line = next(line for line in lines if line.startswith("box decoder:"))
    transformer = model.box_decoder.transformer.state_dict()
    assert decoder_line.startswith(f"box decoder: {len(transformer) + 2} tensors from SAM's "
                                   "mask decoder"), decoder_line
    for key, value in transformer.items():
        assert torch.equal(value, trained[f"mask_decoder.transformer.{key}"]), key
    assert torch.equal(model.box_decoder.hypothesis_tokens.weight,
                       trained["mask_decoder.mask_tokens.weight"][:3])


@pytest.fixture(scope="module")
def short_runs(synth_dir, tiny_dir, tmp_path_factory):
    """Two short pretrainings of both backbones from the same seeded start."""
    folder = synth_dir / PRETRAIN_DIR
    fit, held = load_rows(folder)
    scratch = tmp_path_factory.mktemp("tokenizer")
    tokenizer = train_tokenizer(corpus_lines(synth_dir), scratch, 1000)
    runs = []
    for _ in range(2):
        model, processor = build_tiny_llava(tokenizer, 0)
        lm = pretrain_lm(model, processor, folder, fit, held, LmSettings(steps=2, batch_size=2))
        torch.manual_seed(0)
        sam = build_sam(SAM_TINY_CONFIG)
        sam_result = pretrain_sam(sam, folder, fit, held, SamSettings(steps=2, batch_size=2))
        runs.append((model.state_dict(), lm, sam.state_dict(), sam_result))
    return runs


def test_pretraining_is_deterministic(short_runs):
    (lm_a, result_a, sam_a, sam_result_a), (lm_b, result_b, sam_b, sam_result_b) = short_runs
    assert result_a == result_b and sam_result_a == sam_result_b
    for first, second in ((lm_a, lm_b), (sam_a, sam_b)):
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), key


def test_pretraining_learns(tiny_dir):
    """The fixture's few steps already lower the held-out perplexity and SAM's training loss
    (the full pretraining's figures are in the README)."""
    report = json.loads((tiny_dir / REPORT_NAME).read_text())
    lm, sam = report["lm"], report["sam"]
    assert lm["held_out_perplexity"] < lm["initial_perplexity"] / 2
    assert lm["unigram_perplexity"] < lm["initial_perplexity"]
    assert lm["final_train_loss"] < lm["first_train_loss"]
    assert sam["final_train_loss"] < sam["first_train_loss"]
    assert {"all", "anatomy", "lesion", "lung", "heart"} <= set(sam["held_out_iou"])


@pytest.mark.parametrize("name,group", [("right lung", "lung"), ("heart", "heart"),
                                        ("pleural effusion left", "pleural effusion"),
                                        ("nodule 2 right", "nodule"),
                                        ("cardiomegaly", "cardiomegaly")])
def test_layers_are_grouped_by_finding_type(name, group):
    assert layer_group(name) == group
