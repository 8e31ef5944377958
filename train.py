"""Train uMedGround with DeepSpeed (1..k ranks, multi-node through a hostfile) or as one process.

    deepspeed --master_port=24999 train.py --version=pretrained/llava-1.5-7b-hf \
        --vision_pretrained=pretrained/sam_vit_h_4b8939.pth --dataset_dir=ln_data/mscxr \
        --dataset=report --sample_rates=1 --exp_name=umedground --precision=bf16

    python train.py …   # the same, one process (the rank variables are filled in)

Writes ``<log_base_dir>/<exp_name>/``: ``ckpt/`` (DeepSpeed checkpoints, ``latest``, ``best``,
``best.json``), ``log.jsonl`` and ``tensorboard/`` (loss parts, lr, validation metrics).
The loop lives in :mod:`training.engine`, checkpoints in :mod:`training.checkpoints`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader

from model.constants import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL_MAX_LENGTH
from training.checkpoints import BEST_MODES, Checkpointer, CheckpointError, resolve_resume
from training.deepspeed_config import build_deepspeed_config, group_learning_rates
from training.distributed import (
    barrier,
    default_extensions_dir,
    ensure_single_process_env,
    rank,
    world_size,
)
from training.engine import NonFiniteLossError, train_one_epoch, validate
from training.log import TrainLog
from training.mixing import MixtureSampler
from training.rng import loader_generator, seed_everything
from training.state import TrainState
from utils.annotations import AnnotationError, annotation_file, load_annotations
from utils.cli import (
    PRECISIONS,
    add_decoding_arg,
    add_embedding_cache_args,
    add_image_input_args,
    add_model_args,
    attach_embedding_cache,
    grounding_config_from_args,
    non_negative_int,
    positive_int,
)
from utils.dataset import GroundingCollator, GroundingDataset, PromptTooLongError
from utils.evaluate import build_eval_dataset
from utils.image_io import ImageReadError
from utils.logs import setup_logging

logger = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--box_decoder_init", default="sam", choices=["sam", "random"],
                        help="initialise the box decoder's two-way transformer, positional "
                             "encoding and hypothesis tokens from SAM's mask decoder (the "
                             "default), or randomly (the ablation)")
    add_embedding_cache_args(parser, "<log_base_dir>/<exp_name>/embedding_cache")
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
    add_image_input_args(data)
    data.add_argument("--model_max_length", type=positive_int, default=DEFAULT_MODEL_MAX_LENGTH)
    data.add_argument("--workers", type=non_negative_int, default=2,
                      help="DataLoader worker processes (0: load in the training process)")
    data.add_argument("--group_by_length", action="store_true",
                      help="batch training samples of similar length together (less padding)")
    run = parser.add_argument_group("run")
    run.add_argument("--exp_name", default="umedground")
    run.add_argument("--log_base_dir", default="runs")
    run.add_argument("--epochs", type=positive_int, default=10)
    run.add_argument("--steps_per_epoch", type=positive_int, default=500)
    run.add_argument("--batch_size", type=positive_int, default=2, help="micro batch per rank")
    run.add_argument("--grad_accumulation_steps", type=positive_int, default=10)
    run.add_argument("--lr", type=float, default=3e-4,
                     help="peak learning rate of the language model (and of the rest without "
                          "--grounding_lr)")
    run.add_argument("--grounding_lr", type=float, default=None,
                     help="peak learning rate of the SAM encoder, phrase query and box decoder "
                          "(default: --lr)")
    run.add_argument("--weight_decay", type=float, default=0.0)
    run.add_argument("--warmup_steps", type=positive_int, default=100,
                     help="linear warm-up steps (at least 1: DeepSpeed's schedule needs one)")
    run.add_argument("--gradient_clipping", type=float, default=1.0)
    run.add_argument("--zero_stage", type=int, default=2, choices=[0, 1, 2, 3])
    run.add_argument("--deepspeed_config", default=None,
                     help="a DeepSpeed JSON config used instead of the one built from the flags")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--save_every", type=non_negative_int, default=0,
                     help="also checkpoint every N optimizer steps (0: only at epoch ends)")
    run.add_argument("--resume", default=None, help="checkpoint folder (or tag folder) to resume")
    run.add_argument("--auto_resume", action="store_true",
                     help="resume from <run>/ckpt/latest when it exists")
    run.add_argument("--no_validate", action="store_true", help="skip the per-epoch validation")
    run.add_argument("--val_batch_size", type=positive_int, default=8)
    run.add_argument("--val_max_samples", type=non_negative_int, default=0,
                     help="validate on the first N samples only (0: the whole split)")
    run.add_argument("--max_new_tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS)
    add_decoding_arg(run)
    run.add_argument("--best_metric", default="grounding.miou",
                     help="validation metric that picks the best checkpoint (dotted key)")
    run.add_argument("--best_mode", default="auto", choices=BEST_MODES,
                     help="max: higher is better; min: lower is better; auto: min for AURC and "
                          "losses, max otherwise")
    run.add_argument("--local_rank", type=int, default=0, help="set by the deepspeed launcher")
    args = parser.parse_args(argv)
    args.datasets = [name for name in args.dataset.split("||") if name]
    try:
        args.rates = [float(r) for r in args.sample_rates.split(",")]
    except ValueError:
        parser.error(f"--sample_rates {args.sample_rates!r}: give comma-separated numbers")
    if len(args.rates) != len(args.datasets):
        parser.error(f"--sample_rates has {len(args.rates)} values for {len(args.datasets)} "
                     f"datasets ({args.datasets})")
    if any(not rate >= 0 or rate == float("inf") for rate in args.rates) or not sum(args.rates) > 0:
        parser.error(f"--sample_rates {args.sample_rates}: each must be finite and >= 0, and "
                     "not all 0")
    if args.warmup_steps > args.epochs * args.steps_per_epoch:
        parser.error(f"--warmup_steps {args.warmup_steps} exceeds the run's "
                     f"{args.epochs * args.steps_per_epoch} steps (--epochs x --steps_per_epoch)")
    try:
        grounding_config_from_args(args)  # the model flags' checks, before anything is built
    except ValueError as error:
        parser.error(f"{error}; see train.py --help")
    if args.precision != "fp32" and not torch.cuda.is_available():
        parser.error(f"--precision {args.precision} needs a GPU; use fp32 on a CPU")
    return args


def load_split(args: argparse.Namespace, name: str, split: str) -> list:
    path = annotation_file(Path(args.dataset_dir), name, split)
    return load_annotations(path, args.image_root or args.dataset_dir, args.skip_invalid,
                            allow_outside_root=args.allow_outside_root,
                            max_image_pixels=args.max_image_pixels,
                            fix_declared_size=args.fix_declared_size)


def parameter_groups(model: torch.nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The trainable parameters as two optimizer groups, in the order of
    :func:`training.deepspeed_config.group_learning_rates`: the language model (``--lr``), then
    the grounding parts (``--grounding_lr``)."""
    language, grounding = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (language if name.startswith("llava.") else grounding).append(parameter)
    rates = group_learning_rates(args)
    return [{"params": params, "lr": lr} for params, lr in zip((language, grounding), rates)]


