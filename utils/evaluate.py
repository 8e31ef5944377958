"""Evaluation of a uMedGround model on a split: the code behind ``test.py`` and validation.

Two measurements, labelled for what they are:
- ``grounding`` (end to end): the prompt holds the image and the report only. The model
  writes the phrases; each generated phrase is matched to a ground-truth finding (Hungarian
  matching on text similarity, see :mod:`utils.evaluation.matching`) and its box is scored
  against that finding's target box. A ground-truth finding left unmatched scores IoU 0;
  extra generated phrases are counted (``n_extra_predictions``).
- ``grounding_strict``: the same end-to-end boxes, with only the strict phrase pairs counted
  (same finding and side words, token F1 >= 0.8), so a phrase naming another finding or side
  never takes a box.
- ``decoding``: how the end-to-end answers were generated: ``spans`` (the default; every
  phrase of a report sample is a span of the prompt's text, :mod:`utils.span_decoding`) or
  ``free`` greedy decoding; ``phrase_start_ratio``: span decoding's ratio for the earliest
  plausible phrase start (1: plain greedy spans).
- ``n_phrases_outside_text``: ground-truth phrases of report samples (the task span
  decoding constrains) that are not a span of the prompt's text (case aside); span decoding
  cannot write them word for word, so a data set with many should be evaluated with
  ``free`` decoding too.
- ``grounding_given_phrase``: the true answer is teacher-forced and the boxes are read at its
  ``[BOX]`` positions (what the reference code reported).
IoU is computed in pixels of the real image, against the box enclosing all of a finding's
ground-truth boxes. The uncertainty metrics use the given-phrase boxes, where every finding has
a box and a u, so they measure the box uncertainty independently of phrase errors.
- ``grounding_boxes`` / ``grounding_boxes_given_phrase``: the same two paths scored per
  ground-truth box (:mod:`utils.evaluation.boxes`), against the boxes the model reports for
  the phrase: with several boxes per phrase the present slots, else its one box. The
  phrase's ``box`` of the rules above is then the box enclosing them
  (:mod:`model.box_decoder`).

``u`` is the signal ``model.config.uncertainty`` names (:mod:`model.uncertainty`); every
available signal is recorded per box (``u_signals``) and scored under
``uncertainty.<signal>``, and ``uncertainty_end_to_end`` scores them on the boxes of matched
generated phrases. A model with a ``calibration`` (``calibration.json``) also gets each box's
``inflated_box`` and ``abstain`` flag and the ``calibration`` block
(:func:`utils.evaluation.calibration.apply_calibration`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader
from torchvision.ops import box_convert
from tqdm import tqdm

from model.box_decoder import BoxPrediction
from model.uncertainty import reported_uncertainty, uncertainty_signals
from utils.annotations import Sample
from utils.dataset import GroundingCollator, GroundingDataset, ordered_findings
from utils.evaluation.boxes import BoxSetScore, box_set_metrics, score_box_set
from utils.evaluation.calibration import apply_calibration
from utils.evaluation.grounding import box_ious, grounding_metrics, to_pixels
from utils.evaluation.matching import (
    DEFAULT_MATCH_THRESHOLD,
    generated_phrases,
    match_phrases,
    strict_match,
)
from utils.evaluation.phrase import phrase_metrics
from utils.evaluation.uncertainty import signal_metrics, uncertainty_metrics
from utils.image_io import DEFAULT_MAX_PIXELS
from utils.prompts import question_text
from utils.sam_transforms import padded_to_image_boxes
from utils.span_decoding import (
    DECODINGS,
    DEFAULT_DECODING,
    DEFAULT_PHRASE_START_RATIO,
    SPAN_TASKS,
    check_phrase_start_ratio,
    span_constraint,
)


@dataclass
class EvaluationResult:
    """``metrics`` follows the ``metrics.json`` contract; ``records`` has one dict per finding."""

    metrics: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)


def metric_value(metrics: dict[str, Any], dotted: str) -> float:
    """``metric_value(m, "grounding.miou") == m["grounding"]["miou"]``."""
    value: Any = metrics
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"metric {dotted!r} not in the validation metrics")
        value = value[key]
    return float(value)


def prediction_to_pixels(prediction: BoxPrediction, content_scale: torch.Tensor,
                         sizes: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean boxes (Q,4) and hypotheses (Q,N,4) in pixel xyxy of each query's real image.

    Arguments:
      prediction: decoder output, cxcywh in SAM's padded frame.
      content_scale: (Q,2) the padded-frame fraction each query's image covers.
      sizes: (width, height) per query.
    """
    box = padded_to_image_boxes(box_convert(prediction.box.float().cpu(), "cxcywh", "xyxy"),
                                content_scale)
    hyp = padded_to_image_boxes(box_convert(prediction.hypotheses.float().cpu(), "cxcywh", "xyxy"),
                                content_scale[:, None])
    wh = torch.tensor(sizes, dtype=torch.float32).view(-1, 2)
    return to_pixels(box.clamp(0, 1), wh[:, 0], wh[:, 1]), \
        to_pixels(hyp.clamp(0, 1), wh[:, 0, None], wh[:, 1, None])


