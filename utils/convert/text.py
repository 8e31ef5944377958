"""Report text: MIMIC-CXR sections, phrases as verbatim spans, templated sentences."""
from __future__ import annotations

import re
from typing import Sequence

# The MIMIC-CXR section names that hold the findings or the impression: besides FINDINGS and
# IMPRESSION, the combined and synonymous headers and the misspellings that occur in the
# reports (the names MIT-LCP's MIMIC-CXR section parser maps to findings or impression).
KEPT_SECTIONS = frozenset({
    "FINDINGS", "FINDING", "FINDINS", "FINDNGS", "FINDNINGS", "FINIDNGS", "FINDGINGS",
    "FINDINDGS", "REFERENCE FINDINGS", "CHEST, TWO VIEWS",
    "IMPRESSION", "IMPRESSIONS", "IMPRESSON", "IMPRESION", "IMPESSION", "IMPRESSOIN",
    "IMPRRESSION", "IMOPRESSION", "IMPRSSION", "IMPERSSION", "MPRESSION", "CONCLUSION",
    "CONCLUSIONS", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION", "FINDINGS / IMPRESSION",
    "FINDINGS/ IMPRESSION", "IMPRESSION AND FINDINGS"})
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z ,&/()-]*[A-Z)])[ \t]*:", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NEGATION = re.compile(r"\b(no|not|without|negative for|free of)\b", re.IGNORECASE)


def normalise_space(text: str) -> str:
    """Collapse every run of white space (line breaks included) into one space."""
    return " ".join(text.split())


def mimic_findings_impression(text: str) -> tuple[str, bool]:
    """The FINDINGS and IMPRESSION sections of a MIMIC-CXR report, as one line of text.

    A section runs from its header (an upper-case name and a colon at the start of a line,
    e.g. ``FINDINGS:``) to the next header. The sections of ``KEPT_SECTIONS`` (FINDINGS,
    IMPRESSION, their combined forms, CONCLUSION and the misspellings found in MIMIC-CXR) are
    kept, in report order, with their headers dropped and white space collapsed.
    Returns:
      ``(text, True)``; or, when the report has neither section, ``(the whole report without
      its "FINAL REPORT" title, white space collapsed, False)``.
    """
    headers = list(_HEADER.finditer(text))
    parts = []
    for index, match in enumerate(headers):
        if " ".join(match.group(1).split()) in KEPT_SECTIONS:
            end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
            parts.append(normalise_space(text[match.end():end]))
    kept = " ".join(p for p in parts if p)
    return (kept, True) if kept else (normalise_space(text.replace("FINAL REPORT", "", 1)), False)


def is_verbatim(phrase: str, report: str) -> bool:
    """Whether ``phrase`` occurs in ``report`` exactly (white space collapsed in both)."""
    return normalise_space(phrase) in normalise_space(report)


def sentence_with(report: str, keywords: Sequence[str]) -> str | None:
    """The first sentence of ``report`` that affirms one of ``keywords`` (any case).

    A sentence that negates the keyword ("no", "not", "without", "negative for" or "free of"
    before it, as in "No effusion is seen") does not count. The sentence is returned without
    its final punctuation, so it is a verbatim span of the report. Keywords are tried in
    order; None when none is affirmed.
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(report.strip()) if s.strip()]
    for keyword in keywords:
        for sentence in sentences:
            at = sentence.lower().find(keyword.lower())
            if at >= 0 and not _NEGATION.search(sentence[:at]):
                return sentence.rstrip(".!?;: ")
    return None


def render_phrase(template: str, words: dict[str, str]) -> str:
    """Fill ``{side}`` / ``{zone}`` in a phrase template, tidy the spaces, capitalise.

    A "central" side is dropped ("Nodule in the central upper lung zone" reads oddly), so
    ``"Nodule in the {side} {zone} lung zone"`` gives "Nodule in the upper lung zone" there.
    Raises KeyError for any other field in the template.
    """
    side = "" if words.get("side") == "central" else words.get("side", "")
    text = normalise_space(template.format(side=side, zone=words.get("zone", "")))
    return text[:1].upper() + text[1:]


def join_sentences(phrases: Sequence[str]) -> str:
    """Phrases as a report: each one a sentence ending in a full stop."""
    return " ".join(f"{p.rstrip('.')}." for p in phrases)


def grounded_report_row(row_id: str, image: str, patient: str, report: str | None,
                        findings: list[dict], width: int, height: int, source: str) -> dict:
    """A canonical "report" row; without a user report the phrases become a templated one.

    The row's ``label`` lists the findings' categories in order, without repeats.
    """
    row = {"id": row_id, "image": image, "patient": patient,
           "report": report or join_sentences([f["phrase"] for f in findings]),
           "findings": findings, "task": "report", "question": "", "answer": "",
           "label": ", ".join(dict.fromkeys(f["category"] for f in findings)),
           "width": width, "height": height, "source": source}
    if report is None:
        row["templated"] = True
    return row

