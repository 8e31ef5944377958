"""Dataset mixing by --sample_rates: proportions, determinism, resumption, rank slicing."""
from __future__ import annotations

from collections import Counter

import pytest

from training.mixing import MixtureSampler, mixture_stream


def test_rates_give_the_requested_proportions():
    draws = mixture_stream([50, 20, 10], [6, 3, 1], seed=0, epoch=0, count=20000)
    counts = Counter(dataset for dataset, _ in draws)
    for dataset, expected in enumerate([0.6, 0.3, 0.1]):
        assert counts[dataset] / 20000 == pytest.approx(expected, abs=0.015)


def test_each_dataset_is_walked_without_repeats_before_reshuffling():
    draws = mixture_stream([7, 5], [1, 1], seed=3, epoch=0, count=200)
    first = [index for dataset, index in draws if dataset == 1][:5]
    assert sorted(first) == list(range(5))


def test_stream_is_a_function_of_seed_and_epoch():
    assert mixture_stream([9, 4], [2, 1], 1, 0, 50) == mixture_stream([9, 4], [2, 1], 1, 0, 50)
    assert mixture_stream([9, 4], [2, 1], 1, 0, 50) != mixture_stream([9, 4], [2, 1], 1, 1, 50)


def test_resumed_sampler_continues_where_it_stopped():
    full = list(MixtureSampler([30, 10], [3, 1], 0, 2, samples_per_rank=24))
    resumed = list(MixtureSampler([30, 10], [3, 1], 0, 2, samples_per_rank=24, start=10))
    assert resumed == full[10:]


def test_ranks_split_the_stream_without_overlap():
    ranks = [list(MixtureSampler([40], [1], 0, 0, 10, rank=r, world_size=2)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(list(MixtureSampler([40], [1], 0, 0, 20)))
    assert not set(ranks[0]) & set(ranks[1])


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="sample rates"):
        mixture_stream([3, 3], [0, 0], 0, 0, 5)
    with pytest.raises(ValueError, match="2 datasets but 1"):
        mixture_stream([3, 3], [1], 0, 0, 5)


def test_group_by_length_batches_similar_lengths_and_keeps_every_draw():
    lengths = [(index * 37) % 101 for index in range(200)]
    plain = list(MixtureSampler([200], [1], 0, 0, samples_per_rank=192))
    grouped = list(MixtureSampler([200], [1], 0, 0, samples_per_rank=192, lengths=lengths,
                                  batch_size=4))
    assert sorted(grouped) == sorted(plain)
    assert sorted(grouped[:64]) == sorted(plain[:64])  # reordered within a group of 16 batches
    assert grouped[:64] != sorted(grouped[:64], key=lambda i: lengths[i])  # batches shuffled

    def padded(order: list[int]) -> int:
        return sum(4 * max(lengths[i] for i in order[b:b + 4]) for b in range(0, len(order), 4))

    assert padded(grouped) < 0.8 * padded(plain)
    resumed = list(MixtureSampler([200], [1], 0, 0, samples_per_rank=192, lengths=lengths,
                                  batch_size=4, start=40))
    assert resumed == grouped[40:]
