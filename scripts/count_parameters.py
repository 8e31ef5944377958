"""Parameter counts (total and trainable) of uMedGround configurations, on the meta device.

    python scripts/count_parameters.py            # tiny default and llava-1.5-7b + SAM vit_h

Nothing is downloaded or allocated: llava-1.5-7b is built from its published configuration
(CLIP ViT-L/14-336 + Llama-2-7B shapes, vocabulary 32064 + [BOX]); the tiny one from the
configuration ``utils.tiny_checkpoints`` writes (vocabulary 1,002 + [BOX]).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.build import _set_trainable, count_parameters  # noqa: E402
from model.config import GroundingConfig  # noqa: E402
from model.constants import DEFAULT_MAX_BOXES_PER_PHRASE, DEFAULT_QUERY_HEADS  # noqa: E402
from model.grounding_model import UMedGround  # noqa: E402
from model.llava_builder import apply_lm_lora  # noqa: E402
from model.sam_encoder import OFFICIAL_CONFIGS, SAM_TINY_CONFIG, build_sam  # noqa: E402
from utils.bench.flops import LLAVA_7B  # noqa: E402
from utils.logs import setup_logging  # noqa: E402
from utils.tiny_checkpoints import CLIP_IMAGE_SIZE, CLIP_PATCH_SIZE  # noqa: E402

logger = logging.getLogger("count_parameters")

LLAVA_TINY = LlavaConfig(
    vision_config=CLIPVisionConfig(image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE,
                                   hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=2, projection_dim=64),
    text_config=LlamaConfig(vocab_size=1002, hidden_size=256, intermediate_size=688,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    vision_feature_layer=-1)


def count(llava_config: LlavaConfig, sam_config, config: GroundingConfig) -> tuple[int, int]:
    """(total, trainable) of the model ``config`` describes, assembled as training assembles it
    (``UMedGround.assemble``), on the meta device."""
    box_token_only = SimpleNamespace(tokenizer=SimpleNamespace(convert_tokens_to_ids=lambda _: 0))
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(llava_config)
        llava.resize_token_embeddings(llava_config.text_config.vocab_size + 1, mean_resizing=False)
        sam = build_sam(sam_config)
        model, _ = UMedGround.assemble(config, llava, box_token_only, sam, sam_config,
                                       init_decoder_from_sam=False, device="meta",
                                       dtype=torch.float32)
        if config.lora_r > 0:
            model.llava = apply_lm_lora(model.llava, config.lora_r, config.lora_alpha, 0.0,
                                        config.lora_target_modules)
    _set_trainable(model, config)
    return count_parameters(model)


def main() -> None:
    demo = GroundingConfig("tiny", "tiny", lora_r=8, lora_alpha=16,
                           max_boxes_per_phrase=DEFAULT_MAX_BOXES_PER_PHRASE, phrase_box=True,
                           own_count_path=True,
                           query_heads=DEFAULT_QUERY_HEADS, iou_head=True,
                           uncertainty="combined")
    real = GroundingConfig("llava-1.5-7b", "sam_vit_h", lora_r=8, lora_alpha=16,
                           max_boxes_per_phrase=DEFAULT_MAX_BOXES_PER_PHRASE, phrase_box=True,
                           own_count_path=True,
                           query_heads=DEFAULT_QUERY_HEADS)
    single = GroundingConfig("llava-1.5-7b", "sam_vit_h", lora_r=8, lora_alpha=16,
                             query_heads=1)
    rows = [("tiny, the demo's settings", LLAVA_TINY, SAM_TINY_CONFIG, demo),
            ("llava-1.5-7b + SAM vit_h, train.py's defaults", LLAVA_7B,
             OFFICIAL_CONFIGS["vit_h"], real),
            ("llava-1.5-7b + SAM vit_h, K=1, 1 query head", LLAVA_7B,
             OFFICIAL_CONFIGS["vit_h"], single)]
    logger.info("%-48s %15s %15s", "configuration", "total", "trainable")
    for name, llava_config, sam_config, config in rows:
        total, trainable = count(llava_config, sam_config, config)
        logger.info("%-48s %15s %15s", name, f"{total:,d}", f"{trainable:,d}")


if __name__ == "__main__":
    setup_logging()
    main()
