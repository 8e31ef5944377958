"""The image-free phrase-prior baseline (``test.py --baseline phrase_prior``).

For each phrase it predicts the mean target box of the k most similar training phrases by
TF-IDF cosine similarity (word uni- and bigrams), without looking at the image. It is the
floor a model must beat to show that it uses the image: on SynthCXR the location words give
the zone, but the lesion's place and size inside the zone vary.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer


class PhrasePriorBaseline:
    """Arguments:
      k: the number of nearest training phrases averaged (ties: the earlier training pair).
    """

    def __init__(self, k: int = 5):
        self.k = k
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), lowercase=True)
        self.boxes: np.ndarray | None = None
        self.matrix = None

    def fit(self, pairs: Sequence[tuple[str, Sequence[float]]]) -> "PhrasePriorBaseline":
        """Fit on (phrase, normalised xyxy target box) training pairs."""
        if not pairs:
            raise ValueError("the phrase-prior baseline needs at least one training finding")
        self.matrix = self.vectorizer.fit_transform([phrase for phrase, _ in pairs])
        self.boxes = np.asarray([box for _, box in pairs], dtype=np.float64)
        return self

    def neighbours(self, phrases: Sequence[str]) -> np.ndarray:
        """(M, k) indices of the most similar training phrases, most similar first."""
        similarity = (self.vectorizer.transform(list(phrases)) @ self.matrix.T).toarray()
        k = min(self.k, similarity.shape[1])
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    def predict(self, phrases: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (M, 4), normalised xyxy: the mean target of each phrase's neighbours; and
        u (M,): the mean per-coordinate variance of those neighbours' boxes (their spread)."""
        if self.boxes is None:
            raise RuntimeError("call fit() first")
        if not phrases:
            return torch.zeros(0, 4), torch.zeros(0)
        chosen = self.boxes[self.neighbours(phrases)]
        return (torch.from_numpy(chosen.mean(axis=1)).float(),
                torch.from_numpy(chosen.var(axis=1).mean(axis=1)).float())
