"""One SynthCXR study: its anatomy, findings, image, report and VQA pairs.

``make_study`` also returns the study's masks: the lung fields and the heart (anatomy) and,
per finding box, the pixels the finding changes (lesions); the pretraining set saves them.

Deterministic: a patient's anatomy draws from ``default_rng([seed, patient])``, the finding
types of its study j from ``default_rng([seed, patient, j, 0])``, whether its nodule or
consolidation is multifocal from ``default_rng([seed, patient, j, 2])`` and everything else of
that study from ``default_rng([seed, patient, j, 1])``, so a study does not depend on which
process renders it or in which order, and a study without a multifocal finding is the one the
generator wrote before multifocal findings existed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from utils.synthcxr.anatomy import finish, render_anatomy, sample_anatomy
from utils.synthcxr.findings import (
    DRAW_ORDER,
    FINDING_TYPES,
    Lesion,
    draw_cardiomegaly,
    draw_finding,
    draw_multifocal,
    enlarge_heart,
    multifocal_count,
)
from utils.synthcxr.reports import question_for, write_report

FINDING_COUNT_P = (0.2, 0.4, 0.28, 0.12)  # 0, 1, 2 or 3 findings a study
MAX_LAYERS = 8  # mask layers of a study: the bits of a pretraining mask PNG


@dataclass(frozen=True)
class Layer:
    """One mask of a study.

    Arguments:
      name: "right lung", "left lung", "heart", or a finding type with its side
        ("nodule right", "pleural effusion left", "cardiomegaly"; lesion k of a multifocal
        finding: "nodule 2 right").
      kind: "anatomy" or "lesion".
      mask: (H, W) bool.
    """

    name: str
    kind: str
    mask: np.ndarray


@dataclass(frozen=True)
class Study:
    """One generated study (its image is saved separately).

    Arguments:
      id, patient: identifiers ("p00012_s1", "p00012").
      report: the report text.
      lesions: the findings, in report-phrase order.
      phrases: per lesion, its phrase as it appears in the report.
      questions: per lesion, (question, answer, phrase as it appears in the answer).
    """

    id: str
    patient: str
    report: str
    lesions: list[Lesion]
    phrases: list[str]
    questions: list[tuple[str, str, str]]


def study_kinds(seed: int, patient: int, index: int) -> list[str]:
    """The finding types of a study (0 to 3 distinct types, about 20 % none)."""
    rng = np.random.default_rng([seed, patient, index, 0])
    count = int(rng.choice(len(FINDING_COUNT_P), p=FINDING_COUNT_P))
    return [str(kind) for kind in rng.choice(FINDING_TYPES, size=count, replace=False)]


def lesion_layers(lesion: Lesion, mask: np.ndarray, parts: tuple[np.ndarray, ...] = ()
                  ) -> list[Layer]:
    """One lesion layer per box of a finding: its mask cut to that box (the two sides of a
    bilateral effusion become two layers), or, for a multifocal finding, each lesion's own
    mask ``parts``."""
    if parts:
        return [Layer(f"{lesion.type} {number} {side}", "lesion", part)
                for number, (side, part) in enumerate(zip(lesion.part_sides, parts), start=1)]
    sides = ("right", "left") if lesion.side == "bilateral" else (lesion.side,)
    layers = []
    for side, (x0, y0, x1, y1) in zip(sides, lesion.boxes):
        part = np.zeros_like(mask)
        part[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
        layers.append(Layer(f"{lesion.type} {side}".strip(), "lesion", part))
    return layers


def make_study(seed: int, patient: int, index: int, size: int
               ) -> tuple[np.ndarray, Study, list[Layer]]:
    """Render study ``index`` of ``patient`` and write its report and VQA pairs.

    Returns:
      The (size, size) uint8 image, the study and its mask layers (anatomy first, then the
      lesions in drawing order).
    """
    anatomy = sample_anatomy(np.random.default_rng([seed, patient]), size)
    kinds = study_kinds(seed, patient, index)
    rng = np.random.default_rng([seed, patient, index, 1])
    multifocal = np.random.default_rng([seed, patient, index, 2])
    grade = ""
    if "cardiomegaly" in kinds:
        heart, grade = enlarge_heart(anatomy, rng)
        anatomy = anatomy.with_heart(heart)
    canvas = render_anatomy(anatomy, rng)
    zones = anatomy.zone_map()
    free = canvas.visible.copy()
    image = canvas.base.copy()
    clear = np.zeros_like(free)
    lesions, layers = [], [Layer(f"{side} lung", "anatomy", anatomy.lungs[side].mask(size))
                           for side in ("right", "left")]
    layers.append(Layer("heart", "anatomy", anatomy.heart.mask(size) & anatomy.body.mask(size)))
    ordered = [k for k in DRAW_ORDER if k in kinds]
    for number, kind in enumerate(ordered):
        # at most MAX_LAYERS layers: later findings keep one layer each, an effusion two
        room = MAX_LAYERS - len(layers) - (len(ordered) - number - 1) - (
            "pleural effusion" in ordered[number + 1:])
        count = min(multifocal_count(kind, multifocal), room)
        if kind == "cardiomegaly":
            drawn = draw_cardiomegaly(anatomy, grade)
        elif count > 1:
            drawn = draw_multifocal(kind, count, anatomy, zones, free, rng)
        else:
            drawn = draw_finding(kind, anatomy, canvas, zones, free, rng)
        image += drawn.delta
        clear |= drawn.clear
        free &= ~drawn.mask
        lesions.append(drawn.lesion)
        layers.extend(lesion_layers(drawn.lesion, drawn.mask, drawn.parts))
    image += np.where(clear, 0.0, canvas.markings)
    lesions = [lesions[i] for i in rng.permutation(len(lesions))]
    previous = set(study_kinds(seed, patient, index - 1)) if index else None
    report, phrases, wordings = write_report(lesions, index, previous, rng)
    questions = [question_for(lesion, wording, rng) for lesion, wording in zip(lesions, wordings)]
    return finish(image, rng), Study(f"p{patient:05d}_s{index}", f"p{patient:05d}", report,
                                     lesions, phrases, questions), layers


def save_study(job: tuple[Path, int, int, int, int]) -> Study:
    """Make one study and save its image as ``<images>/<id>.png`` (8-bit grayscale, fixed
    Pillow options). ``job`` is (images folder, seed, patient, study index, image size)."""
    images, seed, patient, index, size = job
    image, study, _ = make_study(seed, patient, index, size)
    Image.fromarray(image).save(images / f"{study.id}.png", format="PNG", optimize=False,
                                compress_level=3)
    return study
