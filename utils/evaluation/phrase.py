"""Phrase quality of generated findings against the ground-truth phrases.

Pairs are (generated phrase, ground-truth phrase) per ground-truth finding; an unmatched
finding pairs with an empty prediction. Texts are lower-cased and split into words before
scoring (the same tokenisation for every metric, no Java tokenizer). BLEU-1/4, ROUGE-L and
CIDEr come from ``pycocoevalcap``; METEOR too, when ``java`` is installed (it starts a Java
process, so it is optional), else ``None`` with a printed note. SPICE is left out: it
downloads a parser at run time, which this project never does.
"""
from __future__ import annotations

import shutil
import sys

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from utils.evaluation.matching import words


def normalise(text: str) -> str:
    return " ".join(words(text))


def meteor_score(references: dict[int, list[str]], predictions: dict[int, list[str]]) -> float | None:
    """METEOR through pycocoevalcap's Java scorer, or ``None`` when Java is missing."""
    if shutil.which("java") is None:
        print("[phrase] java not found: METEOR is reported as null", file=sys.stderr)
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(references, predictions)
    finally:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    return float(score)


def phrase_metrics(predictions: list[str], references: list[str], meteor: bool = True
                   ) -> dict[str, float | None]:
    """Exact match, BLEU-1, BLEU-4, ROUGE-L, CIDEr and METEOR over paired phrases.

    Arguments:
      predictions: the generated phrase of each ground-truth finding ("" when unmatched).
      references: the ground-truth phrases, same length.
      meteor: compute METEOR (needs Java); ``False`` reports it as ``None``.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return {"exact_match": 0.0, "bleu_1": 0.0, "bleu_4": 0.0, "rouge_l": 0.0, "cider": 0.0,
                "meteor": None}
    refs = {i: [normalise(r)] for i, r in enumerate(references)}
    preds = {i: [normalise(p)] for i, p in enumerate(predictions)}
    bleu, _ = Bleu(4).compute_score(refs, preds, verbose=0)
    rouge, _ = Rouge().compute_score(refs, preds)
    cider, _ = Cider().compute_score(refs, preds)
    exact = sum(preds[i][0] == refs[i][0] for i in refs) / len(refs)
    return {"exact_match": float(exact), "bleu_1": float(bleu[0]), "bleu_4": float(bleu[3]),
            "rouge_l": float(rouge), "cider": float(cider),
            "meteor": meteor_score(refs, preds) if meteor else None}
