"""Test-time shifts: the box decoder also read on shifted copies of the SAM input, for u.

With a shift of s pixels (``UMedGround.test_time_shift``, evaluation and inference only), the
preprocessed image (B,3,S,S) is also translated by s pixels right, left, down and up, with
zero fill (SAM's padding value after normalisation). Each copy is encoded by the frozen SAM
and read by the box decoder with the same ``[BOX]`` queries; each copy's boxes are moved back
by its shift. The shifted copies measure the box's uncertainty and change nothing else:
- the box, and which boxes a phrase reports (the presence and count logits), are those of
  the image's own read, as without shifts;
- the A = 5 copies' hypotheses form one set of A x N hypotheses per box (copy a's hypothesis
  k is hypothesis a*N + k; the image's own read is copy 0). The variance, and so the spread
  u, is their mean squared deviation from the box, and the agreement of the combined u
  (:mod:`model.uncertainty`) their mean IoU with it;
- the IoU head's predictions are the copies' mean;
- the calibration's side scales are the hypotheses' standard deviations.
The language model reads the image once, unshifted.

A shift of half a feature cell (8 px of the tiny SAM's 256-px input, 16-px cells) moves the
cells' grid against the image, which the decoder's centre heatmap reads at cell resolution: a
box that holds only while the grid stays put is one to doubt.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# (dx, dy) of each copy in units of the shift: the image itself, then right, left, down, up
SHIFT_DIRECTIONS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


@dataclass
class ShiftedView:
    """The SAM features (B,C,h,w) of a shifted copy, and its shift (dx, dy) as a fraction of
    the input side S (the frame of the decoder's normalised boxes)."""

    embeddings: torch.Tensor
    offset: tuple[float, float]


def translate(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """(B,3,S,S) images with their content moved ``dx`` pixels right and ``dy`` down (negative:
    left, up); what moves out is dropped and what comes in is 0."""
    height, width = images.shape[-2:]
    if abs(dx) >= width or abs(dy) >= height:
        raise ValueError(f"a shift of ({dx}, {dy}) px leaves nothing of a {width}x{height} image")
    moved = torch.zeros_like(images)
    moved[..., max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[..., max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return moved


def shifted_copies(images: torch.Tensor, shift: int
                   ) -> list[tuple[torch.Tensor, tuple[float, float]]]:
    """The shifted copies of (B,3,S,S) ``images`` for a ``shift`` in pixels (the image itself
    excluded), each with its offset (dx, dy) as fractions of the width and height."""
    height, width = images.shape[-2:]
    return [(translate(images, dx * shift, dy * shift), (dx * shift / width, dy * shift / height))
            for dx, dy in SHIFT_DIRECTIONS[1:]]
