"""Conversation templates: what the model is asked, and the answer it must write.

The prompt holds the image and the report (or the VQA question and answer, or the class
label and, when the row has one, its description; a VQA row may have only the answer and a
class row only the description, as many of the reference code's files do, and then get
templates without the missing field); it never holds the answer phrases.
Training draws one of several templates per sample; evaluation always uses the first one, so
numbers do not depend on a random draw.
The conversation follows LLaVA-1.5: ``"USER: <image>\\n{question} ASSISTANT:"``.
"""
from __future__ import annotations

import random
import re

from model.constants import BOX_TOKEN
from utils.annotations import Sample

NO_FINDING_ANSWER = "No finding to ground."

REPORT_TEMPLATES = (
    "Report: {report}\nGround every diagnostic phrase of this report in the chest X-ray.",
    "Here is the radiology report of this chest X-ray: {report}\n"
    "Find each diagnostic phrase and locate it.",
    "{report}\nWhich findings of this report are visible, and where are they?",
    "Read the report and ground its findings in the image. Report: {report}",
)
VQA_TEMPLATES = (
    "Question: {question}\nAnswer: {answer}\nGround the answer in the chest X-ray.",
    "{question} {answer}\nLocate what the answer describes.",
)
CLASS_TEMPLATES = (
    "The chest X-ray shows {label}. Ground it in the image.",
    "Locate the {label} in this chest X-ray.",
)
# a VQA row with an answer but no question (the reference code's Answer_all column holds whole
# question/answer transcripts): the answer is the whole request
VQA_ANSWER_TEMPLATES = (
    "Answer: {answer}\nGround the answer in the chest X-ray.",
    "{answer}\nLocate what the answer describes.",
)
# a class row with a description but no class name: the description is the whole request
CLASS_DESCRIPTION_TEMPLATES = (
    "Ground the findings this description names in the chest X-ray.",
    "Locate what the description names in this chest X-ray.",
)
TEMPLATES = {"report": REPORT_TEMPLATES, "vqa": VQA_TEMPLATES, "class": CLASS_TEMPLATES}


def templates_for(sample: Sample) -> tuple[str, ...]:
    """The templates of a sample's task (for a VQA row without a question, those of its answer
    alone; for a class row without a label, those of its description alone)."""
    if sample.task == "vqa" and not sample.question:
        return VQA_ANSWER_TEMPLATES
    if sample.task == "class" and not sample.label:
        return CLASS_DESCRIPTION_TEMPLATES
    return TEMPLATES[sample.task]


def question_text(sample: Sample, report: str | None = None, rng: random.Random | None = None,
                  **texts: str) -> str:
    """The user's request for one sample.

    Arguments:
      sample: the annotation record.
      report: the (possibly truncated) report text to use instead of ``sample.report``.
      rng: draws a training template; ``None`` selects the fixed evaluation template.
      texts: (possibly truncated) ``question``, ``answer`` or ``description`` to use instead
        of the sample's.
    """
    templates = templates_for(sample)
    template = templates[0] if rng is None else rng.choice(templates)
    fields = {"report": sample.report if report is None else report,
              "question": sample.question, "answer": sample.answer, "label": sample.label,
              "description": sample.description, **texts}
    text = template.format(**fields)
    if sample.task == "class" and fields["description"]:
        text = f"Description: {fields['description']}\n{text}"
    return text


def prompt_text(question: str, image_token: str) -> str:
    """The full prompt up to the assistant's turn (LLaVA-1.5 conversation)."""
    return f"USER: {image_token}\n{question} ASSISTANT:"


def clean_phrase(phrase: str) -> str:
    """A phrase without surrounding spaces and final punctuation, as written in answers."""
    return re.sub(r"[\s.;,:]+$", "", phrase.strip())


def answer_text(phrases: list[str]) -> str:
    """The supervised answer: every finding in report order as ``"phrase. It is [BOX]."``."""
    if not phrases:
        return NO_FINDING_ANSWER
    return " ".join(f"{clean_phrase(p)}. It is {BOX_TOKEN}." for p in phrases)
