"""uMedGround: LLaVA with a ``[BOX]`` token, a SAM image encoder and the box decoder, composed.

The query of a ``[BOX]`` is the mean of the last-layer hidden states over the phrase it closes:
the answer positions after the previous ``[BOX]`` (or from the start of the answer) up to the
position that *emits* this ``[BOX]`` (the token just before it, LISA's choice), e.g. over
"Small left pleural effusion. It is" for the second box of "… It is [BOX]. Small left pleural
effusion. It is [BOX].". LISA reads only the emitting position; with a pretrained 7B model
that state already says which phrase it closes. A language model trained from scratch has
nothing there at first (the emitting token is always "is"), and the boxes stall until it
learns to route the phrase to it: in the tiny demo setting, given-phrase acc@0.5 was 0.12
after 300 steps reading the emitting state only. The mean over the phrase carries the words
from the first step.

Teacher-forced training pools the states of the input positions; generation pools the
states of the very generation steps that read the same tokens (``output_hidden_states`` of
``generate``), so the boxes of generated text need no second forward over the sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.box_decoder import BoxPrediction, UncertainBoxDecoder
from model.box_losses import compute_box_losses
from model.config import GroundingConfig


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


def build_box_projection(hidden_size: int, out_dim: int) -> nn.Sequential:
    """MLP from the LM hidden size to the decoder width (LISA's ``text_hidden_fcs`` shape)."""
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(inplace=True),
                         nn.Linear(hidden_size, out_dim))


class UMedGround(nn.Module):
    """The composed model.

    Arguments:
      llava: ``LlavaForConditionalGeneration``, possibly wrapped by peft (LoRA).
      sam_encoder: segment-anything's ``ImageEncoderViT`` (B,3,S,S) → (B,C,S/p,S/p).
      box_projection: MLP hidden size → C.
      box_decoder: the uncertainty-aware multi-hypothesis decoder.
      box_token_id: the tokenizer id of ``[BOX]``.
      config: the model and head configuration (loss weights included).
    """

    def __init__(self, llava: nn.Module, sam_encoder: nn.Module, box_projection: nn.Module,
                 box_decoder: UncertainBoxDecoder, box_token_id: int, config: GroundingConfig):
        super().__init__()
        self.llava = llava
        self.sam_encoder = sam_encoder
        self.box_projection = box_projection
        self.box_decoder = box_decoder
        self.box_token_id = box_token_id
        self.config = config

    def encode_images(self, sam_images: torch.Tensor) -> torch.Tensor:
        """SAM features (B,C,h,w) of preprocessed images (B,3,S,S); no graph when frozen."""
        first = next(self.sam_encoder.parameters())
        trainable = any(p.requires_grad for p in self.sam_encoder.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            return self.sam_encoder(sam_images.to(first.dtype))

    def decode_boxes(self, image_embeddings: torch.Tensor, box_hidden: torch.Tensor,
                     box_batch_index: torch.Tensor) -> BoxPrediction:
        """Boxes for (Q,H) ``[BOX]`` hidden states against (B,C,h,w) image features."""
        embeddings = self.box_projection(box_hidden.to(self.box_projection[0].weight.dtype))
        return self.box_decoder(image_embeddings, embeddings, box_batch_index)

    def phrase_states(self, hidden: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled query state of every ``[BOX]`` in teacher-forced labels.

        Arguments:
          hidden: (B,L,H) last-layer hidden states.
          labels: (B,L) the input ids inside the answer, -100 elsewhere.
        Returns:
          rows (Q,), the sample of each ``[BOX]`` in batch-then-answer order, and (Q,H) the
          mean state over its phrase (see the module docstring).
        """
        rows, states = [], []
        for row in range(labels.shape[0]):
            answer = (labels[row] != -100).nonzero(as_tuple=True)[0]
            start = int(answer[0]) if answer.numel() else 0
            for position in (labels[row] == self.box_token_id).nonzero(as_tuple=True)[0].tolist():
                emit = position - 1  # no phrase token before it: the emitting state alone
                states.append(hidden[row, min(start, emit):emit + 1].mean(dim=0))
                rows.append(row)
                start = position + 1
        if not states:
            return labels.new_zeros(0), hidden.new_zeros(0, hidden.shape[-1])
        return torch.tensor(rows, device=labels.device), torch.stack(states)

    def forward(self, sam_images: torch.Tensor, pixel_values: torch.Tensor,
                input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                box_targets: torch.Tensor | None = None) -> GroundingOutput:
        """Teacher-forced pass.

        Arguments:
          sam_images: (B,3,S,S) SAM-preprocessed images.
          pixel_values: (B,3,h,w) LLaVA processor images.
          input_ids, attention_mask, labels: (B,L); labels are -100 outside the answer.
          box_targets: (Q,4) normalised xyxy in SAM's padded frame, one per ``[BOX]`` label in
            batch-then-answer order; ``None`` skips the box losses (prediction only).
        """
        outputs = self.llava(input_ids=input_ids, attention_mask=attention_mask,
                             pixel_values=pixel_values.to(self.llava.dtype), labels=labels,
                             output_hidden_states=True)
        rows, box_hidden = self.phrase_states(outputs.hidden_states[-1], labels)
        prediction = self.decode_boxes(self.encode_images(sam_images), box_hidden, rows)
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
                 max_new_tokens: int = 128) -> GenerationOutput:
        """Greedy generation from left-padded prompts (B,L), with the boxes of every ``[BOX]``."""
        generated = self.llava.generate(
            input_ids=input_ids, attention_mask=attention_mask,
            pixel_values=pixel_values.to(self.llava.dtype), max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, output_hidden_states=True, return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = generated.sequences[:, input_ids.shape[1]:]
        batch = new_tokens.shape[0]
        finished = torch.zeros(batch, dtype=torch.bool, device=new_tokens.device)
        token_ids: list[list[int]] = [[] for _ in range(batch)]
        first_state = generated.hidden_states[0][-1]
        phrase_sum = first_state.new_zeros(batch, first_state.shape[-1])
        phrase_count = new_tokens.new_zeros(batch)
        box_rows, box_hidden = [], []
        for step in range(new_tokens.shape[1]):
            tokens = new_tokens[:, step]
            live = ~finished
            hidden = generated.hidden_states[step][-1][:, -1]  # reads token step-1, emits tokens
            if step > 0:  # the state of an answer token joins its phrase unless it is [BOX]
                joins = live & (new_tokens[:, step - 1] != self.box_token_id)
                phrase_sum[joins] += hidden[joins]
                phrase_count[joins] += 1
            is_box = live & (tokens == self.box_token_id)
            for row in is_box.nonzero(as_tuple=True)[0].tolist():
                box_rows.append(row)
                box_hidden.append(phrase_sum[row] / phrase_count[row] if phrase_count[row]
                                  else hidden[row])
            phrase_sum[is_box] = 0
            phrase_count[is_box] = 0
            for row in live.nonzero(as_tuple=True)[0].tolist():
                token_ids[row].append(int(tokens[row]))
            finished |= tokens == tokenizer.eos_token_id
        rows = torch.tensor(box_rows, dtype=torch.long, device=new_tokens.device)
        hidden = torch.stack(box_hidden) if box_hidden else phrase_sum[:0]
        order = torch.sort(rows, stable=True).indices  # batch-then-generation order
        prediction = self.decode_boxes(self.encode_images(sam_images), hidden[order], rows[order])
        texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in token_ids]
        return GenerationOutput(texts, [torch.tensor(ids, dtype=torch.long) for ids in token_ids],
                                prediction, rows[order])
