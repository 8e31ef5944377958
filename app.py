"""A Gradio web demo of an exported uMedGround model (LISA's ``app.py``).

    python app.py --version runs/demo/hf [--port 7860] [--host 127.0.0.1] [--share]

Upload a radiograph (PNG, JPEG or DICOM), paste its report and press "Ground": the page shows
the overlay (mean boxes thick, hypotheses dashed), a table of the phrases with their u and
boxes, and the JSON that ``chat.py`` writes. A model folder with ``calibration.json`` adds the
calibrated boxes (dotted) and the abstentions to the overlay, the table and the JSON. The
slider hides the boxes whose u is above it. Examples are the first reports of the SynthCXR test
split (``--examples_dir``). The page is served on 127.0.0.1 unless ``--host`` says otherwise;
``--share`` (a public Gradio link) is off unless asked for. Gradio's analytics are switched off
and the page loads no web font, so it runs without the internet. Needs ``pip install -r
requirements-app.txt`` (``make app``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no phoning home

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from model.grounding_model import UMedGround  # noqa: E402
from utils.annotations import AnnotationError, annotation_file, load_annotations  # noqa: E402
from utils.cli import (  # noqa: E402
    PRECISIONS,
    add_inference_args,
    quantization_of,
    set_test_time_shift,
    set_uncertainty_signal,
)
from utils.image_io import DEFAULT_MAX_PIXELS, read_image  # noqa: E402
from utils.inference import Grounder, GroundingResult, overlay, shown  # noqa: E402

logger = logging.getLogger("app")

TITLE = "uMedGround: ground a radiology report in its X-ray"
DESCRIPTION = ("Upload a chest X-ray (PNG, JPEG or DICOM), paste its report and press **Ground**. "
               "Each phrase the model writes gets a mean box (thick), its hypotheses (dashed) "
               "and an uncertainty u (higher = less sure). A research demo, not a medical "
               "device.")
TABLE_HEADERS = ["#", "phrase", "u", "box x0, y0, x1, y1 (px)"]
CALIBRATED_HEADERS = ["calibrated box (px)", "abstain"]
EXAMPLE_COUNT = 3
SLIDER_DEFAULT_MAX = 1.0
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])  # no web font download


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True,
                        help="an exported folder (merge_lora_weights_and_save_hf_model.py output)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on; 0.0.0.0 exposes the page to the network")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true",
                        help="also open a public gradio.live link (off by default)")
    parser.add_argument("--examples_dir", default="ln_data/synthcxr",
                        help="a SynthCXR folder whose test reports become the examples")
    add_inference_args(parser)
    args = parser.parse_args(argv)
    args.quantization = quantization_of(args)
    return args


def load_examples(folder: Path, count: int = EXAMPLE_COUNT) -> list[list[str]]:
    """[image path, report] of the first ``count`` test reports with a finding; [] when the
    folder holds no SynthCXR test split (logged)."""
    try:
        samples = load_annotations(annotation_file(folder, "report", "test"), folder)
    except AnnotationError as error:
        logger.warning("no examples: %s", error)
        return []
    return [[str(s.image_path), s.report] for s in samples if s.findings][:count]


def table_rows(result: GroundingResult) -> list[list[Any]]:
    """One row per phrase; a phrase with several boxes lists each (``; `` between them). A
    calibrated model's rows add the calibrated box (of the phrase's box, with several the one
    enclosing them) and the abstain flag (the columns of ``CALIBRATED_HEADERS``)."""
    rows = []
    for number, p in enumerate(result.phrases, start=1):
        row = [number, p.phrase, round(p.u, 4),
               "; ".join(", ".join(f"{v:.1f}" for v in b.box) for b in p.boxes or [p])]
        if p.inflated_box is not None:
            row += [", ".join(f"{v:.1f}" for v in p.inflated_box), "yes" if p.abstain else "no"]
        rows.append(row)
    return rows


def table_headers(result: GroundingResult) -> list[str]:
    return TABLE_HEADERS + (CALIBRATED_HEADERS if result.calibration is not None else [])


class DemoHandlers:
    """The page's callbacks around one :class:`Grounder` (the queue runs one at a time)."""

    def __init__(self, grounder: Grounder, window: str, max_pixels: int):
        self.grounder = grounder
        self.window = window
        self.max_pixels = max_pixels

    def ground(self, image_file: str | None, report: str) -> tuple[Any, ...]:
        """Read the upload, ground it and fill the overlay, table, JSON, state and slider."""
        if not image_file:
            raise gr.Error("Upload an image first (PNG, JPEG or DICOM).")
        try:
            image = read_image(image_file, window=self.window, max_pixels=self.max_pixels)
            result = self.grounder.ground(image, "report", report=report or "")
        except ValueError as error:  # ImageReadError is a ValueError
            raise gr.Error(str(error)) from None
        top = max([SLIDER_DEFAULT_MAX, *(p.u for p in result.phrases)])
        slider = gr.Slider(minimum=0.0, maximum=top, value=top)
        table = gr.Dataframe(value=table_rows(result), headers=table_headers(result))
        return (overlay(image, result), table, result.to_json(Path(image_file).name),
                (image, result), slider)

    def redraw(self, state: tuple[np.ndarray, GroundingResult] | None, max_u: float) -> Any:
        """The overlay with the boxes above ``max_u`` hidden."""
        if state is None:
            return None
        image, result = state
        logger.info("%d of %d boxes with u <= %.4g", len(shown(result, max_u)),
                    len(result.phrases), max_u)
        return overlay(image, result, max_u)


