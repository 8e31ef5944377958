"""The GPU mode's measurements, in one rank under the ``deepspeed`` launcher.

:func:`utils.bench.gpu.gpu_case` starts it as

    python -m deepspeed.launcher.runner --num_gpus 1 --master_port P \\
        --module utils.bench.gpu_worker --shape llava_1.5_7b_vit_h --out gpu.json …

It builds a randomly initialised model of the shape straight on the accelerator, wraps it in a
DeepSpeed engine configured as ``train.py`` configures one from its default flags (ZeRO-2,
AdamW, warm-up/decay schedule, clipping, bf16 on a GPU), and measures

- training steps (forward, ``engine.backward``, ``engine.step``) at each batch size, without
  and with ``--gradient_checkpointing``: the bare LLaVA-LoRA step, the uMedGround step with
  the SAM embeddings cached, and uncached (a frozen SAM forward per step), interleaved;
- evaluation (:func:`utils.evaluate.evaluate_model`: generation, its boxes and the
  given-phrase pass, one SAM encoding per batch) at each batch size, interleaved;

each with its median and spread, tokens (or findings) per second and peak accelerator memory.
On a CPU the same code runs in fp32 (bf16 is GPU-only, as ``train.py --precision`` has it) and
peak memory is not measured per run; the record says so.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from model.grounding_model import UMedGround
from train import parameter_groups
from train import parse_args as train_flags
from training.deepspeed_config import build_deepspeed_config
from training.distributed import default_extensions_dir, rank
from utils.annotations import load_annotations
from utils.bench.models import build_shaped_model, parameter_counts
from utils.bench.shapes import SHAPES
from utils.bench.steps import cached, training_batch
from utils.bench.timing import device_sync, interleaved, peak_rss_mb
from utils.cli import PRECISIONS, grounding_config_from_args, positive_int
from utils.evaluate import build_eval_dataset, evaluate_model
from utils.logs import setup_logging

logger = logging.getLogger("bench.gpu")

# LLaVA-1.5's training length: train.py's default of 512 leaves no room beside 576 image tokens
MODEL_MAX_LENGTH = 2048
TRAIN_VARIANTS = ("bare_llava_lora", "umedground_cached", "umedground_uncached")
CHECKPOINTING = {"no_gradient_checkpointing": False, "gradient_checkpointing": True}
CPU_MEMORY_NOTE = ("not measured per run: no CUDA device (torch.cuda.max_memory_allocated); "
                   "peak_rss_mb is the whole process's")


class StepVariants(nn.Module):
    """What the engine wraps: the uMedGround training forward, or the bare LLaVA-LoRA one (the
    same LM, LoRA and trainable rows on the same tokens with the same LM loss; no SAM, no box
    decoder), so that both go through the engine's forward, backward and step."""

    def __init__(self, model: UMedGround):
        super().__init__()
        self.model = model

    def forward(self, bare: bool, **batch: torch.Tensor) -> torch.Tensor:
        """The scalar loss of ``batch`` (the :data:`model.constants.MODEL_INPUTS` tensors)."""
        if bare:
            return self.model.llava(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"],
                                    labels=batch["labels"],
                                    pixel_values=batch["pixel_values"].to(self.model.llava.dtype)
                                    ).loss
        return self.model(**batch).losses["total"]


