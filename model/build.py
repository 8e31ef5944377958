"""Building uMedGround from base checkpoints, and saving / loading an exported model.

An exported folder is a llava-hf folder (LoRA merged, ``[BOX]`` in the tokenizer) plus
``grounding.safetensors`` (the phrase query, the box decoder and, when it was trained, the
SAM encoder) and ``grounding_config.json``. Nothing is unpickled on the load path.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from model.box_decoder import build_box_decoder
from model.config import CONFIG_NAME, GroundingConfig
from model.grounding_model import UMedGround
from model.llava_builder import apply_lm_lora, load_llava, load_processor
from model.phrase_query import build_phrase_query
from model.sam_encoder import SamConfig, build_sam, load_sam_checkpoint
from utils.prompts import BOX_TOKEN

GROUNDING_WEIGHTS = "grounding.safetensors"
SAM_LORA_TARGETS = ["qkv"]


def _set_trainable(model: UMedGround, config: GroundingConfig) -> None:
    """Freeze the CLIP tower, the projector and (by default) SAM; train the rest.

    Trained: LoRA (or, with ``lora_r = 0``, the whole language model), the embed_tokens and
    lm_head matrices (they hold the ``[BOX]`` rows), the phrase query and the box decoder;
    the SAM encoder only with ``train_vision_encoder`` or ``lora_sam_rank``.
    """
    llava = model.llava
    for name, parameter in llava.named_parameters():
        parameter.requires_grad = "lora_" in name or (config.lora_r == 0 and "language_model" in name)
    llava.get_input_embeddings().weight.requires_grad = True
    llava.get_output_embeddings().weight.requires_grad = True
    for name, parameter in model.sam_encoder.named_parameters():
        parameter.requires_grad = config.train_vision_encoder or "lora_" in name
    for module in (model.phrase_query, model.box_decoder):
        module.requires_grad_(True)


def build_umedground(config: GroundingConfig, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[UMedGround, Any, list[str]]:
    """A trainable model from the base checkpoints named in ``config``.

    Returns:
      the model, the processor (tokenizer with ``[BOX]``), and a load report (lines).
    """
    processor = load_processor(config.version)
    llava = load_llava(config.version, processor, dtype, device)
    sam, sam_config = load_sam_checkpoint(config.vision_pretrained, config.vision_model,
                                          device=device, dtype=dtype)
    config.sam = asdict(sam_config)
    decoder, decoder_report = build_box_decoder(sam_config, config.num_hypotheses,
                                                sam.state_dict())
    depth = llava.config.text_config.num_hidden_layers
    outside = [layer for layer in config.query_layers if not -(depth + 1) <= layer <= depth]
    if outside:
        raise ValueError(f"query_layers {outside} do not exist: {config.version} has hidden "
                         f"states 0..{depth} (0 = token embeddings, -1 = last layer)")
    phrase_query = build_phrase_query(llava.config.text_config.hidden_size,
                                      len(config.query_layers), sam_config.prompt_embed_dim)
    if config.lora_r > 0:
        llava = apply_lm_lora(llava, config.lora_r, config.lora_alpha, config.lora_dropout,
                              config.lora_target_modules)
    sam_encoder = sam.image_encoder
    if config.lora_sam_rank > 0:
        sam_encoder = get_peft_model(sam_encoder, LoraConfig(
            r=config.lora_sam_rank, lora_alpha=2 * config.lora_sam_rank,
            target_modules=SAM_LORA_TARGETS))
    model = UMedGround(llava, sam_encoder, phrase_query, decoder,
                       processor.tokenizer.convert_tokens_to_ids(BOX_TOKEN), config)
    model.phrase_query.to(device=device, dtype=dtype)
    model.box_decoder.to(device=device, dtype=dtype)
    _set_trainable(model, config)
    report = [f"llava: {config.version} (vocab {len(processor.tokenizer)})",
              f"sam: {config.vision_pretrained} ({sam_config.name})",
              f"box decoder: {decoder_report}", "phrase query: newly initialised"]
    return model, processor, report


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def grounding_state_dict(model: UMedGround) -> dict[str, torch.Tensor]:
    """The grounding parts to save beside the HF folder (SAM only when it was trained)."""
    parts = {"phrase_query": model.phrase_query, "box_decoder": model.box_decoder}
    if model.config.train_vision_encoder or model.config.lora_sam_rank > 0:
        parts["sam_encoder"] = model.sam_encoder
    return {f"{prefix}.{key}": value.detach().contiguous().cpu()
            for prefix, module in parts.items() for key, value in module.state_dict().items()}


def save_exported(model: UMedGround, processor: Any, folder: str | Path) -> Path:
    """Merge LoRA (in place: the model keeps the merged weights) and write an HF folder +
    grounding weights + config.

    Arguments:
      model: a trained model (LoRA may be merged already).
      processor: its processor.
      folder: the output folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    llava = model.llava.merge_and_unload() if isinstance(model.llava, PeftModel) else model.llava
    if isinstance(model.sam_encoder, PeftModel):
        model.sam_encoder = model.sam_encoder.merge_and_unload()
    llava.save_pretrained(folder)
    processor.save_pretrained(folder)
    save_file(grounding_state_dict(model), folder / GROUNDING_WEIGHTS)
    exported = GroundingConfig(**{**model.config.to_dict(), "version": ".", "lora_r": 0,
                                  "lora_sam_rank": 0,
                                  "train_vision_encoder": "sam_encoder" in
                                  {k.split(".")[0] for k in grounding_state_dict(model)}})
    exported.sam = model.config.sam
    exported.save(folder)
    return folder


