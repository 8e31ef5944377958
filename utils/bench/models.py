"""The models the benchmark measures: the tiny demo model and a "small-real" one.

``build_shaped_model`` builds a model of a :mod:`utils.bench.shapes` shape (llava-1.5-7b with
SAM ViT-H for the GPU mode) straight on its device and in its dtype, the way ``train.py``
assembles one, with random weights.

The small-real model is what makes the step ratio meaningful for 7B: a randomly initialised
Llama of about 300 M parameters (built from a config, nothing downloaded) whose language model
dwarfs the grounding head, and the box decoder at real SAM width (256 channels) reading 64 x 64
embeddings, as with SAM ViT-B/L/H at 1024 px. Both train LoRA r 8 on q/v plus the embed_tokens
and lm_head matrices, as the recipe does for 7B.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForImageTextToText,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from model.box_decoder import build_box_decoder
from model.config import GroundingConfig
from model.constants import BOX_TOKEN, DEFAULT_QUERY_HEADS
from model.grounding_model import UMedGround
from model.llava_builder import apply_lm_lora, load_processor
from model.phrase_query import build_phrase_query
from model.sam_encoder import OFFICIAL_CONFIGS, SAM_TINY_CONFIG, SamConfig, build_sam
from utils.bench.shapes import SHAPES, llava_config_for, shape_processor

SMALL_REAL_TEXT = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                       num_attention_heads=16, num_key_value_heads=16)
LORA = dict(r=8, alpha=16, dropout=0.05, targets=["q_proj", "v_proj"])


def set_trainable(model: UMedGround, train_encoder: bool = False) -> None:
    """The recipe's trainable set: LoRA, embed_tokens, lm_head, phrase query, box decoder
    (and the SAM encoder with ``train_encoder``)."""
    for name, parameter in model.llava.named_parameters():
        parameter.requires_grad = "lora_" in name
    model.llava.get_input_embeddings().weight.requires_grad = True
    model.llava.get_output_embeddings().weight.requires_grad = True
    model.sam_encoder.requires_grad_(train_encoder)
    model.phrase_query.requires_grad_(True)
    model.box_decoder.requires_grad_(True)


def build_model(tiny_dir: Path, size: str, device: torch.device) -> tuple[UMedGround, Any]:
    """``size`` "tiny" (the demo's shapes, from ``make tiny``'s config) or "small_real"."""
    torch.manual_seed(0)
    processor = load_processor(tiny_dir / "llava")
    config = LlavaConfig.from_pretrained(tiny_dir / "llava")
    if size == "small_real":
        config.text_config = LlamaConfig(**{**config.text_config.to_dict(), **SMALL_REAL_TEXT})
        sam_config: SamConfig = OFFICIAL_CONFIGS["vit_b"]
    else:
        sam_config = SAM_TINY_CONFIG
    config.text_config.vocab_size = len(processor.tokenizer)
    llava = LlavaForConditionalGeneration(config)
    llava = apply_lm_lora(llava, LORA["r"], LORA["alpha"], LORA["dropout"], LORA["targets"])
    sam = build_sam(sam_config)
    decoder, _ = build_box_decoder(sam_config, 3, sam.state_dict())
    grounding = GroundingConfig(version=str(tiny_dir / "llava"), vision_pretrained=size,
                                lora_r=LORA["r"], lora_alpha=LORA["alpha"], ce_weight=1.0,
                                query_heads=DEFAULT_QUERY_HEADS, sam=asdict(sam_config))
    phrase_query = build_phrase_query(config.text_config.hidden_size,
                                      len(grounding.query_layers), sam_config.prompt_embed_dim,
                                      grounding.query_heads)
    model = UMedGround(llava, sam.image_encoder, phrase_query, decoder,
                       processor.tokenizer.convert_tokens_to_ids(BOX_TOKEN), grounding)
    set_trainable(model)
    return model.to(device), processor


def build_shaped_model(shape_name: str, tokenizer_dir: Path, grounding: GroundingConfig,
                       device: torch.device | str, dtype: torch.dtype
                       ) -> tuple[UMedGround, Any]:
    """A randomly initialised uMedGround of ``SHAPES[shape_name]``, allocated on ``device``
    (``"meta"`` allocates nothing) in ``dtype``, with the LoRA and trainable set of
    ``grounding`` (the config train.py derives from its flags) and the box decoder initialised
    from the SAM mask decoder, as in training. The tokenizer comes from ``tokenizer_dir``."""
    shape = SHAPES[shape_name]
    processor = shape_processor(tokenizer_dir, shape.llava.vision_config)
    config = llava_config_for(shape, processor)
    torch.manual_seed(0)
    with torch.device(device):
        llava = AutoModelForImageTextToText.from_config(config, dtype=dtype)
        sam = build_sam(shape.sam)
        model, _ = UMedGround.assemble(grounding, llava, processor, sam, shape.sam, True,
                                       device, dtype)
        model.llava = apply_lm_lora(model.llava, grounding.lora_r, grounding.lora_alpha,
                                    grounding.lora_dropout, grounding.lora_target_modules)
    model.llava.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    set_trainable(model)
    return model, processor


def parameter_counts(model: UMedGround) -> dict[str, int]:
    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    return {"language_model": count(model.llava), "sam_encoder": count(model.sam_encoder),
            "grounding_head": count(model.phrase_query) + count(model.box_decoder)}