def epoch_loader(datasets: list[GroundingDataset], lengths: list[int] | None,
                 collate: GroundingCollator, args: argparse.Namespace,
                 state: TrainState) -> DataLoader:
    """This rank's loader for ``state.epoch``, from the draw after ``state.step_in_epoch``."""
    for dataset in datasets:
        dataset.set_epoch(state.epoch)
    per_step = args.batch_size * args.grad_accumulation_steps
    sampler = MixtureSampler([len(d) for d in datasets], args.rates, args.seed, state.epoch,
                             args.steps_per_epoch * per_step, rank(), world_size(),
                             start=state.step_in_epoch * per_step, lengths=lengths,
                             batch_size=args.batch_size)
    return DataLoader(ConcatDataset(datasets), batch_size=args.batch_size, sampler=sampler,
                      collate_fn=collate, num_workers=args.workers,
                      generator=loader_generator(args.seed, state.epoch, rank()),
                      persistent_workers=False, drop_last=True)


def build_model(args: argparse.Namespace, device: torch.device, run_dir: Path
                ) -> tuple[Any, Any, Any]:
    """The model of the flags (with the embedding cache when SAM is frozen), its processor
    and its :class:`model.config.GroundingConfig`; logs the load report."""
    from model.build import build_umedground, count_parameters

    config = grounding_config_from_args(args)
    try:
        model, processor, load_report = build_umedground(
            config, device, PRECISIONS[args.precision],
            init_decoder_from_sam=args.box_decoder_init == "sam")
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"cannot build the model: {error}")
    total, trainable = count_parameters(model)
    load_report.append(attach_embedding_cache(model, args, run_dir / "embedding_cache"))
    logger.info("\n".join(load_report))
    logger.info("parameters: %s total, %s trainable", f"{total:,}", f"{trainable:,}")
    return model, processor, config


