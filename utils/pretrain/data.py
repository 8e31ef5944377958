"""The pretraining set as the pretraining loops read it: rows split by patient, images, masks."""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from utils.synthcxr.pretrain import read_pretraining_rows, unpack_layers

HELD_OUT_EVERY = 10  # one patient in ten is held out to measure the pretraining


Rows = list[dict[str, Any]]


def split_by_patient(rows: Rows) -> tuple[Rows, Rows]:
    """(fit rows, held-out rows): a patient is held out when the CRC32 of its id is divisible
    by ``HELD_OUT_EVERY``, so the split does not depend on the set's size or order. A set too
    small to hold out a patient that way holds out its last patient."""
    held = {row["patient"] for row in rows
            if zlib.crc32(row["patient"].encode()) % HELD_OUT_EVERY == 0}
    patients = sorted({row["patient"] for row in rows})
    if not held and len(patients) > 1:
        held = {patients[-1]}
    fit = [row for row in rows if row["patient"] not in held]
    return fit, [row for row in rows if row["patient"] in held]


def load_rows(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pretraining rows of ``folder`` (the ``pretrain/`` folder), split by patient."""
    rows = read_pretraining_rows(folder)
    fit, held_out = split_by_patient(rows)
    if not fit or not held_out:
        raise ValueError(f"{folder}: the pretraining set has {len({r['patient'] for r in rows})} "
                         "patient(s); at least 2 are needed (one is held out); raise --n_pretrain")
    return fit, held_out


def read_gray(path: Path) -> np.ndarray:
    """(H, W) uint8 of an 8-bit PNG; the error names the file."""
    try:
        with Image.open(path) as image:
            if image.mode != "L":
                raise ValueError(f"expected an 8-bit grayscale PNG, got mode {image.mode}")
            return np.asarray(image)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: {error}; regenerate the pretraining set") from None


def read_masks(folder: Path, row: dict[str, Any]) -> np.ndarray:
    """(L, H, W) bool: the row's L layers, unpacked from its mask PNG."""
    packed = read_gray(folder / row["mask"])
    if packed.shape != (row["height"], row["width"]):
        raise ValueError(f"{folder / row['mask']}: {packed.shape[1]} x {packed.shape[0]} "
                         f"pixels, the row says {row['width']} x {row['height']}")
    masks = unpack_layers(packed, len(row["layers"]))
    empty = [layer["name"] for layer, mask in zip(row["layers"], masks) if not mask.any()]
    if empty:
        raise ValueError(f"{folder / row['mask']}: layers {empty} of {row['id']} are empty")
    return masks
