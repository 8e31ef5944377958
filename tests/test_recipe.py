"""The paper's recipe on the tiny backbones: LoRA r 8 on q/v, SAM frozen and cached, the box
decoder from SAM's mask decoder; a few steps on one batch lower the box loss."""
from __future__ import annotations

import torch

from model.build import build_umedground
from model.config import GroundingConfig
from model.constants import MODEL_INPUTS
from utils.annotations import load_annotations
from utils.dataset import GroundingCollator, GroundingDataset


def test_lora_and_frozen_cached_sam_fine_tune_lowers_the_box_loss(tiny_dir, synth_dir, tmp_path):
    torch.manual_seed(0)
    config = GroundingConfig(version=str(tiny_dir / "llava"),
                             vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=8,
                             lora_alpha=16, lora_target_modules=["q_proj", "v_proj"])
    model, processor, report = build_umedground(config)
    assert "tensors from SAM's mask decoder" in "\n".join(report)
    assert not any(p.requires_grad for p in model.sam_encoder.parameters())
    trained = {name for name, p in model.llava.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name or "embed_tokens" in name or "lm_head" in name
                           for name in trained)
    cache = model.enable_embedding_cache(tmp_path, 1 << 20)
    samples = [s for s in load_annotations(synth_dir / "report_train.jsonl") if s.findings][:4]
    dataset = GroundingDataset(samples, processor, model.sam_encoder.img_size, train=True)
    batch = GroundingCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    inputs = {key: batch[key] for key in MODEL_INPUTS}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(30):  # two of the four have multifocal findings (SynthCXR 3)
        optimizer.zero_grad()
        output = model(**inputs)
        output.losses["total"].backward()
        optimizer.step()
        losses.append(float(output.losses["box_total"]))
    assert cache.misses == 4 and cache.hits == 4 * 29  # encoded once, then served
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
