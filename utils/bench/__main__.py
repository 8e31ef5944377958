"""``python -m utils.bench --out runs/bench [--quick] [--device cpu|cuda]`` (``make bench``).

Writes ``bench.json`` (headline ratios at the top level, the detailed records below),
``bench.md`` (the README table) and ``step_vs_batch.png``, ``step_vs_tokens.png``,
``eval_vs_samples.png``. ``--quick`` (``BENCH_QUICK=1``) runs every case at tiny sizes with one
repeat, to check the benchmark itself (CI does); its numbers are not the README's.

``--device cuda`` (``make bench DEVICE=cuda``) runs the cases on the GPU and adds the GPU mode,
the ``gpu`` block (:mod:`utils.bench.gpu`): a random llava-1.5-7b + SAM ViT-H in bf16 under
the deepspeed launcher with ZeRO-2, training steps at batch 1/2/4 without and with gradient
checkpointing, and evaluation (the tiny shape with ``--quick``). Without a CUDA device it
refuses at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from utils.bench.encoder import encoder_case
from utils.bench.evaluation import evaluation_case, evaluation_scaling_case
from utils.bench.flops import head_share_at_7b
from utils.bench.gpu import gpu_case
from utils.bench.plots import plot_scaling
from utils.bench.process import in_own_process
from utils.bench.report import markdown_table
from utils.bench.steps import scaling_case, train_step_case
from utils.logs import setup_logging

logger = logging.getLogger("bench")

FULL = {"train_steps": dict(repeats=5, batch_size=4, small_real=True),
        "evaluation": dict(repeats=2, n_samples=16, batch_sizes=[1, 8, 16]),
        "encoder": dict(n_images=8, sam_type="vit_b"),
        "step_scaling": dict(repeats=3, batch_sizes=[1, 2, 4, 8, 16, 32],
                             report_repeats=[1, 2, 4, 8]),
        "eval_scaling": dict(counts=[4, 8, 16, 32], batch_size=8),
        "gpu": dict(shape="llava_1.5_7b_vit_h", repeats=3, eval_repeats=2, batch_sizes=[1, 2, 4],
                    eval_samples=8, max_new_tokens=32, timeout_seconds=600)}
QUICK = {"train_steps": dict(repeats=1, batch_size=2, small_real=False),
         "evaluation": dict(repeats=1, n_samples=2, batch_sizes=[1, 2]),
         "encoder": dict(n_images=2, sam_type="tiny"),
         "step_scaling": dict(repeats=1, batch_sizes=[1, 2], report_repeats=[1, 4]),
         "eval_scaling": dict(counts=[1, 2], batch_size=2),
         "gpu": dict(shape="tiny", repeats=1, eval_repeats=1, batch_sizes=[1, 2, 4],
                     eval_samples=4, max_new_tokens=8, timeout_seconds=600)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--tiny_dir", type=Path, default=Path("pretrained/tiny"),
                        help="`make tiny` output (its configs and tokenizer are used)")
    parser.add_argument("--data_dir", type=Path, default=Path("ln_data/synthcxr"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--check_device", action="store_true",
                        help="only check that --device is usable (make bench does so before "
                             "building anything)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.device == "cuda" and not torch.cuda.is_available():
        logger.error("--device cuda (make bench DEVICE=cuda): torch %s sees no CUDA device, so "
                     "the GPU mode cannot run here. Run it on a machine with an NVIDIA GPU and "
                     "a CUDA build of torch (README, Installing on a GPU machine), or run "
                     "`make bench` for the CPU cases", torch.__version__)
        return 2
    if args.check_device:
        return 0
    for path in (args.tiny_dir / "llava", args.data_dir / "report_test.jsonl"):
        if not path.exists():
            logger.error("%s not found: run `make tiny` first (or pass --tiny_dir/--data_dir)",
                         path)
            return 2
    settings = QUICK if args.quick else FULL
    common = dict(device=torch.device(args.device), threads=torch.get_num_threads())
    data = dict(tiny_dir=args.tiny_dir, data_dir=args.data_dir)
    started = time.perf_counter()
    gpu = None
    if args.device == "cuda":
        logger.info("GPU mode (%s) …", settings["gpu"]["shape"])
        try:
            gpu = gpu_case(**data, **settings["gpu"])
        except RuntimeError as error:
            logger.error("%s", error)
            return 1
        logger.info("GPU mode: %.0f s", gpu["wall_seconds"])
    records: dict[str, Any] = {}
    for name, function, kwargs in (
            ("train_steps", train_step_case, {**data, **settings["train_steps"]}),
            ("evaluation", evaluation_case, {**data, **settings["evaluation"]}),
            ("encoder", encoder_case, {"data_dir": args.data_dir, **settings["encoder"]}),
            ("step_scaling", scaling_case, {**data, **settings["step_scaling"]}),
            ("eval_scaling", evaluation_scaling_case, {**data, **settings["eval_scaling"]})):
        logger.info("case %s …", name)
        records[name] = in_own_process(function, **common, **kwargs)
        logger.info("case %s: %.0f s, peak RSS %.0f MiB", name, records[name]["wall_seconds"],
                    records[name]["peak_rss_mb"])
    records["flops_7b_vit_h"] = head_share_at_7b()
    steps = records["train_steps"]
    headline_size = "small_real" if "small_real" in steps else "tiny"
    evaluation = records["evaluation"]["speedup_vs_reference"]
    bench = {
        "train_step_ratio_vs_bare_lora": steps[headline_size]["ratio_vs_bare"]["umedground_cached"],
        "train_step_ratio_size": headline_size,
        "eval_speedup_vs_reference": max(v for k, v in evaluation.items()
                                         if k.startswith("single_pass")),
        "cache_epoch_speedup_vit_b": records["encoder"]["cache_epoch_speedup"],
        "cache_encoder": records["encoder"]["sam"],
        "quick": args.quick, "device": args.device, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "seconds": time.perf_counter() - started,
        "records": records,
    }
    if gpu is not None:
        bench["gpu"] = gpu
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    (args.out / "bench.md").write_text(markdown_table(bench))
    plot_scaling(records, args.out)
    logger.info("wrote %s in %.0f s\n%s", args.out / "bench.json", bench["seconds"],
                markdown_table(bench))
    return 0


if __name__ == "__main__":
    sys.exit(main())