def _target_pixels(sample: Sample, finding) -> torch.Tensor:
    box = torch.tensor(finding.target_box(), dtype=torch.float32)
    return to_pixels(box, torch.tensor(float(sample.width)), torch.tensor(float(sample.height)))


def build_eval_dataset(model, processor, samples: Sequence[Sample], model_max_length: int = 512,
                       name: str = "dataset", *, image_window: str = "full",
                       max_image_pixels: int = DEFAULT_MAX_PIXELS) -> GroundingDataset:
    """The evaluation dataset of a split (fixed template): build it once and pass it to every
    :func:`evaluate_model` call (validation epochs, noise levels). ``image_window`` and
    ``max_image_pixels`` go to the dataset's image reader."""
    return GroundingDataset(samples, processor, model.sam_encoder.img_size, model_max_length,
                            train=False, name=name, image_window=image_window,
                            max_image_pixels=max_image_pixels)


@torch.no_grad()
def evaluate_model(model, processor, dataset: GroundingDataset, batch_size: int = 8,
                   max_new_tokens: int = 128, dataset_name: str = "", split: str = "",
                   progress: bool = True, meteor: bool = True,
                   match_threshold: float = DEFAULT_MATCH_THRESHOLD,
                   decoding: str = DEFAULT_DECODING,
                   phrase_start_ratio: float = DEFAULT_PHRASE_START_RATIO) -> EvaluationResult:
    """Evaluate end to end and given the phrase; see the module docstring for the rules.

    One pass over ``dataset``: each batch is read and preprocessed once, the SAM encoder runs
    once (or the embedding cache serves it) and both generation and the teacher-forced pass
    use those features. ``dataset.image_noise_std`` sets the noise level. ``meteor=False``
    skips METEOR (a Java process), as per-epoch validation does. ``match_threshold`` is the
    token F1 a generated phrase needs to take a finding's box; ``grounding_strict`` scores
    the same boxes counting only strict pairs (``utils.evaluation.matching.strict_match``).
    ``decoding`` is ``"spans"`` (each generated phrase of a report sample copies a span of
    the prompt, :mod:`utils.span_decoding`, with ``phrase_start_ratio``) or ``"free"``
    (plain greedy decoding).
    """
    if decoding not in DECODINGS:
        raise ValueError(f"decoding {decoding!r} is not one of {DECODINGS}")
    check_phrase_start_ratio(phrase_start_ratio)
    started = time.time()
    model.eval()
    device = next(model.box_decoder.parameters()).device
    tokenizer = processor.tokenizer
    records: list[dict[str, Any]] = []
    n_extra = 0
    outside_text = 0
    generate_collate = GroundingCollator(tokenizer.pad_token_id, "generate")
    forced_collate = GroundingCollator(tokenizer.pad_token_id, "train")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=lambda items: (generate_collate(items), forced_collate(items)))
    decode = partial(tokenizer.decode, skip_special_tokens=True)
    signal = model.config.uncertainty
    image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    for generate_batch, forced_batch in tqdm(loader, disable=not progress, dynamic_ncols=True,
                                             desc=f"eval {dataset_name}/{split}"):
        embeddings = model.encode_images(forced_batch["sam_images"].to(device))
        views = model.shifted_views(forced_batch["sam_images"].to(device))
        prompts = generate_batch["input_ids"].to(device)
        spans = (span_constraint(prompts, tokenizer, image_token_id, model.box_token_id,
                                 [s.task for s in generate_batch["samples"]], phrase_start_ratio)
                 if decoding == "spans" else None)
        generated = model.generate(generate_batch["sam_images"].to(device),
                                   generate_batch["pixel_values"].to(device), prompts,
                                   generate_batch["attention_mask"].to(device), tokenizer,
                                   max_new_tokens=max_new_tokens, image_embeddings=embeddings,
                                   logits_processor=spans, image_views=views)
        forced = model(**{k: forced_batch[k].to(device) for k in
                          ("sam_images", "pixel_values", "input_ids", "attention_mask",
                           "labels")}, image_embeddings=embeddings, image_views=views)
        generated_px = _pixel_predictions(generated.prediction, generated.box_batch_index,
                                          generate_batch, signal)
        forced_px = _pixel_predictions(forced.prediction, forced.box_batch_index, forced_batch,
                                       signal)
        generated_sets = pixel_box_sets(generated.prediction, generated.box_batch_index,
                                        generate_batch, signal)
        forced_sets = pixel_box_sets(forced.prediction, forced.box_batch_index, forced_batch,
                                     signal)
        for row, sample in enumerate(generate_batch["samples"]):
            findings = ordered_findings(sample)
            phrases = generated_phrases(generated.token_ids[row].tolist(), model.box_token_id,
                                        decode)
            gen_idx = (generated_px.rows == row).nonzero(as_tuple=True)[0].tolist()
            matches = dict((g, p) for p, g in match_phrases(phrases, [f.phrase for f in findings],
                                                            match_threshold))
            n_extra += len(phrases) - len(matches)
            if sample.task in SPAN_TASKS:
                prompt = question_text(sample).lower()
                outside_text += sum(f.phrase.lower() not in prompt for f in findings)
            forced_idx = (forced_px.rows == row).nonzero(as_tuple=True)[0].tolist()
            for index, finding in enumerate(findings):
                target = _target_pixels(sample, finding)
                truth = to_pixels(torch.tensor(finding.boxes, dtype=torch.float32),
                                  float(sample.width), float(sample.height))
                record = {"id": sample.id, "image": str(sample.image_path), "task": sample.task,
                          "phrase": finding.phrase, "generated_text": generated.texts[row],
                          "gt_boxes": [[round(v, 2) for v in to_pixels(
                              torch.tensor(b), torch.tensor(float(sample.width)),
                              torch.tensor(float(sample.height))).tolist()] for b in finding.boxes],
                          "pred_phrase": None, "box": None, "hypotheses": None, "u": None,
                          "iou": 0.0, "strict_match": False,
                          "width": sample.width, "height": sample.height,
                          "finding_type": finding.finding_type or None,
                          **_box_set_fields(None, truth)}
                if index in matches:
                    q = gen_idx[matches[index]]
                    record.update(_box_fields(generated_px, q, target))
                    record.update(_box_set_fields(generated_sets[q], truth))
                    record["pred_phrase"] = phrases[matches[index]]
                    record["strict_match"] = strict_match(record["pred_phrase"], finding.phrase)
                q = forced_idx[index]
                record["given_phrase"] = _box_fields(forced_px, q, target)
                record["given_phrase"].update(_box_set_fields(forced_sets[q], truth))
                records.append(record)

    end_to_end = [r["iou"] for r in records]
    given = [r["given_phrase"]["iou"] for r in records]
    u = [r["given_phrase"]["u"] for r in records]
    metrics = {
        "dataset": dataset_name, "split": split, "n_samples": len(dataset),
        "n_findings": len(records),
        "grounding": grounding_metrics(end_to_end),
        "grounding_strict": grounding_metrics(
            [r["iou"] if r["strict_match"] else 0.0 for r in records]),
        "match_threshold": match_threshold,
        "decoding": decoding,
        "phrase_start_ratio": phrase_start_ratio,
        "test_time_shift": model.test_time_shift,
        "grounding_given_phrase": grounding_metrics(given),
        "grounding_boxes": box_set_metrics([box_set_score(r) for r in records]),
        "grounding_boxes_given_phrase": box_set_metrics(
            [box_set_score(r["given_phrase"]) for r in records]),
        "phrase": phrase_metrics([r["pred_phrase"] or "" for r in records],
                                 [r["phrase"] for r in records], meteor=meteor),
        "uncertainty": {**uncertainty_metrics(u, given),
                        **signal_metrics([r["given_phrase"]["u_signals"] for r in records],
                                         given)},
        "uncertainty_end_to_end": signal_metrics(
            [r["u_signals"] for r in records if r["box"] is not None],
            [r["iou"] for r in records if r["box"] is not None]),
        "uncertainty_signal": signal,
        "n_extra_predictions": n_extra,
        "n_phrases_outside_text": outside_text,
        "image_noise_std": dataset.image_noise_std,
        "mean_u": float(sum(u) / len(u)) if u else 0.0,
        "seconds": time.time() - started,
    }
    if getattr(model, "calibration", None) is not None:
        metrics["calibration"] = apply_calibration(records, model.calibration)
    return EvaluationResult(metrics, records)


