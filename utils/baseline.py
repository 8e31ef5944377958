"""The image-free phrase-prior baseline (``test.py --baseline phrase_prior``).

For each phrase it predicts the mean target box of the k most similar training phrases by
TF-IDF cosine similarity (``sklearn``'s ``TfidfVectorizer``, word uni- and bigrams), without
looking at the image. It is the floor a model must beat to show that it uses the image: the
words of a phrase (side, zone, kind of finding) already give a coarse place and size, but
not where inside that zone the lesion lies.

Ties are broken deterministically: among equally similar training phrases the earlier
training pair is taken (stable sort). A phrase sharing no word with any training phrase
gets the mean box of all training targets.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer


class PhrasePriorBaseline:
    """Nearest-phrase box prior.

    Arguments:
      k: the number of most similar training phrases whose target boxes are averaged.
    """

    def __init__(self, k: int = 5):
        if k < 1:
            raise ValueError(f"the phrase-prior baseline needs k >= 1, got {k}")
        self.k = k
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), lowercase=True)
        self.boxes: np.ndarray | None = None
        self.matrix = None

    def fit(self, pairs: Sequence[tuple[str, Sequence[float]]]) -> "PhrasePriorBaseline":
        """Fit on training findings.

        Arguments:
          pairs: (phrase, target box) per training finding, the box normalised xyxy (4,).

        Returns:
          ``self``.
        """
        if not pairs:
            raise ValueError("the phrase-prior baseline needs at least one training finding; "
                             "the training split has none")
        boxes = np.asarray([box for _, box in pairs], dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
            raise ValueError(f"training boxes must be finite normalised xyxy (4 numbers each), "
                             f"got an array of shape {boxes.shape}")
        try:
            self.matrix = self.vectorizer.fit_transform([phrase for phrase, _ in pairs])
        except ValueError as error:
            raise ValueError(f"the training phrases have no word to fit TF-IDF on ({error})"
                             ) from error
        self.boxes = boxes
        return self

    def neighbours(self, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar training findings of each phrase.

        Returns:
          indices (M, k') into the training pairs, most similar first, k' = min(k, #train);
          and a mask (M,) of phrases with at least one word in common with the training set.
        """
        similarity = (self.vectorizer.transform(list(phrases)) @ self.matrix.T).toarray()
        k = min(self.k, similarity.shape[1])
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k], similarity.max(axis=1) > 0

    def predict_with_spread(self, phrases: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes and their spread.

        Arguments:
          phrases: M phrases.

        Returns:
          boxes (M, 4) normalised xyxy: the mean target of each phrase's neighbours; and
          spread (M,): the mean per-coordinate variance of those neighbours' boxes (of all
          training boxes for a phrase with no known word), a u for the uncertainty metrics.
        """
        if self.boxes is None:
            raise RuntimeError("PhrasePriorBaseline.fit() must be called before predicting")
        if not phrases:
            return torch.zeros(0, 4), torch.zeros(0)
        indices, known = self.neighbours(phrases)
        chosen = self.boxes[indices]
        boxes = np.where(known[:, None], chosen.mean(axis=1), self.boxes.mean(axis=0))
        spread = np.where(known, chosen.var(axis=1).mean(axis=1), self.boxes.var(axis=0).mean())
        return torch.from_numpy(boxes).float(), torch.from_numpy(spread).float()

    def predict(self, phrases: Sequence[str]) -> torch.Tensor:
        """Boxes (M, 4), normalised xyxy, for M phrases (see :meth:`predict_with_spread`)."""
        return self.predict_with_spread(phrases)[0]


def build_phrase_prior(pairs: Sequence[tuple[str, Sequence[float]]], k: int = 5
                       ) -> PhrasePriorBaseline:
    """A :class:`PhrasePriorBaseline` fitted on (phrase, normalised xyxy box) training pairs."""
    return PhrasePriorBaseline(k).fit(pairs)
