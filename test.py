"""Evaluate a uMedGround model on a split, honestly.

    python test.py --version runs/demo/hf --dataset_dir ln_data/synthcxr --split test \
        --out runs/demo/eval [--vis 8] [--image_noise_std 0,10,25]
    python test.py --version pretrained/tiny/llava --weight runs/demo/fp32 …   # base + weights
    python test.py --baseline phrase_prior --dataset_dir ln_data/synthcxr --out runs/prior
    python test.py --version runs/demo/hf --dataset_dir ln_data/synthcxr --split val \
        --calibrate [--alpha 0.1] [--target_risk 0.2] --out runs/demo/calibration

Writes ``OUT/metrics.json`` (end-to-end ``grounding`` from generated text, matched at token F1
>= ``--match_threshold``; ``grounding_strict``, the same with only pairs that name the same
finding and side; and ``grounding_given_phrase`` with the true answer teacher-forced; the
end-to-end and given-phrase paths also per ground-truth box in ``grounding_boxes`` /
``grounding_boxes_given_phrase``), ``OUT/predictions.jsonl`` (one line per finding, with every
box of its phrase), ``OUT/risk_coverage.png``, ``OUT/iou_vs_u.png``, overlays under
``OUT/vis/`` and, with ``--image_noise_std``, ``OUT/noise.json``; prints a summary table.
``--calibrate`` also fits ``calibration.json`` into the ``--version`` folder on this split
(conformal box margins and a selective u-threshold, :mod:`utils.evaluation.calibration`); it
refuses the test split unless ``--allow_test_calibration``. A calibrated model's metrics gain
the ``calibration`` block and its predictions an ``inflated_box`` and an ``abstain`` flag (of
the phrase's box: with several boxes per phrase, the one enclosing them).
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

from model.calibration import RISK_CONTROLS
from model.constants import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL_MAX_LENGTH, TASKS
from utils.annotations import AnnotationError, Sample, annotation_file, load_annotations
from utils.cli import (
    PRECISIONS,
    add_decoding_arg,
    add_embedding_cache_args,
    add_image_input_args,
    add_test_time_shift_arg,
    add_uncertainty_override_arg,
    attach_embedding_cache,
    non_negative_int,
    open_unit_float,
    positive_int,
    set_test_time_shift,
    set_uncertainty_signal,
    unit_float,
    writable_folder,
)
from utils.dataset import PromptTooLongError
from utils.evaluation.matching import DEFAULT_MATCH_THRESHOLD
from utils.image_io import ImageReadError, read_image
from utils.logs import setup_logging

logger = logging.getLogger("test")


# Flags that act on a model's evaluation only: --baseline refuses them rather than ignore them.
MODEL_ONLY_FLAGS = ("version", "weight", "vision_pretrained", "config", "vis", "image_noise_std",
                    "match_threshold", "decoding", "phrase_start_ratio", "test_time_shift",
                    "max_new_tokens",
                    "precision", "embedding_cache", "no_embedding_cache",
                    "embedding_cache_memory_mb")


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
    parser.add_argument("--match_threshold", type=unit_float,
                        default=DEFAULT_MATCH_THRESHOLD,
                        help="token F1 a generated phrase needs to take a finding's box end to "
                             "end; grounding_strict keeps, of the pairs matched so, those that "
                             "pass the strict rule (token F1 >= 0.8, the same finding and side "
                             "words)")
    add_decoding_arg(parser)
    add_test_time_shift_arg(parser)
    parser.add_argument("--baseline", choices=["phrase_prior"], default=None,
                        help="score the image-free phrase-prior baseline instead of a model")
    parser.add_argument("--baseline_k", type=positive_int, default=5)
    add_uncertainty_override_arg(parser)
    calibration = parser.add_argument_group("calibration (fit on a validation split)")
    calibration.add_argument("--calibrate", action="store_true",
                             help="fit calibration.json into the --version folder from this "
                                  "split: conformal box margins and a selective u-threshold")
    calibration.add_argument("--alpha", type=open_unit_float, default=None,
                             help="miscoverage of the inflated boxes (default 0.1)")
    calibration.add_argument("--target_risk", type=open_unit_float, default=None,
                             help="the selective risk (IoU < 0.5 among accepted boxes) to "
                                  "guarantee (default 0.2)")
    calibration.add_argument("--delta", type=open_unit_float, default=None,
                             help="the allowed probability that the risk guarantee fails "
                                  "(default 0.1)")
    calibration.add_argument("--risk_control", choices=RISK_CONTROLS, default=None,
                             help="Learn-then-Test procedure for the threshold: fixed_sequence "
                                  "(default; assumes failures do not get rarer as u grows) or "
                                  "bonferroni (no assumption, more conservative)")
    calibration.add_argument("--allow_test_calibration", action="store_true",
                             help="let --calibrate fit on --split test (it then scores the model "
                                  "on the data that set its margins)")
    add_embedding_cache_args(parser, "memory only")
    args = parser.parse_args(argv)
    check_calibration_args(parser, args)
    if args.baseline is None and args.version is None:
        parser.error("--version is required (unless --baseline)")
    if args.baseline and args.uncertainty:
        parser.error("--uncertainty picks a model's u; the baseline's u is its neighbours' spread")
    if args.baseline:
        given = [name for name in MODEL_ONLY_FLAGS
                 if getattr(args, name) != parser.get_default(name)]
        if given:
            parser.error(f"--baseline scores the image-free phrase prior, given each finding's "
                         f"phrase; {', '.join('--' + name for name in given)} "
                         f"{'applies' if len(given) == 1 else 'apply'} to a model only")
    try:
        args.noise_levels = [float(v) for v in args.image_noise_std.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--image_noise_std {args.image_noise_std!r}: give comma-separated numbers")
    if not all(0 <= level < float("inf") for level in args.noise_levels):
        parser.error(f"--image_noise_std {args.image_noise_std}: each level must be finite and "
                     ">= 0")
    return args


def check_calibration_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse calibration on the test split (unless allowed), of a baseline or of base +
    weights, and calibration settings without ``--calibrate``; fill in their defaults."""
    settings = {"alpha": 0.1, "target_risk": 0.2, "delta": 0.1, "risk_control": RISK_CONTROLS[0]}
    if not args.calibrate:
        given = [f"--{name}" for name in settings if getattr(args, name) is not None]
        if given or args.allow_test_calibration:
            parser.error(f"{' '.join(given) or '--allow_test_calibration'} only apply with "
                         "--calibrate")
        return
    if args.split == "test" and not args.allow_test_calibration:
        parser.error("--calibrate fits the margins and the threshold on the split it reads; "
                     "fitting them on the test split would score the model on the data that set "
                     "them. Calibrate on --split val (then run test.py on the test split), or "
                     "pass --allow_test_calibration to do it anyway")
    if args.baseline or args.weight:
        parser.error("--calibrate writes calibration.json into an exported folder: give "
                     "--version EXPORTED (no --weight, no --baseline)")
    for name, default in settings.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


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
                     "u": r["given_phrase"]["u"], "iou": r["given_phrase"]["iou"],
                     "inflated_box": r["given_phrase"].get("inflated_box"),
                     "abstain": r["given_phrase"].get("abstain")} for r in items]
        picture = draw_grounding(read_image(image_path, window=window), findings)
        picture.save(out / "vis" / overlay_name(items[0]["id"], taken))