@dataclass
class PixelPredictions:
    """Per-query sample rows (Q,), pixel boxes (Q,4), pixel hypotheses (Q,N,4) and u (Q,);
    ``signals``: every available uncertainty signal, name → (Q,)."""

    rows: torch.Tensor
    boxes: torch.Tensor
    hypotheses: torch.Tensor
    uncertainty: torch.Tensor
    signals: dict[str, torch.Tensor] = field(default_factory=dict)


def _pixel_predictions(prediction: BoxPrediction, box_batch_index: torch.Tensor,
                       batch: dict[str, Any], signal: str = "spread") -> PixelPredictions:
    """The predictions in pixels, with u of ``signal`` (see :mod:`model.uncertainty`)."""
    rows = box_batch_index.cpu()
    sizes = [(batch["samples"][r].width, batch["samples"][r].height) for r in rows.tolist()]
    boxes, hypotheses = prediction_to_pixels(prediction, batch["content_scale"][rows], sizes)
    signals = {name: value.float().cpu() for name, value in uncertainty_signals(prediction).items()}
    return PixelPredictions(rows, boxes, hypotheses,
                            reported_uncertainty(prediction, signal).float().cpu(), signals)


def _box_fields(predictions: PixelPredictions, query: int, target: torch.Tensor) -> dict[str, Any]:
    box = predictions.boxes[query]
    iou = float(box_ious(box[None], target[None])[0])
    return {"box": [round(v, 2) for v in box.tolist()],
            "hypotheses": [[round(v, 2) for v in h]
                           for h in predictions.hypotheses[query].tolist()],
            "u": float(predictions.uncertainty[query]), "iou": iou,
            "u_signals": {name: float(value[query]) for name, value in predictions.signals.items()}}


