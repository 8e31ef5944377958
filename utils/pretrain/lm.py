"""Pretrain the tiny LLaVA's language model (and projector) as a causal LM on report text.

Each sample is LLaVA's conversation with a report-writing request, the study's image and its
report as the answer: ``USER: <image>\\nWrite the report ... ASSISTANT: {report}</s>``; the loss
is on the report and the end-of-sequence token. This is LLaVA's captioning stage on radiology
reports. The text never holds the grounding prompts, the answer format or ``[BOX]``: learning
those is the fine-tune's job. The CLIP tower stays random and frozen (see the README).
Afterwards the ``[BOX]`` rows of embed_tokens and lm_head are set to the mean of the other
rows, as loading a real LLaVA and adding the token would (``load_llava``'s mean resizing).
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, get_cosine_schedule_with_warmup

from model.constants import IGNORE_INDEX
from utils.pretrain.data import read_gray
from utils.prompts import BOX_TOKEN, prompt_text

logger = logging.getLogger(__name__)

REPORT_REQUEST = "Write the radiology report of this chest X-ray."


@dataclass(frozen=True)
class LmSettings:
    """Optimisation of the language-model pretraining."""

    steps: int = 150
    batch_size: int = 16
    lr: float = 2e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0


@dataclass
class Encoded:
    """The samples, tokenised: per sample its prompt ids (image tokens expanded), answer ids
    (report + eos) and (3, s, s) CLIP pixels."""

    prompts: list[list[int]]
    answers: list[list[int]]
    pixels: torch.Tensor


def encode(processor: Any, folder: Path, rows: list[dict[str, Any]]) -> Encoded:
    """Tokenise rows as the fine-tune's dataset does (processor for the prompt and image,
    the tokenizer without special tokens for the answer, then eos)."""
    tokenizer = processor.tokenizer
    box_id = tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    prompts, answers, pixels = [], [], []
    prompt = prompt_text(REPORT_REQUEST, processor.image_token)
    for row in rows:
        image = Image.fromarray(read_gray(folder / row["image"])).convert("RGB")
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        answer = tokenizer(row["report"], add_special_tokens=False).input_ids
        if box_id in answer:
            raise ValueError(f"{folder / 'pretrain.jsonl'}, row {row['id']}: the report holds "
                             f"{BOX_TOKEN}, which the language model must not see in pretraining")
        prompts.append(inputs["input_ids"][0].tolist())
        answers.append(answer + [tokenizer.eos_token_id])
        pixels.append(inputs["pixel_values"][0])
    return Encoded(prompts, answers, torch.stack(pixels))


def collate(data: Encoded, indices: list[int], pad_id: int
            ) -> dict[str, torch.Tensor]:
    """A right-padded batch: input_ids, attention_mask, labels (answers only) and pixels."""
    sequences = [data.prompts[i] + data.answers[i] for i in indices]
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(indices), length), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(indices), length), dtype=torch.long)
    for row, (i, sequence) in enumerate(zip(indices, sequences)):
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        attention[row, :len(sequence)] = 1
        labels[row, len(data.prompts[i]):len(sequence)] = torch.tensor(data.answers[i])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "pixel_values": data.pixels[indices]}


def unigram_perplexity(fit: Encoded, held_out: Encoded, vocab_size: int) -> float:
    """Perplexity on the held-out answers of add-one-smoothed unigram frequencies of the
    fitting answers: the baseline a language model must beat."""
    counts = Counter(token for answer in fit.answers for token in answer)
    total = sum(counts.values()) + vocab_size
    tokens = [token for answer in held_out.answers for token in answer]
    nll = -sum(math.log((counts[token] + 1) / total) for token in tokens) / len(tokens)
    return math.exp(nll)


@torch.no_grad()
def perplexity(model: LlavaForConditionalGeneration, data: Encoded, pad_id: int,
               batch_size: int) -> float:
    """exp of the mean next-token loss over the answer tokens of ``data``."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data.answers), batch_size):
        batch = collate(data, list(range(start, min(start + batch_size, len(data.answers)))),
                        pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits
        targets = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(),
                                                   targets, ignore_index=IGNORE_INDEX,
                                                   reduction="sum")
        total += float(losses)
        count += int((targets != IGNORE_INDEX).sum())
    return math.exp(total / count)


def set_box_rows_to_mean(model: LlavaForConditionalGeneration, box_id: int) -> None:
    """``[BOX]``'s embed_tokens and lm_head rows := the mean of the other rows."""
    with torch.no_grad():
        for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            others = torch.cat([matrix[:box_id], matrix[box_id + 1:]])
            matrix[box_id] = others.mean(dim=0)


def pretrain_lm(model: LlavaForConditionalGeneration, processor: Any, folder: Path,
                fit_rows: list[dict[str, Any]], held_rows: list[dict[str, Any]],
                settings: LmSettings) -> dict[str, float]:
    """Train the language model and projector of ``model`` in place (CLIP frozen).

    Arguments:
      model: the tiny LLaVA (float32, CPU).
      processor: its processor (tokenizer with ``<image>`` and ``[BOX]``).
      folder: the pretraining folder (``<synthcxr>/pretrain``).
      fit_rows, held_rows: pretraining rows to train on and to measure on (other patients).
      settings: the optimisation.

    Returns:
      ``{"steps", "held_out_perplexity", "unigram_perplexity", "initial_perplexity",
      "first_train_loss", "final_train_loss"}``.
    """
    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id
    fit, held_out = encode(processor, folder, fit_rows), encode(processor, folder, held_rows)
    result = {"steps": settings.steps,
              "unigram_perplexity": unigram_perplexity(fit, held_out, len(tokenizer)),
              "initial_perplexity": perplexity(model, held_out, pad_id, settings.batch_size)}
    trained = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "vision_tower" not in name
        if parameter.requires_grad:
            trained.append(parameter)
    optimizer = torch.optim.AdamW(trained, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = get_cosine_schedule_with_warmup(
        optimizer, max(1, round(settings.warmup_fraction * settings.steps)), settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    order: list[int] = []
    loss = torch.tensor(float("nan"))
    model.train()
    for step in range(settings.steps):
        if len(order) < settings.batch_size:
            order += torch.randperm(len(fit.answers), generator=generator).tolist()
        indices, order = order[:settings.batch_size], order[settings.batch_size:]
        loss = model(**collate(fit, indices, pad_id)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        if step == 0:
            result["first_train_loss"] = loss.item()
        if step % 50 == 0 or step == settings.steps - 1:
            logger.info("lm step %d/%d loss %.3f", step + 1, settings.steps, loss.item())
    set_box_rows_to_mean(model, tokenizer.convert_tokens_to_ids(BOX_TOKEN))
    result["final_train_loss"] = loss.item()
    result["held_out_perplexity"] = perplexity(model, held_out, pad_id, settings.batch_size)
    model.eval()
    return result