def build_demo(grounder: Grounder, examples: list[list[str]], window: str = "full",
               max_pixels: int = DEFAULT_MAX_PIXELS) -> gr.Blocks:
    """The page: inputs on the left, the overlay, phrase table and JSON on the right."""
    handlers = DemoHandlers(grounder, window, max_pixels)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{DESCRIPTION}")
        with gr.Row():
            with gr.Column():
                image = gr.File(label="Radiograph (PNG, JPEG or DICOM)", elem_id="image",
                                file_types=["image", ".dcm", ".dicom"])
                report = gr.Textbox(label="Report", lines=6, elem_id="report")
                button = gr.Button("Ground", variant="primary", elem_id="ground")
                max_u = gr.Slider(0.0, SLIDER_DEFAULT_MAX, value=SLIDER_DEFAULT_MAX, step=0.001,
                                  label="Hide boxes whose u is above", elem_id="max_u")
                if examples:
                    gr.Examples(examples, inputs=[image, report], label="SynthCXR examples")
            with gr.Column():
                picture = gr.Image(label="Overlay", type="pil", interactive=False,
                                   elem_id="overlay")
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Phrases", interactive=False,
                                     elem_id="phrases")
                document = gr.JSON(label="JSON (as chat.py writes it)", elem_id="json")
        state = gr.State()
        button.click(handlers.ground, [image, report], [picture, table, document, state, max_u])
        max_u.release(handlers.redraw, [state, max_u], picture)
    return demo


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        model, processor = UMedGround.from_pretrained(
            args.version, args.device, PRECISIONS[args.precision], args.quantization,
            args.vision_pretrained)
        set_uncertainty_signal(model, args.uncertainty)
        set_test_time_shift(model, args.test_time_shift)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot load the model: {error}")
    grounder = Grounder(model, processor, args.model_max_length, args.max_new_tokens,
                        args.decoding, args.phrase_start_ratio)
    examples_dir = Path(args.examples_dir)
    demo = build_demo(grounder, load_examples(examples_dir), args.image_window,
                      args.max_image_pixels)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                        theme=THEME, ssr_mode=False, allowed_paths=[str(examples_dir.resolve())])


if __name__ == "__main__":
    sys.exit(main())
