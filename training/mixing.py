"""Deterministic mixing of several datasets by sample rates (``--dataset`` / ``--sample_rates``).

The stream of an epoch is a pure function of (seed, epoch): each draw picks a dataset with
probability proportional to its rate, then the next index of that dataset's shuffled order
(reshuffled when exhausted). A run resumed at step k of an epoch therefore sees exactly the
draws a run that never stopped would have seen, with none repeated or skipped.

``--group_by_length`` (as in Hugging Face's Trainer) reorders each rank's draws within
consecutive groups of ``GROUP_BATCHES`` batches so that every batch holds samples of similar
length, and shuffles the batch order inside the group. Padding then shrinks (the demo's first
epoch feeds the language model 380k tokens, padding included, instead of 469k for 342k real
ones), and the reordering is still a pure function of (seed, epoch), so resuming stays exact.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

GROUP_BATCHES = 16


def mixture_stream(sizes: Sequence[int], rates: Sequence[float], seed: int, epoch: int,
                   count: int) -> list[tuple[int, int]]:
    """``count`` (dataset, index) draws of one epoch.

    Arguments:
      sizes: the length of each dataset (all > 0).
      rates: the relative sampling rate of each dataset (all >= 0, not all 0).
      seed, epoch: the stream's seed.
      count: the number of draws.
    """
    if len(sizes) != len(rates):
        raise ValueError(f"{len(sizes)} datasets but {len(rates)} sample rates")
    if any(r < 0 for r in rates) or sum(rates) <= 0:
        raise ValueError(f"sample rates {list(rates)} must be >= 0 and not all 0")
    if any(s <= 0 for s in sizes):
        raise ValueError(f"dataset sizes {list(sizes)} include an empty dataset")
    rng = np.random.default_rng([seed, epoch])
    probabilities = np.asarray(rates, dtype=np.float64) / float(sum(rates))
    choices = rng.choice(len(sizes), size=count, p=probabilities)
    orders = [rng.permutation(size) for size in sizes]
    cursors = [0] * len(sizes)
    draws = []
    for dataset in choices.tolist():
        if cursors[dataset] == sizes[dataset]:
            orders[dataset] = rng.permutation(sizes[dataset])
            cursors[dataset] = 0
        draws.append((dataset, int(orders[dataset][cursors[dataset]])))
        cursors[dataset] += 1
    return draws


def group_by_length(indices: list[int], lengths: Sequence[int], batch_size: int,
                    rng: np.random.Generator) -> list[int]:
    """``indices`` reordered within groups of ``GROUP_BATCHES * batch_size``: sorted by length,
    cut into batches, the batches shuffled. Every index stays, and none moves to another group.
    """
    group = GROUP_BATCHES * batch_size
    ordered: list[int] = []
    for begin in range(0, len(indices), group):
        chunk = sorted(indices[begin:begin + group], key=lambda index: lengths[index])
        full = len(chunk) // batch_size  # a last, partial batch stays last
        for position in rng.permutation(full).tolist():
            ordered.extend(chunk[position * batch_size:(position + 1) * batch_size])
        ordered.extend(chunk[full * batch_size:])
    return ordered


class MixtureSampler(Sampler[int]):
    """Yields indices into a ``ConcatDataset`` for one rank of one epoch, from a start draw.

    Arguments:
      sizes, rates, seed, epoch: as :func:`mixture_stream`.
      samples_per_rank: draws this rank takes in the epoch.
      rank, world_size: draw ``j`` of rank ``r`` is global draw ``j * world_size + r``.
      start: the first of this rank's draws to yield (the data position when resuming).
      lengths: a length per index of the ``ConcatDataset``; with it, draws are grouped by
        length into batches of ``batch_size`` (see the module docstring).
      batch_size: the micro batch of the loader, used with ``lengths``.
    """

    def __init__(self, sizes: Sequence[int], rates: Sequence[float], seed: int, epoch: int,
                 samples_per_rank: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 lengths: Sequence[int] | None = None, batch_size: int = 1):
        draws = mixture_stream(sizes, rates, seed, epoch, samples_per_rank * world_size)
        offsets = np.cumsum([0, *sizes[:-1]]).tolist()
        flat = [offsets[d] + i for d, i in draws]
        indices = flat[rank::world_size]
        if lengths is not None:
            indices = group_by_length(indices, lengths, batch_size,
                                      np.random.default_rng([seed, epoch, rank]))
        self.indices = indices[start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
