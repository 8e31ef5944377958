"""Span decoding: the allowed tokens and the earliest plausible phrase start by hand, and answers
that always copy prompt spans."""
from __future__ import annotations

import math
import random

import pytest
import torch

from model.constants import BOX_TOKEN
from model.llava_builder import load_processor
from utils.evaluation.matching import generated_phrases
from utils.prompts import NO_FINDING_ANSWER, answer_text, prompt_text
from utils.span_decoding import (
    AnswerFormat,
    SpanAutomaton,
    SpanLogitsProcessor,
    prompt_sources,
    span_constraint,
)

# ids: 5 ".", 6 "It", 7 "is", 99 [BOX], 20 21 the no-finding answer, 2 eos, 0 a special token
FORMAT = AnswerFormat(suffix=(5, 6, 7, 99, 5), no_finding=(20, 21, 5), eos=2,
                      excluded=frozenset({0, 2, 99}))
SOURCE = [10, 11, 12, 13, 11, 14, 0]
SUFFIX = [5, 6, 7, 99, 5]


def allowed_after(generated: list[int], source: list[int] = SOURCE) -> set[int]:
    automaton = SpanAutomaton(source, FORMAT)
    states = automaton.start
    for token in generated:
        states = automaton.advance(states, token)
    return set(automaton.allowed(states))


@pytest.mark.parametrize("generated, expected", [
    ([], {10, 11, 12, 13, 14, 20}),                       # a phrase starts anywhere, or no finding
    ([11], {12, 14, 5}),                                  # both places 11 is, or end the phrase
    ([11, 12], {13, 5}),
    ([14], {5}),                                          # the end of the text: only the suffix
    ([11, 12, 5], {6}),                                   # "." is not in the text: the suffix
    ([11, 12, *SUFFIX], {13, 11, 14, 2}),                 # a phrase after this one, or eos
    ([10, 11, 12, *SUFFIX], {13, 11, 14, 2}),             # not the phrase's own tail (11 12)
    ([13, *SUFFIX], {11, 14, 2}),                         # text order: nothing before 13
    ([11, 12, *SUFFIX, 2], {2}),                          # finished
    ([11, 12, *SUFFIX, 14, *SUFFIX], {2}),                # nothing after the text's last word
    ([11, 12, *SUFFIX, 11], {14, 5}),                     # the later 11 only
    ([20], {21}),
    ([20, 21, 5], {2}),
    ([13, 12], {2}),                                      # not a span: nothing left but eos
])
def test_allowed_tokens(generated, expected):
    assert allowed_after(generated) == expected


def states_after(automaton: SpanAutomaton, generated: list[int]):
    states = automaton.start
    for token in generated:
        states = automaton.advance(states, token)
    return states


@pytest.mark.parametrize("generated, source, expected", [
    ([], SOURCE, {10: 0, 11: 1, 12: 2, 13: 3, 14: 5}),   # the earliest place of each token
    ([11, 12, *SUFFIX], SOURCE, {13: 3, 11: 4, 14: 5, 2: 6}),  # after the phrase; eos last
    ([11], SOURCE, {}),                                   # inside a phrase
    ([11, 12, 5], SOURCE, {}),                            # inside the suffix
    ([], [20, 10, 20], {10: 1}),                          # never the no-finding answer's start
    ([20], [20, 10, 20], {}),
])
def test_phrase_starts(generated, source, expected):
    automaton = SpanAutomaton(source, FORMAT)
    assert automaton.phrase_starts(states_after(automaton, generated)) == expected


VOCABULARY = 100


def chosen(generated: list[int], probabilities: dict[int, float], ratio: float,
           source: list[int] = SOURCE) -> set[int]:
    """The tokens left with a finite score after one step of the processor."""
    scores = torch.full((1, VOCABULARY), math.log(1e-6))
    for token, probability in probabilities.items():
        scores[0, token] = math.log(probability)
    processor = SpanLogitsProcessor([SpanAutomaton(source, FORMAT)], prompt_length=2,
                                    phrase_start_ratio=ratio)
    processed = processor(torch.tensor([[1, 1, *generated]]), scores)
    return set(torch.isfinite(processed[0]).nonzero().flatten().tolist())


AFTER_FIRST = [10, *SUFFIX]  # a first phrase at the text's start; 11..14 may follow, or eos


