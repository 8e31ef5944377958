"""The composed model: trainable parts, gradients, batches, both paths, save and load."""

from __future__ import annotations

import math

import pytest
import torch

from model.box_losses import compute_box_losses
from model.build import build_umedground, count_parameters
from model.config import GroundingConfig
from model.constants import BOX_TOKEN, MODEL_INPUTS
from model.grounding_model import UMedGround
from utils.annotations import Finding, load_annotations
from utils.dataset import GroundingCollator, GroundingDataset

INPUTS = ("sam_images", "pixel_values", "input_ids", "attention_mask", "labels", "box_targets")


def build_tiny(tiny_dir, **settings):
    """The tiny model with LoRA r 8 on q/v (seed 0), plus ``settings`` of its config."""
    torch.manual_seed(0)
    config = GroundingConfig(
        version=str(tiny_dir / "llava"),
        vision_pretrained=str(tiny_dir / "sam_tiny.pth"),
        lora_r=8,
        lora_target_modules=["q_proj", "v_proj"],
        **settings,
    )
    model, processor, _ = build_umedground(config)
    return model, processor


@pytest.fixture(scope="module")
def built(tiny_dir):
    return build_tiny(tiny_dir)


@pytest.fixture(scope="module")
def several(tiny_dir):
    """The model of ``built`` with 3 box slots per phrase and the phrase box, the IoU head,
    2 query heads and the heatmaps on SAM's upscaled grid."""
    return build_tiny(tiny_dir, max_boxes_per_phrase=3, phrase_box=True, iou_head=True,
                      query_heads=2, upscaled_heatmap=True)


@pytest.fixture(scope="module")
def own_count(tiny_dir):
    """3 box slots per phrase, the phrase box and the box count on its own path."""
    return build_tiny(tiny_dir, max_boxes_per_phrase=3, phrase_box=True, own_count_path=True)


@pytest.fixture(scope="module")
def samples(synth_dir):
    return load_annotations(synth_dir / "report_train.jsonl")


def with_findings(samples, count: int):
    """A sample with exactly ``count`` findings (padding a sample's findings if needed)."""
    for sample in samples:
        if len(sample.findings) == count:
            return sample
    base = next(s for s in samples if s.findings)
    extra = tuple(
        Finding(f"{base.findings[0].phrase} {i}", base.findings[0].boxes)
        for i in range(count - len(base.findings))
    )
    return type(base)(**{**base.__dict__, "findings": base.findings + extra})


def batch_of(model, processor, samples, mode="train"):
    dataset = GroundingDataset(samples, processor, model.sam_encoder.img_size)
    return GroundingCollator(processor.tokenizer.pad_token_id, mode)(
        [dataset[i] for i in range(len(samples))]
    )


def test_box_token_is_added_and_round_trips(built):
    _, processor = built
    tokenizer = processor.tokenizer
    box_id = tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    ids = tokenizer("Small left effusion. It is [BOX].", add_special_tokens=False).input_ids
    assert ids.count(box_id) == 1
    assert tokenizer.decode(ids) == "Small left effusion. It is [BOX]."


def test_only_the_documented_parts_train(built):
    model, _ = built
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in trainable)
    assert not any(n.startswith("sam_encoder.") for n in trainable)
    assert any(n.startswith("box_decoder.") for n in trainable)
    assert any(n.startswith("phrase_query.") for n in trainable)
    assert any("embed_tokens" in n for n in trainable) and any("lm_head" in n for n in trainable)
    assert not any(
        "language_model" in n and "lora_" not in n and "embed_tokens" not in n for n in trainable
    )
    total, count = count_parameters(model)
    assert 0 < count < total


