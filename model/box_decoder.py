"""The uncertainty-aware multi-hypothesis box decoder.

Each ``[BOX]`` becomes one query: its projected hidden state joins N learned hypothesis tokens,
SAM's ``TwoWayTransformer`` attends between these tokens and the image features, and head k
turns the k-th hypothesis token into a box. The hypotheses stay an ordered tensor (head k is
always hypothesis k). The box is their mean; the per-coordinate (population) variance over
the N hypotheses is the coordinate uncertainty. The scalar uncertainty is scale-relative:
``u = mean over (cx, cy, w, h) of variance / size**2`` with size = (w, h, w, h) of the mean
box, the squared coefficient of variation, so a 2-px spread counts for more on a nodule than
on the heart (0 when N = 1). Relative spread is what IoU responds to: on the demo run it
ranks failures with AUROC 0.69 where the absolute variance gave 0.42 (one demo run on the first
SynthCXR generator, same predictions scored both ways).
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
    scale-relative u of the module docstring.
    """

    hypotheses: torch.Tensor
    box: torch.Tensor
    variance: torch.Tensor
    uncertainty: torch.Tensor

    @classmethod
    def from_hypotheses(cls, hypotheses: torch.Tensor) -> "BoxPrediction":
        mean = hypotheses.mean(dim=1)
        variance = (hypotheses - mean.unsqueeze(1)).pow(2).mean(dim=1)
        size = mean[:, [2, 3, 2, 3]].clamp_min(1e-6)
        return cls(hypotheses, mean, variance, (variance / size.pow(2)).mean(dim=-1))


@dataclass
class LoadReport:
    """What :func:`init_box_decoder_from_sam` copied, initialised anew, or skipped."""

    loaded: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{len(self.loaded)} tensors from SAM's mask decoder, {len(self.initialised)} "
                f"newly initialised ({', '.join(sorted({n.split('.')[0] for n in self.initialised}))})"
                + (f", {len(self.skipped)} skipped: {'; '.join(self.skipped)}" if self.skipped else ""))


class UncertainBoxDecoder(nn.Module):
    """Arguments:
      transformer_dim: C, the width of the image features and of the tokens.
      transformer: SAM's two-way transformer of width C.
      num_hypotheses: N.
      head_hidden_dim: hidden width of each 3-layer box head (default C).
    """

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer,
                 num_hypotheses: int = 3, head_hidden_dim: int | None = None):
        super().__init__()
        self.num_hypotheses = num_hypotheses
        self.hypothesis_tokens = nn.Embedding(num_hypotheses, transformer_dim)
        self.pe_layer = PositionEmbeddingRandom(transformer_dim // 2)
        self.transformer = transformer
        hidden = head_hidden_dim or transformer_dim
        self.box_heads = nn.ModuleList(MLP(transformer_dim, hidden, 4, 3, sigmoid_output=True)
                                       for _ in range(num_hypotheses))
        self.reset_heads()

    def reset_heads(self) -> None:
        """Xavier-uniform weights and zero biases for every head layer (as DETR's box MLP);
        the heads' different random weights start the hypotheses apart."""
        for head in self.box_heads:
            for layer in head.layers:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

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
        queries = box_embeddings.shape[0]
        h, w = image_embeddings.shape[-2:]
        if self.pe_layer.positional_encoding_gaussian_matrix.dtype != torch.float32:
            self.pe_layer.float()  # SAM's encoding builds a float32 grid; keep its matrix float32
        image_pe = self.pe_layer((h, w)).to(image_embeddings.dtype).unsqueeze(0)
        tokens = torch.cat([self.hypothesis_tokens.weight.unsqueeze(0).expand(queries, -1, -1),
                            box_embeddings.unsqueeze(1)], dim=1)
        hidden, _ = self.transformer(image_embeddings[batch_index], image_pe, tokens)
        hypotheses = torch.stack([head(hidden[:, k]) for k, head in enumerate(self.box_heads)],
                                 dim=1)
        return BoxPrediction.from_hypotheses(hypotheses)


def init_box_decoder_from_sam(decoder: UncertainBoxDecoder,
                              sam_state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Copy SAM's mask-decoder transformer, its positional encoding and (N <= 4) its mask tokens.

    Tensors whose shapes differ are skipped and reported; the box heads are always new.
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
                      sam_state_dict: dict[str, torch.Tensor] | None = None
                      ) -> tuple[UncertainBoxDecoder, LoadReport]:
    """A decoder sized like the SAM config's mask decoder, initialised from it when given."""
    transformer = TwoWayTransformer(depth=sam_config.decoder_depth,
                                    embedding_dim=sam_config.prompt_embed_dim,
                                    mlp_dim=sam_config.decoder_mlp_dim,
                                    num_heads=sam_config.decoder_num_heads)
    decoder = UncertainBoxDecoder(sam_config.prompt_embed_dim, transformer, num_hypotheses)
    if sam_state_dict is None:
        return decoder, LoadReport(initialised=list(decoder.state_dict()))
    return decoder, init_box_decoder_from_sam(decoder, sam_state_dict)
