"""Image files: their size, and resized copies for ``--resize_max_side``."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def image_size(path: Path) -> tuple[int, int] | str:
    """``(width, height)`` of an image file, or why it cannot be read."""
    if not path.is_file():
        return f"image {path} does not exist (check the image root)"
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError) as error:
        return f"image {path} cannot be read ({error})"


def resized_copy(source: Path, target: Path, max_side: int) -> tuple[int, int]:
    """Write ``source`` to ``target`` with its longer side shrunk to ``max_side`` px.

    The aspect ratio is kept; an image that is already small enough is copied unchanged.
    JPEG copies are written at quality 95.
    Returns:
      the ``(width, height)`` of the copy.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        width, height = image.size
        scale = min(1.0, max_side / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        copy = image.resize(size, Image.Resampling.LANCZOS) if scale < 1.0 else image.copy()
    options = {"quality": 95} if target.suffix.lower() in (".jpg", ".jpeg") else {}
    copy.save(target, **options)
    return size
