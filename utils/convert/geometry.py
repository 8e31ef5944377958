"""Pixel boxes at the edges of the converters: checks, scaling, and position words.

Boxes here are pixel ``[x0, y0, x1, y1]`` lists (the canonical file format); normalised boxes
exist only inside the model code.
"""
from __future__ import annotations

import math
from typing import Sequence

from utils.annotations import BOX_TOLERANCE_PX
from utils.convert.log import ConversionLog

PixelBox = list[float]
ASPECT_TOLERANCE_PX = 1.0  # rounding of a uniformly resized copy moves a side by under 1 px
ASPECT = "image of another aspect ratio"
STRETCHED = "image of another aspect ratio, boxes scaled per axis (--stretched_copies)"


def xywh_to_xyxy(x: float, y: float, w: float, h: float) -> PixelBox:
    """``(x, y, w, h)`` (top-left corner and size) -> ``[x0, y0, x1, y1]``."""
    return [x, y, x + w, y + h]


def box_problem(box: Sequence[float], width: float, height: float) -> str | None:
    """Why pixel box ``[x0, y0, x1, y1]`` is not a box inside a ``width x height`` image, or None.

    Coordinates may exceed the image by ``BOX_TOLERANCE_PX`` (rounding in the releases);
    NaN and inf are never a box.
    """
    if not all(math.isfinite(v) for v in box):
        return f"box {_fmt(box)} holds a non-finite value (NaN or inf)"
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return f"box {_fmt(box)} has zero or negative width/height"
    tol = BOX_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        return f"box {_fmt(box)} lies beyond the {width:g}x{height:g} image"
    return None


def clip_box(box: Sequence[float], width: float, height: float) -> PixelBox:
    """Clamp a box that :func:`box_problem` accepted into the image."""
    x0, y0, x1, y1 = box
    return [max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))]


def scale_box(box: Sequence[float], sx: float, sy: float) -> PixelBox:
    """Scale x by ``sx`` and y by ``sy``, rounded to 1/1000 px."""
    x0, y0, x1, y1 = box
    return [round(x0 * sx, 3), round(y0 * sy, 3), round(x1 * sx, 3), round(y1 * sy, 3)]


def aspect_problem(frame: Sequence[float], size: Sequence[float]) -> str | None:
    """Why boxes drawn on a ``frame`` (width, height) cannot be scaled to an image of ``size``.

    Scaling is only right for a uniformly resized image: the frame scaled to the image's width
    must give its height, or scaled to its height its width, within ``ASPECT_TOLERANCE_PX``
    (the rounding of a resized copy). None when that holds.
    """
    (frame_w, frame_h), (width, height) = frame, size
    miss = min(abs(frame_h * width / frame_w - height), abs(frame_w * height / frame_h - width))
    if miss <= ASPECT_TOLERANCE_PX:
        return None
    return (f"the boxes are in pixels of a {frame_w:g}x{frame_h:g} image, but the image on disk "
            f"is {width:g}x{height:g}, another aspect ratio: scaling would stretch the boxes "
            "(if it is a stretched resize, --stretched_copies scales them per axis)")


def refuse_aspect(frame: Sequence[float], size: Sequence[float], stretched_copies: bool,
                  log: ConversionLog) -> str | None:
    """:func:`aspect_problem`, unless ``stretched_copies`` (``--stretched_copies``) lets the
    boxes be scaled per axis: then None, and the image is counted."""
    message = aspect_problem(frame, size)
    if message and stretched_copies:
        log.note(STRETCHED)
        return None
    return message


def position_words(box: Sequence[float], width: float, height: float) -> dict[str, str]:
    """Where a box lies, in the words of a radiology report.

    Returns ``{"side": "right" | "left" | "central", "zone": "upper" | "middle" | "lower"}``.
    Side is the patient's: a frontal radiograph shows the patient's right on the image's
    left, so a box centred in the left 45 % of the image is "right". Zone is the vertical
    third of the image that holds the box centre.
    """
    cx = (box[0] + box[2]) / 2 / width
    cy = (box[1] + box[3]) / 2 / height
    side = "right" if cx < 0.45 else "left" if cx > 0.55 else "central"
    zone = "upper" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "lower"
    return {"side": side, "zone": zone}


def _fmt(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"
