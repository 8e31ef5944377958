"""Several boxes per phrase: slot matching, the set loss, the K-slot decoder, the K = 1
reference and a two-box overfit."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_convert, box_iou

from model.box_decoder import (
    SLOT_OVERLAP_IOU,
    BoxPrediction,
    BoxSlots,
    build_box_decoder,
    enclosing_hypotheses,
)
from model.box_losses import BoxLossConfig, compute_box_losses
from model.box_matching import match_slots, matching_cost
from model.box_set_losses import compute_box_set_losses
from model.config import GroundingConfig
from model.sam_encoder import SAM_TINY_CONFIG, build_sam
from model.uncertainty import uncertainty_signals

REFERENCE = Path(__file__).parent / "fixtures" / "single_box_reference.json"
SMALL = dataclasses.replace(SAM_TINY_CONFIG, prompt_embed_dim=16, decoder_depth=1,
                            decoder_num_heads=2, decoder_mlp_dim=32)
REFERENCE_TARGETS = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.9, 0.8],
                                  [0.05, 0.5, 0.4, 0.95]], dtype=torch.float64)


def reference_prediction(num_hypotheses: int, max_boxes: int = 1) -> BoxPrediction:
    """The fixed float64 case of the reference file: a seeded small decoder, seeded inputs."""
    torch.manual_seed(0)
    decoder, _ = build_box_decoder(SMALL, num_hypotheses, max_boxes=max_boxes)
    decoder = decoder.double()
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 16, 4, 4, generator=generator, dtype=torch.float64)
    queries = torch.randn(3, 16, generator=generator, dtype=torch.float64)
    return decoder(features, queries, torch.tensor([0, 1, 1]))


@pytest.mark.parametrize("mode,hypotheses", [("single", 1), ("mhp", 3), ("umhp", 3),
                                             ("hinge", 3)])
def test_one_box_per_phrase_reproduces_the_single_box_decoder(mode, hypotheses):
    """K = 1 is the decoder and loss of the single-box model: the file holds the outputs and
    losses of this case computed by the code before several boxes per phrase existed
    (commit 8eb1efe), in float64. On the machine that wrote it they agree bit for bit; other
    CPUs round float64 matrix products differently (1e-10 relative seen), so the tolerance is
    1e-8: any change of the computation moves these values by far more."""
    expected = json.loads(REFERENCE.read_text())[mode]
    prediction = reference_prediction(hypotheses)
    assert prediction.slots is None
    losses = compute_box_losses(prediction, REFERENCE_TARGETS, BoxLossConfig(mode=mode))
    torch.testing.assert_close(prediction.hypotheses,
                               torch.tensor(expected["hypotheses"], dtype=torch.float64),
                               rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(prediction.uncertainty,
                               torch.tensor(expected["uncertainty"], dtype=torch.float64),
                               rtol=1e-8, atol=1e-12)
    for key, value in expected["losses"].items():
        assert float(losses[key].detach()) == pytest.approx(value, rel=1e-8, abs=1e-12), key


def test_one_box_per_phrase_has_the_single_box_parameters():
    single, _ = build_box_decoder(SAM_TINY_CONFIG, 3)
    several, _ = build_box_decoder(SAM_TINY_CONFIG, 3, max_boxes=4)
    assert not hasattr(single, "presence_head")
    shapes = {k: tuple(v.shape) for k, v in single.state_dict().items()}
    assert shapes["hypothesis_tokens.weight"] == (3, 64)
    assert shapes["cell_box_head.layers.1.weight"] == (12, 64)
    assert len([k for k in shapes if k.startswith("centre_hypernetworks.")]) == 3 * 6
    wide = {k: tuple(v.shape) for k, v in several.state_dict().items()}
    assert wide["hypothesis_tokens.weight"] == (12, 64)
    assert wide["cell_box_head.layers.1.weight"] == (48, 64)
    assert any(k.startswith("presence_head.") for k in wide)
    assert wide["count_head.layers.1.weight"] == (4, 64)  # one logit per count 1..4
    assert GroundingConfig("v", "s").max_boxes_per_phrase == 1  # a config saved before K
    with pytest.raises(ValueError, match="max_boxes_per_phrase"):
        GroundingConfig("v", "s", max_boxes_per_phrase=0)


def test_slot_decoder_shapes_presence_and_sam_initialisation():
    torch.manual_seed(0)
    sam = build_sam(SAM_TINY_CONFIG)
    decoder, report = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict(), max_boxes=4)
    tokens = decoder.hypothesis_tokens.weight
    assert torch.equal(tokens[:3], sam.state_dict()["mask_decoder.mask_tokens.weight"][:3])
    assert "presence_head" in str(report) and "hypothesis_tokens.weight" in report.loaded
    prediction = decoder(torch.randn(2, 64, 16, 16), torch.randn(5, 64), torch.arange(5) % 2)
    slots = prediction.slots
    assert prediction.hypotheses.shape == (5, 3, 4)
    assert slots.boxes.hypotheses.shape == (20, 3, 4) and slots.presence_logits.shape == (5, 4)
    assert slots.count_logits.shape == (5, 4)
    assert slots.present.sum(dim=1).tolist() == slots.count.tolist()
    # each phrase row encloses its present slots' boxes, hypothesis by hypothesis
    expected = enclosing_hypotheses(slots.boxes.hypotheses.view(5, 4, 3, 4), slots.present)
    torch.testing.assert_close(prediction.hypotheses, expected)


def test_enclosing_hypotheses_by_hand():
    # slot 0: xyxy (0.1, 0.1, 0.3, 0.3); slot 1: (0.6, 0.5, 0.8, 0.9); slot 2 absent (far)
    xyxy = torch.tensor([[[[0.1, 0.1, 0.3, 0.3]], [[0.6, 0.5, 0.8, 0.9]], [[0.0, 0.0, 1.0, 1.0]]]])
    cxcywh = box_convert(xyxy, "xyxy", "cxcywh")
    both = enclosing_hypotheses(cxcywh, torch.tensor([[True, True, False]]))
    assert box_convert(both, "cxcywh", "xyxy")[0, 0].tolist() == pytest.approx([0.1, 0.1, 0.8, 0.9])
    one = enclosing_hypotheses(cxcywh, torch.tensor([[False, True, False]]))
    assert box_convert(one, "cxcywh", "xyxy")[0, 0].tolist() == pytest.approx([0.6, 0.5, 0.8, 0.9])


@pytest.mark.parametrize("count_logits,present", [
    ([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]], [[False, True, False], [True, False, False]]),
    ([[0.0, 5.0, 0.0], [0.0, 5.0, 0.0]], [[False, True, True], [True, False, True]]),
    ([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]], [[True, True, True], [True, True, True]]),
    ([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]], [[False, True, True], [True, False, False]]),
])
def test_present_is_the_counted_number_of_most_present_slots(count_logits, present):
    """The count head says how many boxes (logit j: j + 1), the presence which ones; a low
    presence still reports when the count asks for it, a high one is left out when not."""
    slots = BoxSlots(BoxPrediction.from_hypotheses(torch.full((6, 1, 4), 0.5)),
                     torch.tensor([[-3.0, -1.0, -2.0], [2.0, -1.0, 0.5]]),
                     torch.tensor(count_logits))
    assert slots.present.tolist() == present
    assert slots.reported() == [[k for k in order if present[q][k]]
                                for q, order in enumerate([[1, 2, 0], [0, 2, 1]])]


@pytest.mark.parametrize("count,reported", [(1, [0]), (2, [0, 2]), (3, [0, 1, 2])])
def test_a_slot_on_a_more_present_slots_box_is_passed_over(count, reported):
    """Slot 1 sits on slot 0's box (IoU 0.9 > SLOT_OVERLAP_IOU), slot 2 elsewhere: two boxes
    are slots 0 and 2 although slot 1 is more present than slot 2; three take slot 1 back."""
    xyxy = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.3, 0.28], [0.6, 0.6, 0.8, 0.8]])
    assert box_iou(xyxy[:1], xyxy[1:2]).item() > SLOT_OVERLAP_IOU
    hypotheses = box_convert(xyxy, "xyxy", "cxcywh").unsqueeze(1)  # (K,1,4): N = 1
    count_logits = torch.full((1, 3), -5.0)
    count_logits[0, count - 1] = 5.0
    slots = BoxSlots(BoxPrediction.from_hypotheses(hypotheses), torch.tensor([[3.0, 2.0, 1.0]]),
                     count_logits)
    assert slots.reported() == [reported]
    assert slots.present.tolist() == [[k in reported for k in range(3)]]


def boxes_xyxy(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows)


def test_matching_pairs_slots_with_their_nearest_targets_by_hand():
    # query 0 has slots A (near t1), B (near t0), C (far); query 1 has one target near its B
    slots_xyxy = torch.tensor([[[0.6, 0.6, 0.8, 0.8], [0.1, 0.1, 0.3, 0.3], [0.4, 0.0, 0.5, 0.1]],
                               [[0.0, 0.7, 0.2, 0.9], [0.5, 0.5, 0.9, 0.9], [0.1, 0.1, 0.2, 0.2]]])
    slots = box_convert(slots_xyxy, "xyxy", "cxcywh")
    targets = boxes_xyxy([0.1, 0.1, 0.3, 0.32], [0.6, 0.6, 0.82, 0.8], [0.5, 0.5, 0.9, 0.88])
    slot_rows, target_rows = match_slots(slots, targets, torch.tensor([0, 0, 1]))
    assert list(zip(slot_rows.tolist(), target_rows.tolist())) == [(0, 1), (1, 0), (4, 2)]
    # cost of slot B for t0: L1 |0.2 - 0.2|+|0.2 - 0.21|+|0.2 - 0.2|+|0.2 - 0.22| = 0.03 (x2)
    # plus 1 - GIoU = 1 - 0.04 / 0.044
    cost = matching_cost(slots[0, 1:2], targets[:1], 2.0, 1.0)
    assert float(cost) == pytest.approx(2 * 0.03 + 1 - 0.04 / 0.044, abs=1e-6)
    # more targets than slots: two of the three targets are matched, the nearest ones
    slot_rows, target_rows = match_slots(slots[:1, :2], targets, torch.tensor([0, 0, 0]))
    assert sorted(target_rows.tolist()) == [0, 1]
    with pytest.raises(ValueError, match="queries"):
        match_slots(slots, targets, torch.tensor([0, 1, 2]))


def slot_prediction(slots_xyxy: torch.Tensor, logits: torch.Tensor,
                    count_logits: torch.Tensor | None = None) -> BoxPrediction:
    """A prediction with Q x K one-hypothesis slots (requires grad); the count logits are 0
    unless given."""
    queries, count = logits.shape
    hypotheses = box_convert(slots_xyxy, "xyxy", "cxcywh").reshape(queries * count, 1, 4)
    hypotheses.requires_grad_(True)
    count_logits = torch.zeros(queries, count) if count_logits is None else count_logits
    slots = BoxSlots(BoxPrediction.from_hypotheses(hypotheses), logits.requires_grad_(True),
                     count_logits.requires_grad_(True))
    row = BoxPrediction.from_hypotheses(enclosing_hypotheses(
        hypotheses.view(queries, count, 1, 4), slots.present))
    row.slots = slots
    return row


def test_set_loss_is_the_box_loss_of_the_matched_slots_plus_presence_bce_and_count_ce():
    slots_xyxy = torch.tensor([[[0.6, 0.6, 0.8, 0.8], [0.1, 0.1, 0.3, 0.3], [0.4, 0.0, 0.5, 0.1]]])
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    targets = boxes_xyxy([0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.8, 0.8])
    count_logits = torch.tensor([[0.5, 2.0, -1.0]])  # two targets: class 1
    prediction = slot_prediction(slots_xyxy, logits, count_logits)
    losses = compute_box_set_losses(prediction, targets, torch.tensor([0, 0]),
                                    BoxLossConfig(mode="single", presence_weight=2.0,
                                                  count_weight=0.5))
    # both targets are hit exactly by slots 1 and 0: no box loss
    assert float(losses["box_l1"].detach()) == pytest.approx(0.0, abs=1e-5)
    assert float(losses["box_giou"].detach()) == pytest.approx(0.0, abs=1e-5)
    # presence targets (1, 1, 0): BCE = mean(log(1+e^-1), log 2, log(1+e^-1)) = softplus...
    expected = (2 * torch.nn.functional.softplus(torch.tensor(-1.0)) + torch.log(
        torch.tensor(2.0))) / 3
    presence = float(losses["box_presence"].detach())
    assert presence == pytest.approx(2.0 * float(expected), rel=1e-6)
    count = float(losses["box_count"].detach())
    assert count == pytest.approx(0.5 * float(-count_logits.detach().log_softmax(dim=1)[0, 1]),
                                  rel=1e-6)
    assert float(losses["box_total"].detach()) == pytest.approx(presence + count, abs=1e-5)
    losses["box_total"].backward()
    assert prediction.slots.presence_logits.grad is not None
    assert prediction.slots.count_logits.grad is not None
    # a query with more boxes than slots is counted as K: three targets, two slots
    capped = compute_box_set_losses(slot_prediction(slots_xyxy[:, :2], torch.zeros(1, 2),
                                                    torch.tensor([[0.0, 1.0]])),
                                    torch.cat([targets, targets[:1] + 0.1]),
                                    torch.tensor([0, 0, 0]), BoxLossConfig(mode="single"))
    assert float(capped["box_count"].detach()) == pytest.approx(
        float(torch.nn.functional.softplus(torch.tensor(-1.0))), rel=1e-6)
    # one target per query, taken from box_targets: equals the box loss of the matched slot
    one = compute_box_set_losses(slot_prediction(slots_xyxy, logits), targets[:1] + 0.05,
                                 torch.tensor([0]), BoxLossConfig(mode="single"))
    direct = compute_box_losses(BoxPrediction.from_hypotheses(
        box_convert(slots_xyxy[0, 1:2], "xyxy", "cxcywh")[None]), targets[:1] + 0.05,
        BoxLossConfig(mode="single"))
    for key in ("box_l1", "box_giou"):
        assert float(one[key].detach()) == pytest.approx(float(direct[key]), rel=1e-6), key


def test_set_loss_trains_the_iou_head_on_the_matched_slots_only():
    # slots 0 and 1 are matched (to t1 and t0), slot 2 is not
    slots_xyxy = torch.tensor([[[0.6, 0.6, 0.8, 0.8], [0.1, 0.1, 0.3, 0.3], [0.4, 0.0, 0.5, 0.1]]])
    targets = boxes_xyxy([0.1, 0.1, 0.3, 0.4], [0.6, 0.6, 0.8, 0.8])
    prediction = slot_prediction(slots_xyxy, torch.tensor([[1.0, 0.0, -1.0]]))
    slot_iou = torch.tensor([0.9, 0.2, 0.7], requires_grad=True)
    prediction.slots.boxes.iou = slot_iou
    losses = compute_box_set_losses(prediction, targets, torch.tensor([0, 0]),
                                    BoxLossConfig(mode="single", iou_weight=3.0))
    # actual IoUs: slot 0 with t1 = 1, slot 1 with t0 = 0.04 / 0.06
    expected = 3.0 * ((0.9 - 1.0) ** 2 + (0.2 - 0.04 / 0.06) ** 2) / 2
    assert float(losses["box_iou"].detach()) == pytest.approx(expected, rel=1e-5)
    total = float(losses["box_total"].detach())
    without = compute_box_set_losses(slot_prediction(slots_xyxy,
                                                     torch.tensor([[1.0, 0.0, -1.0]])),
                                     targets, torch.tensor([0, 0]), BoxLossConfig(mode="single"))
    assert "box_iou" not in without  # no head, no term; and the term stays out of box_total
    assert total == pytest.approx(float(without["box_total"].detach()), rel=1e-6)
    losses["box_iou"].backward()
    assert slot_iou.grad[2] == 0 and (slot_iou.grad[:2] != 0).all()
    assert prediction.slots.boxes.hypotheses.grad is None  # the IoU target is detached


def test_slot_decoder_with_the_iou_head_reports_the_presence_weighted_slot_iou():
    torch.manual_seed(0)
    single, _ = build_box_decoder(SAM_TINY_CONFIG, 3, iou_head=True)
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, max_boxes=4, iou_head=True)
    shapes = {k: v.shape for k, v in single.state_dict().items() if k.startswith("iou_")}
    assert shapes == {k: v.shape for k, v in decoder.state_dict().items()
                      if k.startswith("iou_")}  # one head, shared by the slots
    prediction = decoder(torch.randn(2, 64, 16, 16), torch.randn(5, 64), torch.arange(5) % 2)
    slots = prediction.slots
    assert slots.boxes.iou.shape == (20,) and prediction.iou.shape == (5,)
    weights = slots.presence * slots.present
    expected = (weights * slots.boxes.iou.view(5, 4)).sum(dim=1) / weights.sum(dim=1)
    torch.testing.assert_close(prediction.iou, expected)
    assert set(uncertainty_signals(slots.boxes)) == {"spread", "iou", "combined"}
    empty = decoder(torch.randn(1, 64, 16, 16), torch.randn(0, 64),
                    torch.zeros(0, dtype=torch.long))
    assert empty.iou.shape == (0,) and empty.slots.boxes.iou.shape == (0,)


@pytest.mark.parametrize("iou_head", [False, True])
def test_set_loss_with_no_box_keeps_every_parameter_in_the_graph(iou_head):
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, max_boxes=3, iou_head=iou_head)
    prediction = decoder(torch.randn(2, 64, 16, 16), torch.randn(0, 64),
                         torch.zeros(0, dtype=torch.long))
    losses = compute_box_set_losses(prediction, torch.zeros(0, 4),
                                    torch.zeros(0, dtype=torch.long), BoxLossConfig())
    assert all(float(value.detach()) == 0.0 for value in losses.values())
    assert ("box_iou" in losses) == iou_head
    (losses["box_total"] + losses.get("box_iou", 0.0)).backward()
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and not parameter.grad.any(), name
    with pytest.raises(ValueError, match="several box slots"):
        compute_box_set_losses(BoxPrediction.from_hypotheses(torch.rand(1, 3, 4)),
                               torch.rand(1, 4), torch.zeros(1, dtype=torch.long),
                               BoxLossConfig())


def test_a_two_box_finding_trains_towards_two_separate_boxes():
    """Tiny overfit: one image with two marked regions and one query whose finding has both
    boxes; after training, the present slots are two boxes, each on its region (IoU > 0.5)."""
    torch.manual_seed(0)
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, max_boxes=4)
    query = torch.nn.Parameter(torch.randn(1, 64))
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(1, 64, 16, 16, generator=generator) * 0.1
    marker = torch.randn(64, generator=generator)
    features[0, :, 3, 3] += marker
    features[0, :, 11, 12] += marker
    targets = torch.tensor([[2.0, 2.0, 5.0, 5.0], [11.0, 10.0, 14.0, 13.0]]) / 16
    optimiser = torch.optim.Adam([*decoder.parameters(), query], lr=3e-3)
    for _ in range(60):
        prediction = decoder(features, query, torch.zeros(1, dtype=torch.long))
        loss = compute_box_set_losses(prediction, targets, torch.zeros(2, dtype=torch.long),
                                      BoxLossConfig())["box_total"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        slots = decoder(features, query, torch.zeros(1, dtype=torch.long)).slots
    present = slots.present[0]
    assert int(present.sum()) == 2
    boxes = box_convert(slots.boxes.box[present], "cxcywh", "xyxy")
    ious = box_iou(boxes, targets)
    assert ious.max(dim=0).values.min() > 0.5, ious
    assert ious.argmax(dim=0).unique().numel() == 2  # one box per region


def test_the_phrase_box_decoder_shapes_and_initialisation():
    torch.manual_seed(0)
    sam = build_sam(SAM_TINY_CONFIG)
    mask_tokens = sam.state_dict()["mask_decoder.mask_tokens.weight"][:3]
    decoder, report = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict(), max_boxes=4,
                                        iou_head=True, phrase_box=True)
    tokens = decoder.hypothesis_tokens.weight
    assert tokens.shape == (15, 64) and "hypothesis_tokens.weight" in report.loaded
    assert torch.equal(tokens[:3], mask_tokens) and torch.equal(tokens[12:], mask_tokens)
    prediction = decoder(torch.randn(2, 64, 16, 16), torch.randn(5, 64), torch.arange(5) % 2)
    slots = prediction.slots
    assert slots.rows == 5 and slots.boxes.hypotheses.shape == (25, 3, 4)
    assert slots.presence_logits.shape == (5, 4) and slots.boxes.iou.shape == (25,)
    torch.testing.assert_close(slots.presence[:, 4], slots.count_logits.softmax(dim=1)[:, 0])
    assert not slots.present[:, 4].any()  # counts of 2-4: slots only
    expected = enclosing_hypotheses(slots.boxes.hypotheses.view(5, 5, 3, 4), slots.present)
    torch.testing.assert_close(prediction.hypotheses, expected)
    with torch.no_grad():  # a count head sure of one box: every phrase reports its phrase box
        decoder.count_head.layers[-1].weight.zero_()
        decoder.count_head.layers[-1].bias.copy_(torch.tensor([9.0, 0.0, 0.0, 0.0]))
    prediction = decoder(torch.randn(2, 64, 16, 16), torch.randn(5, 64), torch.arange(5) % 2)
    assert prediction.slots.present.tolist() == [[False] * 4 + [True]] * 5
    torch.testing.assert_close(prediction.box, prediction.slots.boxes.box.view(5, 5, 4)[:, 4])
    torch.testing.assert_close(prediction.iou, prediction.slots.boxes.iou.view(5, 5)[:, 4])
    single, _ = build_box_decoder(SAM_TINY_CONFIG, 3, max_boxes=1, phrase_box=True)
    assert not single.phrase_box and single.hypothesis_tokens.weight.shape == (3, 64)
    assert not GroundingConfig("v", "s").phrase_box  # a config saved before the phrase box
    assert not GroundingConfig("v", "s", max_boxes_per_phrase=1, phrase_box=True).phrase_box
    with pytest.raises(ValueError, match="phrase_box 'yes' must be true or false"):
        GroundingConfig("v", "s", max_boxes_per_phrase=4, phrase_box="yes")
    with pytest.raises(ValueError, match="^folder/grounding_config.json: phrase_box 'yes'"):
        GroundingConfig.from_dict({"version": "v", "vision_pretrained": "s",
                                   "max_boxes_per_phrase": 4, "phrase_box": "yes"},
                                  "folder/grounding_config.json")


@pytest.mark.parametrize("count,reported", [(1, [3]), (2, [0, 2]), (3, [0, 1, 2])])
def test_a_phrase_counted_as_one_box_reports_its_phrase_box(count, reported):
    """Rows 0-2 are the slots of the suppression case above, row 3 the phrase box: one box
    is the phrase box, more are slots (the phrase box never joins them)."""
    xyxy = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.3, 0.28], [0.6, 0.6, 0.8, 0.8],
                         [0.12, 0.1, 0.3, 0.3]])
    hypotheses = box_convert(xyxy, "xyxy", "cxcywh").unsqueeze(1)
    count_logits = torch.full((1, 3), -5.0)
    count_logits[0, count - 1] = 5.0
    slots = BoxSlots(BoxPrediction.from_hypotheses(hypotheses, torch.tensor([0.1, 0.2, 0.3, 0.4])),
                     torch.tensor([[3.0, 2.0, 1.0]]), count_logits, phrase_box=True)
    assert slots.reported() == [reported]
    assert slots.present.tolist() == [[k in reported for k in range(4)]]
    if count == 1:
        assert slots.reported_iou().tolist() == pytest.approx([0.4])


def test_set_loss_trains_the_phrase_box_on_the_enclosing_box():
    """The slots hit both targets; the phrase box (row 3) takes the single-box loss against
    the enclosing box, added to the slots' terms."""
    slots_xyxy = torch.tensor([[0.6, 0.6, 0.8, 0.8], [0.1, 0.1, 0.3, 0.3], [0.4, 0.0, 0.5, 0.1],
                               [0.2, 0.1, 0.7, 0.7]])
    targets = boxes_xyxy([0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.8, 0.8])
    enclosing = boxes_xyxy([0.1, 0.1, 0.8, 0.8])
    hypotheses = box_convert(slots_xyxy, "xyxy", "cxcywh").unsqueeze(1).requires_grad_(True)
    iou = torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True)
    slots = BoxSlots(BoxPrediction.from_hypotheses(hypotheses, iou),
                     torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]]),
                     phrase_box=True)
    prediction = BoxPrediction.from_hypotheses(enclosing_hypotheses(
        hypotheses.view(1, 4, 1, 4), slots.present))
    prediction.slots = slots
    config = BoxLossConfig(mode="single")
    losses = compute_box_set_losses(prediction, targets, torch.tensor([0, 0]), config, enclosing)
    phrase = BoxPrediction.from_hypotheses(hypotheses[3:].detach(), iou[3:].detach())
    direct = compute_box_losses(phrase, enclosing, config)
    for key in ("box_l1", "box_giou"):  # the slots' own terms are 0: they hit their targets
        assert float(losses[key].detach()) == pytest.approx(float(direct[key]), rel=1e-5), key
    assert float(losses["box_l1"].detach()) > 0
    losses["box_total"].backward()
    assert hypotheses.grad[3].abs().sum() > 0 and hypotheses.grad[2].abs().sum() == 0
    with pytest.raises(ValueError, match="enclosing box"):
        compute_box_set_losses(prediction, targets, torch.tensor([0, 0]), config)