def run_baseline(args: argparse.Namespace, samples: list[Sample]) -> tuple[dict, list]:
    from utils.baseline import build_phrase_prior
    from utils.evaluate import baseline_metrics

    try:
        annotation_file(Path(args.dataset_dir), args.test_dataset, "train")
    except AnnotationError as error:
        raise SystemExit(f"--baseline phrase_prior is fitted on the train split's findings, and "
                         f"this dataset has no train split: {error.problems[0]}\n"
                         "Give a --dataset_dir / --test_dataset with a train split.")
    train = load_split(argparse.Namespace(**{**vars(args), "max_samples": None}), "train")
    baseline = build_phrase_prior([(f.phrase, f.target_box()) for s in train for f in s.findings],
                                  k=args.baseline_k)
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
        set_uncertainty_signal(model, args.uncertainty)
        if args.calibrate:
            model.calibration = None  # the calibration being fitted replaces any earlier one
        set_test_time_shift(model, args.test_time_shift)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot load the model: {error}")
    logger.info(attach_embedding_cache(model, args, None))
    try:
        dataset = build_eval_dataset(model, processor, samples, args.model_max_length,
                                     f"{args.test_dataset}_{args.split}",
                                     image_window=args.image_window,
                                     max_image_pixels=args.max_image_pixels)
        result = evaluate_model(model, processor, dataset, args.batch_size, args.max_new_tokens,
                                args.test_dataset, args.split,
                                match_threshold=args.match_threshold, decoding=args.decoding,
                                phrase_start_ratio=args.phrase_start_ratio)
    except (PromptTooLongError, ImageReadError) as error:
        raise SystemExit(f"{error}\nno metrics written")
    outside = result.metrics["n_phrases_outside_text"]
    if outside and args.decoding == "spans":
        logger.warning("%d of the %d findings are report phrases that are not spans of their "
                       "report; span decoding cannot write them word for word: compare with "
                       "--decoding free", outside, result.metrics["n_findings"])
    if args.calibrate:
        calibrate(model, args, result)
    write_outputs(out, result.metrics, result.records)
    logger.info("\n%s", format_metrics_table(result.metrics))
    if args.vis:
        save_overlays(out, result.records, args.vis, args.image_window)
    if args.noise_levels:
        rows = []
        for level in args.noise_levels:
            dataset.image_noise_std = level
            rows.append(evaluate_model(model, processor, dataset, args.batch_size,
                                       args.max_new_tokens, args.test_dataset, args.split,
                                       match_threshold=args.match_threshold,
                                       decoding=args.decoding,
                                       phrase_start_ratio=args.phrase_start_ratio).metrics)
        (out / "noise.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        logger.info("\n%s", format_noise_table(rows))


def calibrate(model: Any, args: argparse.Namespace, result: Any) -> None:
    """Fit the calibration on this split's records, write ``calibration.json`` into the model
    folder and add the (in-sample) ``calibration`` block to ``result``."""
    from utils.evaluation.calibration import apply_calibration, fit_calibration

    try:
        calibration = fit_calibration(result.records, args.alpha, args.target_risk, args.delta,
                                      model.config.uncertainty, args.test_dataset, args.split,
                                      args.risk_control, model.test_time_shift)
    except ValueError as error:
        raise SystemExit(f"cannot calibrate: {error}")
    path = calibration.save(args.version)
    model.calibration = calibration
    result.metrics["calibration"] = apply_calibration(result.records, calibration)
    threshold = ("accepts every box" if calibration.threshold is None else
                 f"u < {calibration.threshold:.4g}" if calibration.threshold > 0 else
                 "abstains on every box (no coverage level certified)")
    logger.info("wrote %s: %d findings of %s/%s; box margins %.3g x the hypotheses' std (alpha "
                "%g); selective threshold on %s %s (target risk %g, delta %g, %s)", path,
                calibration.n_findings, args.test_dataset, args.split, calibration.quantile,
                calibration.alpha, calibration.signal, threshold, calibration.target_risk,
                calibration.delta, calibration.risk_control)


if __name__ == "__main__":
    sys.exit(main())
