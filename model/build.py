"""Building a trainable uMedGround from base checkpoints, and loading training weights.

The model is put together by :meth:`model.grounding_model.UMedGround.assemble`, the path
:meth:`~model.grounding_model.UMedGround.from_pretrained` uses for exported folders too.
Training weights (``zero_to_fp32.py`` output) are read as safetensors or with
``torch.load(weights_only=True)``; nothing is unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from model.config import CONFIG_NAME, GroundingConfig
from model.grounding_model import UMedGround
from model.llava_builder import apply_lm_lora, load_llava, load_processor
from model.sam_encoder import load_sam_checkpoint

SAM_LORA_TARGETS = ["qkv"]


def _set_trainable(model: UMedGround, config: GroundingConfig) -> None:
    """Freeze the CLIP tower, the projector and (by default) SAM; train the rest.

    Trained: LoRA (or, with ``lora_r = 0``, the whole language model), the embed_tokens and
    lm_head matrices (they hold the ``[BOX]`` rows), the phrase query, the box decoder and the
    count's own query (if any);
    the SAM encoder only with ``train_vision_encoder`` or ``lora_sam_rank``.
    """
    llava = model.llava
    for name, parameter in llava.named_parameters():
        parameter.requires_grad = "lora_" in name or (config.lora_r == 0
                                                      and "language_model" in name)
    llava.get_input_embeddings().weight.requires_grad = True
    llava.get_output_embeddings().weight.requires_grad = True
    for name, parameter in model.sam_encoder.named_parameters():
        parameter.requires_grad = config.train_vision_encoder or "lora_" in name
    for module in model.grounding_parts(with_sam=False).values():
        module.requires_grad_(True)


def build_umedground(config: GroundingConfig, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32, init_decoder_from_sam: bool = True
                     ) -> tuple[UMedGround, Any, list[str]]:
    """A trainable model from the base checkpoints named in ``config``; the box decoder starts
    from SAM's mask decoder unless ``init_decoder_from_sam`` is false.

    Returns:
      the model, the processor (tokenizer with ``[BOX]``), and a load report (lines).
    """
    processor = load_processor(config.version)
    llava = load_llava(config.version, processor, dtype, device)
    sam, sam_config = load_sam_checkpoint(config.vision_pretrained, config.vision_model,
                                          device=device, dtype=dtype)
    model, decoder_report = UMedGround.assemble(config, llava, processor, sam, sam_config,
                                                init_decoder_from_sam, device, dtype)
    if config.lora_r > 0:
        model.llava = apply_lm_lora(model.llava, config.lora_r, config.lora_alpha,
                                    config.lora_dropout, config.lora_target_modules)
    if config.lora_sam_rank > 0:
        model.sam_encoder = get_peft_model(model.sam_encoder, LoraConfig(
            r=config.lora_sam_rank, lora_alpha=2 * config.lora_sam_rank,
            target_modules=SAM_LORA_TARGETS))
    if config.gradient_checkpointing:
        model.llava.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    _set_trainable(model, config)
    report = [f"llava: {config.version} (vocab {len(processor.tokenizer)})",
              f"sam: {config.vision_pretrained} ({sam_config.name})",
              f"box decoder: {decoder_report}", "phrase query: newly initialised",
              *(["count query: newly initialised"] if model.count_query is not None else []),
              f"gradient checkpointing: {'on' if config.gradient_checkpointing else 'off'}"]
    return model, processor, report


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def load_consolidated(path: Path) -> dict[str, torch.Tensor]:
    """The fp32 state dict written by ``zero_to_fp32.py`` (file, or folder of shards)."""
    if path.is_file():
        files = [path]
    else:
        index = next((p for p in (path / "model.safetensors.index.json",
                                  path / "pytorch_model.bin.index.json") if p.is_file()), None)
        if index is not None:
            shards = set(json.loads(index.read_text())["weight_map"].values())
            files = [path / name for name in sorted(shards)]
        else:
            files = [p for p in (path / "model.safetensors", path / "pytorch_model.bin")
                     if p.is_file()]
    if not files:
        raise FileNotFoundError(f"--weight {path}: no model.safetensors / pytorch_model.bin "
                                "(or index) "
                         "found; pass what zero_to_fp32.py wrote")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_read_weights(file))
    return state


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    """One weights file: safetensors, or a ``.bin`` read with ``torch.load(weights_only=True)``."""
    try:
        state = (load_file(file) if file.suffix == ".safetensors"
                 else torch.load(file, map_location="cpu", weights_only=True))
    except Exception as error:  # safetensors, pickle and zip readers raise many types
        raise ValueError(f"--weight {file}: not a readable state dict (safetensors, or a "
                         f"weights-only torch file): {type(error).__name__}: "
                         f"{' '.join(str(error).split())[:300]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weight {file}: expected a state dict of tensors, as zero_to_fp32.py "
                         "writes")
    return state


def find_config(weight: Path, explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    for folder in (weight if weight.is_dir() else weight.parent, *weight.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    raise FileNotFoundError(f"no {CONFIG_NAME} found next to --weight {weight} or above it; pass "
                     "--config (train.py writes it into the run folder and every checkpoint)")


def load_trained(version: str | Path, weight: Path, vision_pretrained: str | None = None,
                 config_dir: str | Path | None = None) -> tuple[UMedGround, Any]:
    """A model rebuilt from the base checkpoints plus consolidated training weights.

    Every trained tensor must be in ``weight``; frozen ones may be absent (they come from the
    base checkpoints). The configuration is read from ``grounding_config.json``.
    """
    config = GroundingConfig.load(find_config(weight, config_dir))
    config.version = str(version)
    config.gradient_checkpointing = False
    if vision_pretrained:
        config.vision_pretrained = vision_pretrained
    model, processor, _ = build_umedground(config, "cpu", torch.float32)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    result = model.load_state_dict(load_consolidated(weight), strict=False)
    missing_trained = sorted(trainable & set(result.missing_keys))
    if result.unexpected_keys or missing_trained:
        raise ValueError(
            f"--weight {weight} does not match the model built from {config.version}: "
            f"trained tensors missing {missing_trained[:3]} ({len(missing_trained)}), "
            f"unexpected {result.unexpected_keys[:3]} ({len(result.unexpected_keys)})")
    return model, processor
