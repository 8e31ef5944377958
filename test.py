"""Evaluate a uMedGround model on a split, honestly.

    python test.py --version runs/demo/hf --dataset_dir ln_data/synthcxr --split test \
        --out runs/demo/eval [--vis 8] [--image_noise_std 0,10,25]
    python test.py --version pretrained/tiny/llava --weight runs/demo/fp32 …   # base + weights
    python test.py --baseline phrase_prior --dataset_dir ln_data/synthcxr --out runs/prior

Writes ``OUT/metrics.json`` (end-to-end ``grounding`` from generated text, and
``grounding_given_phrase`` with the true answer teacher-forced, each also per ground-truth box
in ``grounding_boxes`` / ``grounding_boxes_given_phrase``), ``OUT/predictions.jsonl``
(one line per finding, with every box of its phrase), ``OUT/risk_coverage.png``,
``OUT/iou_vs_u.png``, overlays under
``OUT/vis/`` and, with ``--image_noise_std``, ``OUT/noise.json``; prints a summary table.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from model.constants import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL_MAX_LENGTH, TASKS
from utils.annotations import AnnotationError, Sample, annotation_file, load_annotations
from utils.cli import (
    PRECISIONS,
    add_embedding_cache_args,
    add_image_input_args,
    attach_embedding_cache,
    non_negative_int,
    positive_int,
    writable_folder,
)
from utils.dataset import PromptTooLongError
from utils.image_io import ImageReadError, read_image
from utils.logs import setup_logging

logger = logging.getLogger("test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default=None,
                        help="an exported folder (merge script output), or with --weight the "
                             "base llava-hf folder used in training")
    parser.add_argument("--weight", default=None,
                        help="zero_to_fp32.py output to load over the base --version")
    parser.add_argument("--vision_pretrained", default=None,
                        help="SAM checkpoint: with --weight, or for a folder exported with "
                             "--link_sam (default: as saved)")
    parser.add_argument("--config", default=None,
                        help="folder with grounding_config.json (with --weight; default: found)")
    parser.add_argument("--dataset_dir", default="ln_data/synthcxr")
    parser.add_argument("--test_dataset", default="report",
                        help="annotation set name (<name>_<split>.jsonl); its rows' task "
                             f"({', '.join(TASKS)}) picks the prompt")
    parser.add_argument("--split", default="test")
    parser.add_argument("--image_root", default=None)
    parser.add_argument("--skip_invalid", action="store_true",
                        help="drop invalid rows (counted) instead of failing; an emptied split "
                             "still fails")
    add_image_input_args(parser)
    parser.add_argument("--out", required=True, type=writable_folder,
                        help="output folder (created; checked before anything runs)")
    parser.add_argument("--batch_size", type=positive_int, default=8)
    parser.add_argument("--max_new_tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--model_max_length", type=positive_int, default=DEFAULT_MODEL_MAX_LENGTH)
    parser.add_argument("--max_samples", type=positive_int, default=None,
                        help="first N samples only (default: all)")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vis", type=non_negative_int, default=0, help="save N overlay pictures")
    parser.add_argument("--image_noise_std", default="",
                        help="comma-separated Gaussian noise levels (0..255 pixel units) for the "
                             "robustness table, e.g. 0,10,25")
    parser.add_argument("--baseline", choices=["phrase_prior"], default=None,
                        help="score the image-free phrase-prior baseline instead of a model")
    parser.add_argument("--baseline_k", type=positive_int, default=5)
    add_embedding_cache_args(parser, "memory only")
    args = parser.parse_args(argv)
    if args.baseline is None and args.version is None:
        parser.error("--version is required (unless --baseline)")
    try:
        args.noise_levels = [float(v) for v in args.image_noise_std.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--image_noise_std {args.image_noise_std!r}: give comma-separated numbers")
    if not all(0 <= level < float("inf") for level in args.noise_levels):
        parser.error(f"--image_noise_std {args.image_noise_std}: each level must be finite and "
                     ">= 0")
    return args


def load_split(args: argparse.Namespace, split: str) -> list[Sample]:
    """The split's samples; an empty or emptied split, or one without findings, is an error."""
    try:
        path = annotation_file(Path(args.dataset_dir), args.test_dataset, split)
        samples = load_annotations(path, args.image_root or args.dataset_dir, args.skip_invalid,
                                   allow_outside_root=args.allow_outside_root,
                                   max_image_pixels=args.max_image_pixels,
                                   fix_declared_size=args.fix_declared_size)
    except AnnotationError as error:
        raise SystemExit(str(error))
    if not any(s.findings for s in samples):
        raise SystemExit(f"{path}: its {len(samples)} sample(s) have no finding to ground; "
                         "there is nothing to score (no metrics written)")
    return samples[: args.max_samples]


