"""One training epoch and one validation pass (train.py wires them together, as DETR's
``main.py`` does with its ``engine.py``)."""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterable

import torch
from tqdm import tqdm

from model.constants import MODEL_INPUTS
from training.checkpoints import Checkpointer
from training.distributed import rank
from training.log import TrainLog
from training.rng import preserved_rng
from training.state import TrainState

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the samples."""


def train_one_epoch(engine: Any, batches: Iterable[dict[str, Any]], state: TrainState, *,
                    steps_per_epoch: int, grad_accumulation_steps: int, device: torch.device,
                    log: TrainLog, checkpointer: Checkpointer, save_every: int = 0,
                    description: str = "") -> None:
    """Run the optimizer steps ``state.step_in_epoch .. steps_per_epoch - 1`` of one epoch.

    Each step takes ``grad_accumulation_steps`` micro batches from ``batches`` (collated by
    :class:`utils.dataset.GroundingCollator`), logs the mean of each loss part, the learning
    rates and the sample ids, and checkpoints every ``save_every`` global steps (0: never
    inside an epoch). ``state`` is advanced in place.

    Raises:
      NonFiniteLossError: a loss is NaN or infinite; nothing is stepped or saved with it.
    """
    iterator = iter(batches)
    engine.train()
    bar = tqdm(range(state.step_in_epoch, steps_per_epoch), disable=rank() != 0,
               desc=description, dynamic_ncols=True)
    for _ in bar:
        sums: dict[str, float] = {}
        ids: list[str] = []
        started = time.time()
        for _ in range(grad_accumulation_steps):
            batch = next(iterator)
            ids.extend(batch["ids"])
            output = engine(**{key: batch[key].to(device) for key in MODEL_INPUTS})
            losses = {key: float(value.detach()) for key, value in output.losses.items()}
            if not all(math.isfinite(value) for value in losses.values()):
                raise NonFiniteLossError(
                    f"step {state.global_step + 1}: the loss is not finite "
                    f"({', '.join(f'{k}={v}' for k, v in losses.items())}) on samples "
                    f"{', '.join(batch['ids'])}. Check those rows' boxes and images, or lower "
                    "--lr; the last checkpoint is untouched")
            engine.backward(output.losses["total"])
            engine.step()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value / grad_accumulation_steps
        state.step_in_epoch += 1
        state.global_step += 1
        bar.set_postfix({key: f"{value:.3f}" for key, value in sums.items()})
        lm_lr, grounding_lr = engine.get_lr()  # the optimizer's groups, scheduler or not
        log.write("train", state.global_step, {"epoch": state.epoch, "lr": lm_lr,
                                               "grounding_lr": grounding_lr,
                                               "seconds": time.time() - started, **sums,
                                               "sample_ids": ids})
        if save_every and state.global_step % save_every == 0 \
                and state.step_in_epoch < steps_per_epoch:
            checkpointer.save(state)


def validate(model: torch.nn.Module, processor: Any, dataset: Any, *, zero_stage: int,
             **evaluate_kwargs: Any) -> dict[str, Any]:
    """End-to-end and given-phrase validation on rank 0 (other ranks return ``{}``), with the
    weights gathered under ZeRO-3. No generator of the training stream moves, so a run
    resumed after this epoch draws what an unbroken one did.

    ``dataset`` is the validation split built once by :func:`utils.evaluate.build_eval_dataset`
    (``None`` on other ranks); ``evaluate_kwargs`` go to :func:`utils.evaluate.evaluate_model`.
    """
    import deepspeed

    from utils.evaluate import evaluate_model

    model.eval()
    metrics: dict[str, Any] = {}
    with preserved_rng(), deepspeed.zero.GatheredParameters(list(model.parameters()),
                                                            enabled=zero_stage == 3):
        if rank() == 0:
            metrics = evaluate_model(model, processor, dataset, split="val", meteor=False,
                                     **evaluate_kwargs).metrics
    model.train()
    return metrics
