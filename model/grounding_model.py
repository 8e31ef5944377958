"""uMedGround: LLaVA with a ``[BOX]`` token, a SAM image encoder and the box decoder, composed.

The query of a ``[BOX]`` comes from the phrase it closes: the answer positions after the
previous ``[BOX]`` (or from the start of the answer) up to the position that *emits* this
``[BOX]`` (the token just before it, LISA's choice), e.g. "Small left pleural effusion. It is"
for the second box of "… It is [BOX]. Small left pleural effusion. It is [BOX].". The states
of these positions at the ``query_layers`` (by default the token embeddings and the last
layer) are attention-pooled and projected by :class:`model.phrase_query.PhraseQuery`.

LISA reads only the emitting position; with a pretrained 7B model that state already says
which phrase it closes. A language model trained from scratch has nothing there at first (the
emitting token is always "is"), and the boxes stall until it learns to route the phrase to
it; pooling the whole phrase gives the query content from the start (docs/experiments.md,
2026-11-29).

Teacher-forced training pools the states of the input positions; generation pools the
states of the very generation steps that read the same tokens (``output_hidden_states`` of
``generate``), so the boxes of generated text need no second forward over the sequence.

Saved (:meth:`UMedGround.save_pretrained`), a model is a llava-hf folder whose
``config.json`` carries the :class:`GroundingConfig` as its ``grounding_config`` sub-config,
plus ``grounding.safetensors`` (phrase query, box decoder and, unless the SAM is linked, the
SAM encoder). Everything is safetensors; nothing is unpickled on the load path. A folder that
``test.py --calibrate`` calibrated also holds ``calibration.json`` (:mod:`model.calibration`),
loaded into :attr:`UMedGround.calibration` and written back by :meth:`save_pretrained`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from segment_anything.modeling import Sam
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from model.box_decoder import BoxPrediction, LoadReport, UncertainBoxDecoder, build_box_decoder
from model.box_losses import compute_box_losses, iou_prediction_loss
from model.box_set_losses import compute_box_set_losses
from model.calibration import CALIBRATION_NAME, BoxCalibration
from model.config import GroundingConfig
from model.constants import BOX_TOKEN
from model.embedding_cache import EmbeddingCache, encoder_fingerprint
from model.llava_builder import check_quantization, load_llava, load_processor
from model.phrase_query import build_phrase_query
from model.sam_encoder import SamConfig, build_sam, load_sam_checkpoint
from model.test_time_shifts import ShiftedView, shifted_copies
from model.text_loss import text_loss

logger = logging.getLogger(__name__)

GROUNDING_WEIGHTS = "grounding.safetensors"
SUBCONFIG_KEY = "grounding_config"
HF_CONFIG = "config.json"


@dataclass
class GroundingOutput:
    """Teacher-forced forward result: weighted loss terms and the box predictions.

    ``losses`` holds ``"ce"``, the box terms of :func:`compute_box_losses` (with several box
    slots, of :func:`compute_box_set_losses`), ``"box_iou"`` with the decoder's IoU head
    (:func:`iou_prediction_loss`) and ``"total"``.
    ``prediction`` covers every ``[BOX]`` of the batch in batch-then-answer order, and
    ``box_batch_index`` (Q,) gives each one's sample.
    """

    losses: dict[str, torch.Tensor]
    prediction: BoxPrediction
    box_batch_index: torch.Tensor


@dataclass
class GenerationOutput:
    """Generated answers and the boxes of their ``[BOX]`` tokens.

    ``texts``: one decoded answer per sample (``[BOX]`` kept, special tokens removed).
    ``token_ids``: the generated ids per sample, up to and including EOS.
    ``prediction``/``box_batch_index``: one entry per generated ``[BOX]``, in order.
    """

    texts: list[str]
    token_ids: list[torch.Tensor]
    prediction: BoxPrediction
    box_batch_index: torch.Tensor


def pad_phrases(phrases: list[torch.Tensor], like: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_i,D) phrase states → zero-padded (Q,T,D) and the (Q,T) mask of real positions."""
    if not phrases:
        return like.new_zeros(0, 1, like.shape[-1]), torch.zeros(0, 1, dtype=torch.bool,
                                                                  device=like.device)
    states = nn.utils.rnn.pad_sequence(phrases, batch_first=True)
    lengths = torch.tensor([len(p) for p in phrases], device=states.device)
    mask = torch.arange(states.shape[1], device=states.device) < lengths.unsqueeze(1)
    return states, mask


