"""Chest-radiograph-like anatomy: body, lung fields, mediastinum, heart, diaphragm and ribs.

Coordinates are pixels of a square image of side ``size``; the patient's right is the image's
left (radiological convention). Every patient gets its own jittered anatomy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

SIDES = ("right", "left")  # patient sides; "right" is drawn on the image's left
ZONES = ("upper", "middle", "lower")


@dataclass(frozen=True)
class Ellipse:
    cx: float
    cy: float
    rx: float
    ry: float

    def mask(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return ((xx - self.cx) / self.rx) ** 2 + ((yy - self.cy) / self.ry) ** 2 <= 1.0


@dataclass(frozen=True)
class Anatomy:
    """One patient's anatomy (pixels)."""

    size: int
    body: Ellipse
    lungs: dict[str, Ellipse]
    heart: Ellipse
    rib_phase: float
    rib_period: float
    brightness: float

    def lung_zone(self, side: str, zone: str) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of a zone: a third of the lung's height, the lung's width."""
        lung = self.lungs[side]
        top, height = lung.cy - lung.ry, 2 * lung.ry
        index = ZONES.index(zone)
        return (lung.cx - lung.rx, top + height * index / 3, lung.cx + lung.rx,
                top + height * (index + 1) / 3)


def sample_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    """A patient's anatomy, jittered in position, size and brightness."""
    s = size / 256.0 * rng.uniform(0.85, 1.12)  # the patient's overall size
    shift_x, shift_y = rng.normal(0, 9) * size / 256, rng.normal(0, 9) * size / 256
    centre = size / 2
    lung_rx, lung_ry = rng.uniform(30, 40) * s, rng.uniform(66, 84) * s
    gap = rng.uniform(42, 56) * s
    cy = centre - 10 * s + shift_y
    lungs = {"right": Ellipse(centre + shift_x - gap, cy, lung_rx * rng.uniform(0.92, 1.08), lung_ry),
             "left": Ellipse(centre + shift_x + gap, cy, lung_rx * rng.uniform(0.92, 1.08),
                             lung_ry * rng.uniform(0.92, 1.0))}
    heart = Ellipse(centre + shift_x + rng.uniform(4, 24) * s, cy + lung_ry * rng.uniform(0.3, 0.55),
                    rng.uniform(24, 38) * s, rng.uniform(19, 29) * s)
    body = Ellipse(centre + shift_x, centre + 12 * s + shift_y, rng.uniform(100, 112) * s,
                   rng.uniform(125, 140) * s)
    return Anatomy(size, body, lungs, heart, rng.uniform(0, 2 * np.pi), rng.uniform(15, 19) * s,
                   rng.uniform(0.9, 1.1))


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def render_anatomy(anatomy: Anatomy, heart: Ellipse, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The background radiograph (float32 in [0, 1]) and the union mask of the lung fields."""
    size = anatomy.size
    yy, xx = grid(size)
    image = np.full((size, size), 0.06, np.float32)
    image[anatomy.body.mask(yy, xx)] = 0.55
    lungs = np.zeros((size, size), bool)
    for lung in anatomy.lungs.values():
        lungs |= lung.mask(yy, xx)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (yy + 0.18 * np.abs(xx - size / 2)) / anatomy.rib_period
                              + anatomy.rib_phase)
    image[lungs] = 0.2 + 0.07 * ribs[lungs]
    mediastinum = (np.abs(xx - (anatomy.lungs["right"].cx + anatomy.lungs["left"].cx) / 2)
                   < 0.1 * size) & (yy > anatomy.body.cy - anatomy.body.ry * 0.75)
    image[mediastinum & anatomy.body.mask(yy, xx)] = 0.68
    image[heart.mask(yy, xx)] = 0.72
    diaphragm_y = max(l.cy + l.ry for l in anatomy.lungs.values()) - 4 * size / 256
    image[(yy > diaphragm_y + 0.04 * size * np.cos((xx - size / 2) / size * 4)) &
          anatomy.body.mask(yy, xx) & ~lungs] = 0.7
    image = image * anatomy.brightness
    return image, lungs


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, add noise and quantise to uint8."""
    size = image.shape[0]
    image = gaussian_filter(image, sigma=1.2 * size / 256)
    image = image + rng.normal(0, 0.025, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
