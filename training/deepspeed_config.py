"""The DeepSpeed configuration built from ``train.py``'s flags (or ``--deepspeed_config``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def group_learning_rates(args: argparse.Namespace) -> list[float]:
    """Peak learning rates of the two optimizer groups: the language model, then the grounding
    parts (SAM encoder, phrase query, box decoder)."""
    return [args.lr, args.lr if args.grounding_lr is None else args.grounding_lr]


def build_deepspeed_config(args: argparse.Namespace, total_steps: int) -> dict[str, Any]:
    """ZeRO (stage 2 by default), AdamW, linear warmup then linear decay, clipping, precision.

    The scheduler warms each optimizer group up to its own peak (``warmup_max_lr`` is a list,
    one entry per group of :func:`group_learning_rates`) and decays it linearly to 0.

    ``torch_adam`` keeps DeepSpeed from building its fused CUDA/CPU Adam kernels, so the same
    config runs on a CPU and on GPUs. With ``--deepspeed_config FILE`` the file is used as is,
    except that ``train_micro_batch_size_per_gpu`` and ``gradient_accumulation_steps`` must
    agree with the flags.
    """
    if args.deepspeed_config:
        path = Path(args.deepspeed_config)
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"--deepspeed_config {path}: cannot read it ({error})")
        for key, value in (("train_micro_batch_size_per_gpu", args.batch_size),
                           ("gradient_accumulation_steps", args.grad_accumulation_steps)):
            if config.setdefault(key, value) != value:
                raise SystemExit(f"--deepspeed_config {path}: {key}={config[key]} disagrees with "
                                 f"the flag value {value}")
        return config
    return {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": args.grad_accumulation_steps,
        "optimizer": {"type": "AdamW", "params": {
            "lr": args.lr, "weight_decay": args.weight_decay, "betas": [0.9, 0.95],
            "torch_adam": True}},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "total_num_steps": max(total_steps, 1), "warmup_min_lr": 0.0,
            "warmup_max_lr": group_learning_rates(args),
            "warmup_num_steps": min(args.warmup_steps, total_steps),
            "warmup_type": "linear"}},
        "gradient_clipping": args.gradient_clipping,
        "fp16": {"enabled": args.precision == "fp16"},
        "bf16": {"enabled": args.precision == "bf16"},
        "zero_optimization": {"stage": args.zero_stage, "contiguous_gradients": True,
                              "overlap_comm": False, "reduce_scatter": True},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