def test_gradients_reach_trained_parts_and_nothing_frozen(built, samples):
    model, processor = built
    model.zero_grad(set_to_none=True)
    batch = batch_of(model, processor, [with_findings(samples, 3), with_findings(samples, 1)])
    output = model(**{k: batch[k] for k in INPUTS})
    assert output.prediction.hypotheses.shape == (4, 3, 4)
    output.losses["total"].backward()
    box_id = processor.tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    embed = model.llava.get_input_embeddings().weight
    assert embed.grad[box_id].abs().sum() > 0  # [BOX] is read as input in the answer
    assert model.llava.get_output_embeddings().weight.grad[box_id].abs().sum() > 0  # and emitted
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and ("lora_B" in name or name.startswith("box_")):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        if not parameter.requires_grad:
            assert parameter.grad is None, name
    model.zero_grad(set_to_none=True)


def test_batch_with_zero_one_and_three_findings(built, samples):
    model, processor = built
    batch = batch_of(
        model,
        processor,
        [with_findings(samples, 0), with_findings(samples, 1), with_findings(samples, 3)],
    )
    assert batch["box_batch_index"].tolist() == [1, 2, 2, 2]
    output = model(**{k: batch[k] for k in INPUTS})
    assert output.box_batch_index.tolist() == [1, 2, 2, 2]
    assert all(torch.isfinite(v) for v in output.losses.values())
    only_normal = batch_of(model, processor, [with_findings(samples, 0)])
    output = model(**{k: only_normal[k] for k in INPUTS})
    assert float(output.losses["box_total"]) == 0.0
    output.losses["total"].backward()  # the decoder stays in the graph with no box
    model.zero_grad(set_to_none=True)


class BoxEveryThirdStep:
    """A forward hook on lm_head that makes generation emit [BOX] every third step."""

    def __init__(self, box_id: int, eos_id: int):
        self.box_id, self.eos_id, self.calls = box_id, eos_id, 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        output = output.clone()
        output[..., self.eos_id] = -1e4
        if self.calls % 3 == 0:
            output[..., self.box_id] = 1e4
        return output


def with_several_boxes(samples):
    return next(s for s in samples if any(len(f.boxes) > 1 for f in s.findings))


def test_one_box_per_phrase_trains_on_the_enclosing_box_whatever_else_is_given(built, samples):
    """K = 1: the loss is the single-box loss of the enclosing targets, bit for bit, with or
    without the per-box targets in the batch."""
    model, processor = built
    batch = batch_of(model, processor, [with_several_boxes(samples), with_findings(samples, 2)])
    assert len(batch["box_set_targets"]) > len(batch["box_targets"])
    torch.manual_seed(1)
    plain = model(**{k: batch[k] for k in INPUTS})
    torch.manual_seed(1)
    full = model(**{k: batch[k] for k in MODEL_INPUTS})
    assert plain.prediction.slots is None and set(plain.losses) == set(full.losses)
    assert "box_presence" not in plain.losses
    for key, value in plain.losses.items():
        assert torch.equal(value, full.losses[key]), key
    direct = compute_box_losses(plain.prediction, batch["box_targets"], model.config.box_loss)
    for key, value in direct.items():
        assert torch.equal(value, plain.losses[key]), key


def test_several_boxes_per_phrase_train_every_slot_and_the_presence(several, samples):
    model, processor = several
    model.zero_grad(set_to_none=True)
    batch = batch_of(model, processor, [with_several_boxes(samples), with_findings(samples, 0)])
    output = model(**{k: batch[k] for k in MODEL_INPUTS})
    queries = len(batch["box_targets"])
    assert output.prediction.hypotheses.shape == (queries, 3, 4)
    assert output.prediction.slots.presence_logits.shape == (queries, 3)
    assert float(output.losses["box_presence"]) > 0
    assert output.prediction.iou.shape == (queries,)
    losses = {k: float(v.detach()) for k, v in output.losses.items()}
    assert losses["box_iou"] > 0
    assert losses["total"] == pytest.approx(losses["ce"] + losses["box_total"]
                                            + losses["box_iou"], rel=1e-5)
    output.losses["total"].backward()
    for name, parameter in model.box_decoder.named_parameters():
        assert parameter.grad is not None, name  # a slot matched to no box gets zeros
        if name.startswith(("presence_head.", "hypothesis_tokens.", "cell_box_head.",
                            "iou_prediction_head.")):
            assert parameter.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)


