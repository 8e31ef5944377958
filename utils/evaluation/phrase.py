"""Phrase quality of the generated findings against the ground-truth phrases.

The pairs are (generated phrase, ground-truth phrase), one per ground-truth finding; a
finding that no generated phrase matched pairs with ``""``. Every text is normalised the same
way before scoring: lower-cased, split into words (punctuation dropped, see
:func:`utils.evaluation.matching.words`) and joined by single spaces, so case, spacing and
final punctuation never count and no Java tokenizer is needed.

- ``exact_match``: fraction of pairs whose normalised texts are equal.
- ``bleu_1``, ``bleu_4``: corpus BLEU from ``pycocoevalcap`` (``Bleu(4)``).
- ``rouge_l``: mean ROUGE-L F-score (``Rouge()``, beta 1.2).
- ``cider``: CIDEr-D (``Cider()``) on pycocoevalcap's scale (0 to 10, not a fraction); its
  IDF comes from the references of the call, so it needs a set of findings and is 0.0 for
  a single pair.
- ``meteor``: METEOR 1.5 (``Meteor()``, a Java process) when ``java`` is on the PATH and the
  scorer runs; otherwise ``None``, with a note on stderr.
SPICE is left out: pycocoevalcap's SPICE downloads Stanford CoreNLP at run time, and this
project never downloads anything while it runs.
"""
from __future__ import annotations

import logging
import shutil

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from utils.evaluation.matching import words

logger = logging.getLogger(__name__)

PHRASE_KEYS = ("exact_match", "bleu_1", "bleu_4", "rouge_l", "cider", "meteor")


def normalise(text: str) -> str:
    """Lower-cased words of ``text`` joined by single spaces (``""`` for no word)."""
    return " ".join(words(text))


def meteor_score(references: dict[int, list[str]], predictions: dict[int, list[str]]
                 ) -> float | None:
    """Corpus METEOR through pycocoevalcap's Java scorer, or ``None`` when it cannot run.

    The Java process is closed before returning, whether scoring worked or not.

    Arguments:
      references, predictions: ``{pair id: [normalised text]}`` with the same ids.
    """
    if shutil.which("java") is None:
        logger.warning("java not found: METEOR is reported as null")
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        scorer = Meteor()
    except OSError as error:
        logger.warning("METEOR could not start java (%s): reported as null", error)
        return None
    try:
        score, _ = scorer.compute_score(references, predictions)
    except (OSError, ValueError) as error:
        logger.warning("METEOR failed (%r): reported as null", error)
        return None
    finally:
        if scorer.lock.locked():  # compute_score keeps its lock when it raises; __del__ takes it
            scorer.lock.release()
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
        scorer.meteor_p.stdout.close()
        scorer.meteor_p.stderr.close()
    return float(score)


def phrase_metrics(predictions: list[str], references: list[str], meteor: bool = True
                   ) -> dict[str, float | None]:
    """Exact match, BLEU-1, BLEU-4, ROUGE-L, CIDEr-D and METEOR over paired phrases.

    Arguments:
      predictions: the generated phrase of each ground-truth finding (``""`` when unmatched).
      references: the ground-truth phrases, same length.
      meteor: compute METEOR (starts Java, a few seconds); ``False`` reports it as ``None``.

    Returns:
      The ``phrase`` block of metrics.json. With no pair every score is 0.0 and METEOR None.
    """
    if len(predictions) != len(references):
        raise ValueError(f"phrase_metrics got {len(predictions)} predictions for "
                         f"{len(references)} references; pair each finding with one prediction")
    if not references:
        return {**{key: 0.0 for key in PHRASE_KEYS}, "meteor": None}
    refs = {i: [normalise(r)] for i, r in enumerate(references)}
    preds = {i: [normalise(p)] for i, p in enumerate(predictions)}
    bleu, _ = Bleu(4).compute_score(refs, preds, verbose=0)
    rouge, _ = Rouge().compute_score(refs, preds)
    cider, _ = Cider().compute_score(refs, preds)
    exact = sum(preds[i][0] == refs[i][0] for i in refs) / len(refs)
    return {"exact_match": float(exact), "bleu_1": float(bleu[0]), "bleu_4": float(bleu[3]),
            "rouge_l": float(rouge), "cider": float(cider),
            "meteor": meteor_score(refs, preds) if meteor else None}
