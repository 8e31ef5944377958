"""Phrase metrics: normalised exact match, pycocoevalcap scores, METEOR with and without Java."""
from __future__ import annotations

import shutil

import pytest

from utils.evaluation import phrase as phrase_module
from utils.evaluation.phrase import PHRASE_KEYS, normalise, phrase_metrics

REFERENCES = ["Small left pleural effusion", "right upper zone nodule", "Cardiomegaly.",
              "mild pulmonary oedema"]


def test_normalise_ignores_case_spacing_and_punctuation():
    assert normalise("  Small  LEFT pleural effusion. ") == "small left pleural effusion"
    assert normalise("...") == "" and normalise("") == ""


def test_perfect_predictions():
    perfect = phrase_metrics(["small left pleural effusion.", "Right  upper zone nodule",
                              "cardiomegaly", "Mild pulmonary oedema;"], REFERENCES, meteor=False)
    assert tuple(perfect) == PHRASE_KEYS
    assert perfect["exact_match"] == 1.0
    assert perfect["bleu_1"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["bleu_4"] > 0.9 and perfect["cider"] > 1.0 and perfect["meteor"] is None


def test_empty_and_partial_predictions_do_not_crash():
    half = phrase_metrics(["small left pleural effusion", "", "cardiomegaly", ""], REFERENCES,
                          meteor=False)
    assert half["exact_match"] == 0.5 and half["rouge_l"] == pytest.approx(0.5)
    nothing = phrase_metrics(["", "", "", ""], REFERENCES, meteor=False)
    assert nothing["exact_match"] == 0.0 and nothing["rouge_l"] == 0.0 and nothing["cider"] == 0.0
    assert nothing["bleu_1"] == pytest.approx(0.0, abs=1e-6)
    assert phrase_metrics([], [], meteor=False) == {
        "exact_match": 0.0, "bleu_1": 0.0, "bleu_4": 0.0, "rouge_l": 0.0, "cider": 0.0,
        "meteor": None}
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        phrase_metrics(["a", "b"], ["a"], meteor=False)


def test_meteor_is_null_without_java(monkeypatch, caplog):
    monkeypatch.setattr(phrase_module.shutil, "which", lambda name: None)
    assert phrase_metrics(["left effusion"], ["left effusion"])["meteor"] is None
    assert "METEOR is reported as null" in caplog.text


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java")
def test_meteor_with_java_closes_its_process(monkeypatch):
    from pycocoevalcap.meteor import meteor as meteor_module

    started = []

    class RecordingMeteor(meteor_module.Meteor):
        def __init__(self):
            super().__init__()
            started.append(self)

    monkeypatch.setattr(meteor_module, "Meteor", RecordingMeteor)
    predictions = ["small left pleural effusion", "", "cardiomegaly", "mild oedema"]
    scores = phrase_metrics(predictions, REFERENCES)
    assert 0.0 < scores["meteor"] < 1.0
    assert len(started) == 1 and started[0].meteor_p.poll() is not None
    assert not started[0].lock.locked()
    refs = {i: [normalise(r)] for i, r in enumerate(REFERENCES)}
    preds = {i: [normalise(p)] for i, p in enumerate(predictions)}
    assert phrase_module.meteor_score(refs, preds) == scores["meteor"]  # deterministic