def load_model(args: argparse.Namespace):
    from model.build import load_trained
    from model.grounding_model import UMedGround

    dtype = PRECISIONS[args.precision]
    if args.weight:
        model, processor = load_trained(args.version, Path(args.weight), args.vision_pretrained,
                                        args.config)
        model.to(device=args.device, dtype=dtype).eval().requires_grad_(False)
        return model, processor
    return UMedGround.from_pretrained(args.version, args.device, dtype,
                                      vision_pretrained=args.vision_pretrained)


def write_outputs(out: Path, metrics: dict[str, Any], records: list[dict[str, Any]]) -> None:
    from utils.evaluation.plots import plot_iou_vs_uncertainty, plot_risk_coverage

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    scored = [r for r in records if r.get("given_phrase", r).get("u") is not None]
    if scored:
        u = [r.get("given_phrase", r)["u"] for r in scored]
        iou = [r.get("given_phrase", r)["iou"] for r in scored]
        plot_risk_coverage(u, iou, out / "risk_coverage.png")
        plot_iou_vs_uncertainty(u, iou, out / "iou_vs_u.png")


def overlay_name(sample_id: str, taken: set[str]) -> str:
    """A flat, unused file name for a sample id (COCO ids hold subfolders: ``tb/tb0005`` →
    ``tb_tb0005.png``; a second id that flattens the same gets ``-2``, …)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("._") or "sample"
    name, number = f"{stem}.png", 1
    while name in taken:
        number += 1
        name = f"{stem}-{number}.png"
    taken.add(name)
    return name


def save_overlays(out: Path, records: list[dict[str, Any]], count: int,
                  window: str = "full") -> None:
    """Overlays of the first ``count`` images: GT, mean box, hypotheses, phrase, u and IoU
    (given the phrase; every box of a phrase with several)."""
    from utils.visualize import draw_grounding

    by_image: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_image.setdefault(record["image"], []).append(record)
    (out / "vis").mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for image_path, items in list(by_image.items())[:count]:
        findings = [{"phrase": r["phrase"], "gt_boxes": r["gt_boxes"],
                     "box": r["given_phrase"]["box"], "hypotheses": r["given_phrase"]["hypotheses"],
                     "boxes": r["given_phrase"].get("boxes"),
                     "u": r["given_phrase"]["u"], "iou": r["given_phrase"]["iou"]} for r in items]
        picture = draw_grounding(read_image(image_path, window=window), findings)
        picture.save(out / "vis" / overlay_name(items[0]["id"], taken))


def run_baseline(args: argparse.Namespace, samples: list[Sample]) -> tuple[dict, list]:
    from utils.baseline import PhrasePriorBaseline
    from utils.evaluate import baseline_metrics

    try:
        annotation_file(Path(args.dataset_dir), args.test_dataset, "train")
    except AnnotationError as error:
        raise SystemExit(f"--baseline phrase_prior is fitted on the train split's findings, and "
                         f"this dataset has no train split: {error.problems[0]}\n"
                         "Give a --dataset_dir / --test_dataset with a train split.")
    train = load_split(argparse.Namespace(**{**vars(args), "max_samples": None}), "train")
    baseline = PhrasePriorBaseline(k=args.baseline_k).fit(
        [(f.phrase, f.target_box()) for s in train for f in s.findings])
    return baseline_metrics(baseline, samples, args.test_dataset, args.split)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    from utils.evaluation.report import format_metrics_table, format_noise_table

    samples = load_split(args, args.split)
    out = args.out
    started = time.time()
    if args.baseline:
        metrics, records = run_baseline(args, samples)
        metrics["seconds"] = time.time() - started
        write_outputs(out, metrics, records)
        logger.info("\n%s", format_metrics_table(metrics))
        return
    from utils.evaluate import build_eval_dataset, evaluate_model

    try:
        model, processor = load_model(args)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot load the model: {error}")
    logger.info(attach_embedding_cache(model, args, None))
    try:
        dataset = build_eval_dataset(model, processor, samples, args.model_max_length,
                                     f"{args.test_dataset}_{args.split}",
                                     image_window=args.image_window,
                                     max_image_pixels=args.max_image_pixels)
        result = evaluate_model(model, processor, dataset, args.batch_size, args.max_new_tokens,
                                args.test_dataset, args.split)
    except (PromptTooLongError, ImageReadError) as error:
        raise SystemExit(f"{error}\nno metrics written")
    write_outputs(out, result.metrics, result.records)
    logger.info("\n%s", format_metrics_table(result.metrics))
    if args.vis:
        save_overlays(out, result.records, args.vis, args.image_window)
    if args.noise_levels:
        rows = []
        for level in args.noise_levels:
            dataset.image_noise_std = level
            rows.append(evaluate_model(model, processor, dataset, args.batch_size,
                                       args.max_new_tokens, args.test_dataset, args.split).metrics)
        (out / "noise.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        logger.info("\n%s", format_noise_table(rows))


if __name__ == "__main__":
    sys.exit(main())
