"""Reading generated answers and matching their phrases to the ground-truth findings.

Similarity is the token-level F1 of two phrases (lower-cased, punctuation removed), the
SQuAD-style overlap: 1.0 for the same words, 0.0 for none in common. Matching is the
assignment that maximises the summed similarity (Hungarian, ``linear_sum_assignment``); pairs
below ``min_similarity`` are dropped, so a generated phrase about another finding does not
take a ground-truth finding's box.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
from scipy.optimize import linear_sum_assignment

BOX_TOKEN = "[BOX]"
ANSWER_TAIL = re.compile(r"[\s.]*(it\s+is)?\s*$", re.IGNORECASE)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def token_f1(a: str, b: str) -> float:
    """Token-level F1 between two phrases (0.0 when either has no word)."""
    left, right = words(a), words(b)
    common = sum((Counter(left) & Counter(right)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(left), common / len(right)
    return 2 * precision * recall / (precision + recall)


def parse_generated_answer(text: str, box_token: str = BOX_TOKEN) -> list[str]:
    """The phrase before each ``[BOX]`` of ``"phrase. It is [BOX]. phrase2. It is [BOX]."``.

    Returns exactly one (possibly empty) phrase per ``[BOX]``, in order; text after the last
    ``[BOX]`` is ignored.
    """
    pieces = text.split(box_token)[:-1]
    phrases = []
    for piece in pieces:
        piece = re.sub(r"^[\s.]+", "", piece)
        phrases.append(ANSWER_TAIL.sub("", piece).strip())
    return phrases


def match_phrases(predicted: list[str], ground_truth: list[str], min_similarity: float = 0.5
                  ) -> list[tuple[int, int]]:
    """(predicted index, ground-truth index) pairs of the best one-to-one matching."""
    if not predicted or not ground_truth:
        return []
    similarity = np.array([[token_f1(p, g) for g in ground_truth] for p in predicted])
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return sorted((int(r), int(c)) for r, c in zip(rows, cols) if similarity[r, c] >= min_similarity)
