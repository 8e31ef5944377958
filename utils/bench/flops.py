"""FLOPs of one training sample at real size (llava-1.5-7b + SAM ViT-H), counted by
``torch.utils.flop_counter`` on the meta device (nothing allocated or downloaded)."""
from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionModel, LlamaForCausalLM

from model.box_decoder import build_box_decoder
from model.constants import DEFAULT_QUERY_HEADS
from model.phrase_query import build_phrase_query
from model.sam_encoder import OFFICIAL_CONFIGS, build_sam
from utils.bench.shapes import LLAVA_7B

TEXT_TOKENS = 200  # report prompt + answer, beside the 576 image tokens
PHRASES = 3  # [BOX] queries per report


def counted(run) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def head_share_at_7b() -> dict[str, Any]:
    """Training FLOPs per sample of the LM step (the CLIP tower's forward, then the Llama with
    LoRA r 8 on q/v and trainable embed_tokens / lm_head, forward + backward over the 576
    image and 200 text tokens; the projector is left out, it is 0.1 % of it), the
    grounding head (phrase query + box decoder, forward + backward) and a frozen SAM ViT-H
    forward (only when the embedding is not cached)."""
    sam_config = OFFICIAL_CONFIGS["vit_h"]
    length = LLAVA_7B.image_seq_length + TEXT_TOKENS
    with torch.device("meta"):
        text = get_peft_model(LlamaForCausalLM(LLAVA_7B.text_config),
                              LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        text.get_input_embeddings().weight.requires_grad_(True)
        text.get_output_embeddings().weight.requires_grad_(True)
        embeds = torch.zeros(1, length, LLAVA_7B.text_config.hidden_size)
        labels = torch.ones(1, length, dtype=torch.long)
        vision = CLIPVisionModel(LLAVA_7B.vision_config).requires_grad_(False)
        lm = counted(lambda: text(inputs_embeds=embeds, labels=labels).loss.backward())
        lm += counted(lambda: vision(torch.zeros(1, 3, 336, 336)))
        encoder = build_sam(sam_config).image_encoder.requires_grad_(False)
        sam = counted(lambda: encoder(torch.zeros(1, 3, 1024, 1024)))
        decoder, _ = build_box_decoder(sam_config, 3)
        query = build_phrase_query(4096, 2, sam_config.prompt_embed_dim, DEFAULT_QUERY_HEADS)
        states = torch.zeros(PHRASES, 12, 2 * 4096)
        mask = torch.ones(PHRASES, 12, dtype=torch.bool)
        embedding = torch.zeros(1, sam_config.prompt_embed_dim, 64, 64)

        def head_step() -> None:
            out = decoder(embedding, query(states, mask), torch.zeros(PHRASES, dtype=torch.long))
            out.hypotheses.sum().backward()

        head = counted(head_step)
    total_cached, total_uncached = lm + head, lm + head + sam
    return {"lm_step_tflop": lm / 1e12, "head_step_tflop": head / 1e12,
            "sam_vit_h_forward_tflop": sam / 1e12, "tokens": length, "phrases": PHRASES,
            "head_share_cached": head / total_cached,
            "head_and_sam_share_uncached": (head + sam) / total_uncached}
