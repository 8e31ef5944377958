"""Train uMedGround with DeepSpeed (1..k ranks, multi-node through a hostfile) or as one process.

    deepspeed --master_port=24999 train.py --version=pretrained/llava-1.5-7b-hf \
        --vision_pretrained=pretrained/sam_vit_h_4b8939.pth --dataset_dir=ln_data/mscxr \
        --dataset=report --sample_rates=1 --exp_name=umedground --precision=bf16

    python train.py …   # the same, one process (the rank variables are filled in)

Writes ``<log_base_dir>/<exp_name>/``: ``ckpt/`` (DeepSpeed checkpoints, ``latest``, ``best``,
``zero_to_fp32.py``), ``log.jsonl`` and ``tensorboard/`` (loss parts, lr, validation metrics).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from model.build import build_umedground, count_parameters
from utils.annotations import AnnotationError, annotation_file, load_annotations
from utils.checkpoints import mark_best, read_pointer, resolve_resume, save_checkpoint
from utils.cli import PRECISIONS, add_model_args, grounding_config_from_args
from utils.dataset import GroundingCollator, GroundingDataset
from utils.deepspeed_config import build_deepspeed_config, group_learning_rates
from utils.distributed import barrier, ensure_single_process_env, rank, world_size

from utils.mixing import MixtureSampler
from utils.train_log import TrainLog

MODEL_INPUTS = ("sam_images", "pixel_values", "input_ids", "attention_mask", "labels",
                "box_targets")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_dir", default="ln_data/synthcxr",
                      help="folder with <name>_<split>.jsonl (or .pth) annotation files")
    data.add_argument("--dataset", default="report",
                      help="'||'-separated training sets, e.g. report||vqa||class")
    data.add_argument("--sample_rates", default="1",
                      help="comma-separated relative rates, one per --dataset entry")
    data.add_argument("--val_dataset", default="report", help="set validated every epoch")
    data.add_argument("--image_root", default=None,
                      help="folder image paths are relative to (default: --dataset_dir)")
    data.add_argument("--skip_invalid", action="store_true",
                      help="drop invalid annotation rows (counted and printed) instead of failing")
    data.add_argument("--model_max_length", type=int, default=512)
    data.add_argument("--workers", type=int, default=2)
    data.add_argument("--group_by_length", action="store_true",
                      help="batch training samples of similar length together (less padding)")
    run = parser.add_argument_group("run")
    run.add_argument("--exp_name", default="umedground")
    run.add_argument("--log_base_dir", default="runs")
    run.add_argument("--epochs", type=int, default=10)
    run.add_argument("--steps_per_epoch", type=int, default=500)
    run.add_argument("--batch_size", type=int, default=2, help="micro batch per rank")
    run.add_argument("--grad_accumulation_steps", type=int, default=10)
    run.add_argument("--lr", type=float, default=3e-4,
                     help="peak learning rate of the language model (and of the rest without "
                          "--grounding_lr)")
    run.add_argument("--grounding_lr", type=float, default=None,
                     help="peak learning rate of the SAM encoder, phrase query and box decoder "
                          "(default: --lr)")
    run.add_argument("--weight_decay", type=float, default=0.0)
    run.add_argument("--warmup_steps", type=int, default=100)
    run.add_argument("--gradient_clipping", type=float, default=1.0)
    run.add_argument("--zero_stage", type=int, default=2, choices=[0, 1, 2, 3])
    run.add_argument("--deepspeed_config", default=None,
                     help="a DeepSpeed JSON config used instead of the one built from the flags")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--save_every", type=int, default=0,
                     help="also checkpoint every N optimizer steps (0: only at epoch ends)")
    run.add_argument("--resume", default=None, help="checkpoint folder (or tag folder) to resume")
    run.add_argument("--auto_resume", action="store_true",
                     help="resume from <run>/ckpt/latest when it exists")
    run.add_argument("--no_validate", action="store_true", help="skip the per-epoch validation")
    run.add_argument("--val_batch_size", type=int, default=8)
    run.add_argument("--val_max_samples", type=int, default=0,
                     help="validate on the first N samples only (0: the whole split)")
    run.add_argument("--max_new_tokens", type=int, default=128)
    run.add_argument("--best_metric", default="grounding.miou",
                     help="validation metric that picks the best checkpoint (dotted key)")
    run.add_argument("--local_rank", type=int, default=0, help="set by the deepspeed launcher")
    args = parser.parse_args(argv)
    args.datasets = [name for name in args.dataset.split("||") if name]
    args.rates = [float(r) for r in args.sample_rates.split(",")]
    if len(args.rates) != len(args.datasets):
        parser.error(f"--sample_rates has {len(args.rates)} values for {len(args.datasets)} "
                     f"datasets ({args.datasets})")
    if args.precision != "fp32" and not torch.cuda.is_available():
        parser.error(f"--precision {args.precision} needs a GPU; use fp32 on a CPU")
    return args


def load_split(args: argparse.Namespace, name: str, split: str) -> list:
    try:
        path = annotation_file(Path(args.dataset_dir), name, split)
        return load_annotations(path, args.image_root or args.dataset_dir, args.skip_invalid)
    except AnnotationError as error:
        raise SystemExit(str(error))


def parameter_groups(model: torch.nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The trainable parameters as two optimizer groups, in the order of
    :func:`utils.deepspeed_config.group_learning_rates`: the language model (``--lr``), then
    the grounding parts (``--grounding_lr``)."""
    language, grounding = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (language if name.startswith("llava.") else grounding).append(parameter)
    rates = group_learning_rates(args)
    return [{"params": params, "lr": lr} for params, lr in zip((language, grounding), rates)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ensure_single_process_env()
    import deepspeed  # after the rank variables exist

    deepspeed.init_distributed(dist_backend=None)
    seed_everything(args.seed + rank())
    from deepspeed.accelerator import get_accelerator

    device = torch.device(get_accelerator().device_name(args.local_rank))
    run_dir = Path(args.log_base_dir) / args.exp_name
    ckpt_root = run_dir / "ckpt"
    if rank() == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
    barrier()

    config = grounding_config_from_args(args)
    try:
        model, processor, load_report = build_umedground(config, device, PRECISIONS[args.precision])
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"cannot build the model: {error}")
    total, trainable = count_parameters(model)
    train_sets = [load_split(args, name, "train") for name in args.datasets]
    val_samples = [] if args.no_validate else load_split(args, args.val_dataset, "val")
    if args.val_max_samples:
        val_samples = val_samples[: args.val_max_samples]
    if rank() == 0:
        print("\n".join(load_report))
        print(f"[train] parameters: {total:,} total, {trainable:,} trainable")
        print("[train] training sets: " + ", ".join(
            f"{n} ({len(s)} samples, rate {r})" for n, s, r in zip(args.datasets, train_sets, args.rates)))

    sam_size = model.sam_encoder.img_size
    datasets = [GroundingDataset(samples, processor, sam_size, args.model_max_length, train=True,
                                 seed=args.seed, name=f"{name}_train")
                for name, samples in zip(args.datasets, train_sets)]
    train_data = ConcatDataset(datasets)
    lengths = [n for d in datasets for n in d.text_lengths()] if args.group_by_length else None
    samples_per_rank = args.steps_per_epoch * args.batch_size * args.grad_accumulation_steps
    total_steps = args.epochs * args.steps_per_epoch
    ds_config = build_deepspeed_config(args, total_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=parameter_groups(model, args), config=ds_config)

    resume_from = Path(args.resume) if args.resume else (
        ckpt_root if args.auto_resume and (ckpt_root / "latest").is_file() else None)
    epoch, step_in_epoch, global_step = 0, 0, 0
    best_value, best_tag = None, read_pointer(ckpt_root, "best")
    if resume_from is not None:
        root, tag = resolve_resume(resume_from)
        _, client_state = engine.load_checkpoint(str(root), tag=tag)
        epoch, step_in_epoch, global_step = (client_state["epoch"], client_state["step_in_epoch"],
                                             client_state["global_step"])
        best_value = client_state.get("best_value")
        set_rng_state(client_state["rng"][rank()] if isinstance(client_state["rng"], list)
                      else client_state["rng"])
        if rank() == 0:
            print(f"[train] resumed from {root / tag}: epoch {epoch}, step {global_step}")

    log = TrainLog(run_dir, enabled=rank() == 0)
    if rank() == 0:
        config.save(run_dir)
    collate = GroundingCollator(processor.tokenizer.pad_token_id, mode="train")
    train_args = dict(vars(args))

    def checkpoint(tag: str) -> None:
        states = [None] * world_size()
        if world_size() > 1:
            torch.distributed.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        save_checkpoint(engine, ckpt_root, tag, {
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "best_value": best_value, "rng": states}, config, train_args, best_tag)

    while epoch < args.epochs:
        for dataset in datasets:
            dataset.set_epoch(epoch)
        sampler = MixtureSampler([len(d) for d in datasets], args.rates, args.seed, epoch,
                                 samples_per_rank, rank(), world_size(),
                                 start=step_in_epoch * args.batch_size * args.grad_accumulation_steps,
                                 lengths=lengths, batch_size=args.batch_size)
        loader = DataLoader(train_data, batch_size=args.batch_size, sampler=sampler,
                            collate_fn=collate, num_workers=args.workers,
                            persistent_workers=False, drop_last=True)
        batches = iter(loader)
        engine.train()
        bar = tqdm(range(step_in_epoch, args.steps_per_epoch), disable=rank() != 0,
                   desc=f"epoch {epoch + 1}/{args.epochs}", dynamic_ncols=True)
        for _ in bar:
            sums: dict[str, float] = {}
            ids: list[str] = []
            started = time.time()
            for _ in range(args.grad_accumulation_steps):
                batch = next(batches)
                ids.extend(batch["ids"])
                inputs = {k: batch[k].to(device) for k in MODEL_INPUTS}
                output = engine(**inputs)
                engine.backward(output.losses["total"])
                engine.step()
                for key, value in output.losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) / args.grad_accumulation_steps
            step_in_epoch += 1
            global_step += 1
            bar.set_postfix({k: f"{v:.3f}" for k, v in sums.items()})
            lm_lr, grounding_lr = engine.get_lr()  # the optimizer's groups, scheduler or not
            log.write("train", global_step, {"epoch": epoch, "lr": lm_lr,
                                             "grounding_lr": grounding_lr,
                                             "seconds": time.time() - started, **sums,
                                             "sample_ids": ids})
            if args.save_every and global_step % args.save_every == 0 \
                    and step_in_epoch < args.steps_per_epoch:
                checkpoint(f"step_{global_step:06d}")
        epoch, step_in_epoch = epoch + 1, 0
        tag = f"step_{global_step:06d}"
        checkpoint(tag)
        if not args.no_validate:
            metrics = validate(engine.module, processor, val_samples, args, ds_config)
            if rank() == 0:
                log.write("val", global_step, metrics)
                from utils.evaluate import metric_value

                value = metric_value(metrics, args.best_metric)
                print(f"[val] epoch {epoch}: {args.best_metric} = {value:.4f}")
                if best_value is None or value > best_value:
                    best_value, best_tag = value, tag
                    mark_best(ckpt_root, tag, args.best_metric, value)
            barrier()
    log.close()
    if rank() == 0:
        print(f"[train] done: {global_step} steps; checkpoints in {ckpt_root}")


def validate(model, processor, samples: list, args: argparse.Namespace,
             ds_config: dict[str, Any]) -> dict[str, Any]:
    """End-to-end and given-phrase validation on rank 0 (under ZeRO-3 with gathered weights)."""
    import deepspeed

    from utils.evaluate import evaluate_model

    model.eval()
    gather = deepspeed.zero.GatheredParameters(list(model.parameters()),
                                               enabled=ds_config.get("zero_optimization", {})
                                               .get("stage", 0) == 3)
    metrics: dict[str, Any] = {}
    with gather:
        if rank() == 0:
            metrics = evaluate_model(model, processor, samples, batch_size=args.val_batch_size,
                                     max_new_tokens=args.max_new_tokens,
                                     model_max_length=args.model_max_length,
                                     dataset_name=args.val_dataset, split="val",
                                     meteor=False).metrics
    model.train()
    return metrics


if __name__ == "__main__":
    sys.exit(main())
