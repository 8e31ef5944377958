"""Loading LLaVA (transformers' ``LlavaForConditionalGeneration``) with ``[BOX]`` and LoRA.

Nothing is downloaded: ``--version`` must be a local llava-hf folder (real or tiny).
``quantization`` ("8bit" / "4bit", bitsandbytes, CUDA only) quantises the language model's
linear layers; the vision tower, the projector and ``lm_head`` (it holds the ``[BOX]`` row)
stay in ``dtype``, as LISA's ``chat.py`` keeps its visual model out of the quantisation.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from safetensors import SafetensorError
from transformers import AutoProcessor, BitsAndBytesConfig, LlavaForConditionalGeneration

from model.constants import BOX_TOKEN

LM_SCOPE = "language_model"
QUANTIZATIONS = ("8bit", "4bit")
NOT_QUANTIZED = ["vision_tower", "multi_modal_projector", "lm_head"]


def check_quantization(quantization: str, device: torch.device | str) -> None:
    """Refuse ``--load_in_8bit`` / ``--load_in_4bit`` where bitsandbytes cannot run.

    Raises:
      ValueError: on a device that is not CUDA, or when bitsandbytes is not installed.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not one of {QUANTIZATIONS}")
    if torch.device(device).type != "cuda":
        raise ValueError(f"--load_in_{quantization} needs a CUDA GPU (bitsandbytes); the device "
                         f"is {device}. On the CPU, load the model without it.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"--load_in_{quantization} needs bitsandbytes: "
                         "pip install bitsandbytes (a CUDA build)")


def quantization_config(quantization: str, device: torch.device | str,
                        dtype: torch.dtype) -> BitsAndBytesConfig:
    """The bitsandbytes config of ``--load_in_8bit`` / ``--load_in_4bit`` (checked first)."""
    check_quantization(quantization, device)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=NOT_QUANTIZED)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
                              llm_int8_skip_modules=NOT_QUANTIZED)


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
               device: torch.device | str = "cpu", quantization: str | None = None
               ) -> LlavaForConditionalGeneration:
    """Load the LLaVA model and resize its embeddings and lm_head to the tokenizer.

    New rows (``[BOX]``) are initialised to the mean of the existing ones (transformers'
    ``mean_resizing``), so no parameter is left uninitialised. Transformers reads safetensors,
    or a ``.bin`` with ``torch.load(weights_only=True)``; an unreadable file is a ValueError.
    """
    options: dict[str, Any] = {}
    if quantization is not None:
        options = {"quantization_config": quantization_config(quantization, device, dtype),
                   "device_map": {"": torch.device(device)}}
    try:
        model = LlavaForConditionalGeneration.from_pretrained(
            Path(version), dtype=dtype, local_files_only=True, **options)
    except (OSError, SafetensorError, RuntimeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{version}: the llava-hf weights cannot be read "
                         f"({type(error).__name__}: {detail})") from None
    if quantization is None:
        model = model.to(device)
    vocab = len(processor.tokenizer)
    if model.get_input_embeddings().weight.shape[0] < vocab:
        if quantization is not None:
            raise ValueError(f"{version} has no [BOX] row; quantised loading needs an exported "
                             "model (merge_lora_weights_and_save_hf_model.py)")
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
