"""Overlay pictures: ground truth, mean box, hypotheses, phrase, u and IoU on the radiograph.

Line widths and text scale with the image, so one call reads well on a 256-px SynthCXR image
and on a 3000-px radiograph. Captions go in a band below the image, one line per finding,
coloured like its boxes.
"""
from __future__ import annotations

import textwrap
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GT_COLOUR = (40, 220, 80)
PALETTE = ((255, 60, 60), (60, 160, 255), (255, 200, 40), (220, 90, 255), (255, 140, 60))


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], colour, width: int,
                      dash: int) -> None:
    x0, y0, x1, y1 = box
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)),
                               ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay), 1.0)
        steps = int(length // (2 * dash)) + 1
        for i in range(steps):
            t0, t1 = (2 * i * dash) / length, min((2 * i + 1) * dash / length, 1.0)
            if t0 >= 1:
                break
            draw.line([(ax + (bx - ax) * t0, ay + (by - ay) * t0),
                       (ax + (bx - ax) * t1, ay + (by - ay) * t1)], fill=colour, width=width)


def draw_grounding(image: Image.Image | np.ndarray, findings: list[dict[str, Any]]) -> Image.Image:
    """An RGB picture of ``image`` with each finding drawn.

    Arguments:
      image: grayscale or RGB, PIL or array (H, W[, 3]).
      findings: dicts with ``phrase``, ``gt_boxes`` (pixel xyxy list), ``box`` (pixel xyxy or
        None), ``hypotheses`` (list of pixel xyxy, may be None), ``u`` and ``iou`` (or None).
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    picture = image.convert("RGB")
    width, height = picture.size
    scale = max(width, height) / 512
    line = max(1, round(2 * scale))
    font = ImageFont.load_default(size=max(10, round(14 * scale)))
    draw = ImageDraw.Draw(picture)
    captions = []
    for index, finding in enumerate(findings):
        colour = PALETTE[index % len(PALETTE)]
        for box in finding.get("gt_boxes") or []:
            draw.rectangle(box, outline=GT_COLOUR, width=line)
        for box in finding.get("hypotheses") or []:
            _dashed_rectangle(draw, box, colour, max(1, line // 2), dash=max(3, round(5 * scale)))
        if finding.get("box") is not None:
            draw.rectangle(finding["box"], outline=colour, width=line * 2)
            draw.text((finding["box"][0] + 2 * line, finding["box"][1] + line), str(index + 1),
                      fill=colour, font=font)
        u = "n/a" if finding.get("u") is None else f"{finding['u']:.1e}"
        iou = "n/a" if finding.get("iou") is None else f"{finding['iou']:.2f}"
        captions.append((f"{index + 1}. {finding['phrase']}  (u {u}, IoU {iou})", colour))
    captions.append(("green: ground truth, thick: mean box, dashed: hypotheses", GT_COLOUR))
    characters = max(16, int(width / (font.getlength("m") * 0.9)))
    captions = [(piece, colour) for text, colour in captions
                for piece in textwrap.wrap(text, characters, subsequent_indent="   ")]
    line_height = round(font.size * 1.35)
    band = Image.new("RGB", (width, line_height * len(captions) + line_height // 2), (0, 0, 0))
    band_draw = ImageDraw.Draw(band)
    for row, (text, colour) in enumerate(captions):
        band_draw.text((line_height // 3, line_height // 4 + row * line_height), text,
                       fill=colour, font=font)
    canvas = Image.new("RGB", (width, height + band.height))
    canvas.paste(picture, (0, 0))
    canvas.paste(band, (0, height))
    return canvas
