"""Merge a consolidated training checkpoint into an exported uMedGround folder.

    python runs/exp/ckpt/zero_to_fp32.py runs/exp/ckpt runs/exp/fp32 --tag step_000500
    python merge_lora_weights_and_save_hf_model.py --version pretrained/llava-1.5-7b-hf \
        --vision_pretrained pretrained/sam_vit_h_4b8939.pth \
        --weight runs/exp/fp32 --save_path runs/exp/hf

``--weight`` is what ``zero_to_fp32.py`` wrote (a folder, or one ``.bin``/``.safetensors``
file). The model and head configuration is read from ``grounding_config.json`` saved beside
the checkpoint (``--config``, found automatically next to ``--weight`` or in the run folder).
The output is a llava-hf folder with LoRA merged and ``[BOX]`` in the tokenizer, plus
``grounding.safetensors`` and ``grounding_config.json``; ``test.py --version OUT`` loads it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.build import load_trained, save_exported
from model.config import CONFIG_NAME
from utils.cli import PRECISIONS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True, help="the base llava-hf folder used in training")
    parser.add_argument("--vision_pretrained", default=None,
                        help="the SAM/MedSAM checkpoint used in training (default: as saved)")
    parser.add_argument("--weight", required=True, help="zero_to_fp32.py output")
    parser.add_argument("--save_path", required=True, help="output folder")
    parser.add_argument("--config", default=None, help=f"folder holding {CONFIG_NAME}")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                        help="dtype of the saved model")
    args = parser.parse_args(argv)

    try:
        model, processor = load_trained(args.version, Path(args.weight), args.vision_pretrained,
                                        args.config)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"cannot merge: {error}")
    model.to(PRECISIONS[args.precision])
    out = save_exported(model, processor, args.save_path)
    print(f"[merge] wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
