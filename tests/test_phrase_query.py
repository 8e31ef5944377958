"""The [BOX] query: attention pooling over a phrase's states, per-layer normalisation."""
from __future__ import annotations

import pytest
import torch

from model.config import GroundingConfig
from model.phrase_query import build_phrase_query


@pytest.mark.parametrize("heads", [1, 3])
def test_padding_does_not_change_a_phrase_query(heads):
    torch.manual_seed(0)
    query = build_phrase_query(hidden_size=8, num_layers=2, out_dim=4, heads=heads)
    phrase = torch.randn(3, 16)
    alone = query(phrase.unsqueeze(0), torch.ones(1, 3, dtype=torch.bool))
    padded = torch.cat([phrase, torch.randn(2, 16) * 100]).unsqueeze(0)
    mask = torch.tensor([[True, True, True, False, False]])
    assert torch.allclose(query(padded, mask), alone, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 3])
def test_each_layer_is_normalised_on_its_own(heads):
    torch.manual_seed(0)
    query = build_phrase_query(hidden_size=8, num_layers=2, out_dim=4, heads=heads)
    states = torch.randn(2, 3, 16)
    mask = torch.ones(2, 3, dtype=torch.bool)
    rescaled = states.clone()
    rescaled[..., :8] *= 0.1  # a small first layer (an embedding) weighs as much as before
    assert torch.allclose(query(rescaled, mask), query(states, mask), atol=1e-3)


@pytest.mark.parametrize("heads", [1, 2])
def test_the_pooling_learns_to_read_one_word(heads):
    """Only position 1 of each phrase says which target applies; the other words are noise."""
    torch.manual_seed(0)
    query = build_phrase_query(hidden_size=16, num_layers=1, out_dim=2, heads=heads)
    words = torch.randn(2, 16)
    noise = torch.randn(64, 16)
    optimiser = torch.optim.Adam(query.parameters(), lr=3e-3)
    for _ in range(300):
        labels = torch.randint(0, 2, (32,))
        states = noise[torch.randint(0, 64, (32, 6))]
        states[:, 1] = words[labels]
        logits = query(states, torch.ones(32, 6, dtype=torch.bool))
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.05


def test_each_head_pools_on_its_own():
    """Head p's pooled vector is the softmax of its own scores over the phrase; the projection
    reads the heads' vectors concatenated."""
    torch.manual_seed(0)
    query = build_phrase_query(hidden_size=4, num_layers=1, out_dim=3, heads=2)
    states = torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, True, False, False]])
    normed = query.norms[0](states)[0, :3]
    pooled = [(query.score.weight[p] @ normed.T).softmax(dim=0) @ normed for p in range(2)]
    expected = query.projection(torch.cat(pooled).unsqueeze(0))
    torch.testing.assert_close(query(states, mask), expected)


def test_query_heads_in_the_config():
    assert GroundingConfig("v", "s").query_heads == 1  # a config saved before the heads
    with pytest.raises(ValueError, match="query_heads"):
        GroundingConfig("v", "s", query_heads=0)
    with pytest.raises(ValueError, match="heads"):
        build_phrase_query(hidden_size=4, num_layers=1, out_dim=3, heads=0)
