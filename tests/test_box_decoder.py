"""The multi-hypothesis box decoder: shapes, SAM initialisation, uncertainty, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.ops import box_convert, box_iou

from model.box_decoder import BoxPrediction, build_box_decoder
from model.box_losses import BoxLossConfig, compute_box_losses
from model.sam_encoder import OFFICIAL_CONFIGS, SAM_TINY_CONFIG, build_sam


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam(SAM_TINY_CONFIG)


@pytest.mark.parametrize("upscaled", [False, True])
@pytest.mark.parametrize("queries", [0, 1, 5])
def test_shapes(sam, queries, upscaled):
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict(),
                                   upscaled_heatmap=upscaled)
    features = torch.randn(2, 64, 16, 16)
    prediction = decoder(features, torch.randn(queries, 64), torch.arange(queries) % 2)
    assert prediction.hypotheses.shape == (queries, 3, 4)
    assert prediction.box.shape == (queries, 4) and prediction.variance.shape == (queries, 4)
    assert prediction.uncertainty.shape == (queries,)
    if queries:
        assert ((prediction.hypotheses > 0) & (prediction.hypotheses < 1)).all()


@pytest.mark.parametrize("name", ["tiny", "vit_b"])
def test_initialisation_copies_sam_tensors(sam, name):
    config = SAM_TINY_CONFIG if name == "tiny" else OFFICIAL_CONFIGS[name]
    state = sam.state_dict() if name == "tiny" else build_sam(config).state_dict()
    decoder, report = build_box_decoder(config, 3, state)
    own = decoder.state_dict()
    for key in own:
        if key.startswith("transformer."):
            assert torch.equal(own[key], state[f"mask_decoder.{key}"]), key
    assert torch.equal(
        own["hypothesis_tokens.weight"], state["mask_decoder.mask_tokens.weight"][:3]
    )
    assert torch.equal(
        own["pe_layer.positional_encoding_gaussian_matrix"],
        state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
    )
    new_heads = ("centre_hypernetworks.", "cell_box_head.")
    assert report.initialised and all(n.startswith(new_heads) for n in report.initialised)
    assert "centre_hypernetworks" in str(report) and "cell_box_head" in str(report)
    assert not report.skipped
    assert len(report.loaded) + len(report.initialised) == len(own)
    five, five_report = build_box_decoder(config, 5, state)
    assert "hypothesis_tokens.weight" in five_report.initialised  # SAM has only 4 mask tokens


@pytest.mark.parametrize("max_boxes", [1, 4])
def test_upscaled_heatmap_takes_sams_upscaling_and_hypernetworks(sam, max_boxes):
    """The upscaled heatmap's convolutions are SAM's output_upscaling, and hypothesis k of
    every box (each slot, and the phrase box) takes the hypernetwork of SAM's mask k."""
    state = sam.state_dict()
    decoder, report = build_box_decoder(SAM_TINY_CONFIG, 3, state, max_boxes,
                                        phrase_box=True, upscaled_heatmap=True)
    own = decoder.state_dict()
    upscaling = [key for key in own if key.startswith("output_upscaling.")]
    assert upscaling and not report.skipped
    for key in upscaling:
        assert torch.equal(own[key], state[f"mask_decoder.{key}"]), key
    assert decoder.hypothesis_tokens.num_embeddings == (15 if max_boxes == 4 else 3)
    for token in range(decoder.hypothesis_tokens.num_embeddings):
        for layer in ("layers.0.weight", "layers.2.bias"):
            name = f"centre_hypernetworks.{token}.{layer}"
            sam_name = f"mask_decoder.output_hypernetworks_mlps.{token % 3}.{layer}"
            assert name in report.loaded, name
            assert torch.equal(own[name], state[sam_name]), name
    assert not any(name.startswith("centre_hypernetworks.") for name in report.initialised)
    assert own["centre_hypernetworks.0.layers.2.weight"].shape == (64 // 8, 64)


def test_upscaled_heatmap_sums_the_fine_cells_boxes(sam):
    """The upscaled grid's hypotheses equal the heatmap-weighted sum over the fine cells of
    each fine cell's box: its centre moved by its coarse cell's offset (at most half a fine
    cell), with its coarse cell's size."""
    torch.manual_seed(0)
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict(), upscaled_heatmap=True)
    queries, cells = 2, torch.randn(2, 16 * 16, 64)
    centre_queries = torch.randn(queries, 3, 8)
    cell_boxes = torch.randn(queries, 3, 16 * 16, 4)
    got = decoder._place_on_upscaled_grid(centre_queries, cells, cell_boxes, 16, 16)
    upscaled = decoder.output_upscaling(cells.transpose(1, 2).reshape(queries, 64, 16, 16))
    heatmap = (centre_queries @ upscaled.flatten(2) / 8 ** 0.5).softmax(dim=-1)  # (Q,3,64*64)
    fine_y, fine_x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    coarse = (fine_y // 4 * 16 + fine_x // 4).long().flatten()  # each fine cell's coarse cell
    raw = cell_boxes[:, :, coarse]  # (Q,3,64*64,4)
    centres = (torch.stack([fine_x.flatten(), fine_y.flatten()], dim=-1) + 0.5) / 64
    boxes = torch.cat([centres + 0.5 / 64 * torch.tanh(raw[..., :2]),
                       torch.sigmoid(raw[..., 2:])], dim=-1)
    expected = (heatmap.unsqueeze(-1) * boxes).sum(dim=2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_initialisation_reports_shape_mismatches(sam):
    narrow = dataclasses.replace(SAM_TINY_CONFIG, decoder_mlp_dim=128)
    _, report = build_box_decoder(narrow, 3, sam.state_dict())
    assert "transformer.layers.0.mlp.lin1.weight (256, 64) vs (128, 64)" in report.skipped
    assert "transformer.layers.0.mlp.lin1.weight" in report.initialised
    assert "skipped: transformer.layers.0.mlp.lin1.weight (256, 64) vs (128, 64)" in str(report)
    _, fresh = build_box_decoder(SAM_TINY_CONFIG, 3)
    assert not fresh.loaded and "transformer" in str(fresh)


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
    features, queries = torch.randn(1, 64, 16, 16), torch.randn(2, 64)
    first = decoder(features, queries, torch.zeros(2, dtype=torch.long)).hypotheses
    again = decoder(features, queries, torch.zeros(2, dtype=torch.long)).hypotheses
    assert torch.equal(first, again)
    assert not torch.allclose(first[:, 0], first[:, 1])  # heads differ from the start


@pytest.mark.parametrize("upscaled", [False, True])
def test_gradients_reach_every_part(sam, upscaled):
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict(),
                                   upscaled_heatmap=upscaled)
    queries = torch.randn(3, 64, requires_grad=True)
    prediction = decoder(torch.randn(2, 64, 16, 16), queries, torch.tensor([0, 1, 1]))
    (prediction.hypotheses.sum() + prediction.uncertainty.sum()).backward()
    assert queries.grad.abs().sum() > 0
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode,upscaled", [("umhp", False), ("hinge", False), ("umhp", True)])
def test_no_box_keeps_every_parameter_in_the_graph(sam, mode, upscaled):
    """Q = 0: the zero loss still reaches every decoder parameter (DDP / DeepSpeed need it)."""
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict(),
                                   upscaled_heatmap=upscaled)
    queries = torch.randn(0, 64, requires_grad=True)
    prediction = decoder(torch.randn(2, 64, 16, 16), queries, torch.zeros(0, dtype=torch.long))
    losses = compute_box_losses(prediction, torch.zeros(0, 4), BoxLossConfig(mode=mode))
    assert all(float(value.detach()) == 0.0 for value in losses.values())
    losses["box_total"].backward()
    assert queries.grad is not None
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and not parameter.grad.any(), name


