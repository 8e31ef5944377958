"""Command-line flags shared by ``train.py``, ``test.py`` and the merge script.

Flag names follow the reference code (LISA conventions) where it had one.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from model.box_losses import BoxLossConfig
from model.config import GroundingConfig
from model.constants import (
    BOX_HEADS,
    DEFAULT_MAX_BOXES_PER_PHRASE,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MODEL_MAX_LENGTH,
    DEFAULT_QUERY_HEADS,
    UNCERTAINTY_SIGNALS,
    VISION_MODELS,
)
from utils.image_io import DEFAULT_MAX_PIXELS, WINDOWS
from utils.span_decoding import (
    DECODINGS,
    DEFAULT_DECODING,
    DEFAULT_PHRASE_START_RATIO,
)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _bounded_int(text, 0)


def _bounded_int(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= {least}, not {text!r}")
    if value < least:
        raise argparse.ArgumentTypeError(f"must be an integer >= {least}, not {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text!r}")
    if not (math.isfinite(value) and value > 0.0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {value}")
    return value


def unit_float(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    return _unit_float(text, include_one=True)


def open_unit_float(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    return _unit_float(text, include_one=False)


def _unit_float(text: str, include_one: bool) -> float:
    interval = "(0, 1]" if include_one else "(0, 1)"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in {interval}, not {text!r}")
    if not (0.0 < value <= 1.0 if include_one else 0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in {interval}, not {value}")
    return value


def writable_folder(text: str) -> Path:
    """An argparse type: a folder that exists or can be made, and can be written to."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{path} cannot be written to ({error.strerror})")
    return path