def build_datasets(args: argparse.Namespace, model: Any, processor: Any, train_sets: list,
                   val_samples: list) -> tuple[list[GroundingDataset], list[int] | None, Any]:
    """The training datasets (with their lengths for ``--group_by_length``) and, on rank 0,
    the validation dataset built once for every epoch."""
    logger.info("training sets: %s", ", ".join(f"{n} ({len(s)} samples, rate {r})" for n, s, r
                                               in zip(args.datasets, train_sets, args.rates)))
    images = {"image_window": args.image_window, "max_image_pixels": args.max_image_pixels}
    datasets = [GroundingDataset(samples, processor, model.sam_encoder.img_size,
                                 args.model_max_length, train=True, seed=args.seed,
                                 name=f"{name}_train", **images)
                for name, samples in zip(args.datasets, train_sets)]
    lengths = [n for d in datasets for n in d.text_lengths()] if args.group_by_length else None
    val_data = build_eval_dataset(model, processor, val_samples, args.model_max_length,
                                  f"{args.val_dataset}_val", **images) \
        if val_samples and rank() == 0 else None
    return datasets, lengths, val_data


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ensure_single_process_env()
    default_extensions_dir()
    import deepspeed  # after the rank variables exist

    deepspeed.init_distributed(dist_backend=None)
    setup_logging(rank())
    seed_everything(args.seed + rank())
    from deepspeed.accelerator import get_accelerator

    device = torch.device(get_accelerator().device_name(args.local_rank))
    run_dir = Path(args.log_base_dir) / args.exp_name
    ckpt_root = run_dir / "ckpt"
    resume_from = Path(args.resume) if args.resume else (
        ckpt_root if args.auto_resume and (ckpt_root / "latest").is_file() else None)
    if resume_from is not None:
        resolve_resume(resume_from)  # a damaged or unsafe checkpoint fails before the build
    train_sets = [load_split(args, name, "train") for name in args.datasets]
    val_samples = [] if args.no_validate else load_split(args, args.val_dataset, "val")
    val_samples = val_samples[: args.val_max_samples or None]
    if rank() == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
    barrier()

    model, processor, config = build_model(args, device, run_dir)
    datasets, lengths, val_data = build_datasets(args, model, processor, train_sets, val_samples)
    ds_config = build_deepspeed_config(args, args.epochs * args.steps_per_epoch)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=parameter_groups(model, args), config=ds_config)
    checkpointer = Checkpointer(engine, ckpt_root, config, dict(vars(args)), args.best_metric,
                                args.best_mode)
    state = TrainState()
    if resume_from is not None:
        state = checkpointer.resume(resume_from)
        logger.info("resumed from %s: epoch %d, step %d", resume_from, state.epoch,
                    state.global_step)
    collate = GroundingCollator(processor.tokenizer.pad_token_id, mode="train")
    log = TrainLog(run_dir, enabled=rank() == 0)
    if rank() == 0:
        config.save(run_dir)
    while state.epoch < args.epochs:
        train_one_epoch(engine, epoch_loader(datasets, lengths, collate, args, state), state,
                        steps_per_epoch=args.steps_per_epoch,
                        grad_accumulation_steps=args.grad_accumulation_steps, device=device,
                        log=log, checkpointer=checkpointer, save_every=args.save_every,
                        description=f"epoch {state.epoch + 1}/{args.epochs}")
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        if model.embedding_cache is not None:
            log.write("cache", state.global_step, {"epoch": state.epoch,
                                                   **model.embedding_cache.counts()})
        tag = checkpointer.save(state)
        if not args.no_validate:
            validate_epoch(engine.module, processor, val_data, args, ds_config, state,
                           checkpointer, log, tag)
    log.close()
    logger.info("done: %d steps; checkpoints in %s", state.global_step, ckpt_root)


def validate_epoch(model: torch.nn.Module, processor: Any, dataset: Any,
                   args: argparse.Namespace, ds_config: dict[str, Any], state: TrainState,
                   checkpointer: Checkpointer, log: TrainLog, tag: str) -> None:
    """Validate the checkpoint ``tag`` just saved, log the metrics and keep the best."""
    from utils.evaluate import metric_value

    metrics = validate(model, processor, dataset,
                       zero_stage=ds_config.get("zero_optimization", {}).get("stage", 0),
                       batch_size=args.val_batch_size, max_new_tokens=args.max_new_tokens,
                       dataset_name=args.val_dataset, decoding=args.decoding,
                       phrase_start_ratio=args.phrase_start_ratio)
    if rank() == 0:
        log.write("val", state.global_step, metrics)
        value = metric_value(metrics, args.best_metric)
        best = checkpointer.record_validation(state, tag, value)
        logger.info("epoch %d: %s = %.4f%s", state.epoch, args.best_metric, value,
                    " (best so far)" if best else "")
    barrier()


def run(argv: list[str] | None = None) -> int:
    """``main`` with the expected failures as one clear message and exit status 2."""
    try:
        main(argv)
    except (AnnotationError, CheckpointError, NonFiniteLossError, PromptTooLongError,
            ImageReadError) as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
