"""SynthCXR command line: ``python -m utils.synthcxr --out ln_data/synthcxr --seed 0``."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from utils.synthcxr.generate import generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m utils.synthcxr",
        description="Generate SynthCXR: chest-radiograph-like images, template reports with "
                    "findings, negations and normal statements, phrase spans and lesion boxes. "
                    "Deterministic from --seed; patient-disjoint splits.")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_train", type=int, default=2400)
    parser.add_argument("--n_val", type=int, default=150)
    parser.add_argument("--n_test", type=int, default=200)
    parser.add_argument("--image_size", type=int, default=256, help="side in pixels (>= 256)")
    args = parser.parse_args(argv)
    if args.image_size < 256:
        parser.error("--image_size must be at least 256")
    if min(args.n_train, args.n_val, args.n_test) < 1:
        parser.error("every split needs at least one image")
    started = time.time()
    meta = generate(args.out, args.seed, {"train": args.n_train, "val": args.n_val,
                                          "test": args.n_test}, args.image_size)
    print(f"[synthcxr] wrote {sum(meta['counts'].values())} images to {args.out} in "
          f"{time.time() - started:.1f} s; phrase-prior acc@0.5 on test = "
          f"{meta['phrase_prior_acc@0.5']:.3f}")


if __name__ == "__main__":
    main()
