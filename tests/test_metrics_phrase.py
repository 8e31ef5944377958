"""Phrase metrics: exact match and pycocoevalcap scores on paired phrases."""
from __future__ import annotations

import pytest

from utils.evaluation import phrase as phrase_module
from utils.evaluation.phrase import phrase_metrics


def test_perfect_and_empty_predictions():
    references = ["Small left pleural effusion", "right upper zone nodule"]
    perfect = phrase_metrics(["small left pleural effusion.", "Right upper zone nodule"],
                             references, meteor=False)
    assert perfect["exact_match"] == 1.0 and perfect["bleu_1"] == pytest.approx(1.0)
    assert perfect["rouge_l"] == pytest.approx(1.0) and perfect["meteor"] is None
    half = phrase_metrics(["small left pleural effusion", ""], references, meteor=False)
    assert half["exact_match"] == 0.5 and half["rouge_l"] == pytest.approx(0.5)
    assert phrase_metrics([], [], meteor=False)["exact_match"] == 0.0


def test_meteor_is_null_without_java(monkeypatch, capsys):
    monkeypatch.setattr(phrase_module.shutil, "which", lambda name: None)
    assert phrase_metrics(["left effusion"], ["left effusion"])["meteor"] is None
    assert "METEOR is reported as null" in capsys.readouterr().err
