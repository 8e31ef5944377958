"""Image files: their size (inside the image root, under the pixel limit), and resized copies
for ``--resize_max_side`` that keep the bit depth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from utils.annotations import ReadOptions, resolve_image
from utils.image_io import EIGHT_BIT_MODES, ImageReadError, image_size

KEPT_16_BIT = "high-bit-depth image copies written as 16-bit PNG"
UINT16_MAX = 65535.0


def image_size_under(image_root: Path, name: str, options: ReadOptions) -> tuple[int, int] | str:
    """``(width, height)`` of ``image_root / name``, or why it cannot be used.

    The path must resolve inside ``image_root`` (unless ``options.allow_outside_root``) and
    the image must have at most ``options.max_image_pixels`` pixels.
    """
    path, message = resolve_image(image_root, name, options.allow_outside_root)
    if message:
        return message
    try:
        return image_size(path, max_pixels=options.max_image_pixels)
    except ImageReadError as error:
        return str(error)


def resized_copy(source: Path, target: Path, max_side: int) -> tuple[Path, tuple[int, int], bool]:
    """Write ``source`` to ``target`` with its longer side shrunk to ``max_side`` px.

    The aspect ratio is kept; an image that is already small enough is copied unchanged.
    8-bit images keep their mode (JPEG copies are written at quality 95). 16-bit images are
    resized in floating point and written as 16-bit PNG, so no bit depth is lost; 32-bit
    integer and float images are mapped from their min..max to 16-bit PNG (said in the
    summary). A 16-bit copy gets the ``.png`` suffix.
    Returns:
      the path written, the ``(width, height)`` of the copy, and whether it holds 16 bits.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        width, height = image.size
        scale = min(1.0, max_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if image.mode in EIGHT_BIT_MODES:
            copy = image.resize(size, Image.Resampling.LANCZOS) if scale < 1.0 else image.copy()
            options = {"quality": 95} if target.suffix.lower() in (".jpg", ".jpeg") else {}
            copy.save(target, **options)
            return target, size, False
        values = np.asarray(image, dtype=np.float64)
        if not image.mode.startswith("I;16"):
            low, span = float(values.min()), float(values.max() - values.min()) or 1.0
            values = (values - low) / span * UINT16_MAX
        resized = Image.fromarray(values.astype(np.float32), "F")
        if scale < 1.0:
            resized = resized.resize(size, Image.Resampling.LANCZOS)
    pixels = np.rint(np.clip(np.asarray(resized), 0.0, UINT16_MAX)).astype(np.uint16)
    target = target.with_suffix(".png")
    Image.fromarray(pixels).save(target)
    return target, size, True