def test_the_own_count_path_trains_the_count_alone(own_count, samples):
    """The count's loss reaches its own pooling and head and nothing else; the boxes' losses
    reach everything of the grounding but those two."""
    model, processor = own_count
    # the count's pooling is as wide as the decoder inside, not as the LM (64 against 256)
    assert model.count_query.projection[0].out_features == model.sam_encoder.neck[0].out_channels
    batch = batch_of(model, processor, [with_several_boxes(samples), with_findings(samples, 2)])
    output = model(**{k: batch[k] for k in MODEL_INPUTS})
    count_parts = ("count_query.", "box_decoder.count_head.")
    model.zero_grad(set_to_none=True)
    output.losses["box_count"].backward(retain_graph=True)
    for name, parameter in model.named_parameters():
        reached = parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
        assert reached == name.startswith(count_parts), name
    model.zero_grad(set_to_none=True)
    (output.losses["total"] - output.losses["box_count"]).backward()
    for name, parameter in model.named_parameters():
        if name.startswith(count_parts):
            assert parameter.grad is None or not parameter.grad.any(), name
    assert model.phrase_query.score.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("which", ["built", "several", "own_count"])
def test_generation_boxes_equal_teacher_forced_boxes(request, which, samples):
    model, processor = request.getfixturevalue(which)
    model.eval()
    tokenizer = processor.tokenizer
    box_id = tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    chosen = [with_findings(samples, 1), with_findings(samples, 2)]
    prompts = batch_of(model, processor, chosen, mode="generate")
    hook = model.llava.get_output_embeddings().register_forward_hook(
        BoxEveryThirdStep(box_id, tokenizer.eos_token_id)
    )
    try:
        generated = model.generate(
            prompts["sam_images"],
            prompts["pixel_values"],
            prompts["input_ids"],
            prompts["attention_mask"],
            tokenizer,
            max_new_tokens=9,
        )
    finally:
        hook.remove()
    assert generated.box_batch_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(text.count(BOX_TOKEN) == 3 for text in generated.texts)
    rows = []
    for row in range(2):
        prompt = prompts["input_ids"][row][prompts["attention_mask"][row].bool()]
        rows.append((prompt, generated.token_ids[row]))
    length = max(len(p) + len(g) for p, g in rows)
    input_ids = torch.full((2, length), tokenizer.pad_token_id)
    labels = torch.full((2, length), -100)
    mask = torch.zeros((2, length), dtype=torch.long)
    for row, (prompt, tokens) in enumerate(rows):
        sequence = torch.cat([prompt, tokens])
        input_ids[row, : len(sequence)] = sequence
        labels[row, len(prompt) : len(sequence)] = tokens
        mask[row, : len(sequence)] = 1
    with torch.no_grad():
        forced = model(prompts["sam_images"], prompts["pixel_values"], input_ids, mask, labels)
    assert forced.box_batch_index.tolist() == generated.box_batch_index.tolist()
    torch.testing.assert_close(
        forced.prediction.hypotheses, generated.prediction.hypotheses, atol=1e-4, rtol=1e-4
    )
    if which != "built":
        torch.testing.assert_close(forced.prediction.slots.count_logits,
                                   generated.prediction.slots.count_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(forced.prediction.slots.boxes.hypotheses,
                                   generated.prediction.slots.boxes.hypotheses, atol=1e-4,
                                   rtol=1e-4)
        torch.testing.assert_close(forced.prediction.slots.presence_logits,
                                   generated.prediction.slots.presence_logits, atol=1e-4,
                                   rtol=1e-4)
    model.train()


@pytest.mark.parametrize("which", ["built", "several", "own_count"])
def test_save_pretrained_and_from_pretrained(request, which, samples, tmp_path):
    model, processor = request.getfixturevalue(which)
    model.eval()
    batch = batch_of(model, processor, [with_findings(samples, 2)])
    with torch.no_grad():
        before = model(**{k: batch[k] for k in INPUTS if k != "box_targets"}).prediction
    model.save_pretrained(tmp_path / "export", processor)
    loaded, loaded_processor = UMedGround.from_pretrained(tmp_path / "export")
    assert len(loaded_processor.tokenizer) == len(processor.tokenizer)
    with torch.no_grad():
        after = loaded(**{k: batch[k] for k in INPUTS if k != "box_targets"}).prediction
    torch.testing.assert_close(after.hypotheses, before.hypotheses, atol=1e-5, rtol=1e-5)
    assert loaded.config.max_boxes_per_phrase == model.config.max_boxes_per_phrase
    assert loaded.config.query_heads == model.config.query_heads
    assert loaded.config.phrase_box == model.config.phrase_box
    assert loaded.config.upscaled_heatmap == model.config.upscaled_heatmap
    assert loaded.config.own_count_path == model.config.own_count_path
    assert (loaded.count_query is None) == (which != "own_count")
    if which != "built":
        torch.testing.assert_close(after.slots.presence_logits, before.slots.presence_logits,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(after.slots.count_logits, before.slots.count_logits,
                                   atol=1e-5, rtol=1e-5)
    for name, tensor in list(loaded.state_dict().items()):
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
            assert tensor.abs().max() < 1e4, name
    assert not any(p.requires_grad for p in loaded.parameters())
    assert math.isfinite(float(after.uncertainty.sum()))


def test_sam_lora_trains_only_adapters_and_merges_on_export(tiny_dir, samples, tmp_path):
    torch.manual_seed(0)
    config = GroundingConfig(
        version=str(tiny_dir / "llava"),
        vision_pretrained=str(tiny_dir / "sam_tiny.pth"),
        lora_r=4,
        lora_sam_rank=2,
    )
    model, processor, _ = build_umedground(config)
    sam_trainable = [n for n, p in model.sam_encoder.named_parameters() if p.requires_grad]
    assert sam_trainable and all("lora_" in n for n in sam_trainable)
    with torch.no_grad():
        for name, parameter in model.sam_encoder.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)  # a trained adapter, so the merge matters
    model.eval()
    batch = batch_of(model, processor, [with_findings(samples, 1)])
    inputs = {k: batch[k] for k in INPUTS if k != "box_targets"}
    with torch.no_grad():
        before = model(**inputs).prediction.hypotheses
    model.save_pretrained(tmp_path / "export", processor)
    loaded, _ = UMedGround.from_pretrained(tmp_path / "export")
    with torch.no_grad():
        after = loaded(**inputs).prediction.hypotheses
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_bf16_model_runs_both_paths(tiny_dir, samples):
    """Device and dtype come from the arguments; bf16 (a GPU setting) works on the CPU too."""
    config = GroundingConfig(
        version=str(tiny_dir / "llava"), vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=4
    )
    model, processor, _ = build_umedground(config, "cpu", torch.bfloat16)
    batch = batch_of(model, processor, [with_findings(samples, 2)])
    output = model(**{k: batch[k] for k in INPUTS})
    assert output.prediction.hypotheses.dtype == torch.bfloat16
    assert torch.isfinite(output.losses["total"].float())
    prompts = batch_of(model, processor, [with_findings(samples, 1)], mode="generate")
    generated = model.generate(
        prompts["sam_images"],
        prompts["pixel_values"],
        prompts["input_ids"],
        prompts["attention_mask"],
        processor.tokenizer,
        max_new_tokens=4,
    )
    assert len(generated.texts) == 1


def test_query_layers_outside_the_language_model_are_refused(tiny_dir):
    config = GroundingConfig(
        version=str(tiny_dir / "llava"),
        vision_pretrained=str(tiny_dir / "sam_tiny.pth"),
        query_layers=[0, 9],
    )
    with pytest.raises(ValueError, match=r"query_layers \[9\] do not exist"):
        build_umedground(config)