def layer_list(text: str) -> list[int]:
    """``"0,-1"`` → ``[0, -1]``, for ``--query_layers``."""
    try:
        layers = [int(layer) for layer in text.split(",") if layer.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of layer "
                                         "indices, e.g. 0,-1")
    if not layers:
        raise argparse.ArgumentTypeError("name at least one layer, e.g. -1")
    return layers


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Flags that define the model: base checkpoints, LoRA, the box head and loss weights."""
    group = parser.add_argument_group("model")
    group.add_argument("--version", required=True,
                       help="local llava-hf folder (e.g. pretrained/llava-1.5-7b-hf or "
                            "pretrained/tiny/llava)")
    group.add_argument("--vision_pretrained", required=True,
                       help="SAM/MedSAM state dict: sam_vit_h_4b8939.pth, medsam_vit_b.pth, "
                            "or pretrained/tiny/sam_tiny.pth")
    group.add_argument("--vision_model", default="auto",
                       choices=VISION_MODELS,
                       help="the SAM encoder type --vision_pretrained must hold (a mismatch is "
                            "an error); 'auto' accepts the type its shapes show")
    group.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                       help="bf16/fp16 need a GPU; CPU runs use fp32")
    group.add_argument("--lora_r", type=non_negative_int, default=8,
                       help="LoRA rank on the language model; 0 trains the whole LM instead")
    group.add_argument("--lora_alpha", type=positive_int, default=16)
    group.add_argument("--lora_dropout", type=float, default=0.05)
    group.add_argument("--lora_target_modules", default="q_proj,v_proj",
                       help="comma-separated LM module names (scoped to the language model)")
    group.add_argument("--train_vision_encoder", action="store_true",
                       help="train the SAM encoder (frozen by default, its embeddings then cached)")
    group.add_argument("--lora_sam_rank", type=non_negative_int, default=0,
                       help="LoRA rank on the SAM encoder's qkv layers (0 = none)")
    group.add_argument("--gradient_checkpointing", action="store_true",
                       help="recompute the language model's activations in the backward pass: "
                            "less memory, more time (LISA uses it for 7B/13B)")
    group.add_argument("--box_head", default="umhp", choices=BOX_HEADS,
                       help="single = MedGround, mhp, umhp = uMedGround, hinge")
    group.add_argument("--mhp_box_head", dest="box_head", action="store_const", const="mhp",
                       help="alias of --box_head mhp (reference code)")
    group.add_argument("--Umhp_box_head", dest="box_head", action="store_const", const="umhp",
                       help="alias of --box_head umhp (reference code)")
    group.add_argument("--uncertain_box_head", dest="box_head", action="store_const",
                       const="hinge", help="alias of --box_head hinge (reference code)")
    group.add_argument("--num_hypotheses", type=positive_int, default=3,
                       help="hypothesis boxes per [BOX] (forced to 1 by --box_head single)")
    group.add_argument("--max_boxes_per_phrase", type=positive_int,
                       default=DEFAULT_MAX_BOXES_PER_PHRASE,
                       help="boxes each [BOX] may yield (box slots, each with its hypotheses "
                            "and a presence); 1 is the paper's single-box model, trained on "
                            "the box enclosing a finding's boxes")
    group.add_argument("--phrase_box", action=argparse.BooleanOptionalAction, default=True,
                       help="with --max_boxes_per_phrase > 1, also predict the phrase's own box "
                            "(trained on the enclosing box, as the single-box model), which a "
                            "phrase reports when its count is one")
    group.add_argument("--upscaled_heatmap", action=argparse.BooleanOptionalAction,
                       default=False,
                       help="place the box decoder's centre heatmaps on SAM's 4x upscaled mask "
                            "grid (its output_upscaling and hypernetworks, initialised from "
                            "SAM) instead of the image-feature grid")
    group.add_argument("--own_count_path", action=argparse.BooleanOptionalAction,
                       default=True,
                       help="with --max_boxes_per_phrase > 1, the box count reads a pooling of "
                            "the phrase of its own and the decoder's [BOX] output, both "
                            "detached, so its loss moves nothing the boxes are read from "
                            "(--no-own_count_path: the count head reads the [BOX] output, "
                            "shared with the boxes)")
    group.add_argument("--query_layers", type=layer_list, default=[0, -1],
                       help="comma-separated LM hidden-state layers whose phrase states make a "
                            "[BOX]'s query (0 = token embeddings, -1 = last layer)")
    group.add_argument("--query_heads", type=positive_int, default=DEFAULT_QUERY_HEADS,
                       help="attention-pooling heads of a [BOX]'s phrase query, each pooling "
                            "the phrase on its own (1: one pooled vector)")
    defaults = BoxLossConfig()
    group.add_argument("--ce_loss_weight", type=float, default=1.0)
    group.add_argument("--phrase_start_loss_weight", type=positive_float, default=1.0,
                       help="weight of the text loss at each phrase's first token and at the "
                            "answer's end, against 1 for the other answer tokens (a weighted "
                            "mean; model/text_loss.py)")
    group.add_argument("--l1_loss_weight", type=float, default=defaults.l1_weight)
    group.add_argument("--giou_loss_weight", type=float, default=defaults.giou_weight)
    group.add_argument("--hyp_loss_weight", type=float, default=defaults.hypothesis_weight,
                       help="weight of the extra box term: for mhp/umhp the L1 + GIoU of the "
                            "hypotheses' mean box, for hinge the hypotheses' spacing hinge")
    group.add_argument("--mhp_epsilon", type=float, default=defaults.mhp_epsilon)
    group.add_argument("--umhp_temperature", type=float, default=defaults.umhp_temperature)
    group.add_argument("--hinge_margin", type=float, default=defaults.hinge_margin)
    group.add_argument("--presence_loss_weight", type=float, default=defaults.presence_weight,
                       help="weight of the box-presence BCE (--max_boxes_per_phrase > 1)")
    group.add_argument("--count_loss_weight", type=float, default=defaults.count_weight,
                       help="weight of the box-count cross-entropy (--max_boxes_per_phrase > 1)")
    group.add_argument("--iou_head", action="store_true",
                       help="add the box decoder's IoU-prediction head (SAM's "
                            "iou_prediction_head), trained on the IoU of the mean box")
    group.add_argument("--iou_loss_weight", type=float, default=defaults.iou_weight,
                       help="weight of the IoU head's MSE loss (with --iou_head)")
    group.add_argument("--uncertainty", default="spread", choices=UNCERTAINTY_SIGNALS,
                       help="what a box's u reports, saved with the model: the hypotheses' "
                            "spread, 1 - the IoU head's IoU, or both combined (iou and "
                            "combined need --iou_head)")


def add_uncertainty_override_arg(parser: argparse.ArgumentParser | Any) -> None:
    """``--uncertainty`` for test.py, chat.py and app.py: the signal u reports (default: the one
    saved with the model)."""
    parser.add_argument("--uncertainty", default=None, choices=UNCERTAINTY_SIGNALS,
                        help="what a box's u reports: spread, iou or combined (the last two "
                             "need a model trained with --iou_head; default: as saved)")


def add_image_reading_args(parser: argparse.ArgumentParser | Any) -> None:
    """How images are read (utils/image_io.py): the pixel limit and the 16-bit window."""
    parser.add_argument("--max_image_pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--image_window", choices=WINDOWS, default="full",
                        help="16-bit/float images (and DICOM without a window) to 8 bits: full "
                             "min..max range, or the 0.5..99.5 %% percentile window")


def add_image_input_args(parser: argparse.ArgumentParser | Any) -> None:
    """The loader's input rules (docs/data.md), shared by train.py and test.py."""
    parser.add_argument("--allow_outside_root", action="store_true",
                        help="accept image paths that resolve outside --image_root")
    parser.add_argument("--fix_declared_size", action="store_true",
                        help="rescale the boxes of rows whose width/height differ from the image "
                             "(counted) instead of failing")
    add_image_reading_args(parser)