def test_heatmap_places_a_box_between_cell_centres(sam):
    """The centre heatmap and sub-cell offsets learn to place a box on a marked cell, off the
    cell grid, and its size, from image features alone (one query per image)."""
    torch.manual_seed(0)
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict())
    query = torch.nn.Parameter(torch.randn(1, 64))
    marker = torch.randn(64)
    optimiser = torch.optim.Adam([*decoder.parameters(), query], lr=3e-3)

    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.randn(8, 64, 16, 16, generator=generator) * 0.1
        cells = torch.randint(1, 15, (8, 2), generator=generator)
        features[torch.arange(8), :, cells[:, 1], cells[:, 0]] += marker
        centres = (cells + 0.75) / 16  # a quarter cell right of and below the cell centre
        half = 1.5 / 16
        return features, torch.cat([centres - half, centres + half], dim=1)

    train, held_out = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    for _ in range(150):
        features, targets = batch(train)
        prediction = decoder(features, query.expand(8, -1), torch.arange(8))
        loss = compute_box_losses(prediction, targets, BoxLossConfig(mode="umhp"))["box_total"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    features, targets = batch(held_out)
    with torch.no_grad():
        boxes = decoder(features, query.expand(8, -1), torch.arange(8)).box
    iou = box_iou(box_convert(boxes, "cxcywh", "xyxy"), targets).diag()
    assert iou.min() > 0.7
