"""Model shapes built from configs written here (nothing downloaded): llava-1.5-7b with SAM
ViT-H, the real size the GPU mode measures and the FLOP count uses, and a tiny shape that
runs the same GPU-mode code on a CPU (its test).

The text comes from the tiny demo tokenizer (``make tiny``), in a processor that expands the
image placeholder as the shape's vision tower needs (576 tokens for CLIP ViT-L/14 at 336 px).
Its ids fit the 7B vocabulary; the 7B step's cost does not depend on which ids they are.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
)

from model.llava_builder import load_processor
from model.sam_encoder import OFFICIAL_CONFIGS, SAM_TINY_CONFIG, SamConfig

# llava-hf/llava-1.5-7b-hf's config: Vicuna-7B (Llama) with 32000 tokens plus <image> and
# <pad>, padded to 32064 rows; CLIP ViT-L/14 at 336 px (its second-to-last layer, CLS token
# dropped: 576 image tokens); the mlp2x_gelu projector (LLaVA's default "gelu" projector).
LLAVA_7B = LlavaConfig(
    vision_config=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                   num_attention_heads=16, image_size=336, patch_size=14,
                                   projection_dim=768, hidden_act="quick_gelu"),
    text_config=LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                            max_position_embeddings=4096, rms_norm_eps=1e-5),
    image_token_index=32000, image_seq_length=576, projector_hidden_act="gelu",
    vision_feature_layer=-2, vision_feature_select_strategy="default")
# The same architecture a few hundred thousand parameters large (4 image tokens).
LLAVA_TINY = LlavaConfig(
    vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, image_size=28, patch_size=14,
                                   projection_dim=32, hidden_act="quick_gelu"),
    text_config=LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4, vocab_size=1024,
                            max_position_embeddings=2048, rms_norm_eps=1e-5),
    image_token_index=1001, image_seq_length=4, projector_hidden_act="gelu",
    vision_feature_layer=-2, vision_feature_select_strategy="default")


@dataclass(frozen=True)
class ModelShape:
    """A LLaVA config and a SAM config, the two halves of a uMedGround model's shape."""

    llava: LlavaConfig
    sam: SamConfig


SHAPES = {"llava_1.5_7b_vit_h": ModelShape(LLAVA_7B, OFFICIAL_CONFIGS["vit_h"]),
          "tiny": ModelShape(LLAVA_TINY, SAM_TINY_CONFIG)}


def shape_processor(tokenizer_dir: Path, vision: CLIPVisionConfig) -> LlavaProcessor:
    """The tokenizer of ``tokenizer_dir`` (with ``[BOX]``) and a CLIP image processor at the
    vision tower's size, expanding ``<image>`` into (image_size / patch_size)² tokens."""
    tokenizer = load_processor(tokenizer_dir).tokenizer
    side = vision.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": side},
                                         crop_size={"height": side, "width": side})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=vision.patch_size, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)


def llava_config_for(shape: ModelShape, processor: LlavaProcessor) -> LlavaConfig:
    """A copy of the shape's LLaVA config whose image token is the processor's.

    Raises:
      ValueError: the tokenizer has more tokens than the shape's vocabulary.
    """
    config = copy.deepcopy(shape.llava)
    tokenizer = processor.tokenizer
    if len(tokenizer) > config.text_config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the shape's "
                         f"vocabulary of {config.text_config.vocab_size}")
    config.image_token_index = tokenizer.convert_tokens_to_ids(processor.image_token)
    return config
