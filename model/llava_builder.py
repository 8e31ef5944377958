"""Loading LLaVA (transformers' ``LlavaForConditionalGeneration``) with the ``[BOX]`` token and LoRA.

Nothing is downloaded: ``--version`` must be a local llava-hf folder (real or tiny).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoProcessor, LlavaForConditionalGeneration

from utils.prompts import BOX_TOKEN

LM_SCOPE = "language_model"


def load_processor(version: str | Path) -> Any:
    """The llava-hf processor of ``version`` with ``[BOX]`` in its tokenizer (added if missing)."""
    folder = Path(version)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"--version {version}: not a local llava-hf folder (no config.json). Put a model such "
            "as llava-hf/llava-1.5-7b-hf under pretrained/ (see README, Real weights) or run "
            "`make tiny` for the tiny one; nothing is downloaded at run time.")
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    tokenizer = processor.tokenizer
    if BOX_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([BOX_TOKEN])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return processor


def load_llava(version: str | Path, processor: Any, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> LlavaForConditionalGeneration:
    """Load the LLaVA model and resize its embeddings and lm_head to the tokenizer.

    New rows (``[BOX]``) are initialised to the mean of the existing ones (transformers'
    ``mean_resizing``), so no parameter is left uninitialised.
    """
    model = LlavaForConditionalGeneration.from_pretrained(
        Path(version), dtype=dtype, local_files_only=True).to(device)
    vocab = len(processor.tokenizer)
    if model.get_input_embeddings().weight.shape[0] < vocab:
        model.resize_token_embeddings(vocab, mean_resizing=True)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model


def lm_lora_regex(target_modules: list[str]) -> str:
    """A peft ``target_modules`` regex restricted to the language model.

    A plain list such as ``["q_proj", "v_proj"]`` would also hit the CLIP vision tower.
    """
    names = "|".join(sorted(set(target_modules)))
    return rf".*{LM_SCOPE}.*\.({names})$"


def apply_lm_lora(model: LlavaForConditionalGeneration, r: int, alpha: int, dropout: float,
                  target_modules: list[str]) -> torch.nn.Module:
    """Wrap ``model`` with peft LoRA on the language model's ``target_modules``.

    Every base parameter is frozen by peft; the caller unfreezes what else it trains.
    """
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=lm_lora_regex(target_modules), bias="none")
    peft_model = get_peft_model(model, config)
    if not any("lora_" in name for name, _ in peft_model.named_parameters()):
        raise ValueError(f"--lora_target_modules {target_modules} matched no module of the "
                         "language model")
    return peft_model