@dataclass
class PixelBoxSet:
    """The boxes one phrase reports, pixel xyxy: boxes (P,4), hypotheses (P,N,4), u (P,) and
    presence (P,) probabilities (None for a single-box model, which has no presence)."""

    boxes: torch.Tensor
    hypotheses: torch.Tensor
    uncertainty: torch.Tensor
    presence: torch.Tensor | None


def pixel_box_sets(prediction: BoxPrediction, box_batch_index: torch.Tensor,
                   batch: dict[str, Any], signal: str = "spread") -> list[PixelBoxSet]:
    """Per query, the boxes its phrase reports in pixels of its image: its one box, or with
    several box slots the present ones (:attr:`model.box_decoder.BoxSlots.present`), the most
    present first; each box's u is that of ``signal`` (:mod:`model.uncertainty`)."""
    rows = box_batch_index.cpu()
    sizes = [(batch["samples"][r].width, batch["samples"][r].height) for r in rows.tolist()]
    scale = batch["content_scale"][rows]
    slots = prediction.slots
    if slots is None:
        boxes, hypotheses = prediction_to_pixels(prediction, scale, sizes)
        u = reported_uncertainty(prediction, signal).float().cpu()
        return [PixelBoxSet(boxes[q:q + 1], hypotheses[q:q + 1], u[q:q + 1], None)
                for q in range(len(sizes))]
    count = slots.rows
    boxes, hypotheses = prediction_to_pixels(slots.boxes, scale.repeat_interleave(count, dim=0),
                                             [size for size in sizes for _ in range(count)])
    u = reported_uncertainty(slots.boxes, signal).float().cpu().view(-1, count)
    presence = slots.presence.float().cpu()
    sets = []
    for q, order in enumerate(slots.reported()):
        flat = [q * count + k for k in order]
        sets.append(PixelBoxSet(boxes[flat], hypotheses[flat], u[q, order], presence[q, order]))
    return sets