class UMedGround(nn.Module):
    """The composed model.

    Arguments:
      llava: ``LlavaForConditionalGeneration``, possibly wrapped by peft (LoRA).
      sam_encoder: segment-anything's ``ImageEncoderViT`` (B,3,S,S) → (B,C,S/p,S/p).
      phrase_query: a :class:`model.phrase_query.PhraseQuery`, (Q,T,k*H) phrase states → (Q,C).
      box_decoder: the uncertainty-aware multi-hypothesis decoder.
      box_token_id: the tokenizer id of ``[BOX]``.
      config: the model and head configuration (loss weights included).
      count_query: with ``config.own_count_path``, the box count's own
        :class:`model.phrase_query.PhraseQuery`, reading the phrase states detached, (Q,T,k*H)
        → (Q,C) (:mod:`model.box_decoder`); None otherwise.

    ``embedding_cache`` (an :class:`EmbeddingCache`, set by train.py / test.py) serves the SAM
    features while the encoder is frozen; it is not part of the weights. ``calibration`` (a
    :class:`model.calibration.BoxCalibration`) is the folder's ``calibration.json``, if any.
    ``test_time_shift`` (pixels of SAM's input; 0: off) makes evaluation and inference also
    read the boxes on shifted copies of the image, for their uncertainty
    (:mod:`model.test_time_shifts`); training never does.
    """

    embedding_cache: EmbeddingCache | None = None
    calibration: BoxCalibration | None = None
    test_time_shift: int = 0

    def __init__(self, llava: nn.Module, sam_encoder: nn.Module, phrase_query: nn.Module,
                 box_decoder: UncertainBoxDecoder, box_token_id: int, config: GroundingConfig,
                 count_query: nn.Module | None = None):
        super().__init__()
        self.llava = llava
        self.sam_encoder = sam_encoder
        self.phrase_query = phrase_query
        self.box_decoder = box_decoder
        self.count_query = count_query
        self.box_token_id = box_token_id
        self.config = config

    def enable_embedding_cache(self, folder: str | Path | None,
                               max_memory_bytes: int) -> EmbeddingCache | None:
        """Serve the SAM features from an :class:`EmbeddingCache` (on disk in ``folder``, or
        in memory only for ``None``) while the encoder is frozen; ``None`` and no cache when
        any encoder parameter is trained."""
        if any(p.requires_grad for p in self.sam_encoder.parameters()):
            self.embedding_cache = None
        else:
            self.embedding_cache = EmbeddingCache(encoder_fingerprint(self.sam_encoder), folder,
                                                  max_memory_bytes)
        return self.embedding_cache

    @classmethod
    def assemble(cls, config: GroundingConfig, llava: nn.Module, processor: Any, sam: Sam,
                 sam_config: SamConfig, init_decoder_from_sam: bool,
                 device: torch.device | str, dtype: torch.dtype
                 ) -> tuple["UMedGround", LoadReport]:
        """The one assembly path: a loaded LLaVA and SAM plus a new phrase query and decoder.

        Used for training (base checkpoints, the decoder initialised from SAM's mask decoder)
        and by :meth:`from_pretrained` (the saved grounding weights are loaded afterwards).
        ``config.sam`` is set to ``sam_config``.
        """
        depth = llava.config.text_config.num_hidden_layers
        outside = [layer for layer in config.query_layers if not -(depth + 1) <= layer <= depth]
        if outside:
            raise ValueError(f"query_layers {outside} do not exist: {config.version} has hidden "
                             f"states 0..{depth} (0 = token embeddings, -1 = last layer)")
        config.sam = asdict(sam_config)
        decoder, report = build_box_decoder(sam_config, config.num_hypotheses,
                                            sam.state_dict() if init_decoder_from_sam else None,
                                            config.max_boxes_per_phrase, config.iou_head,
                                            config.phrase_box, config.upscaled_heatmap,
                                            config.own_count_path)
        query_shape = (llava.config.text_config.hidden_size, len(config.query_layers),
                       sam_config.prompt_embed_dim, config.query_heads)
        phrase_query = build_phrase_query(*query_shape)
        count_query = build_phrase_query(*query_shape, projection_dim=sam_config.prompt_embed_dim
                                         ) if config.own_count_path else None
        model = cls(llava, sam.image_encoder, phrase_query, decoder,
                    processor.tokenizer.convert_tokens_to_ids(BOX_TOKEN), config, count_query)
        for part in model.grounding_parts().values():
            part.to(device=device, dtype=dtype)
        return model, report

    def merge_adapters(self) -> None:
        """Fold every LoRA adapter into its base weights, LLM and SAM alike, in place.

        Afterwards neither ``llava`` nor ``sam_encoder`` is a peft wrapper.
        """
        for name in ("llava", "sam_encoder"):
            part = getattr(self, name)
            if isinstance(part, PeftModel):
                setattr(self, name, part.merge_and_unload())

    def grounding_parts(self, with_sam: bool = True) -> dict[str, nn.Module]:
        """The parts beside the LLaVA, by attribute name: ``phrase_query``, ``box_decoder``,
        ``count_query`` (with the count's own path) and, with ``with_sam``, ``sam_encoder``."""
        parts = {"phrase_query": self.phrase_query, "box_decoder": self.box_decoder}
        if self.count_query is not None:
            parts["count_query"] = self.count_query
        if with_sam:
            parts["sam_encoder"] = self.sam_encoder
        return parts

    def grounding_state_dict(self, with_sam: bool = True) -> dict[str, torch.Tensor]:
        """The tensors of ``grounding.safetensors``: those of :meth:`grounding_parts`, each
        under its part's name (contiguous CPU copies)."""
        return {f"{prefix}.{key}": value.detach().contiguous().cpu()
                for prefix, module in self.grounding_parts(with_sam).items()
                for key, value in module.state_dict().items()}

    def save_pretrained(self, folder: str | Path, processor: Any, link_sam: bool = False) -> Path:
        """Write an exported folder that :meth:`from_pretrained` loads anywhere.

        LoRA adapters are merged first (in place, :meth:`merge_adapters`). The folder holds
        the SAM encoder weights unless ``link_sam``: then it records the absolute path of the
        SAM checkpoint named by ``config.vision_pretrained``, which must hold the very weights
        in use (a frozen SAM). :attr:`calibration`, when set, is written as
        ``calibration.json``; otherwise a ``calibration.json`` left in the folder by an earlier
        model is removed (it would describe other weights).

        Arguments:
          folder: the output folder (created).
          processor: the processor with ``[BOX]`` in its tokenizer.
          link_sam: point to the SAM checkpoint instead of copying its encoder.
        """
        folder = Path(folder)
        self.merge_adapters()
        sam_path = Path(self.config.vision_pretrained).resolve()
        if link_sam:
            if self.config.train_vision_encoder or self.config.lora_sam_rank > 0:
                raise ValueError("--link_sam: the SAM encoder was trained, so its weights differ "
                                 f"from {self.config.vision_pretrained}; export without --link_sam")
            if not sam_path.is_file():
                raise FileNotFoundError(f"--link_sam: the SAM checkpoint {sam_path} does not exist")
        exported = GroundingConfig.from_dict(
            {**self.config.to_dict(), "version": ".", "lora_r": 0, "lora_sam_rank": 0,
             "train_vision_encoder": False, "gradient_checkpointing": False,
             "vision_pretrained": str(sam_path) if link_sam else GROUNDING_WEIGHTS},
            "the model's config")
        folder.mkdir(parents=True, exist_ok=True)
        self.llava.config.grounding_config = exported.to_dict()
        try:
            self.llava.save_pretrained(folder)
        finally:
            del self.llava.config.grounding_config
        processor.save_pretrained(folder)
        save_file(self.grounding_state_dict(with_sam=not link_sam), folder / GROUNDING_WEIGHTS)
        if self.calibration is not None:
            self.calibration.save(folder)
        else:
            (folder / CALIBRATION_NAME).unlink(missing_ok=True)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, quantization: str | None = None,
                        vision_pretrained: str | None = None) -> tuple["UMedGround", Any]:
        """Load a folder written by :meth:`save_pretrained`, for inference (eval, frozen).

        Arguments:
          folder: the exported folder; it may have been moved or copied anywhere.
          device, dtype: where and in which precision to put the model.
          quantization: "8bit" / "4bit" quantise the language model only (CUDA, bitsandbytes);
            the vision tower, projector, SAM, phrase query and decoder stay in ``dtype``.
          vision_pretrained: for a ``--link_sam`` folder, the SAM checkpoint to use instead of
            the recorded path.
        Returns:
          the model and its processor.
        Raises:
          ValueError / FileNotFoundError naming the file, for a folder that is not an export
          or holds an unreadable or foreign file.
        """
        folder = Path(folder)
        if quantization is not None:
            check_quantization(quantization, device)
        config = read_exported_config(folder)
        weights = read_safetensors(folder / GROUNDING_WEIGHTS)
        embedded = config.vision_pretrained == GROUNDING_WEIGHTS
        if embedded and vision_pretrained:
            raise ValueError(f"{folder} holds its own SAM encoder; --vision_pretrained applies "
                             "only to a folder exported with --link_sam")
        processor = load_processor(folder)
        llava = load_llava(folder, processor, dtype, device, quantization)
        sam_config = SamConfig(**config.sam)
        if embedded:
            sam = build_sam(sam_config)
        else:
            linked = vision_pretrained or config.vision_pretrained
            sam, loaded_config = load_sam_checkpoint(linked)
            if loaded_config != sam_config:
                raise ValueError(f"{linked}: a {loaded_config.name} SAM, but {folder} was "
                                 f"trained with a {sam_config.name} SAM ({sam_config})")
        model, _ = cls.assemble(config, llava, processor, sam, sam_config, False, device, dtype)
        prefixes = tuple(model.grounding_parts(with_sam=embedded))
        unexpected = sorted({key.split(".")[0] for key in weights} - set(prefixes))
        if unexpected:
            raise ValueError(f"{folder / GROUNDING_WEIGHTS}: unexpected part(s) {unexpected}")
        for prefix in prefixes:
            part = {key[len(prefix) + 1:]: value for key, value in weights.items()
                    if key.startswith(prefix + ".")}
            try:
                getattr(model, prefix).load_state_dict(part, strict=True)
            except RuntimeError as error:
                raise ValueError(f"{folder / GROUNDING_WEIGHTS}: {prefix} does not match the "
                                 f"config: {' '.join(str(error).split())[:300]}") from None
        model.calibration = BoxCalibration.load(folder)
        model.config.version = str(folder)
        model.eval().requires_grad_(False)
        logger.info("loaded %s (SAM %s%s)", folder, "embedded" if embedded else sam_config.name,
                    ", calibrated" if model.calibration is not None else "")
        return model, processor

    def encode_images(self, sam_images: torch.Tensor) -> torch.Tensor:
        """SAM features (B,C,h,w) of preprocessed images (B,3,S,S); no graph when frozen, and
        from :attr:`embedding_cache` when one is set and the encoder is frozen."""
        first = next(self.sam_encoder.parameters())
        trainable = any(p.requires_grad for p in self.sam_encoder.parameters())
        images = sam_images.to(first.dtype)
        if trainable and torch.is_grad_enabled():
            return self.sam_encoder(images)
        with torch.no_grad():
            if self.embedding_cache is not None and not trainable:
                return self.embedding_cache.encode(images, self.sam_encoder)
            return self.sam_encoder(images)

    def shifted_views(self, sam_images: torch.Tensor) -> list[ShiftedView]:
        """The SAM features of the shifted copies of (B,3,S,S) images that the decoder also
        reads: none in training or with ``test_time_shift`` 0 (see
        :mod:`model.test_time_shifts`)."""
        if self.training or self.test_time_shift == 0:
            return []
        return [ShiftedView(self.encode_images(images), offset)
                for images, offset in shifted_copies(sam_images, self.test_time_shift)]

    def decode_boxes(self, image_embeddings: torch.Tensor, phrase_states: torch.Tensor,
                     phrase_mask: torch.Tensor, box_batch_index: torch.Tensor,
                     views: list[ShiftedView] | None = None) -> BoxPrediction:
        """Boxes for Q ``[BOX]`` phrases against (B,C,h,w) image features (and ``views``, the
        features of shifted copies, :meth:`shifted_views`).

        ``phrase_states`` (Q,T,L*H) and ``phrase_mask`` (Q,T) as :meth:`phrase_states` returns.
        """
        dtype = self.phrase_query.score.weight.dtype
        phrase_states = phrase_states.to(dtype)
        queries = self.phrase_query(phrase_states, phrase_mask)
        count_queries = None if self.count_query is None \
            else self.count_query(phrase_states.detach(), phrase_mask)
        return self.box_decoder(image_embeddings, queries, box_batch_index, views or (),
                                count_queries)

    def query_states(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The ``query_layers`` of a hidden-state tuple, concatenated: (...,H) each → (...,k*H)."""
        return torch.cat([hidden_states[layer] for layer in self.config.query_layers], dim=-1)

    def phrase_states(self, hidden: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The phrase states of every ``[BOX]`` in teacher-forced labels.

        Arguments:
          hidden: (B,L,D) states, as :meth:`query_states` returns.
          labels: (B,L) the input ids inside the answer, -100 elsewhere.
        Returns:
          rows (Q,), the sample of each ``[BOX]`` in batch-then-answer order; (Q,T,D) the
          states of its phrase (see the module docstring), zero-padded to the longest; and the
          (Q,T) mask of real positions.
        """
        rows, phrases = [], []
        for row in range(labels.shape[0]):
            answer = (labels[row] != -100).nonzero(as_tuple=True)[0]
            start = int(answer[0]) if answer.numel() else 0
            for position in (labels[row] == self.box_token_id).nonzero(as_tuple=True)[0].tolist():
                emit = position - 1  # no phrase token before it: the emitting state alone
                phrases.append(hidden[row, min(start, emit):emit + 1])
                rows.append(row)
                start = position + 1
        states, mask = pad_phrases(phrases, hidden)
        return torch.tensor(rows, dtype=torch.long, device=labels.device), states, mask

    def forward(self, sam_images: torch.Tensor, pixel_values: torch.Tensor,
                input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                box_targets: torch.Tensor | None = None,
                image_embeddings: torch.Tensor | None = None,
                box_set_targets: torch.Tensor | None = None,
                box_set_index: torch.Tensor | None = None,
                image_views: list[ShiftedView] | None = None) -> GroundingOutput:
        """Teacher-forced pass.

        Arguments:
          sam_images: (B,3,S,S) SAM-preprocessed images.
          pixel_values: (B,3,h,w) LLaVA processor images.
          input_ids, attention_mask, labels: (B,L); labels are -100 outside the answer.
          box_targets: (Q,4) normalised xyxy in SAM's padded frame, one per ``[BOX]`` label in
            batch-then-answer order; ``None`` skips the box losses (prediction only).
          image_embeddings: (B,C,h,w) SAM features of ``sam_images`` when the caller has them
            (evaluation shares one encoding between generation and this pass); ``image_views``
            likewise the shifted copies' (:meth:`shifted_views`).
          box_set_targets, box_set_index: (G,4) every ground-truth box of every ``[BOX]``
            (normalised xyxy in SAM's padded frame) and (G,) the ``[BOX]`` each belongs to;
            the targets of a model with several boxes per phrase (``max_boxes_per_phrase``
            > 1), which without them takes ``box_targets`` as one box per ``[BOX]``. The
            single-box model trains on ``box_targets`` and ignores them.
        """
        outputs = self.llava(input_ids=input_ids, attention_mask=attention_mask,
                             pixel_values=pixel_values.to(self.llava.dtype),
                             output_hidden_states=True)
        rows, states, mask = self.phrase_states(self.query_states(outputs.hidden_states), labels)
        if image_embeddings is None:
            image_embeddings = self.encode_images(sam_images)
        if image_views is None:
            image_views = self.shifted_views(sam_images)
        prediction = self.decode_boxes(image_embeddings, states, mask, rows, image_views)
        ce = text_loss(outputs.logits, labels, self.box_token_id,
                       self.config.phrase_start_weight) * self.config.ce_weight
        losses = {"ce": ce}
        if box_targets is not None:
            if box_targets.shape[0] != rows.numel():
                raise ValueError(f"{rows.numel()} [BOX] tokens in the labels but "
                                 f"{box_targets.shape[0]} box targets")
            if prediction.slots is None:
                targets = box_targets.to(prediction.box.dtype)
                box_losses = compute_box_losses(prediction, targets, self.config.box_loss)
                if prediction.iou is not None:
                    box_losses["box_iou"] = iou_prediction_loss(prediction, targets,
                                                                self.config.box_loss)
            else:
                if box_set_targets is None:
                    box_set_targets, box_set_index = box_targets, torch.arange(
                        rows.numel(), device=box_targets.device)
                box_losses = compute_box_set_losses(
                    prediction, box_set_targets.to(prediction.box.dtype), box_set_index,
                    self.config.box_loss, box_targets.to(prediction.box.dtype))
            losses.update(box_losses)
            total = ce + box_losses["box_total"]
            if "box_iou" in box_losses:
                total = total + box_losses["box_iou"]
            losses["total"] = total
        else:
            losses["total"] = ce
        return GroundingOutput(losses, prediction, rows)

    @torch.no_grad()
    def generate(self, sam_images: torch.Tensor, pixel_values: torch.Tensor,
                 input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer,
                 max_new_tokens: int = 128,
                 image_embeddings: torch.Tensor | None = None,
                 logits_processor: LogitsProcessor | None = None,
                 image_views: list[ShiftedView] | None = None) -> GenerationOutput:
        """Greedy generation from left-padded prompts (B,L), with the boxes of every ``[BOX]``.

        ``image_embeddings`` (B,C,h,w) and ``image_views`` (:meth:`shifted_views`), when given,
        are used instead of encoding ``sam_images``.
        ``logits_processor``, when given, processes each step's scores (B,V) before the
        greedy choice (``utils.span_decoding.SpanLogitsProcessor`` keeps the phrases spans of
        the prompt).
        """
        generated = self.llava.generate(
            input_ids=input_ids, attention_mask=attention_mask,
            pixel_values=pixel_values.to(self.llava.dtype), max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, output_hidden_states=True, return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            logits_processor=LogitsProcessorList([logits_processor] if logits_processor
                                                 else []))
        new_tokens = generated.sequences[:, input_ids.shape[1]:]
        batch = new_tokens.shape[0]
        finished = torch.zeros(batch, dtype=torch.bool, device=new_tokens.device)
        token_ids: list[list[int]] = [[] for _ in range(batch)]
        phrase: list[list[torch.Tensor]] = [[] for _ in range(batch)]
        box_rows, box_phrases = [], []
        for step in range(new_tokens.shape[1]):
            tokens = new_tokens[:, step]
            live = ~finished
            # the last position's states of the step that reads token step-1 and emits tokens
            hidden = self.query_states(tuple(h[:, -1] for h in generated.hidden_states[step]))
            for row in live.nonzero(as_tuple=True)[0].tolist():
                # an answer token's state joins its phrase unless it reads a [BOX]
                if step > 0 and int(new_tokens[row, step - 1]) != self.box_token_id:
                    phrase[row].append(hidden[row])
                if int(tokens[row]) == self.box_token_id:
                    box_rows.append(row)
                    box_phrases.append(torch.stack(phrase[row]) if phrase[row]
                                       else hidden[row:row + 1])
                    phrase[row] = []
                token_ids[row].append(int(tokens[row]))
            finished |= tokens == tokenizer.eos_token_id
        rows = torch.tensor(box_rows, dtype=torch.long, device=new_tokens.device)
        order = torch.sort(rows, stable=True).indices  # batch-then-generation order
        states, mask = pad_phrases([box_phrases[i] for i in order.tolist()], hidden)
        if image_embeddings is None:
            image_embeddings = self.encode_images(sam_images)
        if image_views is None:
            image_views = self.shifted_views(sam_images)
        prediction = self.decode_boxes(image_embeddings, states, mask, rows[order], image_views)
        texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in token_ids]
        return GenerationOutput(texts, [torch.tensor(ids, dtype=torch.long) for ids in token_ids],
                                prediction, rows[order])


def read_exported_config(folder: Path) -> GroundingConfig:
    """The ``grounding_config`` sub-config of an exported folder's ``config.json``."""
    path = folder / HF_CONFIG
    hint = ("export a trained model with merge_lora_weights_and_save_hf_model.py (a folder of "
            "an older export: export it again)")
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not an exported uMedGround folder (no {HF_CONFIG}); "
                                f"{hint}")
    try:
        raw = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict) or SUBCONFIG_KEY not in raw:
        raise ValueError(f"{folder}: not an exported uMedGround folder ({HF_CONFIG} has no "
                         f"{SUBCONFIG_KEY!r}); {hint}")
    config = GroundingConfig.from_dict(raw[SUBCONFIG_KEY], f"{path} ({SUBCONFIG_KEY})")
    if not config.sam:
        raise ValueError(f"{path}: {SUBCONFIG_KEY} has no SAM architecture ('sam'); {hint}")
    return config


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing, truncated or foreign file is an error
    naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: not an exported uMedGround folder")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error}); export the model "
                         "again") from None
