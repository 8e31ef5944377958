"""Merge a consolidated training checkpoint into an exported uMedGround folder.

    python -m training.consolidate runs/exp/ckpt runs/exp/fp32 --tag best
    python merge_lora_weights_and_save_hf_model.py --version pretrained/llava-1.5-7b-hf \
        --vision_pretrained pretrained/sam_vit_h_4b8939.pth \
        --weight runs/exp/fp32 --save_path runs/exp/hf

``--weight`` is what ``training.consolidate`` (or DeepSpeed's ``zero_to_fp32.py``) wrote (a
folder, or one ``.bin``/``.safetensors`` file; a ``.bin`` is read weights-only). The model and
head configuration is read from ``grounding_config.json`` saved beside
the checkpoint (``--config``, found automatically next to ``--weight`` or in the run folder).
The output (``UMedGround.save_pretrained``) is a llava-hf folder with every LoRA adapter
merged (language model and SAM alike) and ``[BOX]`` in the tokenizer; its ``config.json``
carries the grounding config as the ``grounding_config`` sub-config, and
``grounding.safetensors`` holds the phrase query, the box decoder and the SAM encoder, so the
folder loads wherever it is copied. ``--link_sam`` (a frozen SAM only) leaves the encoder out
and records the absolute path of ``--vision_pretrained`` instead: a lighter folder that needs
that file. ``test.py``, ``chat.py`` and ``app.py`` take ``--version OUT``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model.build import load_trained
from model.config import CONFIG_NAME
from utils.cli import PRECISIONS
from utils.logs import setup_logging

logger = logging.getLogger("merge")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True,
                        help="the base llava-hf folder used in training")
    parser.add_argument("--vision_pretrained", default=None,
                        help="the SAM/MedSAM checkpoint used in training (default: as saved)")
    parser.add_argument("--weight", required=True,
                        help="python -m training.consolidate output (a folder or one file)")
    parser.add_argument("--save_path", required=True, help="output folder")
    parser.add_argument("--config", default=None, help=f"folder holding {CONFIG_NAME}")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                        help="dtype of the saved model")
    parser.add_argument("--link_sam", action="store_true",
                        help="do not copy the (frozen) SAM encoder into the folder; record the "
                             "absolute path of the SAM checkpoint instead")
    args = parser.parse_args(argv)
    setup_logging()

    try:
        model, processor = load_trained(args.version, Path(args.weight), args.vision_pretrained,
                                        args.config)
        model.to(PRECISIONS[args.precision])
        out = model.save_pretrained(args.save_path, processor, link_sam=args.link_sam)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot merge: {error}")
    logger.info("wrote %s", out)


if __name__ == "__main__":
    sys.exit(main())
