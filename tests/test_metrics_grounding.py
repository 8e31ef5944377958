"""Grounding metrics, answer parsing, phrase matching and the summary table, by hand cases."""
from __future__ import annotations

import pytest
import torch

from utils.annotations import Finding
from utils.evaluation.grounding import box_ious, grounding_metrics, to_pixels
from utils.evaluation.matching import (
    generated_phrases,
    match_phrases,
    strict_match,
    token_f1,
    words,
)
from utils.evaluation.report import format_metrics_table, format_noise_table


def test_thresholds_are_greater_or_equal():
    metrics = grounding_metrics([0.1, 0.3, 0.5, 0.0999])
    assert metrics == pytest.approx({"acc@0.1": 0.75, "acc@0.3": 0.5, "acc@0.5": 0.25,
                                     "miou": (0.1 + 0.3 + 0.5 + 0.0999) / 4})
    assert list(metrics) == ["acc@0.1", "acc@0.3", "acc@0.5", "miou"]


def test_no_findings_scores_zero_and_nan_is_refused():
    assert grounding_metrics([]) == {"acc@0.1": 0.0, "acc@0.3": 0.0, "acc@0.5": 0.0, "miou": 0.0}
    with pytest.raises(ValueError, match="IoU number 1 is NaN"):
        grounding_metrics([0.2, float("nan")])


def test_paired_iou_is_the_diagonal_and_degenerate_boxes_score_zero():
    predicted = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 9], [10, 10, 0, 0],
                              [0, 0, 4, 4]], dtype=torch.float)
    target = torch.tensor([[5, 0, 15, 10], [0, 0, 10, 10], [5, 5, 5, 9], [0, 0, 10, 10],
                           [0, 0, 0, 0]], dtype=torch.float)
    ious = box_ious(predicted, target)
    assert ious.tolist() == pytest.approx([50 / 150, 1.0, 0.0, 0.0, 0.0])
    assert not ious.isnan().any()
    assert box_ious(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)
    with pytest.raises(ValueError, match=r"two \(M, 4\) tensors"):
        box_ious(torch.zeros(2, 4), torch.zeros(3, 4))


def test_paired_iou_on_many_boxes_matches_one_by_one():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(2500, 2, 2, generator=generator) * 100
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    predicted, target = boxes[:1250], boxes[1250:]
    expected = torch.stack([box_ious(p[None], t[None])[0] for p, t in zip(predicted, target)])
    assert torch.allclose(box_ious(predicted, target), expected)


def test_enclosing_target_and_pixels():
    finding = Finding("bilateral effusions", ((0.1, 0.2, 0.3, 0.4), (0.5, 0.1, 0.6, 0.3)))
    assert finding.target_box() == pytest.approx((0.1, 0.1, 0.6, 0.4))
    assert Finding("one", finding.boxes[:1]).target_box() == pytest.approx((0.1, 0.2, 0.3, 0.4))
    assert to_pixels(torch.tensor([0.1, 0.2, 0.5, 1.0]), 200, 100).tolist() == pytest.approx(
        [20, 20, 100, 100])
    many = to_pixels(torch.ones(2, 3, 4), torch.tensor([10.0, 20.0])[:, None],
                     torch.tensor([1.0, 2.0])[:, None])
    assert many[1, 2].tolist() == [20, 2, 20, 2]


def test_iou_in_pixels_of_a_non_square_image():
    # The same normalised boxes: on a 400 x 100 image the x overlap weighs as drawn.
    predicted, target = torch.tensor([[0.0, 0.0, 0.5, 1.0]]), torch.tensor([[0.25, 0.0, 0.75, 0.5]])
    pixels = box_ious(to_pixels(predicted, 400, 100), to_pixels(target, 400, 100))
    assert float(pixels[0]) == pytest.approx(100 * 50 / (200 * 100 + 200 * 50 - 100 * 50))


def word_phrases(text: str) -> list[str]:
    """``generated_phrases`` over a word-level vocabulary: one token per space-separated word."""
    words_ = text.split(" ")
    vocab = {word: i for i, word in enumerate(dict.fromkeys([*words_, "[BOX]"]))}
    inverse = {i: word for word, i in vocab.items()}
    return generated_phrases([vocab[w] for w in words_], vocab["[BOX]"],
                             lambda ids: " ".join(inverse[i] for i in ids))


@pytest.mark.parametrize("text, phrases", [
    ("Small left effusion. It is [BOX] . Right upper zone nodule. It is [BOX] .",
     ["Small left effusion", "Right upper zone nodule"]),
    ("No finding to ground.", []),
    ("", []),
    ("[BOX] cardiomegaly. It is [BOX]", ["", "cardiomegaly"]),
    ("  Heart  enlarged .  it is  [BOX]  nodule,it is [BOX] tail", ["Heart  enlarged", "nodule"]),
    ("effusion. It is [BOX] . It is [BOX] .", ["effusion", ""]),
    ("visit it is [BOX]", ["visit"]),
    ("a. It is [BOX] . b [BOX] c. [BOX] [BOX]", ["a", "b", "c", ""]),
])
def test_generated_phrases_split_at_the_box_token_ids(text, phrases):
    assert word_phrases(text) == phrases
    assert len(word_phrases(text)) == text.split(" ").count("[BOX]")


