"""Generate SynthCXR: images, canonical JSONL (report / vqa / class rows) and reference .pth.

Deterministic: study j of patient i draws from ``numpy.random.default_rng([seed, i, j])``, so
one seed gives byte-identical files. Patients are assigned to train, val and test in turn, so
no patient is in two splits.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.synthcxr.anatomy import finish, render_anatomy, sample_anatomy
from utils.synthcxr.findings import (FINDING_TYPES, Lesion, draw_finding, enlarge_heart,
                                     sample_location)
from utils.synthcxr.prior import phrase_prior_rate
from utils.synthcxr.reports import write_report

VERSION = 1
SPLITS = ("train", "val", "test")
REFERENCE_SIZE = 640
FINDING_COUNT_P = (0.2, 0.4, 0.28, 0.12)  # 0, 1, 2 or 3 findings
QUESTIONS = {"nodule": "Is there a pulmonary nodule?", "mass": "Is there a lung mass?",
             "consolidation": "Is there any consolidation?",
             "pleural effusion": "Is there a pleural effusion?",
             "pneumothorax": "Is there a pneumothorax?", "cardiomegaly": "Is the heart enlarged?",
             "atelectasis": "Is there atelectasis?"}


@dataclass(frozen=True)
class Study:
    """One generated image with its report and findings."""

    id: str
    patient: str
    image: np.ndarray
    report: str
    lesions: list[Lesion]
    phrases: list[str]


def make_study(seed: int, patient: int, index: int, size: int) -> Study:
    patient_rng = np.random.default_rng([seed, patient])
    anatomy = sample_anatomy(patient_rng, size)
    rng = np.random.default_rng([seed, patient, index])
    count = int(rng.choice(4, p=FINDING_COUNT_P))
    kinds = [str(k) for k in rng.choice(FINDING_TYPES, size=count, replace=False)]
    heart, lesions = anatomy.heart, []
    if "cardiomegaly" in kinds:
        heart, lesion = enlarge_heart(anatomy, rng)
        lesions.append(lesion)
    image, lungs = render_anatomy(anatomy, heart, rng)
    for kind in kinds:
        if kind == "cardiomegaly":
            continue
        side, zone = sample_location(kind, rng)
        delta, _, lesion = draw_finding(kind, side, zone, anatomy, lungs, rng)
        image = image + delta
        lesions.append(lesion)
    order = [int(i) for i in rng.permutation(len(lesions))]
    lesions = [lesions[i] for i in order]
    report, phrases = write_report(lesions, rng)
    return Study(f"p{patient:05d}_s{index}", f"p{patient:05d}", finish(image, rng), report,
                 lesions, phrases)


def plan_patients(seed: int, counts: dict[str, int]) -> dict[str, list[tuple[int, int]]]:
    """(patient, study) pairs per split; each patient has 1-3 studies, all in one split."""
    rng = np.random.default_rng([seed, 10 ** 6])
    plan: dict[str, list[tuple[int, int]]] = {split: [] for split in SPLITS}
    patient = 0
    for split in SPLITS:
        while len(plan[split]) < counts[split]:
            studies = min(int(rng.integers(1, 4)), counts[split] - len(plan[split]))
            plan[split].extend((patient, j) for j in range(studies))
            patient += 1
    return plan


def finding_dict(lesion: Lesion, phrase: str) -> dict:
    return {"phrase": phrase, "boxes": [list(b) for b in lesion.boxes], "type": lesion.type,
            "side": lesion.side, "zone": lesion.zone}


def report_row(study: Study, size: int) -> dict:
    return {"id": study.id, "image": f"images/{study.id}.png", "patient": study.patient,
            "report": study.report, "task": "report", "question": "", "answer": "", "label": "",
            "width": size, "height": size,
            "findings": [finding_dict(l, p) for l, p in zip(study.lesions, study.phrases)]}


def vqa_rows(row: dict) -> list[dict]:
    """A question per finding; its answer holds the report's phrase verbatim."""
    rows = []
    for index, finding in enumerate(row["findings"]):
        answer = f"Yes. {finding['phrase'][0].upper()}{finding['phrase'][1:]}."
        shown = answer[5:-1]
        rows.append({**row, "id": f"{row['id']}_q{index}", "task": "vqa",
                     "question": QUESTIONS[finding["type"]], "answer": answer,
                     "findings": [{**finding, "phrase": shown}]})
    return rows


def class_rows(row: dict) -> list[dict]:
    """A class row per finding: the label is the finding type, and so is the phrase."""
    return [{**row, "id": f"{row['id']}_c{index}", "task": "class", "label": finding["type"],
             "findings": [{**finding, "phrase": finding["type"]}]}
            for index, finding in enumerate(row["findings"])]


def reference_dict(rows: list[dict], size: int) -> dict[str, list]:
    """The reference code's schema: one entry per phrase, boxes (x, y, w, h) at 640 x 640.

    Normal studies (no phrase) are absent, as in the reference files.
    """
    scale = REFERENCE_SIZE / size
    data: dict[str, list] = {"image_paths": [], "bboxes": [], "phrases": [], "all_reports": []}
    for row in rows:
        for finding in row["findings"]:
            boxes = [tuple(round(v * scale, 2) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1]))
                     for b in finding["boxes"]]
            data["image_paths"].append(row["image"])
            data["bboxes"].append(boxes[0] if len(boxes) == 1 else boxes)
            data["phrases"].append(finding["phrase"])
            data["all_reports"].append([row["report"]])
    return data


def write_jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True) + "\n")


def generate(out: Path, seed: int, counts: dict[str, int], size: int) -> dict:
    """Write the whole benchmark into ``out``; returns the meta record (also in meta.json)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows_by_split: dict[str, list[dict]] = {}
    for split, studies in plan_patients(seed, counts).items():
        rows = []
        for patient, index in studies:
            study = make_study(seed, patient, index, size)
            Image.fromarray(study.image, mode="L").save(out / "images" / f"{study.id}.png",
                                                        optimize=False, compress_level=6)
            rows.append(report_row(study, size))
        rows_by_split[split] = rows
        write_jsonl(rows, out / f"report_{split}.jsonl")
        write_jsonl([q for row in rows for q in vqa_rows(row)], out / f"vqa_{split}.jsonl")
        write_jsonl([c for row in rows for c in class_rows(row)], out / f"class_{split}.jsonl")
        torch.save(reference_dict(rows, size), out / f"report_{split}.pth")
    prior = phrase_prior_rate(rows_by_split["train"], rows_by_split["test"])
    meta = {"generator": "SynthCXR", "version": VERSION, "seed": seed, "image_size": size,
            "counts": counts, "finding_types": list(FINDING_TYPES),
            "phrase_prior_acc@0.5": round(prior, 4)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta
