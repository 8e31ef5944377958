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

Strict matching (``grounding_strict`` in metrics.json) keeps a pair only when its token F1 is
at least ``STRICT_MIN_SIMILARITY`` (0.8) *and* the two phrases name the same findings and the
same sides: the sets of their ``FINDING_WORDS`` and of their ``SIDE_WORDS`` (plurals folded)
are equal. Token F1 alone rewards "left midlung field atelectasis" for "left midlung field
mass" (F1 0.75) and "lobulated mass in the right midlung field" for the left one (0.86).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

WORD = re.compile(r"[^\W_]+")
DEFAULT_MATCH_THRESHOLD = 0.5
STRICT_MIN_SIMILARITY = 0.8
SIDE_WORDS = frozenset({"left", "right", "bilateral", "both"})
FINDING_WORDS = frozenset({
    "atelectasis", "cardiomegaly", "consolidation", "edema", "effusion", "emphysema",
    "enlarged", "enlargement", "fibrosis", "fracture", "granuloma", "infiltrate", "lesion",
    "mass", "nodule", "opacity", "pneumonia", "pneumothorax", "scarring", "thickening",
    "tube", "catheter", "device", "hernia", "calcification", "collapse", "abscess", "cavity"})
SEPARATORS = r"[\s.,;:]"
LEADING = re.compile(rf"^{SEPARATORS}+")
TRAILING = re.compile(rf"(?:{SEPARATORS}*\bit\s+is)?{SEPARATORS}*$", re.IGNORECASE)


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (letters and digits, any script)."""
    return WORD.findall(text.lower())


def token_f1(a: str, b: str) -> float:
    """Token-level F1 of two phrases in [0, 1]; 0.0 when either has no word."""
    return _word_f1(words(a), words(b))


def _word_f1(left: list[str], right: list[str]) -> float:
    common = sum((Counter(left) & Counter(right)).values())
    return 2 * common / (len(left) + len(right)) if common else 0.0


def _folded(word: str) -> str:
    """A finding word without its plural ending ("effusions", "masses", "opacities")."""
    for ending, replacement in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(ending) and word[:-len(ending)] + replacement in FINDING_WORDS:
            return word[:-len(ending)] + replacement
    return word


def strict_match(predicted: str, ground_truth: str) -> bool:
    """Whether a matched pair counts under strict matching (see the module docstring): token
    F1 of the plural-folded words >= ``STRICT_MIN_SIMILARITY`` and the same finding and side
    words."""
    left = [_folded(word) for word in words(predicted)]
    right = [_folded(word) for word in words(ground_truth)]
    return (_word_f1(left, right) >= STRICT_MIN_SIMILARITY
            and set(left) & FINDING_WORDS == set(right) & FINDING_WORDS
            and set(left) & SIDE_WORDS == set(right) & SIDE_WORDS)


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


def match_phrases(predicted: list[str], ground_truth: list[str],
                  min_similarity: float = DEFAULT_MATCH_THRESHOLD
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
