"""SAM input preprocessing: resize the longest side, normalise, pad to a square.

The box decoder predicts in the normalised frame of this padded square. ``content_scale``
maps between that frame and the normalised frame of the real image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def preprocess_for_sam(image: np.ndarray, image_size: int
                       ) -> tuple[torch.Tensor, tuple[float, float]]:
    """SAM preprocessing of one image.

    Arguments:
      image: uint8 RGB array (H, W, 3).
      image_size: the encoder's square input side S.
    Returns:
      pixels: float tensor (3, S, S), normalised with SAM's mean/std, zero-padded bottom-right.
      content_scale: (sx, sy), the fraction of the padded square covered by the image
        (new_w / S, new_h / S), used by :func:`padded_to_image_boxes`.
    """
    resized = ResizeLongestSide(image_size).apply_image(image)
    new_h, new_w = resized.shape[:2]
    pixels = torch.from_numpy(resized).permute(2, 0, 1).float()
    mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    pixels = (pixels - mean) / std
    pixels = F.pad(pixels, (0, image_size - new_w, 0, image_size - new_h))
    return pixels, (new_w / image_size, new_h / image_size)


def image_to_padded_boxes(boxes: torch.Tensor, content_scale: torch.Tensor) -> torch.Tensor:
    """Normalised xyxy of the real image (..., 4) → normalised xyxy of the padded square.

    ``content_scale`` is (..., 2) = (sx, sy), broadcastable to the boxes.
    """
    return boxes * torch.cat([content_scale, content_scale], dim=-1)


def padded_to_image_boxes(boxes: torch.Tensor, content_scale: torch.Tensor) -> torch.Tensor:
    """Normalised xyxy of the padded square (..., 4) → normalised xyxy of the real image."""
    return boxes / torch.cat([content_scale, content_scale], dim=-1)
