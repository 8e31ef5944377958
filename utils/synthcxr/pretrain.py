"""The SynthCXR pretraining set: studies of patients of their own, with masks.

The tiny backbones are pretrained on it (``utils.tiny_checkpoints``): the language model on its
reports, SAM on box prompts of its masks. It shares no patient with train / val / test: its
patients are numbered from ``PRETRAIN_FIRST_PATIENT`` on (ids ``p1000000`` ...), far above the
evaluation splits' patients (numbered from 0), and it has its own seed, so every one of its
studies draws from generators the evaluation splits never use.

Written under ``<out>/pretrain/``:
  ``images/<id>.png``: the study, 8-bit grayscale, as the evaluation images;
  ``masks/<id>.png``: 8-bit bit flags, bit ``b`` set where layer ``b`` of the row is;
  ``pretrain.jsonl``: one row per study (``id``, ``patient``, ``image``, ``mask``, ``report``,
  ``width``, ``height`` and ``layers``: per layer its ``name``, ``kind`` ("anatomy" or
  "lesion"), ``bit`` and tight pixel ``box`` xyxy, exclusive max);
  ``meta.json``: seed, counts and layer counts.
"""
from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from utils.synthcxr.findings import pixel_box
from utils.synthcxr.study import MAX_LAYERS, make_study
from utils.text_io import write_jsonl

PRETRAIN_FIRST_PATIENT = 10 ** 6
PRETRAIN_DIR = "pretrain"
ROWS_NAME = "pretrain.jsonl"


def plan_pretraining(seed: int, count: int) -> list[tuple[int, int]]:
    """(patient, study index) pairs: 1-3 studies a patient, patients from
    ``PRETRAIN_FIRST_PATIENT`` on."""
    rng = np.random.default_rng([seed, PRETRAIN_FIRST_PATIENT])
    plan: list[tuple[int, int]] = []
    patient = PRETRAIN_FIRST_PATIENT
    while len(plan) < count:
        studies = min(int(rng.integers(1, 4)), count - len(plan))
        plan.extend((patient, j) for j in range(studies))
        patient += 1
    return plan


def pack_layers(masks: list[np.ndarray]) -> np.ndarray:
    """(H, W) uint8 with bit ``b`` set where ``masks[b]`` is (at most ``MAX_LAYERS`` masks)."""
    if len(masks) > MAX_LAYERS:
        raise ValueError(f"{len(masks)} mask layers do not fit the {MAX_LAYERS} bits of a PNG")
    packed = np.zeros(masks[0].shape, np.uint8)
    for bit, mask in enumerate(masks):
        packed |= mask.astype(np.uint8) << bit
    return packed


def unpack_layers(packed: np.ndarray, count: int) -> np.ndarray:
    """(count, H, W) bool masks of a bit-flag array written by :func:`pack_layers`."""
    bits = np.arange(count, dtype=np.uint8).reshape(-1, 1, 1)
    return (packed[None] >> bits) & 1 == 1


def save_pretraining_study(job: tuple[Path, int, int, int, int]) -> dict[str, Any]:
    """Make one pretraining study, save its image and mask PNGs and return its row.
    ``job`` is (pretrain folder, seed, patient, study index, image size)."""
    folder, seed, patient, index, size = job
    image, study, layers = make_study(seed, patient, index, size)
    options = {"format": "PNG", "optimize": False, "compress_level": 3}
    Image.fromarray(image).save(folder / "images" / f"{study.id}.png", **options)
    Image.fromarray(pack_layers([layer.mask for layer in layers])).save(
        folder / "masks" / f"{study.id}.png", **options)
    return {"id": study.id, "patient": study.patient, "image": f"images/{study.id}.png",
            "mask": f"masks/{study.id}.png", "report": study.report, "width": size,
            "height": size,
            "layers": [{"name": layer.name, "kind": layer.kind, "bit": bit,
                        "box": list(pixel_box(layer.mask))}
                       for bit, layer in enumerate(layers)]}


def generate_pretraining(out: Path, seed: int, count: int, size: int, workers: int = 1
                         ) -> dict[str, Any]:
    """Write ``count`` pretraining studies under ``out / PRETRAIN_DIR``.

    Arguments:
      out: the SynthCXR folder.
      seed: the pretraining seed (>= 0).
      count: studies.
      size: the image side in pixels.
      workers: processes rendering images (the files do not depend on it).

    Returns:
      The meta record, also written to ``out/pretrain/meta.json``.
    """
    folder = out / PRETRAIN_DIR
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(folder, seed, patient, index, size)
            for patient, index in plan_pretraining(seed, count)]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(save_pretraining_study, jobs,
                            chunksize=max(1, len(jobs) // (8 * workers)))
    else:
        rows = [save_pretraining_study(job) for job in jobs]
    write_jsonl(rows, folder / ROWS_NAME)
    layers = Counter(layer["kind"] for row in rows for layer in row["layers"])
    meta = {"generator": "SynthCXR pretraining set", "seed": seed, "image_size": size,
            "count": count, "patients": len({row["patient"] for row in rows}),
            "first_patient": PRETRAIN_FIRST_PATIENT, "layers": dict(sorted(layers.items()))}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n",
                                      encoding="utf-8")
    return meta


def read_pretraining_rows(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``<folder>/pretrain.jsonl``, checked; ``folder`` is the pretrain folder.

    Raises:
      FileNotFoundError: the set was not generated.
      ValueError: naming the file, the line and what is wrong.
    """
    path = folder / ROWS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; generate the pretraining set with "
                                "`python -m utils.synthcxr --out <folder> --n_pretrain N` "
                                "(`make data`)")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                row = json.loads(line)
                missing = [key for key in ("id", "patient", "image", "mask", "report", "width",
                                           "height", "layers") if key not in row]
                if missing:
                    raise ValueError(f"missing keys {missing}")
                for layer in row["layers"]:
                    x0, y0, x1, y1 = layer["box"]
                    if not (0 <= x0 < x1 <= row["width"] and 0 <= y0 < y1 <= row["height"]):
                        raise ValueError(f"layer {layer['name']!r} has box {layer['box']} "
                                         f"outside the {row['width']} x {row['height']} image")
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}, line {number}: {error}; regenerate the set with "
                                 "`python -m utils.synthcxr`") from None
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows; regenerate it with --n_pretrain >= 1")
    return rows
