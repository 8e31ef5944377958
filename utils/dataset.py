"""The grounding Dataset and its collate function.

Each item carries what the model needs: the SAM-preprocessed image, the LLaVA processor
inputs of the conversation, the labels (only the answer is supervised) and the target boxes
in the normalised frame of SAM's padded square input: one per ``[BOX]`` of the answer (the box
enclosing its finding's boxes, what the single-box model learns) and every ground-truth box
with the ``[BOX]`` it belongs to (what a model with several boxes per phrase learns).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from model.constants import IGNORE_INDEX
from utils.annotations import Sample
from utils.image_io import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from utils.prompts import answer_text, prompt_text, question_text, templates_for
from utils.sam_transforms import image_to_padded_boxes, preprocess_for_sam

logger = logging.getLogger(__name__)

SEQUENCE_OVERHEAD = 2  # tokens the processor adds around the prompt (BOS, separator)
# what may be cut, in order, when a prompt is too long; the supervised answer never is
CUTTABLE = {"report": ("report",), "vqa": ("question", "answer"), "class": ("description",)}


class PromptTooLongError(ValueError):
    """A sample whose prompt and answer cannot fit ``model_max_length``; names file:row."""


class _FixedChoice(random.Random):
    """A stand-in rng whose ``choice`` returns one given template (for length checks)."""

    def __init__(self, template: str):
        super().__init__(0)
        self.template = template

    def choice(self, seq: Sequence[str]) -> str:
        return self.template


def _cut_all(sample: Sample) -> dict[str, str]:
    return {key: "" for key in CUTTABLE[sample.task]}


def ordered_findings(sample: Sample) -> list:
    """The sample's findings in report order (by first occurrence of the phrase)."""
    text = (sample.report or sample.answer).lower()

    def position(finding) -> int:
        found = text.find(finding.phrase.lower())
        return found if found >= 0 else len(text)

    return sorted(sample.findings, key=position)