@pytest.mark.parametrize("generated, probabilities, ratio, expected", [
    # the greedy token starts the later phrase (14); 11 starts one earlier and is plausible
    (AFTER_FIRST, {14: 0.5, 11: 0.2, 2: 0.1}, 0.3, {11}),
    (AFTER_FIRST, {14: 0.5, 11: 0.1, 2: 0.1}, 0.3, {14}),     # 11 is below the ratio
    (AFTER_FIRST, {2: 0.6, 13: 0.3}, 0.3, {13}),              # eos counts as after the text
    (AFTER_FIRST, {2: 0.6, 13: 0.1}, 0.3, {2}),
    (AFTER_FIRST, {14: 0.5, 11: 0.4}, 1.0, {11, 12, 13, 14, 2}),  # ratio 1: plain greedy
    ([], {20: 0.5, 10: 0.4}, 0.3, {10, 11, 12, 13, 14, 20}),  # the no-finding answer stays
    ([], {12: 0.5, 11: 0.4}, 0.3, {11}),                      # the answer's first phrase
    ([11], {12: 0.5, 5: 0.4}, 0.3, {12, 14, 5}),              # inside a phrase: spans only
])
def test_the_earliest_plausible_phrase_start(generated, probabilities, ratio, expected):
    assert chosen(generated, probabilities, ratio) == expected


def test_unconstrained_rows_keep_their_scores():
    scores = torch.randn(2, VOCABULARY)
    processor = SpanLogitsProcessor([None, SpanAutomaton(SOURCE, FORMAT)], prompt_length=2,
                                    phrase_start_ratio=1.0)
    processed = processor(torch.ones((2, 2), dtype=torch.long), scores.clone())
    assert torch.equal(processed[0], scores[0])
    assert torch.isfinite(processed[1]).sum() == len({10, 11, 12, 13, 14, 20})


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, float("nan")])
def test_the_ratio_is_in_zero_one(ratio):
    with pytest.raises(ValueError, match="phrase_start_ratio must be in"):
        SpanLogitsProcessor([None], prompt_length=1, phrase_start_ratio=ratio)


def test_a_dot_inside_the_text_both_continues_the_span_and_starts_the_suffix():
    source = [10, 5, 11]  # "1.5"-like: the text itself holds "."
    assert allowed_after([10], source) == {5}
    assert allowed_after([10, 5], source) == {11, 6, 5}  # "1.5", "1. It", "1.. It"
    assert allowed_after([10, 5, 11], source) == {5}


@pytest.mark.parametrize("generated, expected", [
    ([], {10, 13, 11, 20}),                  # "." and "-" never start a phrase; a blank may
    ([10], {5}),                             # punctuation continues a phrase ("1.5") or closes it
    ([10, 5], {13, 6, 5}),
    ([13], {11}),                            # a blank alone is no phrase: only its word follows
    ([13, 11], {8, 5}),                      # "▁4": a phrase now
    ([10, *SUFFIX], {13, 11, 2}),            # after a phrase: no punctuation first either
])
def test_a_phrase_starts_without_punctuation_and_holds_a_word(generated, expected):
    source = [10, 5, 13, 11, 8]  # 5 ".", 8 "-": punctuation; 13 "▁", a blank before "4" (11)
    automaton = SpanAutomaton(source, FORMAT, punctuation=frozenset({5, 8}),
                              blanks=frozenset({13}))
    states = automaton.start
    for token in generated:
        states = automaton.advance(states, token)
    assert set(automaton.allowed(states)) == expected
    assert not set(automaton.phrase_starts(states)) & {5, 8}


def test_span_constraint_finds_the_punctuation_and_the_blanks(tokenizer):
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    box_id = tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    prompt = tokenizer(prompt_text("Report: A 1.5 cm nodule, chest X-ray.", "<image>"),
                       return_tensors="pt").input_ids
    automaton = span_constraint(prompt, tokenizer, image_id, box_id, ["report"]).automata[0]
    punctuation = {tokenizer.decode([t]).strip() for t in automaton.punctuation}
    assert {".", "-"} <= punctuation <= {".", ",", "-", ":"}
    blanks = automaton.not_words - automaton.punctuation
    assert blanks and all(not tokenizer.decode([t]).strip() for t in blanks)  # "▁" before "1"
    starts = automaton.phrase_starts(automaton.start)
    assert starts and not set(starts) & automaton.punctuation


def test_special_tokens_and_box_are_never_copied():
    assert allowed_after([], [0, 99, 10, 2]) == {10, 20}


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_processor(tiny_dir / "llava").tokenizer


