"""Overlay pictures: ground truth, mean box, hypotheses, phrase, u and IoU on the radiograph.

Colours: ground truth green, the mean box red (thick), the N hypothesis boxes orange (thin,
dashed, semi-transparent), the calibrated (inflated) box, when there is one, cyan and dotted.
A phrase with several boxes has each drawn so, with its hypotheses (the calibrated box is the
phrase's one, around its enclosing box). Each box carries its finding's number; the phrases,
u and IoU (when
the finding has one: not for a new image without ground truth) are written in a caption band
added below the image, with a colour legend. Line widths and text size
scale with the image, so one call reads well on a 256-px SynthCXR image and on a 2500-px
radiograph.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GT_COLOUR = (40, 220, 80)
BOX_COLOUR = (255, 40, 40)
HYPOTHESIS_COLOUR = (255, 165, 0)
HYPOTHESIS_ALPHA = 170
INFLATED_COLOUR = (0, 200, 255)
TEXT_COLOUR = (240, 240, 240)
BAND_COLOUR = (20, 20, 20)
LINE_WIDTH_BASE_PX = 512  # line widths are given for a 512-px image and scaled from there
MIN_FONT_SIZE = 12
LEGEND = (("legend:", TEXT_COLOUR), ("ground truth", GT_COLOUR), ("mean box", BOX_COLOUR),
          ("hypotheses", HYPOTHESIS_COLOUR))
LEGEND_GAP = "   "
INFLATED_LEGEND = ("calibrated box", INFLATED_COLOUR)
DASH = 4  # hypothesis dash and gap lengths, in line widths
DOT = 1  # calibrated-box dot and gap lengths, in line widths


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """An 8-bit RGB copy of a grayscale or RGB image.

    Arguments:
      image: PIL image of any mode, or an array (H, W), (H, W, 1) or (H, W, 3); arrays and
        images that are not 8-bit are rescaled from their min..max to 0..255.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr"):
            return image.convert("RGB")
        image = np.asarray(image)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"draw_grounding needs a grayscale (H, W) or RGB (H, W, 3) image, "
                         f"got an array of shape {array.shape}")
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        low, high = float(array.min()), float(array.max())
        array = ((array - low) / max(high - low, 1e-12) * 255).round().astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _box(values: Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """A drawable pixel xyxy box (corners ordered), or None for a missing or non-finite box."""
    if values is None or not all(math.isfinite(v) for v in values):
        return None
    x0, y0, x1, y1 = (float(v) for v in values)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float],
                      colour, width: int, dash: int = DASH) -> None:
    """A rectangle outline drawn in dashes of ``dash * width`` pixels."""
    x0, y0, x1, y1 = box
    step = dash * width
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)),
                               ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = math.hypot(bx - ax, by - ay)
        for start in np.arange(0.0, length, 2 * step):
            end = min(start + step, length)
            t0, t1 = start / max(length, 1e-9), end / max(length, 1e-9)
            draw.line((ax + (bx - ax) * t0, ay + (by - ay) * t0,
                       ax + (bx - ax) * t1, ay + (by - ay) * t1), fill=colour, width=width)


def _label(draw: ImageDraw.ImageDraw, box: tuple[float, ...], text: str, colour, font,
           outside: bool) -> None:
    """The finding number on a dark tag at the box's top-left corner (above it if ``outside``)."""
    _, _, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, font.size // 8)
    x = box[0]
    y = box[1] - (bottom + 2 * pad) if outside else box[1]
    y = max(0.0, y)
    draw.rectangle((x, y, x + right + 2 * pad, y + bottom + 2 * pad), fill=BAND_COLOUR)
    draw.text((x + pad, y + pad), text, fill=colour, font=font)