class GroundingDataset(Dataset):
    """Image + conversation + box targets for a list of samples.

    Arguments:
      samples: validated annotation records.
      processor: the LLaVA processor (image processor + tokenizer with ``[BOX]``).
      sam_image_size: the SAM encoder's square input side.
      model_max_length: longest token sequence. Longer prompts are cut in their report (vqa:
        question, then the answer text of the prompt; class: description), never in the
        supervised answer. Samples that cannot fit even so are all listed at construction
        (PromptTooLongError), before any training step.
      train: draw a random template per item (seeded by ``seed`` and the index); otherwise
        use the fixed evaluation template.
      image_noise_std: Gaussian noise (in 0..255 pixel units) added to the image, for the
        robustness experiment; 0 disables it. The noise is seeded by the item index.
    """

    def __init__(self, samples: Sequence[Sample], processor: Any, sam_image_size: int,
                 model_max_length: int = 512, train: bool = False, seed: int = 0,
                 image_noise_std: float = 0.0, name: str = "dataset", *,
                 image_window: str = "full", max_image_pixels: int = DEFAULT_MAX_PIXELS):
        self.samples = list(samples)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.sam_image_size = sam_image_size
        self.model_max_length = model_max_length
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.image_noise_std = image_noise_std
        self.image_window = image_window
        self.max_image_pixels = max_image_pixels
        self.image_token_count = self._measure_image_tokens()
        self.truncated = self._check_lengths(name)
        if self.truncated:
            logger.warning("%s: %d of %d sample(s) may not fit model_max_length=%d and are cut "
                           "in their report / question / description (the answer and every "
                           "[BOX] are kept)", name, self.truncated, len(self.samples),
                           model_max_length)

    def __len__(self) -> int:
        return len(self.samples)

    def text_lengths(self) -> list[int]:
        """Characters of each sample's report (or question and answer, or label) and phrases:
        a cheap stand-in for its token count, for ``--group_by_length``."""
        return [len(s.report) + len(s.question) + len(s.answer) + len(s.label) +
                sum(len(f.phrase) for f in s.findings) for s in self.samples]

    def set_epoch(self, epoch: int) -> None:
        """Changes the template draw between epochs, deterministically."""
        self.epoch = epoch

    def _text_length(self, text: str) -> int:
        """Tokens of ``text`` without special tokens."""
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _measure_image_tokens(self) -> int:
        """How many tokens the processor expands the image placeholder into."""
        image_token = self.processor.image_token
        inputs = self.processor(images=Image.new("RGB", (64, 64)), text=image_token,
                                return_tensors="pt")
        image_token_id = self.tokenizer.convert_tokens_to_ids(image_token)
        return int((inputs["input_ids"] == image_token_id).sum())

    def _answer_length(self, sample: Sample) -> int:
        """Tokens of the supervised answer, end-of-sequence included."""
        return self._text_length(answer_text([f.phrase for f in ordered_findings(sample)])) + 1

    def _total_length(self, sample: Sample, template: int | None, answer_length: int,
                      **texts: str) -> int:
        """Tokens of the whole sequence with template ``template`` (None: the eval one)."""
        templates = templates_for(sample)
        rng = _FixedChoice(templates[template]) if template is not None else None
        question = question_text(sample, texts.pop("report", None), rng, **texts)
        return (self._text_length(prompt_text(question, "")) + self.image_token_count +
                answer_length + SEQUENCE_OVERHEAD)

    def _check_lengths(self, name: str) -> int:
        """Raise one PromptTooLongError listing every sample that cannot fit even when cut;
        return how many samples may be cut. In training every template may be drawn, so the
        longest one counts; in evaluation only the fixed first one."""
        offenders, cut = [], 0
        for sample in self.samples:
            answer_length = self._answer_length(sample)
            longest = max(range(len(templates_for(sample)) if self.train else 1),
                          key=lambda t: self._total_length(sample, t, answer_length,
                                                           **_cut_all(sample)))
            floor = self._total_length(sample, longest, answer_length, **_cut_all(sample))
            if floor > self.model_max_length:
                offenders.append(f"  {sample.source}: needs at least {floor} tokens (answer "
                                 f"{answer_length}) with its {' and '.join(CUTTABLE[sample.task])} "
                                 "cut to nothing")
            elif self._total_length(sample, longest, answer_length) > self.model_max_length:
                cut += 1
        if offenders:
            raise PromptTooLongError(
                f"{name}: {len(offenders)} sample(s) cannot fit model_max_length="
                f"{self.model_max_length}: their prompt (template, image tokens, label) and "
                "answer are too long even with the cuttable text removed:\n" +
                "\n".join(offenders) + "\nRaise --model_max_length, or shorten these rows.")
        return cut

    def _fit_prompt(self, sample: Sample, answer_length: int, rng: random.Random | None
                    ) -> tuple[str, dict[str, str]]:
        """The prompt text; when too long, the task's cuttable text (``CUTTABLE``) is cut
        from its end, field by field; the answer is never cut."""
        texts = {key: getattr(sample, key) for key in CUTTABLE[sample.task]}
        image_token = self.processor.image_token
        templates = templates_for(sample)
        template = _FixedChoice(rng.choice(templates) if self.train and rng else templates[0])
        while True:
            question = question_text(sample, texts.get("report"), template,
                                     **{k: v for k, v in texts.items() if k != "report"})
            prompt = prompt_text(question, image_token)
            length = (self._text_length(prompt.replace(image_token, "")) +
                      self.image_token_count + answer_length + SEQUENCE_OVERHEAD)
            excess = length - self.model_max_length
            if excess <= 0:
                return prompt, texts
            key = next((k for k in CUTTABLE[sample.task] if texts[k]), None)
            if key is None:
                raise PromptTooLongError(
                    f"{sample.source}: the prompt does not fit model_max_length="
                    f"{self.model_max_length} even with its "
                    f"{' and '.join(CUTTABLE[sample.task])} cut to nothing ({length} tokens, "
                    f"answer {answer_length}); raise --model_max_length")
            ids = self.tokenizer(texts[key], add_special_tokens=False).input_ids
            texts[key] = self.tokenizer.decode(ids[:max(0, len(ids) - excess)]).strip()

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        rng = random.Random(hash((self.seed, self.epoch, index))) if self.train else None
        findings = ordered_findings(sample)
        phrases = [f.phrase for f in findings]
        answer = answer_text(phrases)
        answer_ids = self.tokenizer(answer, add_special_tokens=False).input_ids
        answer_ids = answer_ids + [self.tokenizer.eos_token_id]
        prompt, _ = self._fit_prompt(sample, len(answer_ids), rng)

        try:
            image = read_image(sample.image_path, window=self.image_window,
                               max_pixels=self.max_image_pixels)
        except ImageReadError as error:  # a file whose header read well but whose pixels don't
            raise ImageReadError(f"{sample.source or sample.id}: {error}. Validation reads the "
                                 "image headers only; fix the file, or remove this row") from error
        if self.image_noise_std > 0:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            noise = torch.randn(image.shape, generator=generator) * self.image_noise_std
            noisy = torch.tensor(image, dtype=torch.float32) + noise
            image = noisy.clamp(0, 255).to(torch.uint8).numpy()
        sam_image, content_scale = preprocess_for_sam(image, self.sam_image_size)
        inputs = self.processor(images=Image.fromarray(image), text=prompt, return_tensors="pt")
        prompt_ids = inputs["input_ids"][0]
        input_ids = torch.cat([prompt_ids, torch.tensor(answer_ids, dtype=torch.long)])
        labels = input_ids.clone()
        labels[: len(prompt_ids)] = IGNORE_INDEX
        scale = torch.tensor(content_scale, dtype=torch.float32)
        targets = torch.tensor([f.target_box() for f in findings], dtype=torch.float32).view(-1, 4)
        every_box = torch.tensor([b for f in findings for b in f.boxes],
                                 dtype=torch.float32).view(-1, 4)
        owner = torch.tensor([i for i, f in enumerate(findings) for _ in f.boxes],
                             dtype=torch.long)
        return {
            "id": sample.id,
            "sample": sample,
            "phrases": phrases,
            "sam_image": sam_image,
            "content_scale": scale,
            "pixel_values": inputs["pixel_values"][0],
            "input_ids": input_ids,
            "labels": labels,
            "prompt_length": len(prompt_ids),
            "box_targets": image_to_padded_boxes(targets, scale),
            "box_set_targets": image_to_padded_boxes(every_box, scale),
            "box_set_finding": owner,
        }


