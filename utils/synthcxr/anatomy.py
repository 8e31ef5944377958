"""Chest-radiograph-like anatomy: body, lung fields, mediastinum, heart, diaphragm, ribs.

Coordinates are pixels of a square image of side ``size``; the patient's right is the image's
left (radiological convention), so the heart bulges to the image's right. Every patient gets
its own anatomy (position, size, proportions, brightness), so the place of the heart, of the
lung zones and of every lesion drawn in them varies between patients.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

SIDES = ("right", "left")  # patient sides; "right" is drawn on the image's left
ZONES = ("upper", "middle", "lower")


@lru_cache(maxsize=4)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates ``(yy, xx)``, each (size, size) float32, read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@dataclass(frozen=True)
class Ellipse:
    """An axis-aligned superellipse in pixels: ``|dx / rx| ** power + |dy / ry| ** power <= 1``."""

    cx: float
    cy: float
    rx: float
    ry: float
    power: float = 2.0

    def mask(self, size: int) -> np.ndarray:
        """(size, size) bool mask of the inside."""
        yy, xx = grid(size)
        dx, dy = np.abs((xx - self.cx) / self.rx), np.abs((yy - self.cy) / self.ry)
        if self.power == 2.0:
            return dx * dx + dy * dy <= 1.0
        return dx ** self.power + dy ** self.power <= 1.0


@dataclass(frozen=True)
class Lung:
    """One lung field: an ellipse cut from below by the dome of its hemidiaphragm.

    The dome is the parabola ``y = dome_y + dome_h * ((x - outline.cx) / outline.rx) ** 2``:
    highest at the lung's middle, lower towards the costophrenic angles.
    """

    outline: Ellipse
    dome_y: float
    dome_h: float

    def dome(self, xx: np.ndarray) -> np.ndarray:
        """y of the diaphragm under each column ``xx`` (any shape, pixels)."""
        return self.dome_y + self.dome_h * ((xx - self.outline.cx) / self.outline.rx) ** 2

    def mask(self, size: int) -> np.ndarray:
        """(size, size) bool mask of the lung field."""
        yy, xx = grid(size)
        return self.outline.mask(size) & (yy < self.dome(xx))

    @property
    def top(self) -> float:
        return self.outline.cy - self.outline.ry

    @property
    def bottom(self) -> float:
        """The lowest point of the field (the costophrenic angle)."""
        return min(self.outline.cy + self.outline.ry, self.dome_y + self.dome_h)

    def zone_rows(self, zone: str) -> tuple[float, float]:
        """(y0, y1): the rows of a zone, a third of the height from the apex to the dome's
        mean height; the lower zone also holds the costophrenic recess below it."""
        index = ZONES.index(zone)
        height = self.dome_y + 0.5 * self.dome_h - self.top
        y1 = self.bottom if zone == ZONES[-1] else self.top + height * (index + 1) / 3
        return self.top + height * index / 3, y1


@dataclass(frozen=True)
class Anatomy:
    """One patient's anatomy (pixels)."""

    size: int
    body: Ellipse
    lungs: dict[str, Lung]
    heart: Ellipse
    spine_x: float
    carina_y: float
    rib_period: float
    rib_phase: float
    brightness: float

    def with_heart(self, heart: Ellipse) -> "Anatomy":
        return replace(self, heart=heart)

    def zone_map(self) -> np.ndarray:
        """(size, size) int8: ``3 * SIDES.index(side) + ZONES.index(zone)`` inside the lung
        fields, -1 elsewhere."""
        yy, _ = grid(self.size)
        zones = np.full((self.size, self.size), -1, np.int8)
        for side_index, side in enumerate(SIDES):
            field = self.lungs[side].mask(self.size)
            for zone_index, zone in enumerate(ZONES):
                y0, y1 = self.lungs[side].zone_rows(zone)
                zones[field & (yy >= y0) & (yy < y1)] = 3 * side_index + zone_index
        return zones


@dataclass(frozen=True)
class Canvas:
    """The rendered normal chest, before any finding.

    Arguments:
      base: (H, W) float32 intensities in about [0, 1], without lung markings.
      markings: (H, W) float32 vascular lung markings, added to ``base`` where the lung is
        not cleared (a pneumothorax clears them).
      visible: (H, W) bool, the lung fields outside the heart shadow.
    """

    base: np.ndarray
    markings: np.ndarray
    visible: np.ndarray


def sample_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    """A patient's anatomy, jittered in position, size, proportions and brightness."""
    s = size / 256.0 * rng.uniform(0.84, 1.1)
    centre_x = size / 2 + rng.normal(0, 9) * size / 256
    top = size * rng.uniform(0.08, 0.22)
    lung_ry = rng.uniform(78, 94) * s
    gap = rng.uniform(8, 14) * s  # half the mediastinum's width at the hila
    lungs = {}
    for side, sign in (("right", -1), ("left", 1)):
        rx = rng.uniform(31, 40) * s
        outline = Ellipse(centre_x + sign * (gap + rx), top + lung_ry, rx, lung_ry)
        dome_y = top + lung_ry * rng.uniform(1.45, 1.62) + (0 if side == "left" else -5 * s)
        lungs[side] = Lung(outline, dome_y, rng.uniform(14, 24) * s)
    heart_bottom = lungs["left"].dome_y + rng.uniform(4, 16) * s
    heart_rx, heart_ry = rng.uniform(30, 40) * s, rng.uniform(22, 31) * s
    heart = Ellipse(centre_x + rng.uniform(6, 20) * s, heart_bottom - heart_ry,
                    heart_rx, heart_ry)
    body = Ellipse(centre_x, size * rng.uniform(0.55, 0.62), rng.uniform(104, 118) * s,
                   size * rng.uniform(0.62, 0.7), 3.0)
    return Anatomy(size, body, lungs, heart, centre_x + rng.normal(0, 1.5) * s,
                   top + lung_ry * rng.uniform(0.55, 0.7), rng.uniform(16, 20) * s,
                   rng.uniform(0, 2 * np.pi), rng.uniform(0.9, 1.08))


