"""The uncertainty-aware multi-hypothesis box decoder.

Each ``[BOX]`` becomes one query: its projected hidden state joins N learned hypothesis tokens,
and SAM's ``TwoWayTransformer`` attends between these tokens and the image features. It
returns the updated tokens and the image features updated for this query. Hypothesis k then
places its box densely, as SAM's hypernetworks place masks: an MLP of hypothesis token k is
dotted with every cell's feature, and a softmax over the grid turns these logits into a centre
heatmap. A per-cell MLP reads, for each hypothesis, a sub-cell offset of the centre (at most
half a cell) and the box size. Box k is the heatmap-weighted mean of its per-cell boxes
(cx, cy, w, h, all in [0, 1]). Reading the position from a heatmap over the grid learns
faster than regressing it from a token, DETR style (docs/experiments.md, 2026-11-29).

With ``upscaled_heatmap`` the heatmaps lie on SAM's mask grid instead, 4x finer per side: the
image features pass through SAM's ``output_upscaling`` (two transposed convolutions, to C/8
channels), and each hypothesis token's hypernetwork, shaped as SAM's
``output_hypernetworks_mlps`` (C -> C/8), is dotted with every fine cell, exactly as SAM makes
its mask logits. The sizes and the sub-cell offsets are still read per coarse cell (by the same
per-cell MLP on the C-wide features) and shared by its 16 fine cells, each offset being then at
most half a fine cell; so the centre can fall between coarse cells in steps a quarter as wide,
which a box of a small lesion needs (a nodule spans one or two coarse cells of the tiny SAM).

The hypotheses stay an ordered tensor (head k is always hypothesis k). The box is their mean;
the per-coordinate (population) variance over the N hypotheses is the coordinate uncertainty.
The scalar uncertainty is scale-relative: ``u = mean over (cx, cy, w, h) of variance / size**2``
with size = (w, h, w, h) of the mean box, the squared coefficient of variation, so a 2-px
spread counts for more on a nodule than on the heart (0 when N = 1): relative spread is what
IoU responds to (docs/experiments.md, 2026-11-28).

Several boxes per phrase (``max_boxes`` K > 1): the decoder holds K slots of N hypothesis
tokens each (K x N tokens, with their centre hypernetworks and per-cell boxes), so every slot
is a box with its own N hypotheses, mean, variance and u, and a presence logit read by an MLP
from the mean of its N output tokens. How many boxes the phrase reports is read apart from
which: a count head (an MLP on the ``[BOX]`` token's output, which has attended to the image)
classifies the number of boxes, 1..K, and the phrase reports that many slots, the most
present first, passing over a slot whose mean box overlaps a more present reported one (above
``SLOT_OVERLAP_IOU``: two slots on one lesion are one box, docs/experiments.md, 2026-12-07).
Training matches slots to ground-truth boxes (:mod:`model.box_set_losses`):
the presence learns which slots hold a box, the count how many there are. A presence
threshold alone counted badly: with slots matched anew each step the presences of a short
run stay near 0.5 for the first two slots, so single-box findings reported a second box
(docs/experiments.md, 2026-12-02). With ``own_count_path`` the count head reads instead, side by
side, a count query (the phrase's language-model states pooled and projected by a
:class:`model.phrase_query.PhraseQuery` of its own, from detached states) and the ``[BOX]``
token's output, detached: the count's loss then trains the count head and its pooling alone,
and nothing the boxes are read from (the transformer, the phrase query, the LM). Through the
shared path a count loss heavy enough to count three boxes moved every box
(docs/experiments.md, 2026-12-08). The slots are returned in :class:`BoxSlots`; the Q rows of
the :class:`BoxPrediction` then describe each phrase as the enclosing-box rule sees it:
hypothesis n is the box enclosing hypothesis n of every reported slot, and mean, variance and
u follow from these as for one box. With K = 1 nothing of this exists: the decoder, its
parameters and its outputs are those of the single-box decoder.

The phrase box (``phrase_box``, K > 1 only): N more hypothesis tokens, after the slots', make
one more box per query, the phrase's own, which :mod:`model.box_set_losses` trains as a K = 1
decoder's box is trained, on the box enclosing the finding's boxes. A phrase whose count is
one reports its phrase box instead of a slot; a count of two or more reports slots. Its
presence is the count head's probability of one box. Slots alone placed single boxes worse
than K = 1: the reported slot of a single finding was often the mirror image on the other
side of the chest (docs/experiments.md, 2026-12-07).

With ``iou_head`` the decoder also predicts, as SAM's ``iou_prediction_head`` scores its masks,
the IoU of the mean box with the target: an MLP (3 layers, sigmoid output) reads the
transformer's output tokens of the query, the N hypothesis tokens and the ``[BOX]`` token
(which, with one box per phrase, no other head reads, so it plays SAM's IoU token; with K > 1
the count head reads it too), concatenated. It is trained on the
detached IoU (:func:`model.box_losses.iou_prediction_loss`). With K > 1 slots the head
reads, per slot, that slot's N output tokens and the ``[BOX]`` token (one head shared by the
slots, so its input is the same (N+1) x C as with one box) and predicts the IoU of the slot's
mean box with its ground-truth box; it is trained on the matched slots only
(:mod:`model.box_set_losses`). The phrase's ``iou`` is then the predicted IoU of the box it
reports: the presence-weighted mean of the reported slots' predicted IoUs. With K = 1 there
are no slots and ``iou`` is the single-box head's, unchanged.

At evaluation and inference the decoder may also read shifted copies of the image
(:mod:`model.test_time_shifts`): each box then has the hypotheses of every copy, A x N, whose
spread about the box measures its uncertainty; the box itself, and which boxes a phrase
reports, stay those of the image's own read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import torch
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn
from torchvision.ops import box_convert, box_iou

from model.sam_encoder import SamConfig
from model.test_time_shifts import ShiftedView

# A box slot whose mean box overlaps a more present reported slot of its phrase above this IoU
# is passed over for the next one (BoxSlots.reported).
SLOT_OVERLAP_IOU = 0.3


@dataclass
class BoxSlots:
    """The K box slots of Q queries (K > 1), cxcywh in the normalised frame of SAM's input.

    boxes: a :class:`BoxPrediction` of Q*R rows, query-major (row q*R + k is box k of query
    q), R = :attr:`rows`: the K slots, then, with ``phrase_box``, the phrase's own box (row
    K); presence_logits: (Q,K), the slots'; count_logits: (Q,K), logit j for j + 1 boxes.
    ``present`` is the (Q,R) mask of the boxes a phrase reports.
    """

    boxes: "BoxPrediction"
    presence_logits: torch.Tensor
    count_logits: torch.Tensor
    phrase_box: bool = False

    @property
    def max_boxes(self) -> int:
        return self.presence_logits.shape[1]

    @property
    def rows(self) -> int:
        """R, the boxes per query in ``boxes``: K, plus the phrase box when there is one."""
        return self.max_boxes + int(self.phrase_box)

    @property
    def presence(self) -> torch.Tensor:
        """(Q,R) presence probabilities: the slots', then the phrase box's, the count head's
        probability of one box."""
        slots = torch.sigmoid(self.presence_logits)
        if not self.phrase_box:
            return slots
        return torch.cat([slots, self.count_logits.softmax(dim=1)[:, :1]], dim=1)

    @property
    def count(self) -> torch.Tensor:
        """(Q,) the number of boxes each query reports, 1..K: the count head's most likely."""
        return self.count_logits.detach().argmax(dim=1) + 1

    @property
    def order(self) -> torch.Tensor:
        """(Q,K) each query's slots, the most present first."""
        return self.presence_logits.detach().argsort(dim=1, descending=True, stable=True)

    @property
    def present(self) -> torch.Tensor:
        """(Q,R) bool: the boxes each query reports (:meth:`reported`)."""
        present = torch.zeros((self.presence_logits.shape[0], self.rows), dtype=torch.bool,
                              device=self.presence_logits.device)
        for query, slots in enumerate(self._reported):
            present[query, slots] = True
        return present

    def reported_iou(self) -> torch.Tensor | None:
        """(Q,) the predicted IoU of each query's reported box: the presence-weighted mean of
        its reported boxes' predicted IoUs; None without the IoU head."""
        if self.boxes.iou is None:
            return None
        weights = self.presence.detach() * self.present
        slot_iou = self.boxes.iou.view_as(weights)
        return (weights * slot_iou).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-12)

    def reported(self) -> list[list[int]]:
        """Per query, its reported boxes (rows 0..R-1 of the query), the most present first.
        With the phrase box and a count of one: the phrase box (row K). Otherwise its
        ``count`` most present slots whose mean boxes overlap no slot reported before them at
        IoU above ``SLOT_OVERLAP_IOU`` (non-maximum suppression over the slots), topped up by
        presence from the suppressed ones when fewer than ``count`` remain."""
        return [list(slots) for slots in self._reported]

    @cached_property
    def _reported(self) -> list[list[int]]:
        """:meth:`reported`, computed once per prediction (``present`` and the IoU head's
        reported IoU read it too) and with one transfer of the overlaps to the host."""
        queries, slots = self.presence_logits.shape
        means = self.boxes.box.detach().view(queries, self.rows, 4)[:, :slots]
        corners = box_convert(means, "cxcywh", "xyxy")
        rows = torch.arange(queries, device=corners.device)
        overlaps = box_iou(corners.flatten(0, 1), corners.flatten(0, 1)).view(
            queries, slots, queries, slots)[rows, :, rows]  # (Q,K,K) within each query
        chosen = []
        for overlap, order, count in zip(overlaps.tolist(), self.order.tolist(),
                                         self.count.tolist()):
            if self.phrase_box and count == 1:
                chosen.append([slots])
                continue
            kept: list[int] = []
            for slot in order:
                if all(overlap[slot][other] <= SLOT_OVERLAP_IOU for other in kept):
                    kept.append(slot)
            kept += [slot for slot in order if slot not in kept]
            chosen.append(sorted(kept[:count], key=order.index))
        return chosen


