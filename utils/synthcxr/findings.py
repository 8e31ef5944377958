"""Finding types: where each one goes, how it looks, and its tight box.

A finding is drawn inside a zone of one lung (or both, for bilateral effusion); its exact
place and size are drawn at random inside that zone, so the words of the report give only a
coarse prior on the box. Each function returns the pixel mask of the abnormality and the
intensity it adds; the box is the tight extent of the mask.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter

from utils.synthcxr.anatomy import SIDES, ZONES, Anatomy, Ellipse, grid

FINDING_TYPES = ("nodule", "mass", "consolidation", "pleural effusion", "pneumothorax",
                 "cardiomegaly", "atelectasis")


@dataclass(frozen=True)
class Lesion:
    """A drawn finding: type, side ("right"/"left"/"bilateral"/""), zone and pixel boxes."""

    type: str
    side: str
    zone: str
    size_word: str
    boxes: tuple[tuple[int, int, int, int], ...]


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _point_in_zone(rng: np.random.Generator, anatomy: Anatomy, side: str, zone: str,
                   margin: float, lungs: np.ndarray) -> tuple[float, float]:
    """A random point of the zone that lies inside the lung, ``margin`` px from its edge."""
    x0, y0, x1, y1 = anatomy.lung_zone(side, zone)
    lung = anatomy.lungs[side]
    for _ in range(200):
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        shrunk = Ellipse(lung.cx, lung.cy, max(lung.rx - margin, 1), max(lung.ry - margin, 1))
        if ((x - shrunk.cx) / shrunk.rx) ** 2 + ((y - shrunk.cy) / shrunk.ry) ** 2 <= 1:
            return x, y
    return lung.cx, (y0 + y1) / 2


def draw_finding(kind: str, side: str, zone: str, anatomy: Anatomy, lungs: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Lesion]:
    """(additive intensity map, mask, lesion) of one finding; cardiomegaly is drawn elsewhere."""
    size = anatomy.size
    s = size / 256.0
    yy, xx = grid(size)
    delta = np.zeros((size, size), np.float32)
    masks = []
    size_word = ""
    sides = SIDES if side == "bilateral" else (side,)
    if kind == "nodule":
        radius = rng.uniform(8, 14) * s
        size_word = "small" if radius < 11 * s else "large"
        cx, cy = _point_in_zone(rng, anatomy, side, zone, radius, lungs)
        mask = Ellipse(cx, cy, radius, radius).mask(yy, xx)
        delta[mask] = 0.38
        masks.append(mask)
    elif kind == "mass":
        radius = rng.uniform(15, 24) * s
        size_word = "large" if radius > 20 * s else "moderate"
        cx, cy = _point_in_zone(rng, anatomy, side, zone, radius * 0.8, lungs)
        mask = np.zeros((size, size), bool)
        for _ in range(4):
            ox, oy = rng.normal(0, radius * 0.3, 2)
            mask |= Ellipse(cx + ox, cy + oy, radius * rng.uniform(0.6, 0.85),
                            radius * rng.uniform(0.6, 0.85)).mask(yy, xx)
        delta[mask] = 0.42
        masks.append(mask)
    elif kind in ("consolidation", "atelectasis"):
        if kind == "consolidation":
            rx, ry = rng.uniform(14, 26) * s, rng.uniform(12, 22) * s
            angle = 0.0
        else:
            rx, ry = rng.uniform(18, 28) * s, rng.uniform(3.5, 5.5) * s
            angle = rng.uniform(-0.35, 0.35)
        size_word = "patchy" if kind == "consolidation" else "linear"
        cx, cy = _point_in_zone(rng, anatomy, side, zone, ry, lungs)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        region = (u / rx) ** 2 + (v / ry) ** 2 <= 1
        if kind == "consolidation":
            texture = gaussian_filter(rng.random((size, size)).astype(np.float32), 2.5 * s)
            region &= texture > np.quantile(texture[region], 0.2) if region.any() else region
        mask = region & lungs
        delta[mask] = 0.3 if kind == "consolidation" else 0.4
        masks.append(mask)
    elif kind == "pleural effusion":
        size_word = str(rng.choice(["small", "moderate"]))
        for lung_side in sides:
            lung = anatomy.lungs[lung_side]
            fraction = rng.uniform(0.1, 0.22) if size_word == "small" else rng.uniform(0.24, 0.45)
            level = lung.cy + lung.ry - 2 * lung.ry * fraction
            outer = 1 if lung_side == "left" else -1
            meniscus = level - 0.25 * lung.ry * fraction * ((xx - lung.cx) * outer / lung.rx)
            mask = lung.mask(yy, xx) & (yy >= meniscus)
            delta[mask] = 0.45
            masks.append(mask)
    elif kind == "pneumothorax":
        lung = anatomy.lungs[side]
        size_word = str(rng.choice(["small", "moderate"]))
        depth = rng.uniform(0.18, 0.3) if size_word == "small" else rng.uniform(0.32, 0.48)
        inner = Ellipse(lung.cx + (1 if side == "left" else -1) * -lung.rx * depth * 0.5,
                        lung.cy + lung.ry * depth * 0.5, lung.rx * (1 - depth * 0.7),
                        lung.ry * (1 - depth * 0.6))
        bottom = lung.cy - lung.ry * rng.uniform(-0.3, 0.45)
        mask = lung.mask(yy, xx) & ~inner.mask(yy, xx) & (yy < bottom)
        delta[mask] = -0.12
        edge = inner.mask(yy, xx) & ~Ellipse(inner.cx, inner.cy, inner.rx - 1.5 * s,
                                             inner.ry - 1.5 * s).mask(yy, xx)
        delta[edge & lung.mask(yy, xx) & (yy < bottom)] = 0.35
        masks.append(mask)
    else:
        raise ValueError(f"unknown finding type {kind!r}")
    boxes = tuple(_box(m) for m in masks)
    return delta, np.logical_or.reduce(masks), Lesion(kind, side, zone, size_word, boxes)


def enlarge_heart(anatomy: Anatomy, rng: np.random.Generator) -> tuple[Ellipse, Lesion]:
    """Cardiomegaly: the heart grows 25-45 %; its box is the heart's extent."""
    factor = rng.uniform(1.2, 1.6)
    heart = replace(anatomy.heart, rx=anatomy.heart.rx * factor, ry=anatomy.heart.ry * factor * 0.9)
    yy, xx = grid(anatomy.size)
    box = _box(heart.mask(yy, xx) & anatomy.body.mask(yy, xx))
    return heart, Lesion("cardiomegaly", "", "", "moderate" if factor < 1.4 else "marked", (box,))


def sample_location(kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """(side, zone) allowed for a finding type."""
    if kind == "cardiomegaly":
        return "", ""
    if kind == "pleural effusion":
        return str(rng.choice(["right", "left", "bilateral"], p=[0.4, 0.4, 0.2])), "lower"
    if kind == "pneumothorax":
        return str(rng.choice(SIDES)), "upper"
    return str(rng.choice(SIDES)), str(rng.choice(ZONES))