@dataclass
class GroundingCollator:
    """Pads a list of items into a batch.

    ``mode="train"`` pads full conversations on the right (teacher forcing);
    ``mode="generate"`` keeps only the prompts and pads them on the left, for generation.
    Box targets of all samples are concatenated in batch order, with ``box_batch_index``
    giving each box's sample, so a batch may mix samples with 0, 1 or many findings; likewise
    ``box_set_targets`` (every ground-truth box) with ``box_set_index``, the batch-wide number
    of the ``[BOX]`` (row of ``box_targets``) each belongs to.
    """

    pad_token_id: int
    mode: str = "train"

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if self.mode == "generate":
            sequences = [item["input_ids"][: item["prompt_length"]] for item in items]
        else:
            sequences = [item["input_ids"] for item in items]
        length = max(len(s) for s in sequences)
        batch = len(items)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        for row, (item, sequence) in enumerate(zip(items, sequences)):
            span = slice(length - len(sequence), length) if self.mode == "generate" \
                else slice(0, len(sequence))
            input_ids[row, span] = sequence
            attention_mask[row, span] = 1
            if self.mode == "train":
                labels[row, span] = item["labels"]
        box_targets = torch.cat([item["box_targets"] for item in items])
        box_batch_index = torch.cat([torch.full((len(item["box_targets"]),), row, dtype=torch.long)
                                     for row, item in enumerate(items)])
        offsets = torch.tensor([0] + [len(item["box_targets"]) for item in items]).cumsum(0)
        box_set_index = torch.cat([item["box_set_finding"] + offset
                                   for item, offset in zip(items, offsets.tolist())])
        return {
            "ids": [item["id"] for item in items],
            "samples": [item["sample"] for item in items],
            "phrases": [item["phrases"] for item in items],
            "sam_images": torch.stack([item["sam_image"] for item in items]),
            "content_scale": torch.stack([item["content_scale"] for item in items]),
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "box_targets": box_targets,
            "box_batch_index": box_batch_index,
            "box_set_targets": torch.cat([item["box_set_targets"] for item in items]),
            "box_set_index": box_set_index,
        }
