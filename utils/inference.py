"""One image and its text → grounded phrases in pixels of that image (``chat.py``, ``app.py``).

The prompt is the task's evaluation template (:mod:`utils.prompts`), built and preprocessed as
``test.py`` builds it, so a SynthCXR row gives the same phrases and boxes here and there. The
model writes ``"phrase. It is [BOX]."`` for each finding; every ``[BOX]`` carries N hypothesis
boxes, their mean, the per-coordinate variance and the scale-relative u
(:class:`model.box_decoder.BoxPrediction`). A model with several boxes per phrase reports each
of a phrase's present boxes in ``boxes`` (with its own hypotheses, variance, u and presence);
the phrase's ``box`` is then the box enclosing them. Boxes come back in the pixel frame of the
image as given (xyxy, origin top-left, x to the right); the variance is that of the
hypotheses' (cx, cy, w, h) about the box, in squared pixels (with test-time shifts, the
5 x N hypotheses of :mod:`model.test_time_shifts`, the image's own N first, whose mean is the
box). ``u`` is the signal the model's config names
(:mod:`model.uncertainty`). When the model folder holds ``calibration.json``, each phrase also
gets its calibrated box (``inflated_box``, containing the lesion for 1 - alpha of findings on
data like the calibration split) and an ``abstain`` flag (its u is not below the calibrated
threshold: the selective risk guarantee does not cover this box). Both are of the phrase's
``box`` (with several boxes, the enclosing one), not of each of its ``boxes``.

A report longer than the model's context is cut from its end, as training cuts it, so that the
prompt, the image tokens and ``max_new_tokens`` fit in ``model_max_length``; the cut is logged
and flagged in the result.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model.constants import TASKS
from model.uncertainty import reported_uncertainty, uncertainty_signals
from utils.annotations import Sample
from utils.evaluate import prediction_to_pixels
from utils.evaluation.calibration import inflate_boxes
from utils.evaluation.matching import generated_phrases
from utils.prompts import prompt_text, question_text
from utils.sam_transforms import preprocess_for_sam
from utils.span_decoding import (
    DECODINGS,
    DEFAULT_DECODING,
    DEFAULT_PHRASE_START_RATIO,
    check_phrase_start_ratio,
    span_constraint,
)
from utils.visualize import draw_grounding

logger = logging.getLogger(__name__)

TASK_FIELDS = {"report": ("report",), "vqa": ("question", "answer"), "class": ("label",)}
BOX_DECIMALS = 2  # pixel boxes are rounded as test.py's predictions.jsonl rounds them
VARIANCE_DECIMALS = 4
SCHEMA_VERSION = 2  # 2: each phrase lists its boxes (several boxes per phrase)


@dataclass
class PhraseBox:
    """One box of a phrase, as :class:`GroundedPhrase` describes its fields; ``presence`` is
    its presence probability (None for a single-box model, which has no presence)."""

    box: list[float]
    hypotheses: list[list[float]]
    variance: list[float]
    u: float
    presence: float | None


@dataclass
class GroundedPhrase:
    """One generated phrase and its box.

    ``box``: the mean box, pixel xyxy; ``hypotheses``: N pixel xyxy boxes (5 x N with
    test-time shifts); ``variance``: the hypotheses' mean squared deviation of (cx, cy, w, h)
    from the box, pixels²; ``u``: the uncertainty (higher =
    less sure). ``boxes``: every box the phrase reports, the most present first (one, equal to
    the above, for a single-box model; with several, the phrase's ``box`` and hypotheses
    enclose them). With a calibrated model, ``inflated_box`` (pixel xyxy) and ``abstain`` of
    the phrase's ``box``; both ``None`` otherwise (and left out of the JSON).
    """

    phrase: str
    box: list[float]
    hypotheses: list[list[float]]
    variance: list[float]
    u: float
    boxes: list[PhraseBox] = field(default_factory=list)
    inflated_box: list[float] | None = None
    abstain: bool | None = None


@dataclass
class GroundingResult:
    """What the model made of one image and its text.

    ``inputs`` holds the text fields of the task as they went into the prompt (a long report
    as cut); ``truncated`` says whether the report was cut.
    """

    width: int
    height: int
    task: str
    inputs: dict[str, str]
    truncated: bool
    generated_text: str
    phrases: list[GroundedPhrase] = field(default_factory=list)
    calibration: dict[str, Any] | None = None

    def to_json(self, image: str) -> dict[str, Any]:
        """The JSON document ``chat.py`` writes and ``app.py`` shows (see the README); a
        calibrated model adds ``calibration`` and each phrase's ``inflated_box`` and
        ``abstain``."""
        document = {"schema_version": SCHEMA_VERSION, "image": image, "width": self.width,
                    "height": self.height, "task": self.task, "inputs": dict(self.inputs),
                    "truncated": self.truncated, "generated_text": self.generated_text,
                    "box_format": "xyxy, pixels of the input image",
                    "phrases": [{key: value for key, value in asdict(phrase).items()
                                 if self.calibration is not None
                                 or key not in ("inflated_box", "abstain")}
                                for phrase in self.phrases]}
        if self.calibration is not None:
            document["calibration"] = dict(self.calibration)
        return document


def task_inputs(task: str, report: str = "", question: str = "", answer: str = "",
                label: str = "") -> dict[str, str]:
    """The text fields ``task`` needs, stripped; an empty or missing one is a ValueError."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    given = {"report": report, "question": question, "answer": answer, "label": label}
    inputs = {name: (given[name] or "").strip() for name in TASK_FIELDS[task]}
    empty = [name for name, text in inputs.items() if not text]
    if empty:
        flags = " and ".join(f"--{name}" for name in empty)
        raise ValueError(f"the {' and '.join(empty)} is empty: the {task} task needs {flags} "
                         "with some text")
    return inputs


