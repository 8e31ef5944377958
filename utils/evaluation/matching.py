"""Reading generated answers and matching their phrases to the ground-truth findings.

Similarity of two phrases is their token-level F1 (the SQuAD overlap): both are lower-cased
and split into words (runs of letters and digits; punctuation and underscores separate
words), and F1 = 2 * common / (len(a) + len(b)) with ``common`` the size of the multiset
intersection. It is 1.0 for the same words in any order and 0.0 for no word in common or an
empty phrase. Matching is the one-to-one assignment that maximises the summed similarity
(Hungarian, ``scipy.optimize.linear_sum_assignment``); pairs below ``min_similarity`` are then
dropped, so a generated phrase about another finding does not take that finding's box. A
ground-truth finding left unmatched scores IoU 0; generated phrases left unmatched are extra
predictions, counted by the caller.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

WORD = re.compile(r"[^\W_]+")
SEPARATORS = r"[\s.,;:]"
LEADING = re.compile(rf"^{SEPARATORS}+")
TRAILING = re.compile(rf"(?:{SEPARATORS}*\bit\s+is)?{SEPARATORS}*$", re.IGNORECASE)


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (letters and digits, any script)."""
    return WORD.findall(text.lower())


def token_f1(a: str, b: str) -> float:
    """Token-level F1 of two phrases in [0, 1]; 0.0 when either has no word."""
    left, right = words(a), words(b)
    common = sum((Counter(left) & Counter(right)).values())
    return 2 * common / (len(left) + len(right)) if common else 0.0


def generated_phrases(token_ids: Sequence[int], box_token_id: int,
                      decode: Callable[[list[int]], str]) -> list[str]:
    """The phrase written before each box token of a generated answer.

    The answer format is ``"phrase. It is [BOX]. phrase2. It is [BOX]."``. The answer is split
    at the box token's id, so phrase i belongs to the i-th generated box by construction; each
    piece is decoded and loses surrounding spaces and ``.,;:`` and a final "It is". Tokens
    after the last box token are ignored.

    Arguments:
      token_ids: the generated ids of one answer.
      box_token_id: the id of ``[BOX]``.
      decode: ids → text (the tokenizer's decode, special tokens skipped).

    Returns:
      One phrase per box token, in order (``""`` for a box token with no phrase before it);
      ``[]`` when the answer has no box token.
    """
    phrases, piece = [], []
    for token in token_ids:
        if token == box_token_id:
            phrases.append(TRAILING.sub("", LEADING.sub("", decode(piece))))
            piece = []
        else:
            piece.append(int(token))
    return phrases


def match_phrases(predicted: list[str], ground_truth: list[str], min_similarity: float = 0.5
                  ) -> list[tuple[int, int]]:
    """The best one-to-one matching of generated phrases to ground-truth phrases.

    Arguments:
      predicted: the generated phrases of one sample (P of them).
      ground_truth: the ground-truth phrases of that sample (G of them).
      min_similarity: pairs with token F1 below this are dropped after the assignment.

    Returns:
      (predicted index, ground-truth index) pairs, sorted by predicted index; at most
      min(P, G) of them.
    """
    if not predicted or not ground_truth:
        return []
    similarity = np.array([[token_f1(p, g) for g in ground_truth] for p in predicted])
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return sorted((int(r), int(c)) for r, c in zip(rows, cols)
                  if similarity[r, c] >= min_similarity)
