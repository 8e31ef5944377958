"""Finding types: where each one may go, how it looks, and its tight box.

A focal finding (nodule, mass, consolidation, atelectasis) first draws its size, then a random
(side, zone) among those with room for it, then a random centre there that leaves room for its
whole extent inside the free lung (outside the heart and away from the findings drawn before
it); so the words of a report give only a coarse prior on the box. Nodules and consolidations
are sometimes multifocal (``draw_multifocal``): 2 or 3 separate lesions of the type, each
placed so, make one finding with one box per lesion. Effusion fills one or both
lung bases under a meniscus, pneumothorax peels the lung away from the apex and lateral wall,
cardiomegaly enlarges the heart; their extents are random too. Every box is the tight extent
(pixels, xyxy, exclusive max) of the pixels the finding changes (for cardiomegaly, the heart).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from utils.synthcxr.anatomy import SIDES, ZONES, Anatomy, Canvas, Ellipse, grid

FINDING_TYPES = ("nodule", "mass", "consolidation", "pleural effusion", "pneumothorax",
                 "cardiomegaly", "atelectasis")
DRAW_ORDER = ("cardiomegaly", "pleural effusion", "pneumothorax", "mass", "consolidation",
              "atelectasis", "nodule")  # large findings first, so focal ones avoid them
MULTIFOCAL_P = {"nodule": 0.3, "consolidation": 0.3}  # chance a finding of the type is multifocal
MULTIFOCAL_COUNT_P = {2: 0.7, 3: 0.3}  # lesions (boxes) of a multifocal finding
CM_PER_PX_AT_256 = 0.12  # the nominal pixel spacing that turns a diameter into centimetres
PixelBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class Lesion:
    """A drawn finding.

    Arguments:
      type: one of ``FINDING_TYPES``.
      side: "right", "left", "bilateral" or "" (cardiomegaly); a multifocal finding's side, or
        "bilateral" when its lesions lie in both lungs.
      zone: "upper", "middle", "lower" or "" (cardiomegaly, and a multifocal finding).
      grade: a severity or extent word ("small", "moderate", "large", "mild", "marked",
        "patchy", "plate-like", "lobulated", ...).
      size_cm: the diameter in whole centimetres (nodule and mass), else 0.
      boxes: one pixel box (x0, y0, x1, y1) per side, or per lesion of a multifocal finding.
      part_sides: the side of each lesion of a multifocal finding ("right" or "left"), else
        empty.
    """

    type: str
    side: str
    zone: str
    grade: str
    size_cm: int
    boxes: tuple[PixelBox, ...]
    part_sides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Drawn:
    """A finding's effect on the image.

    Arguments:
      delta: (H, W) float32 intensity added to the image.
      clear: (H, W) bool, where the lung markings vanish (pneumothorax).
      mask: (H, W) bool, every pixel the finding changes.
      lesion: what was drawn, with its boxes.
      parts: the (H, W) bool mask of each lesion of a multifocal finding, else empty.
    """

    delta: np.ndarray
    clear: np.ndarray
    mask: np.ndarray
    lesion: Lesion
    parts: tuple[np.ndarray, ...] = ()


def pixel_box(mask: np.ndarray) -> PixelBox:
    """The tight box (x0, y0, x1, y1), exclusive max, of a non-empty (H, W) bool mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def enlarge_heart(anatomy: Anatomy, rng: np.random.Generator) -> tuple[Ellipse, str]:
    """Cardiomegaly: the heart widens 25-70 % (mostly towards the patient's left) and grows
    up to 35 % taller, its base kept on the diaphragm. Returns the new heart and its grade."""
    heart = anatomy.heart
    factor = rng.uniform(1.25, 1.7)
    rx, ry = heart.rx * factor, heart.ry * rng.uniform(0.95, 1.45)
    enlarged = Ellipse(heart.cx + rng.uniform(0.1, 0.5) * (rx - heart.rx),
                       heart.cy + heart.ry - ry, rx, ry)
    grade = "mild" if factor < 1.38 else "moderate" if factor < 1.54 else "marked"
    return enlarged, grade


