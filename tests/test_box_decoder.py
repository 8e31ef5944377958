"""The multi-hypothesis box decoder: shapes, SAM initialisation, uncertainty, gradients."""
from __future__ import annotations

import pytest
import torch

from model.box_decoder import BoxPrediction, build_box_decoder
from model.sam_encoder import SAM_TINY_CONFIG, build_sam


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam(SAM_TINY_CONFIG)


@pytest.mark.parametrize("queries", [0, 1, 5])
def test_shapes(sam, queries):
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict())
    features = torch.randn(2, 64, 32, 32)
    prediction = decoder(features, torch.randn(queries, 64), torch.arange(queries) % 2)
    assert prediction.hypotheses.shape == (queries, 3, 4)
    assert prediction.box.shape == (queries, 4) and prediction.variance.shape == (queries, 4)
    assert prediction.uncertainty.shape == (queries,)
    if queries:
        assert ((prediction.hypotheses > 0) & (prediction.hypotheses < 1)).all()


def test_initialisation_copies_sam_tensors(sam):
    state = sam.state_dict()
    decoder, report = build_box_decoder(SAM_TINY_CONFIG, 3, state)
    own = decoder.state_dict()
    for key in own:
        if key.startswith("transformer."):
            assert torch.equal(own[key], state[f"mask_decoder.{key}"]), key
    assert torch.equal(own["hypothesis_tokens.weight"], state["mask_decoder.mask_tokens.weight"][:3])
    assert torch.equal(own["pe_layer.positional_encoding_gaussian_matrix"],
                       state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])
    assert report.initialised and all(n.startswith("box_heads.") for n in report.initialised)
    assert "box_heads" in str(report)
    five, five_report = build_box_decoder(SAM_TINY_CONFIG, 5, state)
    assert "hypothesis_tokens.weight" in five_report.initialised  # SAM has only 4 mask tokens


def test_mean_variance_and_u():
    hypotheses = torch.tensor([[[0.2, 0.2, 0.2, 0.2], [0.4, 0.2, 0.2, 0.2]]])
    prediction = BoxPrediction.from_hypotheses(hypotheses)
    assert prediction.box[0].tolist() == pytest.approx([0.3, 0.2, 0.2, 0.2])
    assert prediction.variance[0].tolist() == pytest.approx([0.01, 0, 0, 0])
    # scale-relative: var(cx) / w**2 = 0.01 / 0.04, averaged over the 4 coordinates
    assert prediction.uncertainty.tolist() == pytest.approx([0.0625])
    single = BoxPrediction.from_hypotheses(hypotheses[:, :1])
    assert single.uncertainty.tolist() == [0.0]


def test_hypotheses_are_ordered_and_deterministic(sam):
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict())
    features, queries = torch.randn(1, 64, 32, 32), torch.randn(2, 64)
    first = decoder(features, queries, torch.zeros(2, dtype=torch.long)).hypotheses
    again = decoder(features, queries, torch.zeros(2, dtype=torch.long)).hypotheses
    assert torch.equal(first, again)
    assert not torch.allclose(first[:, 0], first[:, 1])  # heads differ from the start


def test_gradients_reach_every_part(sam):
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict())
    queries = torch.randn(3, 64, requires_grad=True)
    prediction = decoder(torch.randn(2, 64, 32, 32), queries, torch.tensor([0, 1, 1]))
    (prediction.hypotheses.sum() + prediction.uncertainty.sum()).backward()
    assert queries.grad.abs().sum() > 0
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
