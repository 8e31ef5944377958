"""Annotation rows of a generated study: canonical report / vqa / class rows and the reference
code's ``.pth`` dict, plus the deterministic JSON Lines writer.

Canonical boxes are pixels (xyxy) of the generated image. Every finding dict also carries the
optional keys ``type``, ``side`` and ``zone`` (for analysis and the label prior).
"""
from __future__ import annotations

from typing import Any

from utils.synthcxr.findings import Lesion

REFERENCE_SIZE = 640


def finding_dict(lesion: Lesion, phrase: str) -> dict[str, Any]:
    """The canonical finding of a lesion, with its extra ``type``/``side``/``zone`` keys."""
    return {"phrase": phrase, "boxes": [list(box) for box in lesion.boxes], "type": lesion.type,
            "side": lesion.side, "zone": lesion.zone}


def report_row(study_id: str, patient: str, report: str, lesions: list[Lesion],
               phrases: list[str], size: int) -> dict[str, Any]:
    """The canonical task-"report" row of a study."""
    return {"id": study_id, "image": f"images/{study_id}.png", "patient": patient,
            "report": report, "task": "report", "question": "", "answer": "", "label": "",
            "width": size, "height": size,
            "findings": [finding_dict(lesion, phrase) for lesion, phrase in zip(lesions, phrases)]}


def vqa_rows(row: dict[str, Any], questions: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """One task-"vqa" row per finding of a report row.

    Arguments:
      row: the study's report row.
      questions: per finding (question, answer, the finding's phrase as it appears in the answer).
    """
    return [{**row, "id": f"{row['id']}_q{index}", "task": "vqa", "question": question,
             "answer": answer, "findings": [{**finding, "phrase": shown}]}
            for index, (finding, (question, answer, shown))
            in enumerate(zip(row["findings"], questions))]


def class_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One task-"class" row per finding: the label is the finding type, and so is the phrase."""
    return [{**row, "id": f"{row['id']}_c{index}", "task": "class", "label": finding["type"],
             "findings": [{**finding, "phrase": finding["type"]}]}
            for index, finding in enumerate(row["findings"])]


def reference_dict(rows: list[dict[str, Any]]) -> dict[str, list]:
    """The reference code's report schema, to be ``torch.save``d.

    One entry per phrase (an image with two findings gives two entries with the same image and
    report); normal studies are absent, as in the reference files.

    Arguments:
      rows: canonical report rows (pixel boxes of images ``width`` x ``height``).

    Returns:
      Parallel lists: ``image_paths`` (relative to the output folder), ``bboxes`` (a tuple
      ``(x, y, w, h)`` in pixels of the image resized to 640 x 640, i.e. every coordinate
      scaled by 640 / width or 640 / height, or a list of such tuples for a finding with
      several boxes), ``phrases`` (str) and ``all_reports`` (a list holding the report).
    """
    data: dict[str, list] = {"image_paths": [], "bboxes": [], "phrases": [], "all_reports": []}
    for row in rows:
        sx, sy = REFERENCE_SIZE / row["width"], REFERENCE_SIZE / row["height"]
        for finding in row["findings"]:
            boxes = [(round(x0 * sx, 2), round(y0 * sy, 2), round((x1 - x0) * sx, 2),
                      round((y1 - y0) * sy, 2)) for x0, y0, x1, y1 in finding["boxes"]]
            data["image_paths"].append(row["image"])
            data["bboxes"].append(boxes[0] if len(boxes) == 1 else boxes)
            data["phrases"].append(finding["phrase"])
            data["all_reports"].append([row["report"]])
    return data
