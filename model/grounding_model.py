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
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.box_decoder import BoxPrediction, UncertainBoxDecoder
from model.box_losses import compute_box_losses
from model.config import GroundingConfig
from model.embedding_cache import EmbeddingCache, encoder_fingerprint


@dataclass
class GroundingOutput:
    """Teacher-forced forward result: weighted loss terms and the box predictions.

    ``losses`` holds ``"ce"``, the box terms of :func:`compute_box_losses` and ``"total"``.
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

    ``embedding_cache`` (an :class:`EmbeddingCache`, set by train.py / test.py) serves the SAM
    features while the encoder is frozen; it is not part of the weights.
    """

    embedding_cache: EmbeddingCache | None = None

    def __init__(self, llava: nn.Module, sam_encoder: nn.Module, phrase_query: nn.Module,
                 box_decoder: UncertainBoxDecoder, box_token_id: int, config: GroundingConfig):
        super().__init__()
        self.llava = llava
        self.sam_encoder = sam_encoder
        self.phrase_query = phrase_query
        self.box_decoder = box_decoder
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

    def decode_boxes(self, image_embeddings: torch.Tensor, phrase_states: torch.Tensor,
                     phrase_mask: torch.Tensor, box_batch_index: torch.Tensor) -> BoxPrediction:
        """Boxes for Q ``[BOX]`` phrases against (B,C,h,w) image features.

        ``phrase_states`` (Q,T,L*H) and ``phrase_mask`` (Q,T) as :meth:`phrase_states` returns.
        """
        dtype = self.phrase_query.score.weight.dtype
        queries = self.phrase_query(phrase_states.to(dtype), phrase_mask)
        return self.box_decoder(image_embeddings, queries, box_batch_index)

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
                image_embeddings: torch.Tensor | None = None) -> GroundingOutput:
        """Teacher-forced pass.

        Arguments:
          sam_images: (B,3,S,S) SAM-preprocessed images.
          pixel_values: (B,3,h,w) LLaVA processor images.
          input_ids, attention_mask, labels: (B,L); labels are -100 outside the answer.
          box_targets: (Q,4) normalised xyxy in SAM's padded frame, one per ``[BOX]`` label in
            batch-then-answer order; ``None`` skips the box losses (prediction only).
          image_embeddings: (B,C,h,w) SAM features of ``sam_images`` when the caller has them
            (evaluation shares one encoding between generation and this pass).
        """
        outputs = self.llava(input_ids=input_ids, attention_mask=attention_mask,
                             pixel_values=pixel_values.to(self.llava.dtype), labels=labels,
                             output_hidden_states=True)
        rows, states, mask = self.phrase_states(self.query_states(outputs.hidden_states), labels)
        if image_embeddings is None:
            image_embeddings = self.encode_images(sam_images)
        prediction = self.decode_boxes(image_embeddings, states, mask, rows)
        ce = outputs.loss * self.config.ce_weight
        losses = {"ce": ce}
        if box_targets is not None:
            if box_targets.shape[0] != rows.numel():
                raise ValueError(f"{rows.numel()} [BOX] tokens in the labels but "
                                 f"{box_targets.shape[0]} box targets")
            box_losses = compute_box_losses(prediction, box_targets.to(prediction.box.dtype),
                                            self.config.box_loss)
            losses.update(box_losses)
            losses["total"] = ce + box_losses["box_total"]
        else:
            losses["total"] = ce
        return GroundingOutput(losses, prediction, rows)

    @torch.no_grad()
    def generate(self, sam_images: torch.Tensor, pixel_values: torch.Tensor,
                 input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer,
                 max_new_tokens: int = 128,
                 image_embeddings: torch.Tensor | None = None) -> GenerationOutput:
        """Greedy generation from left-padded prompts (B,L), with the boxes of every ``[BOX]``.

        ``image_embeddings`` (B,C,h,w), when given, are used instead of encoding ``sam_images``.
        """
        generated = self.llava.generate(
            input_ids=input_ids, attention_mask=attention_mask,
            pixel_values=pixel_values.to(self.llava.dtype), max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, output_hidden_states=True, return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
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
        prediction = self.decode_boxes(image_embeddings, states, mask, rows[order])
        texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in token_ids]
        return GenerationOutput(texts, [torch.tensor(ids, dtype=torch.long) for ids in token_ids],
                                prediction, rows[order])