@dataclass
class BoxPrediction:
    """Boxes for Q queries, all sigmoid cxcywh in the normalised frame of SAM's padded input.

    hypotheses: (Q,N,4) (A x N with test-time shifts); box: (Q,4) their mean (with test-time
    shifts the mean of the image's own N); variance: (Q,4) their mean squared deviation from
    the box;
    uncertainty: (Q,), the scale-relative u of the module docstring; iou: (Q,) the IoU head's
    predicted IoU of the mean box with the target, in [0, 1] (with test-time shifts the mean
    of each read's prediction for its own box; ``None`` without the head; with
    K > 1 slots the presence-weighted mean over the reported slots). ``slots``: the K boxes of
    each query when the decoder has K > 1 slots (the Q rows are then their enclosing box),
    else None.
    """

    hypotheses: torch.Tensor
    box: torch.Tensor
    variance: torch.Tensor
    uncertainty: torch.Tensor
    iou: torch.Tensor | None = None
    slots: BoxSlots | None = None

    @classmethod
    def from_hypotheses(cls, hypotheses: torch.Tensor, iou: torch.Tensor | None = None,
                        own: int | None = None) -> "BoxPrediction":
        """The prediction of (Q,M,4) ``hypotheses``: the box is the mean of the first ``own``
        of them (all by default; with test-time shifts the image's own read, which the
        shifted reads follow), the variance their mean squared deviation from the box."""
        mean = hypotheses[:, :own].mean(dim=1)
        variance = (hypotheses - mean.unsqueeze(1)).pow(2).mean(dim=1)
        size = mean[:, [2, 3, 2, 3]].clamp_min(1e-6)
        return cls(hypotheses, mean, variance, (variance / size.pow(2)).mean(dim=-1), iou)

    def select(self, rows: torch.Tensor) -> "BoxPrediction":
        """The predictions of ``rows`` (M,) (indices into the Q rows), without slots."""
        return BoxPrediction(self.hypotheses[rows], self.box[rows], self.variance[rows],
                             self.uncertainty[rows], None if self.iou is None else self.iou[rows])


