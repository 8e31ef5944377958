"""The query of a ``[BOX]``: its phrase's language-model states, pooled and projected.

Each phrase position contributes the states of a few LM layers (``query_layers``: 0 is the
token embedding, -1 the last layer). Each layer's state is layer-normalised on its own, so an
embedding (norm ~0.3 at initialisation) weighs as much as a last-layer state (norm ~16). A
learned score per position, softmax over the phrase, pools them (attention pooling): the
words that say where to look ("left", "apex", "nodule") can outweigh "in", "the" and "It
is". With ``heads`` > 1 each head has its own score and pools on its own, so one head can
read the finding's type while another reads its side and zone; the pooled vectors are
concatenated. An MLP (LISA's ``text_hidden_fcs`` shape: its hidden layer as wide as the LM,
unless ``projection_dim`` says otherwise) maps the pooled vector(s) to the decoder width. One
head is the pooling of models saved before ``heads`` existed. The box count's own query
(:mod:`model.box_decoder`) is a second pooling whose hidden layer is the decoder's width: a
classifier of K counts needs no LM-wide layer (for llava-1.5-7b that layer alone holds 134 M
parameters).
"""
from __future__ import annotations

import torch
from torch import nn


class PhraseQuery(nn.Module):
    """(Q,T,L*H) phrase states with a (Q,T) mask → (Q,C) decoder queries.

    Arguments:
      hidden_size: H, the LM width.
      num_layers: L, how many LM layers each position contributes.
      out_dim: C, the box decoder width.
      heads: P, the pooling heads.
      projection_dim: the width of the MLP's hidden layer; ``None``: H.
    """

    def __init__(self, hidden_size: int, num_layers: int, out_dim: int, heads: int = 1,
                 projection_dim: int | None = None):
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads {heads} must be at least 1")
        self.hidden_size = hidden_size
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers))
        width = hidden_size * num_layers
        self.score = nn.Linear(width, heads, bias=False)  # a softmax ignores a shared bias
        inner = hidden_size if projection_dim is None else projection_dim
        self.projection = nn.Sequential(nn.Linear(width * heads, inner),
                                        nn.ReLU(inplace=True), nn.Linear(inner, out_dim))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``states`` (Q,T,L*H), ``mask`` (Q,T) true on phrase positions (≥ 1 per row)."""
        parts = states.split(self.hidden_size, dim=-1)
        normed = torch.cat([norm(part) for norm, part in zip(self.norms, parts)], dim=-1)
        logits = self.score(normed).masked_fill(~mask.unsqueeze(-1), float("-inf"))  # (Q,T,P)
        weights = logits.softmax(dim=1)
        pooled = torch.einsum("qtp,qtd->qpd", weights, normed).flatten(1)  # (Q,P*L*H)
        return self.projection(pooled)


def build_phrase_query(hidden_size: int, num_layers: int, out_dim: int,
                       heads: int = 1, projection_dim: int | None = None) -> PhraseQuery:
    return PhraseQuery(hidden_size, num_layers, out_dim, heads, projection_dim)
