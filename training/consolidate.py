"""Consolidate a DeepSpeed checkpoint into one fp32 safetensors state dict, safely.

    python -m training.consolidate runs/exp/ckpt runs/exp/fp32 [--tag best|latest|step_000500]

It does what DeepSpeed's ``zero_to_fp32.py`` does (its
``convert_zero_checkpoint_to_fp32_state_dict``), but the tag folder is checked first and every
file is read weights-only (:mod:`training.safe_load`): a file that would run code when
unpickled is refused, naming it. The copy of ``zero_to_fp32.py`` DeepSpeed leaves in the
checkpoint folder unpickles whatever it reads; do not run it on a checkpoint you did not write.
The tag's ``grounding_config.json`` is copied beside the output for the merge script.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from model.config import CONFIG_NAME
from training.checkpoints import (
    BEST,
    LATEST,
    LOAD_ERRORS,
    CheckpointError,
    read_pointer,
    resolve_resume,
)
from training.safe_load import safe_loading
from utils.logs import setup_logging

logger = logging.getLogger("consolidate")


def consolidate(root: Path, out: Path, tag: str = BEST) -> Path:
    """Write ``out`` (safetensors shards + index, and the tag's grounding config) from the
    checkpoint tag ``tag`` under ``root``; ``best`` / ``latest`` name the pointer files.

    Raises:
      CheckpointError: the tag is missing, half-written, truncated or unsafe.
    """
    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict

    if tag in (BEST, LATEST):
        named = read_pointer(root, tag)
        if not named:
            raise CheckpointError(f"{root / tag} is missing or empty; pass --tag step_XXXXXX")
        tag = named
    root, tag = resolve_resume(root / tag, flag="--tag")
    out.mkdir(parents=True, exist_ok=True)
    try:
        with safe_loading():
            convert_zero_checkpoint_to_fp32_state_dict(str(root), str(out), tag=tag,
                                                       safe_serialization=True)
    except LOAD_ERRORS as error:
        raise CheckpointError(f"cannot consolidate {root / tag}: {type(error).__name__}: "
                              f"{error}") from error
    shutil.copyfile(root / tag / CONFIG_NAME, out / CONFIG_NAME)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", type=Path, help="<run>/ckpt")
    parser.add_argument("output_dir", type=Path, help="folder for the consolidated weights")
    parser.add_argument("--tag", default=BEST,
                        help="a tag (step_XXXXXX), or best / latest for the pointer files")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        out = consolidate(args.checkpoint_dir, args.output_dir, args.tag)
    except CheckpointError as error:
        logger.error("%s", error)
        return 2
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