def add_decoding_arg(parser: argparse.ArgumentParser | Any) -> None:
    """How answers are generated (test.py, validation, chat.py, app.py)."""
    parser.add_argument("--decoding", choices=DECODINGS, default=DEFAULT_DECODING,
                        help="spans: every generated phrase of a report copies a span of the "
                             "prompt's text (utils.span_decoding; VQA and class prompts decode "
                             "freely, their phrases are not in the prompt); free: plain greedy "
                             "decoding")
    parser.add_argument("--phrase_start_ratio", type=unit_float,
                        default=DEFAULT_PHRASE_START_RATIO,
                        help="span decoding: where a phrase may start, write the one starting "
                             "earliest in the text among the tokens at least this fraction as "
                             "probable as the greedy one (ending the answer counts as after the "
                             "text); 1 is plain greedy (utils.span_decoding)")


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """Loading an exported model for one image (chat.py, app.py), LISA's flags."""
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                        help="bf16 is LISA's GPU setting; fp32 on the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    quantization = parser.add_mutually_exclusive_group()
    quantization.add_argument("--load_in_8bit", action="store_true",
                              help="quantise the language model to 8 bits (GPU, bitsandbytes)")
    quantization.add_argument("--load_in_4bit", action="store_true",
                              help="quantise the language model to 4 bits (GPU, bitsandbytes)")
    parser.add_argument("--vision_pretrained", default=None,
                        help="for a folder exported with --link_sam: the SAM checkpoint to use")
    parser.add_argument("--max_new_tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--model_max_length", type=positive_int,
                        default=DEFAULT_MODEL_MAX_LENGTH)
    add_decoding_arg(parser)
    add_test_time_shift_arg(parser)
    add_uncertainty_override_arg(parser)
    add_image_reading_args(parser)


def add_test_time_shift_arg(parser: argparse.ArgumentParser | Any) -> None:
    """``--test_time_shift`` for test.py, chat.py and app.py (:mod:`model.test_time_shifts`)."""
    parser.add_argument("--test_time_shift", type=non_negative_int, default=None, metavar="PX",
                        help="also read the boxes on copies of the image shifted PX pixels of "
                             "SAM's input right, left, down and up; their hypotheses join the "
                             "image's own in u and the calibration, the boxes stay the image's "
                             "own (5x the SAM and box-decoder passes; 0: off; default: as the "
                             "model's calibration.json was fitted, else 0)")


def set_test_time_shift(model: Any, shift: int | None) -> None:
    """Set ``model.test_time_shift`` from ``--test_time_shift`` (``None``: the calibration's,
    else 0). A ValueError for a shift the calibration was not fitted with (its guarantees would
    not hold), or one as large as SAM's input."""
    calibrated = model.calibration.test_time_shift if model.calibration is not None else 0
    if shift is None:
        shift = calibrated
    elif model.calibration is not None and shift != calibrated:
        raise ValueError(f"{model.config.version}: calibration.json was fitted with "
                         f"--test_time_shift {calibrated}, and its coverage and risk guarantees "
                         f"hold for that setting only; use {calibrated}, or calibrate again "
                         f"(test.py --calibrate) with {shift}")
    side = model.config.sam["image_size"]
    if shift >= side:
        raise ValueError(f"--test_time_shift {shift} px leaves nothing of SAM's {side}-px input; "
                         f"give a shift below {side} (e.g. half a feature cell)")
    model.test_time_shift = shift