def load_exported(folder: str | Path, vision_pretrained: str | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                  ) -> tuple[UMedGround, Any]:
    """Load a folder written by :func:`save_exported` (or the merge script) for inference.

    ``vision_pretrained`` overrides the saved SAM path when the SAM encoder was frozen (and so
    not saved in the folder).
    """
    folder = Path(folder)
    config = GroundingConfig.load(folder)
    config.version = str(folder)
    weights_path = folder / GROUNDING_WEIGHTS
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} missing: not an exported uMedGround folder")
    weights = load_file(weights_path)
    processor = load_processor(folder)
    llava = load_llava(folder, processor, dtype, device)
    sam_config = SamConfig(**config.sam)
    if any(k.startswith("sam_encoder.") for k in weights):
        sam = build_sam(sam_config).to(device=device, dtype=dtype)
    else:
        sam, sam_config = load_sam_checkpoint(vision_pretrained or config.vision_pretrained,
                                              sam_config.name, device=device, dtype=dtype)
    decoder, _ = build_box_decoder(sam_config, config.num_hypotheses, None)
    phrase_query = build_phrase_query(llava.config.text_config.hidden_size,
                                      len(config.query_layers), sam_config.prompt_embed_dim)
    model = UMedGround(llava, sam.image_encoder, phrase_query, decoder,
                       processor.tokenizer.convert_tokens_to_ids(BOX_TOKEN), config)
    model.phrase_query.to(device=device, dtype=dtype)
    model.box_decoder.to(device=device, dtype=dtype)
    for prefix in ("phrase_query", "box_decoder", "sam_encoder"):
        part = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
        if part:
            getattr(model, prefix).load_state_dict(part, strict=True)
    model.eval().requires_grad_(False)
    return model, processor


def load_consolidated(path: Path) -> dict[str, torch.Tensor]:
    """The fp32 state dict written by ``zero_to_fp32.py`` (file, or folder of shards)."""
    if path.is_file():
        files = [path]
    else:
        index = next((p for p in (path / "model.safetensors.index.json",
                                  path / "pytorch_model.bin.index.json") if p.is_file()), None)
        if index is not None:
            files = [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        else:
            files = [p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.is_file()]
    if not files:
        raise FileNotFoundError(f"--weight {path}: no model.safetensors / pytorch_model.bin (or index) "
                         "found; pass what zero_to_fp32.py wrote")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file) if file.suffix == ".safetensors"
                     else torch.load(file, map_location="cpu", weights_only=True))
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
