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

The hypotheses stay an ordered tensor (head k is always hypothesis k). The box is their mean;
the per-coordinate (population) variance over the N hypotheses is the coordinate uncertainty.
The scalar uncertainty is scale-relative: ``u = mean over (cx, cy, w, h) of variance / size**2``
with size = (w, h, w, h) of the mean box, the squared coefficient of variation, so a 2-px
spread counts for more on a nodule than on the heart (0 when N = 1): relative spread is what
IoU responds to (docs/experiments.md, 2026-11-28).

With ``iou_head`` the decoder also predicts, as SAM's ``iou_prediction_head`` scores its masks,
the IoU of the mean box with the target: an MLP (3 layers, sigmoid output) reads the
transformer's output tokens of the query, the N hypothesis tokens and the ``[BOX]`` token
(which no other head reads, so it plays SAM's IoU token), concatenated. It is trained on the
detached IoU (:func:`model.box_losses.iou_prediction_loss`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from segment_anything.modeling import TwoWayTransformer
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from model.sam_encoder import SamConfig


@dataclass
class BoxPrediction:
    """Boxes for Q queries, all sigmoid cxcywh in the normalised frame of SAM's padded input.

    hypotheses: (Q,N,4); box: (Q,4) their mean; variance: (Q,4); uncertainty: (Q,), the
    scale-relative u of the module docstring; iou: (Q,) the IoU head's predicted IoU of the mean
    box with the target, in [0, 1] (``None`` without the head).
    """

    hypotheses: torch.Tensor
    box: torch.Tensor
    variance: torch.Tensor
    uncertainty: torch.Tensor
    iou: torch.Tensor | None = None

    @classmethod
    def from_hypotheses(cls, hypotheses: torch.Tensor,
                        iou: torch.Tensor | None = None) -> "BoxPrediction":
        mean = hypotheses.mean(dim=1)
        variance = (hypotheses - mean.unsqueeze(1)).pow(2).mean(dim=1)
        size = mean[:, [2, 3, 2, 3]].clamp_min(1e-6)
        return cls(hypotheses, mean, variance, (variance / size.pow(2)).mean(dim=-1), iou)


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
      iou_head: add the IoU-prediction head (see the module docstring).
    """

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer,
                 num_hypotheses: int = 3, iou_head: bool = False):
        super().__init__()
        self.num_hypotheses = num_hypotheses
        self.hypothesis_tokens = nn.Embedding(num_hypotheses, transformer_dim)
        self.pe_layer = PositionEmbeddingRandom(transformer_dim // 2)
        self.transformer = transformer
        self.centre_hypernetworks = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim, 3)
            for _ in range(num_hypotheses))
        self.cell_box_head = MLP(transformer_dim, transformer_dim, 4 * num_hypotheses, 2)
        self.iou_prediction_head = MLP((num_hypotheses + 1) * transformer_dim, transformer_dim, 1,
                                       3, sigmoid_output=True) if iou_head else None

    def forward(self, image_embeddings: torch.Tensor, box_embeddings: torch.Tensor,
                batch_index: torch.Tensor) -> BoxPrediction:
        """Arguments:
          image_embeddings: (B,C,h,w) SAM features.
          box_embeddings: (Q,C) projected ``[BOX]`` hidden states.
          batch_index: (Q,) the sample of each query.
        Returns:
          a :class:`BoxPrediction` with Q rows. Q = 0 runs the same (empty) computation, so
          the result stays in the graph of every decoder parameter and of ``box_embeddings``.
        """
        queries, channels = box_embeddings.shape
        h, w = image_embeddings.shape[-2:]
        if self.pe_layer.positional_encoding_gaussian_matrix.dtype != torch.float32:
            self.pe_layer.float()  # SAM's encoding builds a float32 grid; keep its matrix float32
        image_pe = self.pe_layer((h, w)).to(image_embeddings.dtype).unsqueeze(0)
        tokens = torch.cat([self.hypothesis_tokens.weight.unsqueeze(0).expand(queries, -1, -1),
                            box_embeddings.unsqueeze(1)], dim=1)
        hidden, cells = self.transformer(image_embeddings[batch_index], image_pe, tokens)
        centre_queries = torch.stack([mlp(hidden[:, k]) for k, mlp in
                                      enumerate(self.centre_hypernetworks)], dim=1)  # (Q,N,C)
        heatmap = (centre_queries @ cells.transpose(1, 2) / channels ** 0.5).softmax(dim=-1)
        cell_boxes = self.cell_box_head(cells).view(queries, h * w, self.num_hypotheses, 4)
        cell_boxes = cell_boxes.transpose(1, 2)  # (Q,N,hw,4)
        ys, xs = torch.meshgrid(torch.arange(h, device=cells.device, dtype=cells.dtype),
                                torch.arange(w, device=cells.device, dtype=cells.dtype),
                                indexing="ij")
        cell_size = torch.tensor([1.0 / w, 1.0 / h], device=cells.device, dtype=cells.dtype)
        centres = (torch.stack([xs.flatten(), ys.flatten()], dim=-1) + 0.5) * cell_size  # (hw,2)
        centres = centres + 0.5 * cell_size * torch.tanh(cell_boxes[..., :2])
        boxes = torch.cat([centres, torch.sigmoid(cell_boxes[..., 2:])], dim=-1)
        hypotheses = (heatmap.unsqueeze(-1) * boxes).sum(dim=2)  # (Q,N,4)
        iou = None if self.iou_prediction_head is None \
            else self.iou_prediction_head(hidden.flatten(1)).squeeze(-1)  # (Q,)
        return BoxPrediction.from_hypotheses(hypotheses, iou)


def init_box_decoder_from_sam(decoder: UncertainBoxDecoder,
                              sam_state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Copy SAM's mask-decoder transformer, its positional encoding and (N <= 4) its mask tokens.

    Tensors whose shapes differ are skipped and reported; the centre hypernetworks, the
    per-cell box head and the IoU head are always new.
    """
    report = LoadReport()
    sources = {f"transformer.{k[len('mask_decoder.transformer.'):]}": v
               for k, v in sam_state_dict.items() if k.startswith("mask_decoder.transformer.")}
    sources["pe_layer.positional_encoding_gaussian_matrix"] = sam_state_dict.get(
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
    mask_tokens = sam_state_dict.get("mask_decoder.mask_tokens.weight")
    if mask_tokens is not None and decoder.num_hypotheses <= mask_tokens.shape[0]:
        sources["hypothesis_tokens.weight"] = mask_tokens[: decoder.num_hypotheses]
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
                      iou_head: bool = False) -> tuple[UncertainBoxDecoder, LoadReport]:
    """A decoder sized like the SAM config's mask decoder, initialised from it when given;
    ``iou_head`` adds the IoU-prediction head."""
    transformer = TwoWayTransformer(depth=sam_config.decoder_depth,
                                    embedding_dim=sam_config.prompt_embed_dim,
                                    mlp_dim=sam_config.decoder_mlp_dim,
                                    num_heads=sam_config.decoder_num_heads)
    decoder = UncertainBoxDecoder(sam_config.prompt_embed_dim, transformer, num_hypotheses,
                                  iou_head)
    if sam_state_dict is None:
        return decoder, LoadReport(initialised=list(decoder.state_dict()))
    return decoder, init_box_decoder_from_sam(decoder, sam_state_dict)
