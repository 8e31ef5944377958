"""A model whose generation is scripted: it writes a given answer, so its boxes can be compared.

The tiny models of the tests are untrained and rarely write a ``[BOX]``. :class:`ScriptedAnswer`
hooks a loaded model so that ``generate`` writes ``answer`` then EOS, whatever the image and
prompt; every other computation (the phrase states, the SAM features, the box decoder) is the
model's own, so two code paths that run the same model on the same input must give the same
boxes.
"""
from __future__ import annotations

from typing import Any

import torch

from model.grounding_model import UMedGround


class ScriptedAnswer:
    """Forces ``model.generate`` to write ``answer``: a pre-hook on the LLaVA forward counts the
    steps (a call with more than one input position starts a new sequence), a hook on
    ``lm_head`` puts all the logit mass on the scripted token of the step."""

    def __init__(self, model: UMedGround, tokenizer: Any, answer: str):
        self.token_ids = tokenizer(answer, add_special_tokens=False).input_ids + [
            tokenizer.eos_token_id]
        self.step = 0
        self.handles = [
            model.llava.register_forward_pre_hook(self._count, with_kwargs=True),
            model.llava.get_output_embeddings().register_forward_hook(self._force)]

    def _count(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None and input_ids.shape[1] > 1:
            self.step = 0

    def _force(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        token = self.token_ids[min(self.step, len(self.token_ids) - 1)]
        self.step += 1
        forced = torch.full_like(output, -1e4)
        forced[..., token] = 1e4
        return forced

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def script_from_pretrained(monkeypatch, answer: str) -> None:
    """Make every ``UMedGround.from_pretrained`` of the test return a model scripted to write
    ``answer`` (for entry points such as chat.py and test.py run in-process)."""
    original = UMedGround.from_pretrained

    def scripted(cls, *args, **kwargs):
        model, processor = original(*args, **kwargs)
        ScriptedAnswer(model, processor.tokenizer, answer)
        return model, processor

    monkeypatch.setattr(UMedGround, "from_pretrained", classmethod(scripted))
