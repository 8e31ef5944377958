"""Decoding that copies the phrases from the prompt (``--decoding spans``).

A grounding answer is ``"phrase. It is [BOX]. phrase2. It is [BOX]."`` (or the no-finding
answer), and each phrase is a diagnostic phrase *of the user's text*: the report, the VQA
answer or the class label. Free greedy decoding lets a small language model write a phrase
of its own ("right upper lung mass" for the report's "right upper lung airspace
consolidation"). Span decoding keeps the greedy choice but allows, at each step, only the
tokens that keep the answer in that format with every phrase a contiguous run of the
prompt's tokens (the tokens after the image; the template words are allowed too, they are
part of the prompt), and the phrases in text order, as the training answers are
(``utils.dataset.ordered_findings``): each phrase starts after the end of the one before,
not with punctuation, and holds a word (a small model otherwise writes ".", "-" or a lone
space as a phrase). The model still decides which phrases, how long and when to stop; the
constraint only removes continuations that are in no span of the text, and phrases that go
back in it or overlap the one before (a small model otherwise writes one phrase twice, or
the tail of the phrase it just wrote, "small left pleural effusion" then "left pleural
effusion").

Only the prompts of the tasks in :data:`SPAN_TASKS` (the report) are constrained: a report's
phrases are its own words, while the phrases of a VQA or class sample (MS-CXR's phrases, for
a question or a label) are not in its prompt, so those rows decode freely.

**The earliest plausible phrase start** (``phrase_start_ratio`` r < 1). Where a phrase may
start (the answer's start, or after a ``[BOX]``) and the greedy token starts a phrase or ends
the answer, the token written is the one whose phrase starts earliest in the text among
those at least r times as probable as the greedy token (ending the answer counts as after
the text's end). The training answers list the phrases in text order, so the next phrase is
the earliest finding not yet written; a small model often ranks a later finding's first word
(or the end) above it and skips that finding. The no-finding answer is never chosen by this
rule, nor replaced by it. r = 1 is plain greedy span decoding.

The allowed tokens come from a small nondeterministic automaton over the answer so far. Its
states are: inside a phrase (the set of prompt positions where the phrase so far ends, or,
before its first token, "anywhere after the previous phrase's end"), inside the suffix
``". It is [BOX]."`` (its token index), inside the no-finding answer, or finished. A "."
after a phrase token may both continue the span (the prompt has "1.5 cm") and start the
suffix, so both states are kept.
It plugs into ``generate`` as a transformers ``LogitsProcessor`` (:class:`SpanLogitsProcessor`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, NamedTuple, Sequence

import torch
from transformers import LogitsProcessor

from utils.prompts import NO_FINDING_ANSWER, answer_text

DECODINGS = ("spans", "free")
DEFAULT_DECODING = "spans"
DEFAULT_PHRASE_START_RATIO = 0.02  # chosen on the validation split, docs/experiments.md
SPAN_TASKS = frozenset({"report"})  # the tasks whose phrases are spans of the prompt's text


class _Phrase(NamedTuple):
    ends: frozenset[int] | None  # prompt positions after the phrase so far; None: not started
    length: int
    after_box: bool  # a whole "phrase. It is [BOX]." was written before this phrase
    after: int  # the phrase starts at a prompt position above this one
    worded: bool = False  # the phrase so far holds a word (a token with a letter or digit)


class _Suffix(NamedTuple):
    index: int
    after: int  # the last prompt position of the phrase it closes (its earliest occurrence)


class _NoFinding(NamedTuple):
    index: int


class _Finished(NamedTuple):
    pass


State = _Phrase | _Suffix | _NoFinding | _Finished


class AnswerFormat(NamedTuple):
    """The token ids of the answer format under one tokenizer."""

    suffix: tuple[int, ...]  # ". It is [BOX]." after a phrase
    no_finding: tuple[int, ...]
    eos: int
    excluded: frozenset[int]  # never part of a phrase: special tokens and [BOX]

    @classmethod
    def of(cls, tokenizer: Any, box_token_id: int) -> "AnswerFormat":
        """Read the format from ``utils.prompts.answer_text`` as the training data writes it."""
        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False).input_ids

        probe = "effusion"
        phrase, answer = ids(probe), ids(answer_text([probe]))
        if answer[:len(phrase)] != phrase or box_token_id not in answer[len(phrase):]:
            raise ValueError(f"the tokenizer splits the answer {answer_text([probe])!r} into "
                             f"{answer}, which does not start with the phrase's ids {phrase}; "
                             "span decoding cannot read this format (use --decoding free)")
        excluded = frozenset(tokenizer.all_special_ids) | {box_token_id}
        return cls(tuple(answer[len(phrase):]), tuple(ids(NO_FINDING_ANSWER)),
                   tokenizer.eos_token_id, excluded)


class SpanAutomaton:
    """The allowed next tokens of answers whose phrases are spans of one prompt's text.

    Arguments:
      source: the token ids the phrases may copy from (the prompt after the image).
      answer: the answer format.
      punctuation: the ids of punctuation tokens ("." "-" ",", :func:`is_punctuation`),
        which may continue a phrase ("1.5 cm", "X-ray") but never start one.
      blanks: the ids of tokens of white space alone (SentencePiece's "▁" before a number),
        which may start a phrase but, as punctuation, never make one alone: a phrase ends
        only once it holds a word.
    """

    def __init__(self, source: list[int], answer: AnswerFormat,
                 punctuation: frozenset[int] = frozenset(),
                 blanks: frozenset[int] = frozenset()):
        self.source = [t for t in source if t not in answer.excluded]
        self.answer = answer
        self.punctuation = punctuation
        self.not_words = punctuation | blanks
        self.positions: dict[int, list[int]] = defaultdict(list)
        for position, token in enumerate(self.source):
            self.positions[token].append(position)
        self.start: frozenset[State] = frozenset({_Phrase(None, 0, False, -1), _NoFinding(0)})

    def allowed(self, states: frozenset[State]) -> list[int]:
        """The token ids that some state accepts next; ``[eos]`` when none does."""
        tokens: set[int] = set()
        answer = self.answer
        for state in states:
            if isinstance(state, _Phrase):
                if state.ends is None:
                    tokens.update(t for t in self.source[state.after + 1:]
                                  if t not in self.punctuation)
                else:
                    tokens.update(self.source[e] for e in state.ends if e < len(self.source))
                if state.worded:
                    tokens.add(answer.suffix[0])
                elif not state.length and state.after_box:
                    tokens.add(answer.eos)
            elif isinstance(state, _Suffix):
                tokens.add(answer.suffix[state.index])
            elif isinstance(state, _NoFinding):
                tokens.add(answer.no_finding[state.index] if state.index < len(answer.no_finding)
                           else answer.eos)
        return sorted(tokens) if tokens else [answer.eos]

    def phrase_starts(self, states: frozenset[State]) -> dict[int, int]:
        """Where each token that starts a new phrase would start it: the earliest prompt
        position holding the token after the previous phrase's end; eos, where the answer may
        end, at ``len(source)``. Punctuation and the no-finding answer's tokens are left
        out. Empty
        inside a phrase, the suffix or the no-finding answer."""
        starts: dict[int, int] = {}
        for state in states:
            if isinstance(state, _Phrase) and state.ends is None:
                for position in range(state.after + 1, len(self.source)):
                    token = self.source[position]
                    if token not in self.punctuation:
                        starts[token] = min(position, starts.get(token, position))
                if state.after_box:
                    starts[self.answer.eos] = len(self.source)
        for state in states:
            if isinstance(state, _NoFinding) and state.index < len(self.answer.no_finding):
                starts.pop(self.answer.no_finding[state.index], None)
        return starts

    def advance(self, states: frozenset[State], token: int) -> frozenset[State]:
        """The states after reading ``token``."""
        answer = self.answer
        following: set[State] = set()
        for state in states:
            if isinstance(state, _Phrase):
                if state.ends is None:
                    ends = frozenset(p + 1 for p in self.positions.get(token, ())
                                     if p > state.after and token not in self.punctuation)
                else:
                    ends = frozenset(e + 1 for e in state.ends
                                     if e < len(self.source) and self.source[e] == token)
                if ends:
                    following.add(_Phrase(ends, state.length + 1, state.after_box, state.after,
                                          state.worded or token not in self.not_words))
                if state.worded and token == answer.suffix[0]:
                    following.add(self._suffix_state(1, min(state.ends) - 1))
                if not state.length and state.after_box and token == answer.eos:
                    following.add(_Finished())
            elif isinstance(state, _Suffix):
                if token == answer.suffix[state.index]:
                    following.add(self._suffix_state(state.index + 1, state.after))
            elif isinstance(state, _NoFinding):
                if state.index < len(answer.no_finding):
                    if token == answer.no_finding[state.index]:
                        following.add(_NoFinding(state.index + 1))
                elif token == answer.eos:
                    following.add(_Finished())
            else:
                following.add(state)
        return frozenset(following)

    def _suffix_state(self, index: int, after: int) -> State:
        if index < len(self.answer.suffix):
            return _Suffix(index, after)
        return _Phrase(None, 0, True, after)


def prompt_sources(input_ids: torch.Tensor, image_token_id: int, pad_token_id: int
                   ) -> list[list[int]]:
    """Per row of left-padded prompts (B,L), the ids after its last image token (the user's
    text and the template; all non-pad ids when a row has no image token)."""
    sources = []
    for row in input_ids.tolist():
        images = [i for i, token in enumerate(row) if token == image_token_id]
        start = images[-1] + 1 if images else 0
        sources.append([t for t in row[start:] if t != pad_token_id])
    return sources


class SpanLogitsProcessor(LogitsProcessor):
    """Span decoding for greedy ``generate``: per row, every token the row's automaton does
    not allow gets −inf, and at a phrase start with ``phrase_start_ratio`` < 1 only the
    earliest plausible start keeps its score (the module docstring). Rows without an
    automaton (prompts whose phrases are not in their text) are left as they are.

    Arguments:
      automata: one per row of the prompts, or ``None`` for an unconstrained row.
      prompt_length: the prompts' padded length L; generated tokens follow it.
      phrase_start_ratio: r in (0, 1].
    """

    def __init__(self, automata: Sequence[SpanAutomaton | None], prompt_length: int,
                 phrase_start_ratio: float = DEFAULT_PHRASE_START_RATIO):
        check_phrase_start_ratio(phrase_start_ratio)
        self.automata = list(automata)
        self.prompt_length = prompt_length
        self.log_ratio = math.log(phrase_start_ratio)
        self.progress: dict[int, tuple[int, frozenset[State]]] = {}

    def states(self, row: int, sequence: torch.Tensor) -> frozenset[State]:
        """The automaton states of row ``row`` after its generated tokens (``sequence`` is
        the prompt and the answer so far, (L+t,)); reads only the tokens added since the
        last call."""
        automaton = self.automata[row]
        generated = sequence[self.prompt_length:].tolist()
        read, states = self.progress.get(row, (0, automaton.start))
        if read > len(generated):
            read, states = 0, automaton.start
        for token in generated[read:]:
            states = automaton.advance(states, token)
        self.progress[row] = (len(generated), states)
        return states

    def allowed(self, row: int, sequence: torch.Tensor) -> list[int] | None:
        """The token ids row ``row`` may write next; ``None`` for an unconstrained row."""
        automaton = self.automata[row]
        return None if automaton is None else automaton.allowed(self.states(row, sequence))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``input_ids`` (B,L+t), ``scores`` (B,V) → the processed scores (B,V)."""
        processed = torch.full_like(scores, -math.inf)
        for row, automaton in enumerate(self.automata):
            if automaton is None:
                processed[row] = scores[row]
                continue
            states = self.states(row, input_ids[row])
            keep = automaton.allowed(states)
            greedy = keep[int(scores[row, keep].argmax())]
            starts = automaton.phrase_starts(states) if self.log_ratio < 0 else {}
            if greedy in starts:
                tokens = list(starts)
                values = scores[row, tokens].tolist()  # one read of the row's scores
                floor = values[tokens.index(greedy)] + self.log_ratio
                plausible = [t for t, value in zip(tokens, values) if value >= floor]
                keep = [min(plausible, key=lambda token: (starts[token], token))]
            processed[row, keep] = scores[row, keep]
        return processed


def is_punctuation(text: str) -> bool:
    """Whether a token's text is punctuation only: some character, none a letter or digit (a
    lone word boundary, "▁" before a number, is not)."""
    return bool(text.strip()) and not any(c.isalnum() for c in text)


def check_phrase_start_ratio(ratio: float) -> None:
    """Raise ``ValueError`` unless ``ratio`` is in (0, 1]."""
    if not 0 < ratio <= 1:
        raise ValueError(f"phrase_start_ratio must be in (0, 1], got {ratio} (1: plain greedy "
                         "span decoding)")


def span_constraint(input_ids: torch.Tensor, tokenizer: Any, image_token_id: int,
                    box_token_id: int, tasks: Sequence[str],
                    phrase_start_ratio: float = DEFAULT_PHRASE_START_RATIO
                    ) -> SpanLogitsProcessor | None:
    """The span decoding of greedy generation from the prompts ``input_ids`` (B,L,
    left-padded) of samples of ``tasks`` (B,): row b's phrases are spans of row b's prompt
    text when its task is in :data:`SPAN_TASKS`, the other rows are unconstrained; ``None``
    when no row is constrained."""
    if len(tasks) != input_ids.shape[0]:
        raise ValueError(f"{len(tasks)} tasks for {input_ids.shape[0]} prompts")
    if not SPAN_TASKS.intersection(tasks):
        return None
    answer = AnswerFormat.of(tokenizer, box_token_id)
    sources = prompt_sources(input_ids, image_token_id, tokenizer.pad_token_id)
    texts = {token: tokenizer.decode([token]) for token in set().union(*sources)}
    punctuation = frozenset(token for token, text in texts.items() if is_punctuation(text))
    blanks = frozenset(token for token, text in texts.items() if not text.strip())
    automata = [SpanAutomaton(source, answer, punctuation, blanks) if task in SPAN_TASKS
                else None for source, task in zip(sources, tasks)]
    return SpanLogitsProcessor(automata, input_ids.shape[1], phrase_start_ratio)
