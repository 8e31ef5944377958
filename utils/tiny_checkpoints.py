"""Build the tiny, deterministic, pretrained checkpoints that tests and the demo use in place
of real ones.

    python -m utils.tiny_checkpoints --data ln_data/synthcxr --out pretrained/tiny

writes
  ``llava/``: a llava-hf folder (tiny CLIP vision tower + tiny Llama LM, a sentencepiece BPE
  tokenizer trained on the SynthCXR training corpus with ``<image>`` and ``[BOX]`` added),
  loadable with ``AutoProcessor`` and ``LlavaForConditionalGeneration.from_pretrained``;
  ``sam_tiny.pth``: a tiny SAM in the segment-anything state-dict layout (+ its JSON sidecar),
  loaded by the same code path as ``sam_vit_h_4b8939.pth`` and ``medsam_vit_b.pth``;
  ``pretraining.json``: what each pretraining reached, and its settings.
Both start from seeded random weights and are pretrained on the SynthCXR pretraining set
(``<data>/pretrain``, patients of its own): the language model and projector as a causal LM
on its reports (``utils.pretrain.lm``; the CLIP tower stays random and frozen), SAM as a
box-promptable segmenter of its masks (``utils.pretrain.sam``). ``--lm_steps 0`` /
``--sam_steps 0`` keep that backbone random (the ablation's "random backbones").
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm
import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from model.constants import BOX_TOKEN
from model.sam_encoder import SAM_TINY_CONFIG, build_sam, save_sam_checkpoint
from utils.logs import setup_logging
from utils.pretrain.data import load_rows
from utils.pretrain.lm import LmSettings, pretrain_lm
from utils.pretrain.sam import SamSettings, pretrain_sam
from utils.prompts import (
    CLASS_TEMPLATES,
    NO_FINDING_ANSWER,
    REPORT_TEMPLATES,
    VQA_TEMPLATES,
    prompt_text,
)
from utils.synthcxr.pretrain import PRETRAIN_DIR

logger = logging.getLogger("tiny")

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
CLIP_IMAGE_SIZE = 64
CLIP_PATCH_SIZE = 16
REPORT_NAME = "pretraining.json"


def corpus_lines(data_dir: Path) -> Iterator[str]:
    """Every text of the SynthCXR training split, plus the prompt and answer templates."""
    for path in sorted(data_dir.glob("*_train.jsonl")):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                for key in ("report", "question", "answer", "label"):
                    if row.get(key):
                        yield row[key]
                for finding in row["findings"]:
                    yield f"{finding['phrase']}. It is {BOX_TOKEN}."
    for template in REPORT_TEMPLATES + VQA_TEMPLATES + CLASS_TEMPLATES:
        yield prompt_text(template, "")
    yield NO_FINDING_ANSWER


def train_tokenizer(lines: Iterable[str], out_dir: Path, vocab_size: int) -> LlamaTokenizer:
    """Train a sentencepiece BPE model and wrap it as a Llama tokenizer with the extra tokens."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, byte_fallback=True, hard_vocab_limit=False,
        unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, num_threads=1, minloglevel=2, split_digits=True)
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "tokenizer.model").write_bytes(model.getvalue())
        tokenizer = LlamaTokenizer.from_pretrained(scratch, add_bos_token=True)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN,
                                  "additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.add_tokens([BOX_TOKEN])
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_tiny_llava(tokenizer: LlamaTokenizer, seed: int
                     ) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A randomly initialised tiny LLaVA: CLIP 64 px / patch 16 (16 image tokens) and a
    4-layer Llama, hidden 256; and its processor."""
    vision = CLIPVisionConfig(image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE,
                              hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, projection_dim=64)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    num_image_tokens = (CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         image_seq_length=num_image_tokens, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE_SIZE},
                                         crop_size={"height": CLIP_IMAGE_SIZE,
                                                    "width": CLIP_IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=CLIP_PATCH_SIZE, vision_feature_select_strategy="default",
                               image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    return model, processor


def positive_or_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def build(args: argparse.Namespace, fit_rows: list[dict], held_rows: list[dict]) -> dict:
    """Write the tokenizer, the (pretrained) tiny LLaVA and SAM and the pretraining report."""
    pretrain_dir = args.data / PRETRAIN_DIR
    llava_dir = args.out / "llava"
    llava_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"pretraining_set": str(pretrain_dir), "fit_studies": len(fit_rows),
                    "held_out_studies": len(held_rows)}
    tokenizer = train_tokenizer(corpus_lines(args.data), llava_dir, args.vocab_size)
    model, processor = build_tiny_llava(tokenizer, args.seed)
    if args.lm_steps:
        started = time.time()
        settings = LmSettings(steps=args.lm_steps, seed=args.seed)
        report["lm"] = {**pretrain_lm(model, processor, pretrain_dir, fit_rows, held_rows,
                                      settings), "seconds": round(time.time() - started, 1)}
        lm = report["lm"]
        logger.info("language model: %d steps in %s s; held-out report perplexity %.2f "
                    "(unigram baseline %.2f, before pretraining %.1f)", settings.steps,
                    lm["seconds"], lm["held_out_perplexity"], lm["unigram_perplexity"],
                    lm["initial_perplexity"])
    model.save_pretrained(llava_dir)
    processor.save_pretrained(llava_dir)
    torch.manual_seed(args.seed)
    sam = build_sam(SAM_TINY_CONFIG)
    if args.sam_steps:
        started = time.time()
        settings = SamSettings(steps=args.sam_steps, seed=args.seed)
        report["sam"] = {**pretrain_sam(sam, pretrain_dir, fit_rows, held_rows, settings),
                         "seconds": round(time.time() - started, 1)}
        iou = report["sam"]["held_out_iou"]
        logger.info("SAM: %d steps in %s s; held-out box-prompt mask IoU %.3f (anatomy %.3f, "
                    "lesions %.3f)", settings.steps, report["sam"]["seconds"], iou["all"],
                    iou["anatomy"], iou.get("lesion", float("nan")))
    save_sam_checkpoint(sam, SAM_TINY_CONFIG, args.out / "sam_tiny.pth")
    (args.out / REPORT_NAME).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
    logger.info("wrote %s (vocab %d) and %s", llava_dir, len(tokenizer), args.out / "sam_tiny.pth")
    return report


def main(argv: list[str] | None = None) -> dict:
    """Build (and pretrain) the tiny checkpoints; returns the pretraining report."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="SynthCXR folder (its *_train.jsonl texts train the tokenizer; "
                             f"its {PRETRAIN_DIR}/ set pretrains the backbones)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--vocab_size", type=int, default=1000)
    parser.add_argument("--lm_steps", type=positive_or_zero, default=LmSettings.steps,
                        help="language-model pretraining steps (0: keep it random)")
    parser.add_argument("--sam_steps", type=positive_or_zero, default=SamSettings.steps,
                        help="SAM pretraining steps (0: keep it random)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of "
                        "the pretraining order")
    args = parser.parse_args(argv)
    if not any(args.data.glob("*_train.jsonl")):
        parser.error(f"no *_train.jsonl in {args.data}; run `python -m utils.synthcxr` first")
    pretrain_dir = args.data / PRETRAIN_DIR
    fit_rows: list[dict] = []
    held_rows: list[dict] = []
    if args.lm_steps or args.sam_steps:
        try:
            fit_rows, held_rows = load_rows(pretrain_dir)
        except (FileNotFoundError, ValueError) as error:
            parser.error(str(error))
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        report = build(args, fit_rows, held_rows)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return report


if __name__ == "__main__":
    setup_logging()
    main()