def _box_set_fields(box_set: PixelBoxSet | None, truth: torch.Tensor) -> dict[str, Any]:
    """``boxes`` (each reported box: box, hypotheses, u, presence) and ``box_ious`` (per
    ground-truth box after matching) of one finding; ``None``: the phrase was not generated."""
    if box_set is None:
        return {"boxes": [], "box_ious": list(score_box_set(torch.zeros(0, 4), truth).ious)}
    score = score_box_set(box_set.boxes, truth)
    boxes = [{"box": [round(v, 2) for v in box_set.boxes[i].tolist()],
              "hypotheses": [[round(v, 2) for v in h] for h in box_set.hypotheses[i].tolist()],
              "u": float(box_set.uncertainty[i]),
              "presence": None if box_set.presence is None else float(box_set.presence[i])}
             for i in range(len(box_set.boxes))]
    return {"boxes": boxes, "box_ious": list(score.ious)}


def box_set_score(record: dict[str, Any]) -> BoxSetScore:
    """The :class:`BoxSetScore` of a finding's record (or its ``given_phrase`` part)."""
    return BoxSetScore(tuple(record["box_ious"]), len(record["boxes"]))


def baseline_metrics(baseline, samples: Sequence[Sample], dataset_name: str, split: str
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score the image-free phrase-prior baseline in the metrics.json format.

    The baseline is handed the true phrases (it writes no text), so its ``grounding`` equals
    its ``grounding_given_phrase`` and its phrase metrics are ``None``; its u is the spread of
    the neighbours' boxes.
    """
    records: list[dict[str, Any]] = []
    for sample in samples:
        findings = ordered_findings(sample)
        if not findings:
            continue
        boxes, spread = baseline.predict_with_spread([f.phrase for f in findings])
        size = torch.tensor([float(sample.width), float(sample.height)])
        for finding, box, u in zip(findings, boxes, spread.tolist()):
            pixels = to_pixels(box, size[0], size[1])
            target = _target_pixels(sample, finding)
            iou = float(box_ious(pixels[None], target[None])[0])
            fields = {"box": [round(v, 2) for v in pixels.tolist()], "hypotheses": None,
                      "u": u, "iou": iou, **_box_set_fields(PixelBoxSet(
                          pixels[None], pixels[None, None], torch.tensor([u]), None),
                          to_pixels(torch.tensor(finding.boxes, dtype=torch.float32),
                                    size[0], size[1]))}
            records.append({"id": sample.id, "image": str(sample.image_path), "task": sample.task,
                            "phrase": finding.phrase, "pred_phrase": finding.phrase,
                            "gt_boxes": [[round(v, 2) for v in
                                          to_pixels(torch.tensor(b), size[0], size[1]).tolist()]
                                         for b in finding.boxes],
                            **fields, "given_phrase": dict(fields)})
    ious = [r["iou"] for r in records]
    u = [r["u"] for r in records]
    grounding = grounding_metrics(ious)
    metrics = {"dataset": dataset_name, "split": split, "n_samples": len(samples),
               "n_findings": len(records), "baseline": "phrase_prior",
               "grounding": grounding, "grounding_given_phrase": dict(grounding),
               "grounding_boxes": box_set_metrics([box_set_score(r) for r in records]),
               "grounding_boxes_given_phrase": box_set_metrics(
                   [box_set_score(r) for r in records]),
               "phrase": {k: None for k in ("exact_match", "bleu_1", "bleu_4", "rouge_l", "cider",
                                            "meteor")},
               "uncertainty": uncertainty_metrics(u, ious),
               "mean_u": float(sum(u) / len(u)) if u else 0.0}
    return metrics, records
