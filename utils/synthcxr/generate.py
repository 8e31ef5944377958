"""Generate SynthCXR: images, canonical JSONL (report / vqa / class rows), reference ``.pth``
files and ``meta.json``.

Studies are rendered by a pool of worker processes (``workers``); each study draws only from
its own seeded generators (see ``study.py``) and the rows are written in plan order, so the
files do not depend on the number of workers. PNGs are written by Pillow with fixed options
and JSON with sorted keys: one seed gives byte-identical files. Patients (1 to 3 studies each)
are assigned to train, val and test in turn, so no patient is in two splits, and then, when
asked for, to a fourth split, ``calibration``: held-out images for conformal calibration
(``test.py --calibrate``), larger than val so that the calibrated coverage varies less from one
draw of the split to another. It comes after test, so adding it leaves the other three splits
byte-identical.
"""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.annotations import SPLITS
from utils.synthcxr.findings import FINDING_TYPES
from utils.synthcxr.prior import label_prior_rates
from utils.synthcxr.rows import class_rows, reference_dict, report_row, vqa_rows
from utils.synthcxr.study import save_study
from utils.text_io import write_jsonl

VERSION = 3  # 3: multifocal nodules and consolidations (several boxes under one phrase)
CALIBRATION_SPLIT = "calibration"  # the optional fourth split, after test


def plan_patients(seed: int, counts: dict[str, int]) -> dict[str, list[tuple[int, int]]]:
    """(patient, study index) pairs per split; each patient has 1-3 studies, all in one split.
    ``counts`` has train, val and test, and may have ``calibration``, planned last (a split of
    0 images has none)."""
    rng = np.random.default_rng([seed, 10 ** 6])
    splits = generated_splits(counts)
    plan: dict[str, list[tuple[int, int]]] = {split: [] for split in splits}
    patient = 0
    for split in splits:
        while len(plan[split]) < counts[split]:
            studies = min(int(rng.integers(1, 4)), counts[split] - len(plan[split]))
            plan[split].extend((patient, j) for j in range(studies))
            patient += 1
    return plan


def generated_splits(counts: dict[str, int]) -> tuple[str, ...]:
    """The splits written for ``counts``: train, val, test, and calibration when it has images."""
    return (*SPLITS, CALIBRATION_SPLIT) if counts.get(CALIBRATION_SPLIT, 0) > 0 else SPLITS


def generate(out: Path, seed: int, counts: dict[str, int], size: int, workers: int = 1
             ) -> dict[str, Any]:
    """Write the whole benchmark into ``out``.

    Arguments:
      out: the output folder (created; files of an earlier run are overwritten).
      seed: the seed (>= 0).
      counts: images per split, keys "train", "val", "test" and, optionally, "calibration".
      size: the image side in pixels.
      workers: processes rendering images (1: in this process).

    Returns:
      The meta record, also written to ``out/meta.json``.
    """
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    plan = plan_patients(seed, counts)
    jobs = [(images, seed, patient, index, size)
            for split in plan for patient, index in plan[split]]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            studies = pool.map(save_study, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
    else:
        studies = [save_study(job) for job in jobs]
    rows_by_split: dict[str, list[dict[str, Any]]] = {}
    start = 0
    for split in plan:
        rows, questions = [], []
        for study in studies[start:start + len(plan[split])]:
            row = report_row(study.id, study.patient, study.report, study.lesions,
                             study.phrases, size)
            rows.append(row)
            questions.extend(vqa_rows(row, study.questions))
        start += len(plan[split])
        rows_by_split[split] = rows
        write_jsonl(rows, out / f"report_{split}.jsonl")
        write_jsonl(questions, out / f"vqa_{split}.jsonl")
        write_jsonl([c for row in rows for c in class_rows(row)], out / f"class_{split}.jsonl")
        torch.save(reference_dict(rows), out / f"report_{split}.pth")
    rates = label_prior_rates(rows_by_split["train"], rows_by_split["test"])
    several = {split: sum(len(f["boxes"]) > 1 for row in rows for f in row["findings"])
               for split, rows in rows_by_split.items()}
    meta = {"generator": "SynthCXR", "version": VERSION, "seed": seed, "image_size": size,
            "counts": counts, "finding_types": list(FINDING_TYPES),
            "findings": {split: sum(len(row["findings"]) for row in rows)
                         for split, rows in rows_by_split.items()},
            "findings_with_several_boxes": several,
            "label_prior_acc@0.5": round(rates["all"], 4),
            "label_prior_acc@0.5_by_type": {k: round(v, 4) for k, v in rates.items()
                                             if k != "all"}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n",
                                   encoding="utf-8")
    return meta
