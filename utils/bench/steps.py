"""Case a (a training step against bare LLaVA-LoRA) and the step-scaling part of case d."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch

from model.constants import MODEL_INPUTS
from model.embedding_cache import EmbeddingCache, encoder_fingerprint
from model.grounding_model import UMedGround
from utils.annotations import Sample, load_annotations
from utils.bench.models import build_model, parameter_counts, set_trainable
from utils.bench.timing import device_sync, fit_exponent, interleaved, ratio
from utils.dataset import GroundingCollator, GroundingDataset


def training_batch(model: UMedGround, processor: Any, samples: list[Sample],
                   device: torch.device, model_max_length: int = 512) -> dict[str, torch.Tensor]:
    dataset = GroundingDataset(samples, processor, model.sam_encoder.img_size, model_max_length,
                               train=True)
    batch = GroundingCollator(processor.tokenizer.pad_token_id)([dataset[i]
                                                                  for i in range(len(samples))])
    return {key: batch[key].to(device) for key in MODEL_INPUTS}


def step_functions(model: UMedGround, batch: dict[str, torch.Tensor]
                   ) -> dict[str, Callable[[], None]]:
    """One optimizer step each: the bare LLaVA-LoRA step (the same LM, LoRA and trainable
    rows, the same tokens and LM loss; no SAM, no box decoder) and uMedGround's."""
    def step(parameters: list[torch.nn.Parameter], loss: Callable[[], torch.Tensor]):
        optimizer = torch.optim.AdamW(parameters, lr=1e-5)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss().backward()
            optimizer.step()
        return run

    lm = [p for p in model.llava.parameters() if p.requires_grad]
    everything = [p for p in model.parameters() if p.requires_grad]
    llava_inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}

    def bare_loss() -> torch.Tensor:
        return model.llava(**llava_inputs,
                           pixel_values=batch["pixel_values"].to(model.llava.dtype)).loss

    return {"bare_llava_lora": step(lm, bare_loss),
            "umedground": step(everything, lambda: model(**batch).losses["total"])}


def cached(model: UMedGround, cache_dir: Path | None) -> EmbeddingCache:
    model.embedding_cache = EmbeddingCache(encoder_fingerprint(model.sam_encoder), cache_dir)
    return model.embedding_cache


def fill_cache(cache: EmbeddingCache, batch: dict[str, torch.Tensor], channels: int,
               grid: int) -> None:
    """Put embeddings for the batch's images in the cache without running the encoder, as
    after a first epoch (the small-real step measures the cached path only)."""
    for image in batch["sam_images"]:
        cache.put(cache.key(image), torch.randn(channels, grid, grid))


def train_step_case(tiny_dir: Path, data_dir: Path, device: torch.device, repeats: int,
                    batch_size: int, small_real: bool) -> dict[str, Any]:
    """Case a: step times side by side, at the tiny size (bare, cached, uncached, encoder
    trained) and at the small-real size (bare, cached)."""
    samples = [s for s in load_annotations(data_dir / "report_train.jsonl") if s.findings]
    result: dict[str, Any] = {}
    sizes = ["tiny"] + (["small_real"] if small_real else [])
    for size in sizes:
        model, processor = build_model(tiny_dir, size, device)
        model.train()
        batch = training_batch(model, processor, samples[:batch_size], device)
        steps = step_functions(model, batch)
        cache = cached(model, None)
        if size == "small_real":
            fill_cache(cache, batch, model.config.sam["prompt_embed_dim"],
                       model.config.sam["image_size"] // model.config.sam["patch_size"])
        else:
            model.encode_images(batch["sam_images"])  # the first epoch fills the cache

        def uncached(run: Callable[[], None] = steps["umedground"]) -> None:
            kept, model.embedding_cache = model.embedding_cache, None
            run()
            model.embedding_cache = kept

        variants = {"bare_llava_lora": steps["bare_llava_lora"],
                    "umedground_cached": steps["umedground"]}
        if size == "tiny":
            variants["umedground_uncached"] = uncached
            set_trainable(model, train_encoder=True)
            encoder_step = step_functions(model, batch)["umedground"]
            set_trainable(model)

            def train_encoder(run: Callable[[], None] = encoder_step) -> None:
                set_trainable(model, train_encoder=True)  # the cache steps aside by itself
                run()
                set_trainable(model)

            variants["umedground_train_vision_encoder"] = train_encoder
        timed = interleaved(variants, repeats, warmup=1, sync=device_sync(device))
        tokens = int(batch["attention_mask"].sum())
        result[size] = {"steps": timed, "batch_size": batch_size, "tokens": tokens,
                        "parameters": parameter_counts(model),
                        "ratio_vs_bare": {name: ratio(timed[name], timed["bare_llava_lora"])
                                          for name in timed}}
    return result


def scaling_case(tiny_dir: Path, data_dir: Path, device: torch.device, repeats: int,
                 batch_sizes: list[int], report_repeats: list[int]) -> dict[str, Any]:
    """Case d, training half: the cached uMedGround step (tiny) against batch size and
    against report length (the report of one sample repeated N times)."""
    samples = [s for s in load_annotations(data_dir / "report_train.jsonl") if s.findings]
    model, processor = build_model(tiny_dir, "tiny", device)
    model.train()
    cached(model, None)
    by_batch = {}
    for size in batch_sizes:
        batch = training_batch(model, processor, samples[:size], device)
        by_batch[size] = interleaved({"step": step_functions(model, batch)["umedground"]},
                                     repeats, sync=device_sync(device))["step"]
    by_length = {}
    base = samples[0]
    for repeats_of_report in report_repeats:
        report = " ".join([base.report] * repeats_of_report)
        long_samples = [dataclasses.replace(base, report=report)] * 4
        batch = training_batch(model, processor, long_samples, device, model_max_length=4096)
        length = int(batch["attention_mask"][0].sum())
        by_length[length] = interleaved({"step": step_functions(model, batch)["umedground"]},
                                        repeats, sync=device_sync(device))["step"]
    return {
        "step_vs_batch_size": {"x": batch_sizes,
                               "median_s": [by_batch[b]["median"] for b in batch_sizes],
                               "exponent": fit_exponent(batch_sizes,
                                                        [by_batch[b]["median"]
                                                         for b in batch_sizes])},
        "step_vs_sequence_tokens": {"x": list(by_length),
                                    "median_s": [v["median"] for v in by_length.values()],
                                    "exponent": fit_exponent(list(by_length),
                                                             [v["median"]
                                                              for v in by_length.values()])},
    }
