"""Image files: their size (inside the image root, under the pixel limit), and resized copies
for ``--resize_max_side`` that keep the bit depth."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.annotations import ReadOptions, resolve_image
from utils.image_io import EIGHT_BIT_MODES, ImageReadError, image_size

KEPT_16_BIT = "high-bit-depth image copies written as 16-bit PNG"
UINT16_MAX = 65535.0
JPEG_SUFFIXES = (".jpg", ".jpeg")
GRAY_MODES = ("1", "L", "LA")  # 8-bit modes the reader sees as gray


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


@dataclass(frozen=True)
class ResizedCopy:
    """A copy written by :func:`resized_copy`."""

    path: Path
    size: tuple[int, int]  # (width, height)
    high_depth: bool  # written as 16-bit PNG
    new: bool  # no file was at ``path`` before


def resized_copy(source: Path, target: Path, max_side: int) -> ResizedCopy:
    """Write ``source`` to ``target`` with its longer side shrunk to ``max_side`` px.

    The aspect ratio is kept; an image that is already small enough is copied unchanged.
    8-bit images are written as the reader (:func:`utils.image_io.read_image`) sees them:
    grayscale as L, any other mode as RGB (alpha dropped, palette expanded), so that a JPEG
    can hold them (JPEG copies are written at quality 95). 16-bit images are resized in
    floating point and written as 16-bit PNG, so no bit depth is lost; 32-bit integer and
    float images are mapped from their min..max to 16-bit PNG (said in the summary). A 16-bit
    copy gets the ``.png`` suffix.
    Raises:
      ImageReadError naming ``source`` and what to do, for a file that cannot be decoded
      (truncated, a DICOM, NaN pixels, ...); nothing is written then.
    """
    image = _decoded(source)
    with image:
        width, height = image.size
        scale = min(1.0, max_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if image.mode in ("L", "RGB"):
            copy = image.resize(size, Image.Resampling.LANCZOS) if scale < 1.0 else image.copy()
            options = {"quality": 95} if target.suffix.lower() in JPEG_SUFFIXES else {}
            return _save(copy, target, size, False, **options)
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ImageReadError(f"image {source} holds non-finite pixel values (NaN or inf); "
                                 "fix or re-export the image")
        if not image.mode.startswith("I;16"):
            low, span = float(values.min()), float(values.max() - values.min()) or 1.0
            values = (values - low) / span * UINT16_MAX
        resized = Image.fromarray(values.astype(np.float32), "F")
        if scale < 1.0:
            resized = resized.resize(size, Image.Resampling.LANCZOS)
    pixels = np.rint(np.clip(np.asarray(resized), 0.0, UINT16_MAX)).astype(np.uint16)
    return _save(Image.fromarray(pixels), target.with_suffix(".png"), size, True)


def _decoded(source: Path) -> Image.Image:
    """``source`` opened and decoded; 8-bit modes other than L and RGB converted to L or RGB."""
    try:
        image = Image.open(source)
    except UnidentifiedImageError as error:
        raise ImageReadError(
            f"image {source} is not a PNG, JPEG or TIFF file ({error}); --resize_max_side does "
            "not copy DICOM or other formats: export it as PNG (16-bit keeps its depth), or "
            "leave --resize_max_side out") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"image {source} cannot be read ({error}); check the file") from error
    try:
        image.load()
        if image.mode in EIGHT_BIT_MODES and image.mode not in ("L", "RGB"):
            converted = image.convert("L" if image.mode in GRAY_MODES else "RGB")
            image.close()
            return converted
    except (OSError, ValueError, SyntaxError) as error:
        image.close()
        raise ImageReadError(f"image {source} cannot be decoded ({error}); the file may be "
                             "truncated or corrupt: re-export it") from error
    return image


def _save(image: Image.Image, path: Path, size: tuple[int, int], high_depth: bool,
          **options: int) -> ResizedCopy:
    """Write ``image`` to ``path`` (folders made) and describe the copy; a new file that
    cannot be written completely is removed."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        image.save(path, **options)
    except BaseException:
        if new:
            path.unlink(missing_ok=True)
        raise
    return ResizedCopy(path, size, high_depth, new)
