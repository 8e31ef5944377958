"""Identifiers hidden in the image paths of MIMIC-CXR and NIH ChestX-ray8."""
from __future__ import annotations

import re
from pathlib import PurePosixPath

_MIMIC = re.compile(r"(?:^|/)files/p\d{2}/(p\d{8})/(s\d{8})/([^/]+)\.(?:jpg|png|dcm)$")
_NIH = re.compile(r"^(\d{8})_\d{3}\.png$")


def mimic_ids(path: str) -> tuple[str, str, str] | None:
    """``(patient, study, dicom_id)`` of ``files/p10/p10000032/s50414267/<dicom_id>.jpg``."""
    match = _MIMIC.search(path.replace("\\", "/"))
    return (match.group(1), match.group(2), match.group(3)) if match else None


def mimic_report_path(image_path: str) -> str:
    """``files/p10/p10000032/s50414267.txt``: the report of the study that holds the image."""
    return str(PurePosixPath(image_path.replace("\\", "/")).parent.with_suffix(".txt"))


def patient_from_path(path: str) -> str:
    """The patient id in a MIMIC-CXR (``p10000032``) or NIH (``00000001_000.png`` -> ``1``) path.

    Returns "" when the path follows neither layout.
    """
    ids = mimic_ids(path)
    if ids:
        return ids[0]
    match = _NIH.match(PurePosixPath(path.replace("\\", "/")).name)
    return str(int(match.group(1))) if match else ""