def test_answer_format_is_read_from_the_training_answer(tokenizer):
    box_id = tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    answer = AnswerFormat.of(tokenizer, box_id)
    phrase = tokenizer("pleural effusion", add_special_tokens=False).input_ids
    expected = tokenizer(answer_text(["pleural effusion"]), add_special_tokens=False).input_ids
    assert phrase + list(answer.suffix) == expected and box_id in answer.suffix
    assert list(answer.no_finding) == tokenizer(NO_FINDING_ANSWER,
                                                add_special_tokens=False).input_ids
    assert box_id in answer.excluded and tokenizer.eos_token_id in answer.excluded


def test_prompt_sources_skip_the_padding_and_the_image():
    prompts = torch.tensor([[0, 0, 7, 3, 3, 10, 11], [7, 3, 3, 12, 13, 14, 15]])
    assert prompt_sources(prompts, image_token_id=3, pad_token_id=0) == [[10, 11],
                                                                         [12, 13, 14, 15]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_walks_write_only_answers_whose_phrases_are_spans_of_the_prompt(tokenizer, seed):
    """Any choice among the allowed tokens, at every step, gives phrases that are text spans."""
    report = ("Findings are notable for consolidation in the right midlung field. No pleural "
              "effusion. A 1.5 cm nodule in the left upper lung.")
    text = prompt_text(f"Report: {report}", "<image>")
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    box_id = tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    prompt = tokenizer(text, return_tensors="pt").input_ids
    prompt = torch.cat([torch.full((1, 3), tokenizer.pad_token_id), prompt], dim=1)
    allowed = span_constraint(prompt, tokenizer, image_id, box_id, ["report"])
    rng = random.Random(seed)
    sequence = prompt[0]
    for _ in range(80):
        sequence = torch.cat([sequence, torch.tensor([rng.choice(allowed.allowed(0, sequence))])])
        if int(sequence[-1]) == tokenizer.eos_token_id:
            break
    generated = sequence[prompt.shape[1]:].tolist()
    source = prompt_sources(prompt, image_id, tokenizer.pad_token_id)[0]
    suffix = AnswerFormat.of(tokenizer, box_id).suffix
    before_box = suffix.index(box_id)  # the suffix tokens written before [BOX]
    boxes = [i for i, token in enumerate(generated) if token == box_id]
    assert boxes or generated[:2] == list(AnswerFormat.of(tokenizer, box_id).no_finding[:2])
    start, previous = 0, -1
    for box in boxes:
        phrase = generated[start:box - before_box]
        at = [i for i in range(previous + 1, len(source)) if source[i:i + len(phrase)] == phrase]
        assert phrase and at, "each phrase is a span starting after the previous one's start"
        previous = at[0]
        written = generated[box - before_box:box + len(suffix) - before_box]
        assert written == list(suffix)[:len(written)]  # the walk may stop inside the suffix
        start = box + len(suffix) - before_box
    for phrase in generated_phrases(generated, box_id, tokenizer.decode):
        assert phrase.lower() in text.lower()


@pytest.mark.parametrize("tasks, constrained", [
    (["report", "report"], [True, True]),
    (["report", "vqa"], [True, False]),
    (["class", "report"], [False, True]),
    (["vqa", "class"], None),  # no row is a report: no constraint at all
])
def test_only_report_prompts_are_constrained(tokenizer, tasks, constrained):
    """A VQA answer's or a class label's phrases (MS-CXR's) are not in the prompt."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    box_id = tokenizer.convert_tokens_to_ids(BOX_TOKEN)
    rows = [tokenizer(prompt_text(text, "<image>")).input_ids
            for text in ("Report: Small left pleural effusion.", "Locate the nodule.")]
    width = max(map(len, rows))
    prompts = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    allowed = span_constraint(prompts, tokenizer, image_id, box_id, tasks)
    if constrained is None:
        assert allowed is None
        return
    for row, is_constrained in enumerate(constrained):
        tokens = allowed.allowed(row, prompts[row])
        assert (tokens is None) is not is_constrained
        assert tokens is None or len(tokens) < 20


def test_tasks_must_match_the_prompts(tokenizer):
    prompts = torch.ones((2, 4), dtype=torch.long)
    with pytest.raises(ValueError, match="1 tasks for 2 prompts"):
        span_constraint(prompts, tokenizer, 3, 4, ["report"])
