"""Ground one radiograph and its report with an exported uMedGround model (LISA's ``chat.py``).

    python chat.py --version runs/demo/hf --image x.png --report "Small left pleural effusion."
    python chat.py --version runs/demo/hf --image x.dcm --report_file x.txt --out vis_output
    python chat.py --version runs/demo/hf --image x.png --question "Is there an effusion?" \
        --answer "Yes, on the left."                                          # the VQA task
    python chat.py --version runs/demo/hf --image x.png --label "pleural effusion"  # class task
    python chat.py --version runs/demo/hf [--task vqa]                        # interactive

Writes ``OUT/<image stem>.json`` (each phrase with its mean box in pixels of the input image,
xyxy, the N hypotheses, the per-coordinate variance and u, and each of its boxes when the model
gives several per phrase; schema in the README) and
``OUT/<image stem>.png`` (the overlay), and prints the phrases with their boxes. A model folder
with ``calibration.json`` (``test.py --calibrate``) adds each phrase's calibrated box, drawn
dotted, and flags the phrases it abstains on. Images:
PNG/JPEG (8- or 16-bit, RGB or grayscale, any size) and DICOM (see ``utils/image_io.py``).
Without ``--image`` it asks for an image path and the text of ``--task`` (a report by default),
again and again (an empty image path or end of input stops it).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from model.constants import TASKS
from model.grounding_model import UMedGround
from utils.cli import (
    PRECISIONS,
    add_inference_args,
    quantization_of,
    set_test_time_shift,
    set_uncertainty_signal,
)
from utils.image_io import read_image
from utils.inference import Grounder, overlay, task_inputs
from utils.text_io import lone_surrogate

logger = logging.getLogger("chat")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True,
                        help="an exported folder (merge_lora_weights_and_save_hf_model.py output)")
    parser.add_argument("--image", default=None, help="PNG/JPEG/DICOM file; omit for the "
                                                      "interactive mode")
    text = parser.add_argument_group("the text (one task)")
    text.add_argument("--report", default=None, help="the report (report task)")
    text.add_argument("--report_file", default=None, help="a UTF-8 text file with the report")
    text.add_argument("--question", default=None, help="the question (VQA task, with --answer)")
    text.add_argument("--answer", default=None, help="its answer (VQA task)")
    text.add_argument("--label", default=None, help="a finding class (class task)")
    text.add_argument("--task", choices=TASKS, default=None,
                      help="the task the interactive mode asks for (default report); with "
                           "--image the text flags name it")
    parser.add_argument("--out", "--vis_save_path", dest="out", default="vis_output",
                        help="folder for <stem>.json and <stem>.png")
    add_inference_args(parser)
    args = parser.parse_args(argv)
    tasks = [name for name, given in (("report", args.report is not None or args.report_file),
                                      ("vqa", args.question is not None or args.answer is not None),
                                      ("class", args.label is not None)) if given]
    if len(tasks) > 1:
        parser.error(f"give the text of one task only, not {' and '.join(tasks)}")
    if args.report is not None and args.report_file:
        parser.error("give --report or --report_file, not both")
    for name in ("report", "question", "answer", "label"):
        if lone_surrogate(getattr(args, name) or ""):  # how Python keeps non-UTF-8 argv bytes
            parser.error(f"--{name} holds bytes that are not UTF-8 (the terminal's encoding?); "
                         "pass UTF-8 text, or put the text in a UTF-8 file (--report_file)")
    if args.image is None:
        if tasks:
            parser.error("without --image chat.py asks for each image and its text; pick the "
                         "task it asks for with --task, or give --image with the text")
        args.task = args.task or "report"
    elif not tasks:
        parser.error("--image needs its text: --report/--report_file, --question and --answer, "
                     "or --label")
    elif args.task not in (None, tasks[0]):
        parser.error(f"--task {args.task} does not match the {tasks[0]} text given")
    else:
        args.task = tasks[0]
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file; give a folder for <stem>.json and <stem>.png")
    args.quantization = quantization_of(args)
    return args


def read_report_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--report_file {path}: cannot be read as UTF-8 text ({error})") from None


def load_grounder(args: argparse.Namespace) -> Grounder:
    """The model of ``--version`` wrapped for single images; errors become one message."""
    try:
        model, processor = UMedGround.from_pretrained(
            args.version, args.device, PRECISIONS[args.precision], args.quantization,
            args.vision_pretrained)
        set_uncertainty_signal(model, args.uncertainty)
        set_test_time_shift(model, args.test_time_shift)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot load the model: {error}")
    return Grounder(model, processor, args.model_max_length, args.max_new_tokens,
                    args.decoding, args.phrase_start_ratio)


def read_input(args: argparse.Namespace, image_path: str):
    return read_image(image_path, window=args.image_window, max_pixels=args.max_image_pixels)


def ground_file(grounder: Grounder, args: argparse.Namespace, image_path: str, image,
                texts: dict[str, str], out: Path) -> dict:
    """Ground one image, write ``<stem>.json`` and ``<stem>.png`` and print the phrases.

    ``image`` is the file read by :func:`read_input` (uint8 RGB, H x W x 3).
    """
    result = grounder.ground(image, args.task, **texts)
    document = result.to_json(str(image_path))
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(image_path).stem
    (out / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    overlay(image, result).save(out / f"{stem}.png")
    print(f"{image_path} ({result.width}x{result.height}): {len(result.phrases)} phrase(s)")
    for number, phrase in enumerate(result.phrases, start=1):
        box = ", ".join(f"{v:.1f}" for v in phrase.box)
        print(f"  {number}. {phrase.phrase}: box [{box}] u {phrase.u:.3g}")
        if phrase.inflated_box is not None:
            inflated = ", ".join(f"{v:.1f}" for v in phrase.inflated_box)
            coverage = 1 - result.calibration["alpha"]
            print(f"     {coverage:.0%} box [{inflated}]"
                  + ("; ABSTAIN: u is not below the calibrated threshold, check this finding"
                     if phrase.abstain else ""))
        if len(phrase.boxes) > 1:  # several boxes: the box above encloses them
            for part, each in enumerate(phrase.boxes, start=1):
                values = ", ".join(f"{v:.1f}" for v in each.box)
                print(f"     {number}.{part} box [{values}] u {each.u:.3g} "
                      f"presence {each.presence:.2f}")
    if not result.phrases:
        print(f"  no [BOX] in the answer: {result.generated_text!r}")
    print(f"  wrote {out / stem}.json and .png")
    return document


def interactive(grounder: Grounder, args: argparse.Namespace, out: Path) -> None:
    """LISA's loop: ask for an image path and its text, ground, repeat."""
    prompts = {"report": ("report",), "vqa": ("question", "answer"), "class": ("label",)}
    while True:
        try:
            image_path = input("Please input the image path (empty to quit): ").strip()
            if not image_path:
                return
            texts = {name: input(f"Please input the {name}: ") for name in prompts[args.task]}
        except EOFError:
            return
        try:
            ground_file(grounder, args, image_path, read_input(args, image_path),
                        task_inputs(args.task, **texts), out)
        except ValueError as error:  # ImageReadError is a ValueError
            print(f"error: {error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s %(message)s")
    args = parse_args(argv)
    out = Path(args.out)
    if args.image is None:
        interactive(load_grounder(args), args, out)
        return
    try:  # the input is checked before the model is loaded
        image = read_input(args, args.image)
        report = read_report_file(args.report_file) if args.report_file else args.report
        texts = task_inputs(args.task, report or "", args.question or "", args.answer or "",
                            args.label or "")
    except ValueError as error:  # ImageReadError is a ValueError
        raise SystemExit(f"error: {error}")
    grounder = load_grounder(args)
    try:
        ground_file(grounder, args, args.image, image, texts, out)
    except ValueError as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    sys.exit(main())