def _segment_distance(x0: float, y0: float, x1: float, y1: float, size: int) -> np.ndarray:
    """(size, size) distance of every pixel to the segment (x0, y0)-(x1, y1)."""
    yy, xx = grid(size)
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(xx - x0 - t * dx, yy - y0 - t * dy)


def _ribs(anatomy: Anatomy) -> np.ndarray:
    """(H, W) float32 in [0, 1]: posterior rib arches over each hemithorax."""
    size = anatomy.size
    yy, xx = grid(size)
    ribs = np.zeros((size, size), np.float32)
    for side, lung in anatomy.lungs.items():
        span = abs(lung.outline.cx - anatomy.spine_x) + lung.outline.rx
        u = np.abs(xx - anatomy.spine_x) / span
        phase = yy + span * (0.45 * u - 0.9 * u * u)
        wave = np.sin(2 * np.pi * phase / anatomy.rib_period + anatomy.rib_phase)
        half = (xx < anatomy.spine_x) if side == "right" else (xx >= anatomy.spine_x)
        half &= (u < 1.1) & (yy < lung.bottom + 6 * size / 256) & (yy > lung.top - 8 * size / 256)
        ribs[half] = np.clip((wave[half] - 0.3) / 0.4, 0, 1)
    return ribs


def _markings(anatomy: Anatomy, lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32: worm-like vessel markings, densest at the hila, fading outwards."""
    size = anatomy.size
    s = size / 256.0
    yy, xx = grid(size)
    noise = gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 3.2 * s,
                            truncate=3.0)
    lines = np.exp(-(noise[lungs] / (0.15 * noise.std() + 1e-6)) ** 2)
    falloff = np.zeros(lines.shape, np.float32)
    y, x = yy[lungs], xx[lungs]
    for lung in anatomy.lungs.values():
        hilum_x = lung.outline.cx + 0.55 * (anatomy.spine_x - lung.outline.cx)
        distance = np.hypot(x - hilum_x, (y - anatomy.carina_y - 12 * s) * 0.8)
        falloff = np.maximum(falloff, np.exp(-distance / (1.1 * lung.outline.rx)))
    markings = np.zeros((size, size), np.float32)
    markings[lungs] = 0.15 * lines * falloff
    return markings


def render_anatomy(anatomy: Anatomy, rng: np.random.Generator) -> Canvas:
    """The normal chest of this patient: body, lungs, spine, trachea, heart (as in
    ``anatomy.heart``), ribs and clavicles, softened; plus its lung markings.

    Returns:
      The canvas, every array (size, size).
    """
    size = anatomy.size
    s = size / 256.0
    yy, xx = grid(size)
    body = anatomy.body.mask(size)
    image = np.where(body, 0.5 + 0.08 * (yy / size), 0.04).astype(np.float32)
    lungs = np.zeros((size, size), bool)
    for lung in anatomy.lungs.values():
        lungs |= lung.mask(size)
    lung_shade = 0.17 + 0.06 * (yy / size)
    image[lungs] = lung_shade[lungs]
    spine = (np.abs(xx - anatomy.spine_x) < 11 * s) & body
    image[spine & ~lungs] += 0.1
    trachea = (np.abs(xx - anatomy.spine_x) < 5 * s) & (yy < anatomy.carina_y) & body
    image[trachea] -= 0.14
    heart = anatomy.heart.mask(size) & body
    image[heart] = 0.7
    image += (0.085 * _ribs(anatomy) * body).astype(np.float32)
    for lung, sign in ((anatomy.lungs["right"], -1), (anatomy.lungs["left"], 1)):
        inner_x = anatomy.spine_x + sign * 6 * s
        outer_x = lung.outline.cx + sign * 1.3 * lung.outline.rx
        y = lung.top + 10 * s
        clavicle = _segment_distance(inner_x, y + 8 * s, outer_x, y - 12 * s, size) < 3.5 * s
        image[clavicle & body] += 0.12
    image = gaussian_filter(image, 1.5 * s, truncate=3.0)
    visible = lungs & ~heart
    return Canvas(image * anatomy.brightness, _markings(anatomy, lungs, rng) * anatomy.brightness,
                  visible)


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur slightly, add noise and quantise.

    Arguments:
      image: (H, W) float32 intensities in about [0, 1].

    Returns:
      (H, W) uint8 image.
    """
    size = image.shape[0]
    image = gaussian_filter(image, sigma=0.8 * size / 256, truncate=3.0)
    image = image + rng.normal(0, 0.02, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