def set_uncertainty_signal(model: Any, signal: str | None) -> None:
    """Make ``model``'s boxes report ``signal`` as u (``--uncertainty``; ``None`` keeps the saved
    one). A ValueError when the signal needs the IoU head and the model has none."""
    if signal is None:
        return
    if signal != "spread" and not model.config.iou_head:
        raise ValueError(f"--uncertainty {signal} needs the IoU head, and {model.config.version} "
                         "was trained without it (--iou_head); use --uncertainty spread")
    model.config.uncertainty = signal


def quantization_of(args: argparse.Namespace) -> str | None:
    """"8bit", "4bit" or None, from ``--load_in_8bit`` / ``--load_in_4bit``."""
    return "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None


def add_embedding_cache_args(parser: argparse.ArgumentParser, default: str) -> None:
    """``--embedding_cache`` / ``--no_embedding_cache`` (see :mod:`model.embedding_cache`)."""
    group = parser.add_argument_group("frozen-SAM embedding cache")
    group.add_argument("--embedding_cache", default=None, metavar="DIR",
                       help="folder for the SAM embeddings of a frozen encoder, computed once and "
                            f"reused; 'memory' keeps them in memory only (default: {default})")
    group.add_argument("--embedding_cache_memory_mb", type=positive_int, default=1024,
                       help="embeddings also kept in memory, most recently used first")
    group.add_argument("--no_embedding_cache", action="store_true",
                       help="encode every image at every use")


def attach_embedding_cache(model: Any, args: argparse.Namespace,
                           default_folder: Path | None) -> str:
    """Give ``model`` the cache the flags ask for, when its SAM encoder is frozen; returns a
    line saying what was done, for the log."""
    if args.no_embedding_cache:
        return "embedding cache: off (--no_embedding_cache)"
    folder = default_folder if args.embedding_cache is None else (
        None if args.embedding_cache == "memory" else Path(args.embedding_cache))
    cache = model.enable_embedding_cache(folder, args.embedding_cache_memory_mb << 20)
    if cache is None:
        return "embedding cache: off (the SAM encoder is trained)"
    return f"embedding cache: {folder or 'memory only'} (encoder {cache.fingerprint[:12]})"


def grounding_config_from_args(args: argparse.Namespace) -> GroundingConfig:
    """The :class:`GroundingConfig` described by the model flags."""
    return GroundingConfig(
        version=args.version, vision_pretrained=args.vision_pretrained,
        vision_model=args.vision_model, box_head=args.box_head,
        num_hypotheses=args.num_hypotheses, max_boxes_per_phrase=args.max_boxes_per_phrase,
        phrase_box=args.phrase_box, upscaled_heatmap=args.upscaled_heatmap,
        own_count_path=args.own_count_path,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_target_modules=[m.strip() for m in args.lora_target_modules.split(",") if m.strip()],
        train_vision_encoder=args.train_vision_encoder, lora_sam_rank=args.lora_sam_rank,
        query_layers=list(args.query_layers), query_heads=args.query_heads,
        gradient_checkpointing=args.gradient_checkpointing,
        ce_weight=args.ce_loss_weight, phrase_start_weight=args.phrase_start_loss_weight,
        iou_head=args.iou_head, uncertainty=args.uncertainty,
        box_loss=BoxLossConfig(mode=args.box_head, l1_weight=args.l1_loss_weight,
                               giou_weight=args.giou_loss_weight,
                               hypothesis_weight=args.hyp_loss_weight,
                               mhp_epsilon=args.mhp_epsilon,
                               umhp_temperature=args.umhp_temperature,
                               hinge_margin=args.hinge_margin,
                               presence_weight=args.presence_loss_weight,
                               count_weight=args.count_loss_weight,
                               iou_weight=args.iou_loss_weight))