class Grounder:
    """Runs an exported model on single images.

    Arguments:
      model: a :class:`model.grounding_model.UMedGround` in eval mode.
      processor: its processor (tokenizer with ``[BOX]``).
      model_max_length: the longest token sequence (prompt, image tokens and answer).
      max_new_tokens: the longest answer generated.
      decoding: "spans" (every phrase of a report copies a span of the prompt,
        :mod:`utils.span_decoding`; VQA and class prompts decode freely) or "free" (plain
        greedy decoding).
      phrase_start_ratio: span decoding's ratio for the earliest plausible phrase start
        (:mod:`utils.span_decoding`; 1: plain greedy spans).
    """

    def __init__(self, model: Any, processor: Any, model_max_length: int = 512,
                 max_new_tokens: int = 128, decoding: str = DEFAULT_DECODING,
                 phrase_start_ratio: float = DEFAULT_PHRASE_START_RATIO):
        if decoding not in DECODINGS:
            raise ValueError(f"decoding {decoding!r} is not one of {DECODINGS}")
        check_phrase_start_ratio(phrase_start_ratio)
        self.model = model
        self.decoding = decoding
        self.phrase_start_ratio = phrase_start_ratio
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_max_length = model_max_length
        self.max_new_tokens = max_new_tokens
        self.device = next(model.box_decoder.parameters()).device
        self.image_token_count = self._measure_image_tokens()

    def _measure_image_tokens(self) -> int:
        """How many tokens the processor expands the image placeholder into."""
        image_token = self.processor.image_token
        inputs = self.processor(images=Image.new("RGB", (64, 64)), text=image_token,
                                return_tensors="pt")
        return int((inputs["input_ids"] == self.tokenizer.convert_tokens_to_ids(image_token)).sum())

    def _length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def fit_prompt(self, task: str, inputs: dict[str, str]) -> tuple[str, dict[str, str], bool]:
        """The prompt, the inputs as used, and whether the report was cut to fit."""
        image_token = self.processor.image_token
        budget = self.model_max_length - self.image_token_count - self.max_new_tokens - 1
        used = dict(inputs)
        while True:
            sample = Sample(id="input", image_path=Path("input"), width=1, height=1, findings=(),
                            task=task, **used)
            prompt = prompt_text(question_text(sample), image_token)
            excess = self._length(prompt.replace(image_token, "")) - budget
            if excess <= 0:
                break
            report_ids = self.tokenizer(used.get("report", ""), add_special_tokens=False).input_ids
            if task != "report" or excess >= len(report_ids):
                raise ValueError(
                    f"the {task} prompt does not fit model_max_length={self.model_max_length} "
                    f"with {self.image_token_count} image tokens and max_new_tokens="
                    f"{self.max_new_tokens}; raise --model_max_length or shorten the text")
            used["report"] = self.tokenizer.decode(report_ids[:len(report_ids) - excess])
        truncated = used != inputs
        if truncated:
            logger.warning("the report is longer than model_max_length=%d allows and was cut to "
                           "its first %d characters (of %d), as in training",
                           self.model_max_length, len(used["report"]), len(inputs["report"]))
        return prompt, used, truncated

    @torch.no_grad()
    def ground(self, image: np.ndarray, task: str = "report", report: str = "",
               question: str = "", answer: str = "", label: str = "") -> GroundingResult:
        """Ground one image.

        Arguments:
          image: uint8 RGB (H, W, 3), as :func:`utils.image_io.read_image` returns it.
          task: "report" (``report``), "vqa" (``question`` and ``answer``) or "class"
            (``label``).
        Returns:
          the phrases with their boxes in pixels of ``image``.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} "
                             f"{tuple(image.shape)}")
        inputs = task_inputs(task, report, question, answer, label)
        prompt, used, truncated = self.fit_prompt(task, inputs)
        height, width = image.shape[:2]
        sam_image, content_scale = preprocess_for_sam(image, self.model.sam_encoder.img_size)
        encoded = self.processor(images=Image.fromarray(image), text=prompt, return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.device)
        spans = None
        if self.decoding == "spans":
            image_token_id = self.tokenizer.convert_tokens_to_ids(self.processor.image_token)
            spans = span_constraint(input_ids, self.tokenizer, image_token_id,
                                    self.model.box_token_id, [task], self.phrase_start_ratio)
        generated = self.model.generate(sam_image[None].to(self.device),
                                        encoded["pixel_values"].to(self.device), input_ids,
                                        torch.ones_like(input_ids), self.tokenizer,
                                        max_new_tokens=self.max_new_tokens,
                                        logits_processor=spans)
        prediction = generated.prediction
        count = len(generated.box_batch_index)
        scale = torch.tensor(content_scale, dtype=torch.float32).expand(count, 2)
        boxes, hypotheses = prediction_to_pixels(prediction, scale, [(width, height)] * count)
        to_pixels = torch.tensor([width / content_scale[0], height / content_scale[1]] * 2)
        variance = prediction.variance.float().cpu() * to_pixels.pow(2)
        text = generated.texts[0]
        u = reported_uncertainty(prediction, self.model.config.uncertainty).float().cpu()
        phrases = [GroundedPhrase(
            phrase=phrase, box=[round(v, BOX_DECIMALS) for v in boxes[q].tolist()],
            hypotheses=[[round(v, BOX_DECIMALS) for v in h] for h in hypotheses[q].tolist()],
            variance=[round(v, VARIANCE_DECIMALS) for v in variance[q].tolist()],
            u=float(u[q]))
            for q, phrase in enumerate(generated_phrases(
                generated.token_ids[0].tolist(), self.model.box_token_id,
                partial(self.tokenizer.decode, skip_special_tokens=True)))]
        for phrase, boxes_of_phrase in zip(phrases, phrase_boxes(
                prediction, scale, width, height, to_pixels, self.model.config.uncertainty)):
            phrase.boxes = boxes_of_phrase
        result = GroundingResult(width, height, task, used, truncated, text, phrases)
        if self.model.calibration is not None:
            self._calibrate(result, prediction, boxes, hypotheses)
        return result

    def _calibrate(self, result: GroundingResult, prediction: Any, boxes: torch.Tensor,
                   hypotheses: torch.Tensor) -> None:
        """Give every phrase of ``result`` its inflated box and abstain flag (in place).

        ``boxes`` (Q,4) and ``hypotheses`` (Q,N,4) are the pixel predictions of ``prediction``,
        the decoder output behind ``result.phrases``.
        """
        calibration = self.model.calibration
        signal = uncertainty_signals(prediction)[calibration.signal].float().cpu()
        count = len(result.phrases)
        sizes = np.tile([result.width, result.height], (count, 1))
        inflated = inflate_boxes(boxes[:count].numpy(), hypotheses[:count].numpy(), sizes,
                                 calibration.quantile, calibration.scale_floor)
        for q, phrase in enumerate(result.phrases):
            phrase.inflated_box = [round(v, BOX_DECIMALS) for v in inflated[q].tolist()]
            phrase.abstain = calibration.abstains(float(signal[q]))
        result.calibration = {"alpha": calibration.alpha, "signal": calibration.signal,
                              "threshold": calibration.threshold,
                              "target_risk": calibration.target_risk,
                              "delta": calibration.delta}


def phrase_boxes(prediction: Any, scale: torch.Tensor, width: int, height: int,
                 variance_scale: torch.Tensor, signal: str = "spread") -> list[list[PhraseBox]]:
    """The boxes each query of ``prediction`` (one image) reports, in pixels: its one box, or
    its present slots, the most present first; each box's u is that of ``signal``
    (:mod:`model.uncertainty`).

    Arguments:
      prediction: a :class:`model.box_decoder.BoxPrediction` of Q queries.
      scale: (Q,2) the padded-frame fraction the image covers.
      width, height: the image size in pixels.
      variance_scale: (4,) what turns a normalised (cx, cy, w, h) spread into pixels.
    """
    slots = prediction.slots
    source, count = (prediction, 1) if slots is None else (slots.boxes, slots.rows)
    rows = len(source.box)
    boxes, hypotheses = prediction_to_pixels(source, scale.repeat_interleave(count, dim=0),
                                             [(width, height)] * rows)
    variance = source.variance.float().cpu() * variance_scale.pow(2)
    u = reported_uncertainty(source, signal).float().cpu()
    presence = None if slots is None else slots.presence.float().cpu().flatten()
    order = [[0] for _ in range(rows)] if slots is None else slots.reported()
    return [[PhraseBox(box=[round(v, BOX_DECIMALS) for v in boxes[q * count + k].tolist()],
                       hypotheses=[[round(v, BOX_DECIMALS) for v in h]
                                   for h in hypotheses[q * count + k].tolist()],
                       variance=[round(v, VARIANCE_DECIMALS)
                                 for v in variance[q * count + k].tolist()],
                       u=float(u[q * count + k]),
                       presence=None if presence is None else float(presence[q * count + k]))
             for k in slots_of_query] for q, slots_of_query in enumerate(order)]


def overlay(image: np.ndarray, result: GroundingResult, max_u: float | None = None
            ) -> Image.Image:
    """The overlay picture: mean boxes thick (every box of a phrase), hypotheses dashed,
    phrase and u in the caption.

    ``max_u`` hides the boxes (and caption lines) of phrases whose u is above it.
    """
    findings = [{"phrase": p.phrase, "gt_boxes": [], "box": p.box, "hypotheses": p.hypotheses,
                 "boxes": [asdict(b) for b in p.boxes], "u": p.u,
                 "inflated_box": p.inflated_box, "abstain": p.abstain}
                for p in shown(result, max_u)]
    return draw_grounding(image, findings)


def shown(result: GroundingResult, max_u: float | None) -> list[GroundedPhrase]:
    """The phrases whose u is at most ``max_u`` (all of them for ``None``)."""
    return [p for p in result.phrases if max_u is None or p.u <= max_u]
