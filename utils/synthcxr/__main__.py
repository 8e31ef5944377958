"""SynthCXR command line: ``python -m utils.synthcxr --out ln_data/synthcxr --seed 0``."""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from utils.logs import setup_logging
from utils.synthcxr.generate import CALIBRATION_SPLIT, generate
from utils.synthcxr.pretrain import PRETRAIN_DIR, generate_pretraining

logger = logging.getLogger("synthcxr")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m utils.synthcxr",
        description="Generate SynthCXR: chest-radiograph-like images, template reports with "
                    "findings, negations and normal statements, phrase spans and lesion boxes, "
                    "plus VQA and class rows and the reference code's .pth files, and a "
                    "pretraining set with masks of patients of its own. Deterministic from "
                    "--seed; patient-disjoint splits.")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed (>= 0); one seed gives "
                        "byte-identical files")
    parser.add_argument("--n_train", type=int, default=2400, help="training images")
    parser.add_argument("--n_val", type=int, default=150, help="validation images")
    parser.add_argument("--n_test", type=int, default=200, help="test images")
    parser.add_argument("--n_calibration", type=int, default=500,
                        help="images of the calibration split (patients after test's; for "
                             "test.py --calibrate); 0 writes none")
    parser.add_argument("--n_pretrain", type=int, default=600,
                        help=f"studies of the pretraining set (<out>/{PRETRAIN_DIR}/, with masks; "
                             "patients of its own); 0 writes none")
    parser.add_argument("--pretrain_seed", type=int, default=None,
                        help="seed of the pretraining set (default: --seed + 1)")
    parser.add_argument("--image_size", type=int, default=256, help="image side in pixels (>= 256)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes rendering images (the files do not depend on it)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.image_size < 256:
        parser.error(f"--image_size must be at least 256, got {args.image_size}")
    if min(args.n_train, args.n_val, args.n_test) < 1:
        parser.error("--n_train, --n_val and --n_test must each be at least 1")
    if args.n_calibration < 0:
        parser.error(f"--n_calibration must be >= 0, got {args.n_calibration}")
    if args.n_pretrain < 0:
        parser.error(f"--n_pretrain must be >= 0, got {args.n_pretrain}")
    pretrain_seed = args.seed + 1 if args.pretrain_seed is None else args.pretrain_seed
    if pretrain_seed < 0:
        parser.error(f"--pretrain_seed must be >= 0, got {pretrain_seed}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    setup_logging()
    started = time.time()
    counts = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    if args.n_calibration:
        counts[CALIBRATION_SPLIT] = args.n_calibration
    meta = generate(args.out, args.seed, counts, args.image_size, args.workers)
    logger.info("wrote %d images to %s in %.1f s", sum(meta["counts"].values()), args.out,
                time.time() - started)
    logger.info("findings with several boxes under one phrase: %s",
                ", ".join(f"{split} {meta['findings_with_several_boxes'][split]} of "
                          f"{meta['findings'][split]}" for split in meta["counts"]))
    if args.n_pretrain:
        started_pretrain = time.time()
        pretrain = generate_pretraining(args.out, pretrain_seed, args.n_pretrain,
                                        args.image_size, args.workers)
        logger.info("wrote %d pretraining images of %d patients (seed %d) with masks to %s "
                    "in %.1f s", pretrain["count"], pretrain["patients"], pretrain_seed,
                    args.out / PRETRAIN_DIR, time.time() - started_pretrain)
    by_type = ", ".join(f"{kind} {rate:.2f}"
                        for kind, rate in meta["label_prior_acc@0.5_by_type"].items())
    logger.info("label prior (the mean training box of each finding type, side and zone) "
                "acc@0.5 on test = %.3f (%s)", meta["label_prior_acc@0.5"], by_type)


if __name__ == "__main__":
    main()
