"""The text loss: next-token cross-entropy over the answer, optionally weighting its decisions.

An answer is ``"phrase. It is [BOX]. phrase2. It is [BOX]."`` (``utils.prompts``). Most of its
tokens follow from the ones before: a phrase once started is copied from the report, and the
suffix is fixed. The tokens that decide something are each phrase's first token (which
finding comes next, and where its phrase starts) and the token after the last ``[BOX]``'s
closing "." (the end of the answer): the *phrase-start* tokens, the answer's first token and
the token two after each ``[BOX]``. ``start_weight`` > 1 weighs their cross-entropy that many
times a copied token's; the loss is the weighted mean, so with 1 it is the plain mean of
transformers' causal-LM loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.constants import IGNORE_INDEX


def phrase_start_mask(labels: torch.Tensor, box_token_id: int) -> torch.Tensor:
    """(B,L) bool: the phrase-start tokens of the answers in ``labels`` (B,L; -100 outside the
    answer): each answer's first token and the token two after each ``[BOX]`` (after its
    closing "."), where that token is in the answer."""
    answer = labels != IGNORE_INDEX
    first = answer & ~F.pad(answer, (1, 0), value=False)[:, :-1]
    after_box = F.pad(labels == box_token_id, (2, 0), value=False)[:, :-2] & answer
    return first | after_box


def text_loss(logits: torch.Tensor, labels: torch.Tensor, box_token_id: int,
              start_weight: float = 1.0) -> torch.Tensor:
    """The weighted mean next-token cross-entropy of ``logits`` (B,L,V) against ``labels``
    (B,L), each label predicted from the position before it; phrase-start tokens weigh
    ``start_weight``."""
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)
    weights = (targets != IGNORE_INDEX).to(losses.dtype)
    if start_weight != 1.0:
        starts = F.pad(phrase_start_mask(labels, box_token_id), (0, 1), value=False)[:, 1:]
        weights = weights + (start_weight - 1.0) * starts.to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp(min=1.0)