def _wrap(text: str, font, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (long words kept)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _pack(entries: list[tuple[str, Any]], font, width: float) -> list[list[tuple[str, Any]]]:
    """Coloured legend entries laid left to right in rows no wider than ``width`` pixels."""
    rows: list[list[tuple[str, Any]]] = [[]]
    used = 0.0
    for text, colour in entries:
        length = font.getlength(text + LEGEND_GAP)
        if rows[-1] and used + font.getlength(text) > width:
            rows.append([])
            used = 0.0
        rows[-1].append((text, colour))
        used += length
    return rows


def _predicted(finding: dict[str, Any]) -> list[dict[str, Any]]:
    """The finding's predicted boxes, each a dict with ``box`` and ``hypotheses``: its
    ``boxes`` when given, else its one ``box``."""
    return finding.get("boxes") or [{"box": finding.get("box"),
                                     "hypotheses": finding.get("hypotheses")}]


def _caption(finding: dict[str, Any], number: int) -> str:
    u = "n/a" if finding.get("u") is None else f"{finding['u']:.3g}"
    if "iou" not in finding:
        abstain = ", abstain" if finding.get("abstain") else ""
        return f"{number}. {finding['phrase']} (u {u}{abstain})"
    iou = "n/a" if finding["iou"] is None else f"{finding['iou']:.2f}"
    abstain = ", abstain" if finding.get("abstain") else ""
    return f"{number}. {finding['phrase']} (u {u}, IoU {iou}{abstain})"


def draw_grounding(image: Image.Image | np.ndarray, findings: list[dict[str, Any]]) -> Image.Image:
    """An RGB picture of ``image`` with every finding drawn and a caption band below it.

    Arguments:
      image: grayscale or RGB, PIL or array (H, W[, 3]).
      findings: dicts with ``phrase`` (str), ``gt_boxes`` (list of pixel xyxy, may be empty),
        ``box`` (pixel xyxy mean box, or None), ``hypotheses`` (list of pixel xyxy, may be
        empty or None), ``u`` (float or None) and ``iou`` (float or None; leave the key out
        when there is no ground truth to score against); optionally ``boxes``, the phrase's
        several boxes (dicts with ``box`` and ``hypotheses``), drawn instead of ``box``,
        ``inflated_box`` (pixel xyxy, the calibrated box, drawn dotted) and ``abstain`` (True
        adds "abstain" to the caption).

    Returns:
      RGB image of width W and height H + caption band.
    """
    picture = to_rgb(image)
    width, height = picture.size
    scale = max(width, height) / LINE_WIDTH_BASE_PX
    box_width, gt_width, hypothesis_width = (max(2, round(3 * scale)), max(2, round(2 * scale)),
                                             max(1, round(scale)))
    font = ImageFont.load_default(size=max(MIN_FONT_SIZE, round(max(width, height) / 40)))
    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    layer_draw = ImageDraw.Draw(layer)
    for finding in findings:
        for values in (h for part in _predicted(finding) for h in part.get("hypotheses") or []):
            box = _box(values)
            if box is not None:
                _dashed_rectangle(layer_draw, box, (*HYPOTHESIS_COLOUR, HYPOTHESIS_ALPHA),
                                  hypothesis_width)
    picture = Image.alpha_composite(picture.convert("RGBA"), layer).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for number, finding in enumerate(findings, start=1):
        for values in finding.get("gt_boxes") or []:
            box = _box(values)
            if box is not None:
                draw.rectangle(box, outline=GT_COLOUR, width=gt_width)
                _label(draw, box, str(number), GT_COLOUR, font, outside=True)
        for part in _predicted(finding):
            box = _box(part.get("box"))
            if box is not None:
                draw.rectangle(box, outline=BOX_COLOUR, width=box_width)
                _label(draw, box, str(number), BOX_COLOUR, font, outside=False)
        inflated = _box(finding.get("inflated_box"))
        if inflated is not None:
            _dashed_rectangle(draw, inflated, INFLATED_COLOUR, gt_width, dash=DOT)

    margin = font.size // 2
    rows = [[(line, TEXT_COLOUR)] for number, finding in enumerate(findings, start=1)
            for line in _wrap(_caption(finding, number), font, width - 2 * margin)]
    with_truth = any(finding.get("gt_boxes") for finding in findings)
    legend = [entry for entry in LEGEND if with_truth or entry[1] != GT_COLOUR]
    if any(_box(finding.get("inflated_box")) is not None for finding in findings):
        legend.append(INFLATED_LEGEND)
    rows += _pack(legend, font, width - 2 * margin)
    line_height = round(font.size * 1.3)
    band = Image.new("RGB", (width, line_height * len(rows) + 2 * margin), BAND_COLOUR)
    band_draw = ImageDraw.Draw(band)
    for row, entries in enumerate(rows):
        x = float(margin)
        for text, colour in entries:
            band_draw.text((x, margin + row * line_height), text, fill=colour, font=font)
            x += font.getlength(text + LEGEND_GAP)
    canvas = Image.new("RGB", (width, height + band.height))
    canvas.paste(picture, (0, 0))
    canvas.paste(band, (0, height))
    return canvas
