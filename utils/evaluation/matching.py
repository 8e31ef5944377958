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

import numpy as np
from scipy.optimize import linear_sum_assignment

BOX_TOKEN = "[BOX]"
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


def parse_generated_answer(text: str, box_token: str = BOX_TOKEN) -> list[str]:
    """The phrase written before each box token of a generated answer.

    The answer format is ``"phrase. It is [BOX]. phrase2. It is [BOX]."``. The phrase of a
    box is the text between the previous box token (or the start) and this one, without
    surrounding spaces and ``.,;:`` and without a final "It is". Tolerates a missing final
    period and extra spaces; text after the last box token is ignored.

    Arguments:
      text: the decoded generated answer.
      box_token: the box token as it appears in the decoded text.

    Returns:
      One phrase per box token, in order (``""`` for a box token with no phrase before it),
      so phrase i belongs to the i-th generated box. ``[]`` when the text has no box token.
    """
    return [TRAILING.sub("", LEADING.sub("", piece)) for piece in text.split(box_token)[:-1]]


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
