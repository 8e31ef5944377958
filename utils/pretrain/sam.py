"""Pretrain the tiny SAM as a promptable segmenter, as MedSAM is: box prompt -> mask.

Every mask layer of a pretraining study (lung fields, heart, each finding's box) is a
prompt: its tight box, jittered by up to ``JITTER`` of its size while training, through the
prompt encoder; the mask decoder predicts SAM's four masks at a quarter of the input size.
A training step draws ``PROMPTS_PER_IMAGE`` layers of each image (lesions ``LESION_WEIGHT``
times as likely as anatomy) and runs the decoder on all of them at once (``torch.func.vmap``
over the images: segment-anything's decoder takes one image per call).
The loss is dice + BCE against the area-downsampled mask, on the single-mask output (token
0, MedSAM's) plus the best of the three multimask outputs (SAM's ambiguity-aware loss), and
MSE of the IoU head against each output's IoU. Image encoder, prompt encoder and mask decoder
are all trained, so the box decoder's SAM initialisation (its transformer, positional
encoding and mask tokens) carries what SAM learned.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from transformers import get_cosine_schedule_with_warmup

from utils.pretrain.data import read_gray, read_masks
from utils.sam_transforms import preprocess_for_sam

logger = logging.getLogger(__name__)

JITTER = 0.1  # box prompt noise while training, as a fraction of the box's width / height
MASK_STRIDE = 4  # SAM's low-resolution masks are a quarter of the input size
PROMPTS_PER_IMAGE = 3  # every study has at least its two lungs and its heart
LESION_WEIGHT = 3.0  # lesions are rarer and harder than anatomy
LESION_NUMBER = re.compile(r" \d+$")  # "nodule 2": lesion 2 of a multifocal finding


@dataclass(frozen=True)
class SamSettings:
    """Optimisation of the SAM pretraining."""

    steps: int = 800
    batch_size: int = 8
    lr: float = 4e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0


@dataclass
class Prompted:
    """One study with its box prompts, in SAM's input frame.

    Arguments:
      image: (H, W) uint8 image as stored.
      masks: (L, S, S) bool masks resized to the padded S x S input.
      boxes: (L, 4) float xyxy prompts in input pixels.
      kinds: per layer "anatomy" or "lesion".
      groups: per layer what its IoU is averaged under besides its kind: "lung" or "heart"
        for anatomy, the finding type for lesions.
    """

    image: np.ndarray
    masks: torch.Tensor
    boxes: torch.Tensor
    kinds: list[str]
    groups: list[str]


def layer_group(name: str) -> str:
    """"lung" for either lung, else the name without its side and lesion number ("pleural
    effusion left" -> "pleural effusion", "nodule 2 right" -> "nodule")."""
    for side in ("right", "left"):
        if name.endswith(f" {side}") or name == f"{side} lung":
            return "lung" if name == f"{side} lung" else LESION_NUMBER.sub(
                "", name[:-len(side) - 1])
    return name


def load_studies(folder: Path, rows: list[dict[str, Any]], image_size: int) -> list[Prompted]:
    """Read the rows' images and masks and move masks and boxes into the S x S input frame."""
    studies = []
    for row in rows:
        image = read_gray(folder / row["image"])
        masks = read_masks(folder, row)
        resize = ResizeLongestSide(image_size)
        resized = [resize.apply_image(mask.astype(np.uint8)[..., None].repeat(3, -1))[..., 0]
                   for mask in masks]
        h, w = resized[0].shape
        square = torch.zeros((len(masks), image_size, image_size), dtype=torch.bool)
        square[:, :h, :w] = torch.from_numpy(np.stack(resized) > 0)
        boxes = torch.tensor([layer["box"] for layer in row["layers"]], dtype=torch.float32)
        boxes = torch.from_numpy(resize.apply_boxes(boxes.numpy(), image.shape)).float()
        studies.append(Prompted(image, square, boxes, [layer["kind"] for layer in row["layers"]],
                                [layer_group(layer["name"]) for layer in row["layers"]]))
    return studies


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask dice + BCE loss.

    Arguments:
      logits: (P, K, h, w) mask logits; target: (P, 1, h, w) soft masks in [0, 1].
    Returns:
      (P, K) losses.
    """
    target = target.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    probability = logits.sigmoid()
    overlap = (probability * target).sum(dim=(2, 3))
    dice = 1 - (2 * overlap + 1) / (probability.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    return bce + dice


def hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(P, K) IoU of ``logits > 0`` (P, K, h, w) with the boolean ``target`` (P, 1, h, w)."""
    predicted = logits > 0
    target = target.expand_as(predicted)
    union = (predicted | target).sum(dim=(2, 3)).clamp(min=1)
    return (predicted & target).sum(dim=(2, 3)) / union


def predict(sam: Sam, embedding: torch.Tensor, boxes: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's four masks and IoU predictions for box prompts on one image.

    Arguments:
      embedding: (1, C, h, w) image embedding; boxes: (P, 4) xyxy input pixels.
    Returns:
      (P, 4, 4h, 4w) mask logits and (P, 4) predicted IoUs (output 0 is the single mask).
    """
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    return sam.mask_decoder.predict_masks(image_embeddings=embedding,
                                          image_pe=sam.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse,
                                          dense_prompt_embeddings=dense)


def pixels(studies: list[Prompted], image_size: int) -> torch.Tensor:
    """(B, 3, S, S) SAM-preprocessed images, as the fine-tune preprocesses them."""
    return torch.stack([preprocess_for_sam(np.repeat(s.image[..., None], 3, -1), image_size)[0]
                        for s in studies])


def jitter(boxes: torch.Tensor, generator: torch.Generator, image_size: int) -> torch.Tensor:
    """Boxes (P, 4) with each side moved by up to ``JITTER`` of the box's extent."""
    extent = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    noise = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * JITTER * extent
    moved = (boxes + noise).clamp(0, image_size)
    low, high = torch.minimum(moved[:, :2], moved[:, 2:]), torch.maximum(moved[:, :2], moved[:, 2:])
    return torch.cat([low, torch.maximum(high, low + 1)], dim=1)


def draw_prompts(studies: list[Prompted], generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``PROMPTS_PER_IMAGE`` distinct layers of each study, lesions weighted by
    ``LESION_WEIGHT``: their (B, K, 4) boxes and (B, K, S, S) masks."""
    boxes, masks = [], []
    for study in studies:
        weights = torch.tensor([LESION_WEIGHT if kind == "lesion" else 1.0
                                for kind in study.kinds])
        chosen = torch.multinomial(weights, PROMPTS_PER_IMAGE, replacement=False,
                                   generator=generator)
        boxes.append(study.boxes[chosen])
        masks.append(study.masks[chosen])
    return torch.stack(boxes), torch.stack(masks)


def step_loss(sam: Sam, studies: list[Prompted], image_size: int, generator: torch.Generator
              ) -> torch.Tensor:
    """The mean loss over the drawn prompts of a batch of studies."""
    embeddings = sam.image_encoder(pixels(studies, image_size))
    boxes, masks = draw_prompts(studies, generator)
    boxes = jitter(boxes.flatten(0, 1), generator, image_size).view_as(boxes)
    logits, iou_predictions = torch.func.vmap(
        lambda embedding, box: predict(sam, embedding[None], box))(embeddings, boxes)
    logits, iou_predictions = logits.flatten(0, 1), iou_predictions.flatten(0, 1)
    target = F.avg_pool2d(masks.flatten(0, 1)[:, None].float(), MASK_STRIDE)
    mask_losses = dice_bce(logits, target)
    best = mask_losses[:, 1:].min(dim=1).values
    iou = hard_iou(logits.detach(), target > 0.5)
    iou_loss = F.mse_loss(iou_predictions, iou, reduction="none").mean(dim=1)
    return (mask_losses[:, 0] + best + iou_loss).mean()


@torch.no_grad()
def held_out_iou(sam: Sam, studies: list[Prompted], image_size: int, batch_size: int
                 ) -> dict[str, float]:
    """Mean IoU of the single-mask output (upsampled to the input size, > 0) with the mask,
    for the exact box prompts of held-out studies: over "all", each kind ("anatomy",
    "lesion") and each group (see :class:`Prompted`)."""
    sam.eval()
    scores: dict[str, list[float]] = defaultdict(list)
    for start in range(0, len(studies), batch_size):
        batch = studies[start:start + batch_size]
        embeddings = sam.image_encoder(pixels(batch, image_size))
        for embedding, study in zip(embeddings, batch):
            logits, _ = predict(sam, embedding[None], study.boxes)
            full = F.interpolate(logits[:, :1], size=(image_size, image_size), mode="bilinear",
                                 align_corners=False)
            ious = hard_iou(full, study.masks[:, None])[:, 0].tolist()
            for kind, group, iou in zip(study.kinds, study.groups, ious):
                for key in ("all", kind, group):
                    scores[key].append(iou)
    return {kind: float(np.mean(values)) for kind, values in sorted(scores.items())}


def pretrain_sam(sam: Sam, folder: Path, fit_rows: list[dict[str, Any]],
                 held_rows: list[dict[str, Any]], settings: SamSettings) -> dict[str, Any]:
    """Train every part of ``sam`` in place on box prompts of the pretraining masks.

    Arguments:
      sam: the tiny SAM (float32, CPU).
      folder: the pretraining folder (``<synthcxr>/pretrain``).
      fit_rows, held_rows: pretraining rows to train on and to measure on (other patients).
      settings: the optimisation.

    Returns:
      ``{"steps", "initial_held_out_iou", "held_out_iou", "first_train_loss",
      "final_train_loss"}``; the IoUs are dicts over "anatomy", "lesion" and "all".
    """
    image_size = sam.image_encoder.img_size
    fit = load_studies(folder, fit_rows, image_size)
    held_out = load_studies(folder, held_rows, image_size)
    result: dict[str, Any] = {"steps": settings.steps, "initial_held_out_iou":
                              held_out_iou(sam, held_out, image_size, settings.batch_size)}
    sam.requires_grad_(True)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    schedule = get_cosine_schedule_with_warmup(
        optimizer, max(1, round(settings.warmup_fraction * settings.steps)), settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    order: list[int] = []
    loss = torch.tensor(float("nan"))
    sam.train()
    for step in range(settings.steps):
        if len(order) < settings.batch_size:
            order += torch.randperm(len(fit), generator=generator).tolist()
        indices, order = order[:settings.batch_size], order[settings.batch_size:]
        loss = step_loss(sam, [fit[i] for i in indices], image_size, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step == 0:
            result["first_train_loss"] = loss.item()
        if step % 50 == 0 or step == settings.steps - 1:
            logger.info("sam step %d/%d loss %.3f", step + 1, settings.steps, loss.item())
    result["final_train_loss"] = loss.item()
    result["held_out_iou"] = held_out_iou(sam, held_out, image_size, settings.batch_size)
    sam.eval()
    return result
