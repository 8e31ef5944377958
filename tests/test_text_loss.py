"""The text loss: which tokens are phrase starts, the weighted mean by hand, and its config."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.config import GroundingConfig
from model.constants import IGNORE_INDEX
from model.text_loss import phrase_start_mask, text_loss

BOX, DOT, IT, IS, EOS = 9, 5, 6, 7, 2
X = IGNORE_INDEX
# a prompt (ids 30-31), then "a b . It is [BOX] . c . It is [BOX] . </s>"
ANSWER = [11, 12, DOT, IT, IS, BOX, DOT, 13, DOT, IT, IS, BOX, DOT, EOS]
LABELS = torch.tensor([[X, X, *ANSWER, X], [X, X, X, 20, 21, DOT, EOS, *[X] * 10]])
#                                           a no-finding answer: its first token only


def test_phrase_starts_are_the_first_token_and_two_after_each_box():
    starts = phrase_start_mask(LABELS, BOX)
    assert LABELS[0][starts[0]].tolist() == [11, 13, EOS]
    assert LABELS[1][starts[1]].tolist() == [20]


def test_a_box_at_the_answers_end_marks_nothing_outside_it():
    labels = torch.tensor([[X, 11, DOT, BOX, DOT]])  # cut after the closing "."
    assert phrase_start_mask(labels, BOX).nonzero().flatten().tolist() == [0, 1]


@pytest.mark.parametrize("weight", [1.0, 3.0, 0.5])
def test_the_loss_is_the_weighted_mean_of_the_next_token_cross_entropy(weight):
    logits = torch.randn(*LABELS.shape, 40, generator=torch.Generator().manual_seed(0))
    per_token = {}
    for row in range(LABELS.shape[0]):
        for position in range(1, LABELS.shape[1]):
            target = int(LABELS[row, position])
            if target != X:
                per_token[row, position] = F.cross_entropy(logits[row, position - 1],
                                                           torch.tensor(target)).item()
    starts = phrase_start_mask(LABELS, BOX)
    weights = {key: weight if starts[key] else 1.0 for key in per_token}
    expected = sum(weights[k] * v for k, v in per_token.items()) / sum(weights.values())
    assert math.isclose(text_loss(logits, LABELS, BOX, weight).item(), expected, rel_tol=1e-5)


def test_weight_one_is_the_causal_lm_mean():
    logits = torch.randn(*LABELS.shape, 40, generator=torch.Generator().manual_seed(1))
    targets = F.pad(LABELS, (0, 1), value=X)[:, 1:]
    plain = F.cross_entropy(logits.reshape(-1, 40), targets.reshape(-1), ignore_index=X)
    torch.testing.assert_close(text_loss(logits, LABELS, BOX), plain)


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf"), "3"])
def test_the_config_refuses_a_weight_that_is_not_a_positive_number(weight):
    assert GroundingConfig("v", "s").phrase_start_weight == 1.0  # a config saved before it
    with pytest.raises(ValueError, match="phrase_start_weight .* must be a number > 0"):
        GroundingConfig("v", "s", phrase_start_weight=weight)