class PeakMemory:
    """The peak accelerator memory of each named call, in MiB (the max over its calls), from
    ``torch.cuda.max_memory_allocated`` reset before each call; empty on a CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.peaks: dict[str, float] = {}

    def tracked(self, name: str, run: Callable[[], Any]) -> Callable[[], None]:
        def call() -> None:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            run()
            if self.cuda:
                peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
                self.peaks[name] = max(self.peaks.get(name, 0.0), peak)
        return call

    def peak(self, name: str) -> float | None:
        return self.peaks.get(name)

    def allocated(self) -> float | None:
        return torch.cuda.memory_allocated(self.device) / 2 ** 20 if self.cuda else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    parser.add_argument("--tiny_dir", type=Path, required=True,
                        help="`make tiny` output (its tokenizer is used)")
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--eval_repeats", type=positive_int, default=2)
    parser.add_argument("--batch_sizes", type=positive_int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--eval_samples", type=positive_int, default=8)
    parser.add_argument("--max_new_tokens", type=positive_int, default=32)
    parser.add_argument("--local_rank", type=int, default=0, help="set by the deepspeed launcher")
    return parser.parse_args(argv)


def engine_flags(args: argparse.Namespace, precision: str) -> argparse.Namespace:
    """``train.py``'s flags for this run: its defaults (LoRA r 8 on q/v, ZeRO-2, AdamW, lr
    schedule, clipping) with one micro batch per step and enough steps for the schedule (one
    warm-up step: DeepSpeed's WarmupDecayLR refuses 0)."""
    rounds = 1 + args.repeats
    steps = len(CHECKPOINTING) * len(args.batch_sizes) * len(TRAIN_VARIANTS) * rounds
    return train_flags(["--version", f"{args.shape} (random weights)",
                        "--vision_pretrained", f"{SHAPES[args.shape].sam.name} (random weights)",
                        "--precision", precision, "--zero_stage", "2",
                        "--batch_size", str(max(args.batch_sizes)),
                        "--grad_accumulation_steps", "1", "--epochs", "1",
                        "--steps_per_epoch", str(steps), "--warmup_steps", "1",
                        "--model_max_length", str(MODEL_MAX_LENGTH)])


def set_checkpointing(model: UMedGround, enabled: bool) -> None:
    """``--gradient_checkpointing`` on or off, as :func:`model.build.build_umedground` sets it."""
    if enabled:
        model.llava.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.llava.activation_checkpointing_disable()


def training_measurements(engine: Any, model: UMedGround, processor: Any, samples: list,
                          device: torch.device, args: argparse.Namespace, memory: PeakMemory,
                          sync: Callable[[], None], max_length: int) -> dict[str, Any]:
    """Per gradient-checkpointing setting (with whether the LM's layers really checkpoint) and
    batch size: the three step variants side by side, their tokens per second, peak memory
    and ratio to the bare step."""
    cache = cached(model, None)
    result: dict[str, Any] = {}
    for setting, enabled in CHECKPOINTING.items():
        set_checkpointing(model, enabled)
        batches: dict[str, Any] = {}
        for size in args.batch_sizes:
            batch = training_batch(model, processor, samples[:size], device, max_length)
            model.encode_images(batch["sam_images"])  # the first epoch fills the cache

            def step(bare: bool, use_cache: bool = True) -> Callable[[], None]:
                def run() -> None:
                    model.embedding_cache = cache if use_cache else None
                    engine.backward(engine(bare, **batch))
                    engine.step()
                    model.embedding_cache = cache
                return run

            runs = {"bare_llava_lora": step(True), "umedground_cached": step(False),
                    "umedground_uncached": step(False, use_cache=False)}
            label = f"{setting}/batch_{size}"
            timed = interleaved({name: memory.tracked(f"{label}/{name}", run)
                                 for name, run in runs.items()}, args.repeats, warmup=1,
                                sync=sync)
            tokens = int(batch["attention_mask"].sum())
            batches[f"batch_{size}"] = {
                "batch_size": size, "tokens": tokens, "steps": timed,
                "tokens_per_second": {name: tokens / value["median"]
                                      for name, value in timed.items()},
                "ratio_vs_bare": {name: value["median"] / timed["bare_llava_lora"]["median"]
                                  for name, value in timed.items()},
                "peak_memory_mb": {name: memory.peak(f"{label}/{name}") for name in timed}}
            logger.info("%s: %s", label, ", ".join(f"{name} {value['median']:.3f} s"
                                                   for name, value in timed.items()))
        result[setting] = {"activation_checkpointing": model.llava.is_activation_checkpointing,
                           "batches": batches}
    set_checkpointing(model, False)
    model.embedding_cache = None
    return result


def evaluation_measurements(model: UMedGround, processor: Any, samples: list,
                            args: argparse.Namespace, memory: PeakMemory,
                            sync: Callable[[], None], max_length: int) -> dict[str, Any]:
    """One evaluation pass per batch size, side by side (no embedding cache: each image is
    encoded once per pass, as in one test.py run)."""
    dataset = build_eval_dataset(model, processor, samples, max_length)
    findings = sum(len(s.findings) for s in samples)
    resident = memory.allocated()

    def evaluation(size: int) -> Callable[[], None]:
        return lambda: evaluate_model(model, processor, dataset, batch_size=size,
                                      max_new_tokens=args.max_new_tokens, progress=False,
                                      meteor=False)

    timed = interleaved({f"batch_{size}": memory.tracked(f"eval/batch_{size}", evaluation(size))
                         for size in args.batch_sizes}, args.eval_repeats, warmup=1, sync=sync)
    return {"n_samples": len(samples), "n_findings": findings,
            "max_new_tokens": args.max_new_tokens, "runs": timed,
            "findings_per_second": {name: findings / value["median"]
                                    for name, value in timed.items()},
            "samples_per_second": {name: len(samples) / value["median"]
                                   for name, value in timed.items()},
            "resident_memory_mb": resident,
            "peak_memory_mb": {name: memory.peak(f"eval/{name}") for name in timed}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    default_extensions_dir()
    import deepspeed  # after the launcher's rank variables exist
    from deepspeed.accelerator import get_accelerator

    deepspeed.init_distributed(dist_backend=None)
    setup_logging(rank())
    device = torch.device(get_accelerator().device_name(args.local_rank))
    cuda = device.type == "cuda"
    precision = "bf16" if cuda else "fp32"
    flags = engine_flags(args, precision)
    started = time.perf_counter()
    model, processor = build_shaped_model(args.shape, args.tiny_dir / "llava",
                                          grounding_config_from_args(flags), device,
                                          PRECISIONS[precision])
    engine, _, _, _ = deepspeed.initialize(
        model=StepVariants(model), model_parameters=parameter_groups(model, flags),
        config=build_deepspeed_config(flags, flags.epochs * flags.steps_per_epoch))
    build_seconds = time.perf_counter() - started
    logger.info("built %s on %s in %.0f s: %s", args.shape, device, build_seconds,
                parameter_counts(model))
    memory = PeakMemory(device)
    samples = [s for s in load_annotations(args.data_dir / "report_train.jsonl") if s.findings]
    if len(samples) < max(args.batch_sizes):
        raise SystemExit(f"{args.data_dir / 'report_train.jsonl'}: {len(samples)} samples with "
                         f"findings, fewer than the largest batch {max(args.batch_sizes)}")
    train = training_measurements(engine, model, processor, samples, device, args, memory,
                                  device_sync(device), flags.model_max_length)
    test_samples = load_annotations(args.data_dir / "report_test.jsonl")[:args.eval_samples]
    evaluation = evaluation_measurements(model, processor, test_samples, args, memory,
                                         device_sync(device), flags.model_max_length)
    record = {
        "shape": args.shape, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "launcher": "deepspeed", "world_size": engine.world_size,
        "zero_stage": engine.zero_optimization_stage(), "precision": precision,
        "precision_note": "DeepSpeed bf16: weights and activations in bfloat16, fp32 master "
                          "weights in the ZeRO-2 optimizer" if cuda else
                          "fp32: no CUDA device (bf16 is GPU-only, as train.py --precision has it)",
        "memory_measure": "torch.cuda.max_memory_allocated, reset before each run, max over "
                          "its repeats" if cuda else CPU_MEMORY_NOTE,
        "parameters": parameter_counts(model),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "image_tokens_per_sample": SHAPES[args.shape].llava.image_seq_length,
        "tokenizer": str(args.tiny_dir / "llava"),
        "build_seconds": build_seconds, "train": train, "eval": evaluation,
        "peak_rss_mb": peak_rss_mb(), "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
    }
    if rank() == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
