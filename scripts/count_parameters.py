"""Parameter counts (total and trainable) of uMedGround configurations, on the meta device.

    python scripts/count_parameters.py            # tiny default and llava-1.5-7b + SAM vit_h

Nothing is downloaded or allocated: llava-1.5-7b is built from its published configuration
(CLIP ViT-L/14-336 + Llama-2-7B shapes, vocabulary 32064 + [BOX]); the tiny one from the
configuration ``utils.tiny_checkpoints`` writes (vocabulary 1,002 + [BOX]).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.box_decoder import build_box_decoder  # noqa: E402
from model.build import _set_trainable, count_parameters  # noqa: E402
from model.config import GroundingConfig  # noqa: E402
from model.constants import DEFAULT_QUERY_HEADS  # noqa: E402
from model.grounding_model import UMedGround
from model.llava_builder import apply_lm_lora  # noqa: E402
from model.phrase_query import build_phrase_query  # noqa: E402
from model.sam_encoder import OFFICIAL_CONFIGS, SAM_TINY_CONFIG, build_sam  # noqa: E402
from utils.bench.flops import LLAVA_7B  # noqa: E402
from utils.tiny_checkpoints import CLIP_IMAGE_SIZE, CLIP_PATCH_SIZE  # noqa: E402

LLAVA_TINY = LlavaConfig(
    vision_config=CLIPVisionConfig(image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE,
                                   hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=2, projection_dim=64),
    text_config=LlamaConfig(vocab_size=1002, hidden_size=256, intermediate_size=688,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    vision_feature_layer=-1)


def count(llava_config: LlavaConfig, sam_config, config: GroundingConfig) -> tuple[int, int]:
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(llava_config)
        llava.resize_token_embeddings(llava_config.text_config.vocab_size + 1, mean_resizing=False)
        sam = build_sam(sam_config)
        decoder, _ = build_box_decoder(sam_config, config.num_hypotheses)
        phrase_query = build_phrase_query(llava_config.text_config.hidden_size,
                                        len(config.query_layers), sam_config.prompt_embed_dim,
                                        config.query_heads)
        if config.lora_r > 0:
            llava = apply_lm_lora(llava, config.lora_r, config.lora_alpha, 0.0,
                                  config.lora_target_modules)
    model = UMedGround(llava, sam.image_encoder, phrase_query, decoder, 0, config)
    _set_trainable(model, config)
    return count_parameters(model)


def main() -> None:
    demo = GroundingConfig("tiny", "tiny", lora_r=8, lora_alpha=16, query_heads=DEFAULT_QUERY_HEADS)
    real = GroundingConfig("llava-1.5-7b", "sam_vit_h", lora_r=8, lora_alpha=16,
                           query_heads=DEFAULT_QUERY_HEADS)
    rows = [("tiny, demo settings (LoRA r=8 on q/v, SAM frozen)", LLAVA_TINY, SAM_TINY_CONFIG,
             demo),
            ("llava-1.5-7b + SAM vit_h, LoRA r=8 on q/v", LLAVA_7B, OFFICIAL_CONFIGS["vit_h"],
             real)]
    print(f"{'configuration':48s} {'total':>15s} {'trainable':>15s}")
    for name, llava_config, sam_config, config in rows:
        total, trainable = count(llava_config, sam_config, config)
        print(f"{name:48s} {total:15,d} {trainable:15,d}")


if __name__ == "__main__":
    main()