def draw_cardiomegaly(anatomy: Anatomy, grade: str) -> Drawn:
    """The box of cardiomegaly: the (already enlarged) heart inside the body."""
    size = anatomy.size
    heart = anatomy.heart.mask(size) & anatomy.body.mask(size)
    zero = np.zeros((size, size), np.float32)
    return Drawn(zero, np.zeros((size, size), bool), heart,
                 Lesion("cardiomegaly", "", "", grade, 0, (pixel_box(heart),)))


def _place(rng: np.random.Generator, zones: np.ndarray, free: np.ndarray, margin: float
           ) -> tuple[str, str, float, float]:
    """(side, zone, x, y): a random (side, zone) among those holding a free pixel at least
    ``margin`` from anything not free, then a random such pixel in it. The margin is relaxed
    step by step when no zone has room.

    Arguments:
      zones: (H, W) int8 zone map of ``Anatomy.zone_map``.
      free: (H, W) bool, lung pixels outside the heart that no earlier finding took.
    """
    rows, cols = np.flatnonzero(free.any(axis=1)), np.flatnonzero(free.any(axis=0))
    if not rows.size:
        raise ValueError("no free lung pixel is left for a focal finding; the anatomy or the "
                         "earlier findings leave no lung field")
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    distance = np.zeros(free.shape)
    distance[window] = distance_transform_edt(np.pad(free[window], 1))[1:-1, 1:-1]
    for fraction in (1.0, 0.7, 0.4, 1e-6):
        candidates = np.flatnonzero((distance >= margin * fraction) & (zones >= 0))
        if candidates.size:
            labels = zones.ravel()[candidates]
            label = rng.choice(np.unique(labels))
            chosen = candidates[labels == label]
            index = int(chosen[rng.integers(chosen.size)])
            size = free.shape[1]
            return SIDES[label // 3], ZONES[label % 3], float(index % size), float(index // size)
    raise ValueError("the free lung pixels lie outside every lung zone; the zone map does not "
                     "match the lung fields")


def _blob_delta(mask: np.ndarray, amplitude: float, size: int) -> np.ndarray:
    """(H, W) float32: ``amplitude`` over the mask, its edge softened inside the mask."""
    soft = gaussian_filter(mask.astype(np.float32), 1.0 * size / 256, truncate=3.0)
    return (amplitude * np.where(mask, np.maximum(soft, 0.6), 0.0)).astype(np.float32)


def _rotated(cx: float, cy: float, angle: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u, v), each (H, W), of every pixel in a frame turned by ``angle``."""
    yy, xx = grid(size)
    c, s = np.cos(angle), np.sin(angle)
    return (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c


def _focal(kind: str, anatomy: Anatomy, zones: np.ndarray, free: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str, str, str, int]:
    """(delta, mask, side, zone, grade, size_cm) of a nodule, mass, consolidation or
    atelectasis; the mask stays inside the free lung."""
    size = anatomy.size
    s = size / 256.0
    yy, xx = grid(size)
    cm = CM_PER_PX_AT_256 / s
    if kind == "nodule":
        radius = rng.uniform(8, 14) * s
        side, zone, cx, cy = _place(rng, zones, free, radius + 2 * s)
        mask = (np.hypot(xx - cx, yy - cy) <= radius) & free
        grade = "small" if radius < 10.5 * s else "well-defined"
        return _blob_delta(mask, rng.uniform(0.3, 0.38), size), mask, side, zone, grade, \
            max(1, round(2 * radius * cm))
    if kind == "mass":
        radius = rng.uniform(16, 26) * s
        side, zone, cx, cy = _place(rng, zones, free, radius + 2 * s)
        mask = Ellipse(cx, cy, radius * 0.6, radius * 0.6).mask(size)
        for _ in range(4):
            ox, oy = rng.normal(0, radius * 0.22, 2)
            mask |= Ellipse(cx + ox, cy + oy, radius * rng.uniform(0.55, 0.8),
                            radius * rng.uniform(0.55, 0.8)).mask(size)
        mask &= free
        x0, _, x1, _ = pixel_box(mask)
        return _blob_delta(mask, rng.uniform(0.34, 0.42), size), mask, side, zone, \
            "large" if radius > 21 * s else "lobulated", max(3, round((x1 - x0) * cm))
    if kind == "consolidation":
        rx, ry = rng.uniform(14, 26) * s, rng.uniform(12, 22) * s
        side, zone, cx, cy = _place(rng, zones, free, max(rx, ry) * 0.8)
        u, v = _rotated(cx, cy, rng.uniform(-0.5, 0.5), size)
        texture = gaussian_filter(rng.random((size, size), dtype=np.float32), 2.5 * s, truncate=3.0)
        texture = np.clip((texture - texture.mean()) / (texture.std() + 1e-6), -2, 2)
        mask = ((u / rx) ** 2 + (v / ry) ** 2 <= 1 + 0.25 * texture) & free
        bronchi = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(2, 4))):
            angle = rng.uniform(-0.6, 0.6) + (0 if side == "left" else np.pi)
            bu, bv = _rotated(cx - np.cos(angle) * rx * 0.6, cy - np.sin(angle) * ry * 0.6,
                              angle, size)
            bronchi |= (np.abs(bv) < 1.1 * s) & (bu > 0) & (bu < 1.3 * rx)
        amplitude = 0.3 * (0.8 + 0.1 * texture) * np.where(bronchi, 0.35, 1.0)
        delta = np.where(mask, amplitude, 0.0).astype(np.float32)
        return delta, mask, side, zone, "patchy" if rx * ry < 300 * s * s else "dense", 0
    if kind == "atelectasis":
        length, thickness = rng.uniform(20, 32) * s, rng.uniform(3.5, 6) * s
        side, zone, cx, cy = _place(rng, zones, free, length * 0.7)
        u, v = _rotated(cx, cy, rng.uniform(-0.4, 0.4), size)
        mask = (np.abs(u) <= length) & (np.abs(v) <= thickness * (1 - (u / length) ** 2) + 1.0)
        mask &= free
        return _blob_delta(mask, rng.uniform(0.3, 0.36), size), mask, side, zone, \
            "plate-like" if thickness < 4.8 * s else "band-like", 0
    raise ValueError(f"unknown focal finding type {kind!r}; expected one of "
                     f"nodule, mass, consolidation, atelectasis")


def _effusion(anatomy: Anatomy, canvas: Canvas, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, Lesion]:
    """(delta, mask, lesion): fluid filling one or both lung bases up to a meniscus that
    rises towards the lateral chest wall, blunting the costophrenic angle."""
    size = anatomy.size
    yy, xx = grid(size)
    side = str(rng.choice(["right", "left", "bilateral"], p=[0.4, 0.4, 0.2]))
    grade = str(rng.choice(["small", "moderate", "large"], p=[0.45, 0.4, 0.15]))
    low, high = {"small": (0.07, 0.15), "moderate": (0.17, 0.28), "large": (0.3, 0.42)}[grade]
    delta = np.zeros((size, size), np.float32)
    masks = []
    for lung_side in (SIDES if side == "bilateral" else (side,)):
        lung = anatomy.lungs[lung_side]
        height = lung.bottom - lung.top
        level = lung.bottom - height * rng.uniform(low, high)
        outward = (xx - lung.outline.cx) * (1 if lung_side == "left" else -1) / lung.outline.rx
        rise = rng.uniform(0.06, 0.14) * height
        meniscus = level - rise * np.clip(outward + 0.3, 0, None) ** 2
        mask = lung.mask(size) & (yy >= meniscus)
        target = 0.56 + 0.1 * np.clip((yy - meniscus) / (0.15 * height), 0, 1)
        delta[mask] = np.maximum(target - canvas.base, 0.0)[mask]  # the heart shows through
        masks.append(mask)
    lesion = Lesion("pleural effusion", side, "lower", grade, 0,
                    tuple(pixel_box(m) for m in masks))
    return delta, np.logical_or.reduce(masks), lesion


def _pneumothorax(anatomy: Anatomy, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Lesion]:
    """(delta, clear, mask, lesion): air between the chest wall and the edge of the partly
    collapsed lung, over an arc that always holds the apex and reaches a random way medially
    (up to 0.8 lung half-widths) and down the lateral wall (12-60 % of the lung's height);
    darker, free of markings, bounded by a thin bright visceral pleural line."""
    size = anatomy.size
    s = size / 256.0
    yy, xx = grid(size)
    side = str(rng.choice(SIDES))
    lung = anatomy.lungs[side]
    grade = str(rng.choice(["small", "moderate", "large"], p=[0.45, 0.4, 0.15]))
    depth = rng.uniform(*{"small": (0.12, 0.2), "moderate": (0.22, 0.32),
                          "large": (0.34, 0.46)}[grade]) * lung.outline.rx
    o = lung.outline
    inner = Ellipse(o.cx, o.cy + depth * rng.uniform(0, 0.6), o.rx - depth, o.ry - depth)
    outward = (xx - o.cx) * (1 if side == "left" else -1) / o.rx  # 0 at the apex, 1 laterally
    reach = lung.top + (lung.bottom - lung.top) * rng.uniform(0.12, 0.6)
    arc = (outward >= rng.uniform(-0.8, -0.05)) & (yy <= reach)
    field = lung.mask(size) & arc
    collapsed = inner.mask(size)
    air = field & ~collapsed
    line = collapsed & ~Ellipse(inner.cx, inner.cy, inner.rx - 1.6 * s, inner.ry - 1.6 * s
                                ).mask(size) & field
    delta = np.where(air, -0.07, 0.0).astype(np.float32)
    delta[line] = 0.28
    mask = air | line
    return delta, air, mask, Lesion("pneumothorax", side, "upper", grade, 0, (pixel_box(mask),))


def draw_finding(kind: str, anatomy: Anatomy, canvas: Canvas, zones: np.ndarray,
                 free: np.ndarray, rng: np.random.Generator) -> Drawn:
    """Draw one lung finding at a random place allowed for its type (cardiomegaly goes
    through ``enlarge_heart`` and ``draw_cardiomegaly`` instead).

    Arguments:
      kind: a finding type other than "cardiomegaly".
      anatomy: the patient, with the heart of this study.
      canvas: the rendered normal chest of this study.
      zones: (H, W) int8 zone map of ``anatomy.zone_map()``.
      free: (H, W) bool, lung pixels outside the heart that no earlier finding took.
      rng: the study's generator.

    Returns:
      The finding's delta, cleared markings, mask and lesion.
    """
    size = anatomy.size
    no_clear = np.zeros((size, size), bool)
    if kind == "pleural effusion":
        delta, mask, lesion = _effusion(anatomy, canvas, rng)
        return Drawn(delta, no_clear, mask, lesion)
    if kind == "pneumothorax":
        return Drawn(*_pneumothorax(anatomy, rng))
    delta, mask, side, zone, grade, size_cm = _focal(kind, anatomy, zones, free, rng)
    return Drawn(delta, no_clear, mask, Lesion(kind, side, zone, grade, size_cm,
                                               (pixel_box(mask),)))


def multifocal_count(kind: str, rng: np.random.Generator) -> int:
    """How many lesions a finding of type ``kind`` has: 2 or 3 with ``MULTIFOCAL_P[kind]``,
    else 1 (always 1 for the other types). Draws from ``rng`` for every type, so the draws do
    not depend on which types a study has."""
    multifocal = rng.random() < MULTIFOCAL_P.get(kind, 0.0)
    count = int(rng.choice(list(MULTIFOCAL_COUNT_P), p=list(MULTIFOCAL_COUNT_P.values())))
    return count if multifocal else 1


def draw_multifocal(kind: str, count: int, anatomy: Anatomy, zones: np.ndarray,
                    free: np.ndarray, rng: np.random.Generator) -> Drawn:
    """``count`` separate lesions of one focal type (nodule or consolidation) as one finding,
    each placed as :func:`draw_finding` places one, away from the others; one box per lesion.

    Arguments are those of :func:`draw_finding`; ``free`` is not changed.
    """
    if kind not in MULTIFOCAL_P:
        raise ValueError(f"{kind!r} cannot be multifocal; expected one of {sorted(MULTIFOCAL_P)}")
    free = free.copy()
    delta = np.zeros(free.shape, np.float32)
    parts, sides, grades = [], [], []
    for _ in range(count):
        part_delta, mask, side, _, grade, _ = _focal(kind, anatomy, zones, free, rng)
        delta += part_delta
        free &= ~mask
        parts.append(mask)
        sides.append(side)
        grades.append(grade)
    side = sides[0] if len(set(sides)) == 1 else "bilateral"
    lesion = Lesion(kind, side, "", grades[0], 0, tuple(pixel_box(m) for m in parts),
                    tuple(sides))
    return Drawn(delta, np.zeros(free.shape, bool), np.logical_or.reduce(parts), lesion,
                 tuple(parts))