def enclosing_hypotheses(hypotheses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Hypothesis n of each query's enclosing box: the box enclosing hypothesis n of its
    reported slots.

    Arguments:
      hypotheses: (Q,K,N,4) cxcywh.
      present: (Q,K) bool, at least one true per query.
    Returns:
      (Q,N,4) cxcywh.
    """
    corners = box_convert(hypotheses, "cxcywh", "xyxy")
    keep = present[:, :, None, None]
    low = corners[..., :2].masked_fill(~keep, float("inf")).amin(dim=1)
    high = corners[..., 2:].masked_fill(~keep, float("-inf")).amax(dim=1)
    return box_convert(torch.cat([low, high], dim=-1), "xyxy", "cxcywh")


@dataclass
class DecoderOutputs:
    """The decoder's raw outputs for Q queries: hypotheses (Q,R,N,4) cxcywh, R boxes of N
    hypotheses per query (R = 1, or the K slots then the phrase box); slot_iou (Q*R,) the IoU
    head's predictions (None without the head); presence_logits and count_logits (Q,K) with
    K > 1 slots, else None."""

    hypotheses: torch.Tensor
    slot_iou: torch.Tensor | None
    presence_logits: torch.Tensor | None = None
    count_logits: torch.Tensor | None = None

    def moved_back(self, offset: tuple[float, float]) -> "DecoderOutputs":
        """These outputs of an image shifted by ``offset`` (fractions of the width and height),
        moved back to the unshifted image."""
        shift = self.hypotheses.new_tensor([offset[0], offset[1], 0.0, 0.0])
        return DecoderOutputs(self.hypotheses - shift, self.slot_iou, self.presence_logits,
                              self.count_logits)

    @staticmethod
    def merge(ensemble: Sequence["DecoderOutputs"]) -> "DecoderOutputs":
        """One set of outputs from several reads of the same queries, the image's own read
        first: the hypotheses concatenated (read a's hypothesis k is hypothesis a*N + k), the
        IoU head's predictions averaged, and the presence and count logits of the first read,
        which alone decides which boxes a phrase reports."""
        iou = None if ensemble[0].slot_iou is None else torch.stack(
            [o.slot_iou for o in ensemble]).mean(dim=0)
        return DecoderOutputs(torch.cat([o.hypotheses for o in ensemble], dim=2), iou,
                              ensemble[0].presence_logits, ensemble[0].count_logits)


@dataclass
class LoadReport:
    """What :func:`init_box_decoder_from_sam` copied, initialised anew, or skipped."""

    loaded: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        new_parts = ", ".join(sorted({name.split(".")[0] for name in self.initialised}))
        return (f"{len(self.loaded)} tensors from SAM's mask decoder, {len(self.initialised)} "
                f"newly initialised ({new_parts})"
                + (f", {len(self.skipped)} skipped: {'; '.join(self.skipped)}"
                   if self.skipped else ""))


class UncertainBoxDecoder(nn.Module):
    """Arguments:
      transformer_dim: C, the width of the image features and of the tokens.
      transformer: SAM's two-way transformer of width C.
      num_hypotheses: N.
      max_boxes: K, the box slots per query (1: the single-box decoder, no presence head).
      iou_head: add the IoU-prediction head (see the module docstring).
      phrase_box: with K > 1, add the phrase box (see the module docstring); ignored for K = 1.
      upscaled_heatmap: place the centre heatmaps on SAM's 4x upscaled mask grid (see the
        module docstring) instead of the feature grid.
      own_count_path: with K > 1, the count head reads the count queries passed to
        :meth:`forward` beside the detached ``[BOX]`` output (see the module docstring).
    """

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer,
                 num_hypotheses: int = 3, max_boxes: int = 1, iou_head: bool = False,
                 phrase_box: bool = False, upscaled_heatmap: bool = False,
                 own_count_path: bool = False):
        super().__init__()
        if max_boxes < 1:
            raise ValueError(f"max_boxes {max_boxes} must be at least 1")
        self.num_hypotheses = num_hypotheses
        self.max_boxes = max_boxes
        self.phrase_box = phrase_box and max_boxes > 1
        self.own_count_path = own_count_path and max_boxes > 1
        # box k (slot k, then the phrase box as box K) holds tokens k*N .. k*N + N-1
        tokens = num_hypotheses * (max_boxes + int(self.phrase_box))
        self.hypothesis_tokens = nn.Embedding(tokens, transformer_dim)
        self.pe_layer = PositionEmbeddingRandom(transformer_dim // 2)
        self.transformer = transformer
        # SAM's mask decoder: features upscaled 4x per side to C/8 channels, hypernetworks to C/8
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4), nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU()) if upscaled_heatmap else None
        heatmap_dim = transformer_dim // 8 if upscaled_heatmap else transformer_dim
        self.centre_hypernetworks = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, heatmap_dim, 3)
            for _ in range(tokens))
        self.cell_box_head = MLP(transformer_dim, transformer_dim, 4 * tokens, 2)
        if max_boxes > 1:
            self.presence_head = MLP(transformer_dim, transformer_dim, 1, 2)
            count_inputs = 2 if self.own_count_path else 1
            self.count_head = MLP(count_inputs * transformer_dim, transformer_dim, max_boxes, 2)
        self.iou_prediction_head = MLP((num_hypotheses + 1) * transformer_dim, transformer_dim, 1,
                                       3, sigmoid_output=True) if iou_head else None

    def forward(self, image_embeddings: torch.Tensor, box_embeddings: torch.Tensor,
                batch_index: torch.Tensor, views: Sequence[ShiftedView] = (),
                count_queries: torch.Tensor | None = None) -> BoxPrediction:
        """Arguments:
          image_embeddings: (B,C,h,w) SAM features.
          box_embeddings: (Q,C) projected ``[BOX]`` hidden states.
          batch_index: (Q,) the sample of each query.
          views: the features of shifted copies of the images, read with the same queries;
            their hypotheses join these in the uncertainty, the boxes stay these
            (:mod:`model.test_time_shifts`); none in training.
          count_queries: (Q,C) the count head's own queries; needed with ``own_count_path``,
            ignored without it.
        Returns:
          a :class:`BoxPrediction` with Q rows (with K > 1 slots: their enclosing boxes, and
          the slots in ``slots``), of (1 + len(views)) x N hypotheses per box. Q = 0 runs the
          same (empty) computation, so the result stays in the graph of every decoder
          parameter and of ``box_embeddings``.
        """
        if self.own_count_path and (count_queries is None
                                    or count_queries.shape != box_embeddings.shape):
            raise ValueError(f"the decoder's own count path needs count queries shaped as the "
                             f"box queries {tuple(box_embeddings.shape)}; got "
                             f"{None if count_queries is None else tuple(count_queries.shape)}")
        outputs = self._decode(image_embeddings, box_embeddings, batch_index, count_queries)
        if views:
            outputs = DecoderOutputs.merge(
                [outputs, *(self._decode(view.embeddings, box_embeddings, batch_index,
                                         count_queries).moved_back(view.offset)
                            for view in views)])
        return self._assemble(outputs)

    def _decode(self, image_embeddings: torch.Tensor, box_embeddings: torch.Tensor,
                batch_index: torch.Tensor, count_queries: torch.Tensor | None
                ) -> DecoderOutputs:
        """The decoder's raw outputs for one set of image features (see :meth:`forward`)."""
        queries, channels = box_embeddings.shape
        h, w = image_embeddings.shape[-2:]
        if self.pe_layer.positional_encoding_gaussian_matrix.dtype != torch.float32:
            self.pe_layer.float()  # SAM's encoding builds a float32 grid; keep its matrix float32
        image_pe = self.pe_layer((h, w)).to(image_embeddings.dtype).unsqueeze(0)
        tokens = torch.cat([self.hypothesis_tokens.weight.unsqueeze(0).expand(queries, -1, -1),
                            box_embeddings.unsqueeze(1)], dim=1)
        hidden, cells = self.transformer(image_embeddings[batch_index], image_pe, tokens)
        centre_queries = torch.stack([mlp(hidden[:, k]) for k, mlp in
                                      enumerate(self.centre_hypernetworks)], dim=1)  # (Q,T,D)
        box_tokens = self.hypothesis_tokens.num_embeddings
        cell_boxes = self.cell_box_head(cells).view(queries, h * w, box_tokens, 4)
        cell_boxes = cell_boxes.transpose(1, 2)  # (Q,T,hw,4)
        if self.output_upscaling is None:
            heatmap = (centre_queries @ cells.transpose(1, 2) / channels ** 0.5).softmax(dim=-1)
            cell_size = _cell_size(h, w, cells)
            centres = _cell_centres(h, w, cells) + 0.5 * cell_size * torch.tanh(
                cell_boxes[..., :2])
            boxes = torch.cat([centres, torch.sigmoid(cell_boxes[..., 2:])], dim=-1)
            hypotheses = (heatmap.unsqueeze(-1) * boxes).sum(dim=2)  # (Q,T,4)
        else:
            hypotheses = self._place_on_upscaled_grid(centre_queries, cells, cell_boxes, h, w)
        rows = box_tokens // self.num_hypotheses
        outputs = DecoderOutputs(hypotheses.view(queries, rows, self.num_hypotheses, 4),
                                 self._predict_iou(hidden))
        if self.max_boxes > 1:
            slot_tokens = hidden[:, :self.max_boxes * self.num_hypotheses].reshape(
                queries, self.max_boxes, self.num_hypotheses, channels).mean(dim=2)  # (Q,K,C)
            outputs.presence_logits = self.presence_head(slot_tokens).squeeze(-1)
            count_input = hidden[:, -1]
            if self.own_count_path:
                count_input = torch.cat([count_queries, count_input.detach()], dim=-1)
            outputs.count_logits = self.count_head(count_input)
        return outputs

    def _place_on_upscaled_grid(self, centre_queries: torch.Tensor, cells: torch.Tensor,
                                cell_boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The hypotheses of heatmaps on the upscaled grid (see the module docstring).

        Arguments:
          centre_queries: (Q,T,C/8) the hypernetworks' outputs, one per hypothesis token.
          cells: (Q,hw,C) the transformer's image features for each query.
          cell_boxes: (Q,T,hw,4) the per-cell MLP's raw offsets and sizes, per coarse cell.
        Returns:
          (Q,T,4) cxcywh. A fine cell's box is its own centre moved by its coarse cell's offset
          (at most half a fine cell), with its coarse cell's size; the heatmap-weighted sum of
          these is taken as the heatmap-weighted fine centre plus, per coarse cell, the
          heatmap summed over its fine cells times its offset and size.
        """
        queries, _, channels = cells.shape
        upscaled = self.output_upscaling(cells.transpose(1, 2).reshape(queries, channels, h, w))
        dim, fine_h, fine_w = upscaled.shape[1:]
        logits = centre_queries @ upscaled.flatten(2) / dim ** 0.5  # (Q,T,HW)
        heatmap = logits.softmax(dim=-1)
        centres = heatmap @ _cell_centres(fine_h, fine_w, cells)  # (Q,T,2)
        per_coarse = heatmap.unflatten(-1, (h, fine_h // h, w, fine_w // w)).sum(dim=(3, 5))
        per_coarse = per_coarse.flatten(2).unsqueeze(-1)  # (Q,T,hw,1)
        offsets = 0.5 * _cell_size(fine_h, fine_w, cells) * torch.tanh(cell_boxes[..., :2])
        return torch.cat([centres + (per_coarse * offsets).sum(dim=2),
                          (per_coarse * torch.sigmoid(cell_boxes[..., 2:])).sum(dim=2)], dim=-1)

    def _assemble(self, outputs: DecoderOutputs) -> BoxPrediction:
        """The :class:`BoxPrediction` of raw outputs: one box per query (K = 1), or the slots
        and the boxes each phrase reports."""
        queries, rows, count, _ = outputs.hypotheses.shape
        own = self.num_hypotheses  # the image's own read; shifted reads follow it
        if self.max_boxes == 1:
            return BoxPrediction.from_hypotheses(outputs.hypotheses[:, 0], outputs.slot_iou, own)
        slots = BoxSlots(BoxPrediction.from_hypotheses(
            outputs.hypotheses.reshape(queries * rows, count, 4), outputs.slot_iou, own),
            outputs.presence_logits, outputs.count_logits, self.phrase_box)
        prediction = BoxPrediction.from_hypotheses(
            enclosing_hypotheses(outputs.hypotheses, slots.present), slots.reported_iou(), own)
        prediction.slots = slots
        return prediction

    def _predict_iou(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The IoU head on the transformer's output tokens ``hidden`` (Q,R*N+1,C): per box
        (slot, or the phrase box), its N tokens and the ``[BOX]`` token concatenated, (Q*R,)
        query-major; None without the head. With K = 1 the input is ``hidden`` flattened, the
        single-box head's."""
        if self.iou_prediction_head is None:
            return None
        queries, length, channels = hidden.shape
        rows = (length - 1) // self.num_hypotheses
        slot_tokens = hidden[:, :-1].reshape(queries, rows, self.num_hypotheses * channels)
        box_token = hidden[:, -1:].expand(queries, rows, channels)
        head_input = torch.cat([slot_tokens, box_token], dim=-1).flatten(0, 1)  # (Q*R,(N+1)C)
        return self.iou_prediction_head(head_input).squeeze(-1)


def _cell_size(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(2,) a cell's width and height on an h x w grid over the unit square."""
    return torch.tensor([1.0 / w, 1.0 / h], device=like.device, dtype=like.dtype)


def _cell_centres(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(h*w,2) the (x, y) centres of an h x w grid's cells over the unit square, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, device=like.device, dtype=like.dtype),
                            torch.arange(w, device=like.device, dtype=like.dtype),
                            indexing="ij")
    return (torch.stack([xs.flatten(), ys.flatten()], dim=-1) + 0.5) * _cell_size(h, w, like)


def init_box_decoder_from_sam(decoder: UncertainBoxDecoder,
                              sam_state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Copy SAM's mask-decoder transformer, its positional encoding and (N <= 4) its mask tokens;
    with the upscaled heatmap also its ``output_upscaling`` and (N <= 4) its hypernetworks
    (``output_hypernetworks_mlps``): hypothesis k of every box takes mask k's.

    With K > 1 slots the mask tokens go to the first slot's N tokens and to the phrase box's,
    the other slots' tokens start random; with the upscaled heatmap every slot's hypernetworks
    are SAM's, so no slot starts from a random heatmap (with the first slot's alone SAM's,
    the demo's multi-box boxes on val fell from 0.60 to 0.34 on seed 0, docs/experiments.md,
    2026-12-07). Tensors whose shapes differ are skipped and
    reported; the per-cell box head, the presence and count heads and the IoU head are always
    new, and so are the centre hypernetworks of the feature-grid heatmap (their output is C
    wide, SAM's C/8).
    """
    report = LoadReport()
    sources = {f"transformer.{k[len('mask_decoder.transformer.'):]}": v
               for k, v in sam_state_dict.items() if k.startswith("mask_decoder.transformer.")}
    sources["pe_layer.positional_encoding_gaussian_matrix"] = sam_state_dict.get(
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
    hypotheses = decoder.num_hypotheses
    mask_tokens = sam_state_dict.get("mask_decoder.mask_tokens.weight")
    if mask_tokens is not None and hypotheses <= mask_tokens.shape[0]:
        first_slot = mask_tokens[:hypotheses]
        tokens = decoder.hypothesis_tokens.weight.detach().clone()
        tokens[:hypotheses] = first_slot
        if decoder.phrase_box:
            tokens[-hypotheses:] = first_slot
        sources["hypothesis_tokens.weight"] = tokens
        if decoder.output_upscaling is not None:
            prefix = "mask_decoder.output_hypernetworks_mlps."
            for token in range(len(tokens)):
                mask = token % hypotheses  # hypothesis k of every box: SAM's mask k
                sources.update({f"centre_hypernetworks.{token}.{k[len(f'{prefix}{mask}.'):]}": v
                                for k, v in sam_state_dict.items()
                                if k.startswith(f"{prefix}{mask}.")})
    if decoder.output_upscaling is not None:
        sources.update({k[len("mask_decoder."):]: v for k, v in sam_state_dict.items()
                        if k.startswith("mask_decoder.output_upscaling.")})
    own = decoder.state_dict()
    with torch.no_grad():
        for name, tensor in own.items():
            source = sources.get(name)
            if source is None:
                report.initialised.append(name)
            elif source.shape != tensor.shape:
                report.skipped.append(f"{name} {tuple(source.shape)} vs {tuple(tensor.shape)}")
                report.initialised.append(name)
            else:
                tensor.copy_(source)
                report.loaded.append(name)
    return report


def build_box_decoder(sam_config: SamConfig, num_hypotheses: int,
                      sam_state_dict: dict[str, torch.Tensor] | None = None,
                      max_boxes: int = 1, iou_head: bool = False, phrase_box: bool = False,
                      upscaled_heatmap: bool = False, own_count_path: bool = False
                      ) -> tuple[UncertainBoxDecoder, LoadReport]:
    """A decoder sized like the SAM config's mask decoder (``max_boxes`` slots of
    ``num_hypotheses`` boxes), initialised from it when given; ``iou_head`` adds the
    IoU-prediction head, ``phrase_box`` (K > 1) the phrase box, ``upscaled_heatmap`` the
    heatmaps on SAM's upscaled mask grid and ``own_count_path`` (K > 1) the count head's own
    path."""
    transformer = TwoWayTransformer(depth=sam_config.decoder_depth,
                                    embedding_dim=sam_config.prompt_embed_dim,
                                    mlp_dim=sam_config.decoder_mlp_dim,
                                    num_heads=sam_config.decoder_num_heads)
    decoder = UncertainBoxDecoder(sam_config.prompt_embed_dim, transformer, num_hypotheses,
                                  max_boxes, iou_head, phrase_box, upscaled_heatmap,
                                  own_count_path)
    if sam_state_dict is None:
        return decoder, LoadReport(initialised=list(decoder.state_dict()))
    return decoder, init_box_decoder_from_sam(decoder, sam_state_dict)