def test_token_f1_definition():
    assert words("Left, upper-zone Nodule_2!") == ["left", "upper", "zone", "nodule", "2"]
    assert token_f1("Left effusion.", "effusion left") == 1.0
    assert token_f1("small left pleural effusion", "left effusion") == pytest.approx(2 * 2 / 6)
    assert token_f1("left", "") == 0.0 and token_f1("", "") == 0.0


def test_matching_is_one_to_one_and_drops_weak_pairs():
    predicted = ["right upper zone nodule", "small left effusion", "hernia"]
    truth = ["small left pleural effusion", "nodule in the right upper zone"]
    assert match_phrases(predicted, truth) == [(0, 1), (1, 0)]
    assert match_phrases([], truth) == [] and match_phrases(predicted, []) == []
    assert match_phrases(["left effusion"], ["right nodule"]) == []
    # Both predictions resemble finding 0; the assignment gives each finding one prediction.
    assert match_phrases(["left effusion", "left effusion small"],
                         ["small left effusion", "left effusion"]) == [(0, 1), (1, 0)]
    assert match_phrases(["left effusion"], ["left effusion", "left effusion"]) == [(0, 0)]
    assert match_phrases(["a b"], ["a c"], min_similarity=0.5) == [(0, 0)]
    assert match_phrases(["a b"], ["a c"], min_similarity=0.51) == []


@pytest.mark.parametrize("predicted, truth, strict", [
    ("Left midlung field atelectasis", "Left midlung field mass", False),  # another finding
    ("Lobulated mass in the right midlung field", "Lobulated mass in the left midlung field",
     False),  # another side, token F1 0.86
    ("Dense airspace opacity in the left mid zone",
     "Dense airspace consolidation in the left mid zone", False),  # F1 0.875, another finding
    ("small left pneumothorax", "small right pneumothorax", False),
    ("small left pneumothorax", "small left apical pneumothorax", True),  # F1 0.86
    ("bilateral pleural effusions", "Bilateral pleural effusion", True),  # plural folded
    ("Right-sided pneumothorax", "right-sided pneumothorax", True),
    ("multiple nodules", "multiple masses", False),
    ("large opacities at the bases", "large opacity at the bases", True),
    ("left effusion", "left effusion with adjacent opacity", False),  # F1 0.67
])
def test_strict_matching_needs_the_same_findings_and_sides(predicted, truth, strict):
    assert strict_match(predicted, truth) is strict
    assert strict_match(truth, predicted) is strict


def _metrics() -> dict:
    block = {"acc@0.1": 0.9, "acc@0.3": 0.7, "acc@0.5": 0.5, "miou": 0.45}
    return {"dataset": "report", "split": "test", "n_samples": 6, "n_findings": 9,
            "grounding": block, "grounding_given_phrase": {**block, "acc@0.5": 0.625},
            "phrase": {"exact_match": 0.8, "bleu_1": 0.9, "bleu_4": 0.7, "rouge_l": 0.85,
                       "cider": 3.2, "meteor": None},
            "uncertainty": {"aurc": 0.2, "auroc_failure@0.5": 0.7, "spearman_u_iou": -0.3},
            "n_extra_predictions": 2, "seconds": 12.34, "image_noise_std": 0.0, "mean_u": 1e-3}


def test_metrics_table_puts_end_to_end_beside_given_phrase():
    table = format_metrics_table(_metrics())
    assert table.splitlines()[0] == "report / test: 6 samples, 9 findings, 12.3 s"
    acc = next(line for line in table.splitlines() if line.strip().startswith("acc@0.5"))
    assert acc.split()[1:] == ["0.5000", "0.6250"]
    assert "METEOR" in table and "n/a" in table and "AURC" in table
    assert "extra generated phrases" in table


def test_metrics_table_shows_the_per_box_block_when_present():
    assert "per ground-truth box" not in format_metrics_table(_metrics())
    block = {"acc@0.1": 0.9, "acc@0.3": 0.8, "acc@0.5": 0.6, "miou": 0.5, "precision@0.5": 0.7,
             "recall@0.5": 0.6, "count_accuracy": 0.95, "n_findings": 4, "n_boxes": 5}
    boxes = {**block, "multi_box": {**block, "acc@0.5": 0.25}, "single_box": block}
    table = format_metrics_table({**_metrics(), "grounding_boxes": boxes,
                                  "grounding_boxes_given_phrase": {**boxes, "miou": 0.55}})
    lines = {line[:30].strip(): line.split()[-2:] for line in table.splitlines()}
    assert lines["box mIoU"] == ["0.5000", "0.5500"]
    assert lines["multi-box acc@0.5"] == ["0.2500", "0.2500"]
    assert lines["box count accuracy"] == ["0.9500", "0.9500"]


def test_noise_table_has_one_line_per_level():
    rows = [_metrics(), {**_metrics(), "image_noise_std": 25.0, "mean_u": 4e-3}]
    lines = format_noise_table(rows).splitlines()
    assert lines[0].split()[:3] == ["noise", "std", "acc@0.5"]
    assert lines[1].split()[0] == "0.0" and lines[2].split()[0] == "25.0"
    assert lines[2].split()[5] == "4.00e-03"
