"""Test-time shifts: the translation, the decoder's ensemble of shifted reads, and the flag."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from model.box_decoder import DecoderOutputs, build_box_decoder
from model.calibration import BoxCalibration
from model.grounding_model import UMedGround
from model.sam_encoder import SAM_TINY_CONFIG
from model.test_time_shifts import SHIFT_DIRECTIONS, ShiftedView, shifted_copies, translate
from utils.cli import set_test_time_shift


def test_translate_moves_the_content_and_fills_zeros():
    image = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    right = translate(image, 1, 0)
    assert right[0, 0].tolist() == [[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11], [0, 13, 14, 15]]
    up = translate(image, 0, -2)
    assert up[0, 0].tolist() == [[9, 10, 11, 12], [13, 14, 15, 16], [0] * 4, [0] * 4]
    assert torch.equal(translate(image, 0, 0), image)
    with pytest.raises(ValueError, match="leaves nothing"):
        translate(image, 4, 0)


def test_shifted_copies_and_their_offsets():
    images = torch.rand(2, 3, 32, 64)
    copies = shifted_copies(images, 8)
    assert len(copies) == len(SHIFT_DIRECTIONS) - 1 == 4
    assert [offset for _, offset in copies] == [(0.125, 0.0), (-0.125, 0.0), (0.0, 0.25),
                                               (0.0, -0.25)]
    assert torch.equal(copies[0][0][..., 8:], images[..., :-8])


def decoder_case(max_boxes: int):
    torch.manual_seed(0)
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, max_boxes=max_boxes, iou_head=True,
                                   phrase_box=max_boxes > 1)
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 64, 16, 16, generator=generator)
    queries = torch.randn(3, 64, generator=generator)
    return decoder.eval(), features, queries, torch.tensor([0, 1, 1])


@pytest.mark.parametrize("max_boxes", [1, 4])
def test_unshifted_copies_change_nothing_but_the_hypothesis_count(max_boxes):
    """Four more reads of the same features at offset 0: the same boxes, u, IoU, presence and
    reported slots, from 5 x N hypotheses."""
    decoder, features, queries, rows = decoder_case(max_boxes)
    with torch.no_grad():
        alone = decoder(features, queries, rows)
        views = [ShiftedView(features, (0.0, 0.0))] * 4
        ensemble = decoder(features, queries, rows, views)
    assert ensemble.hypotheses.shape == (3, 15, 4)
    for name in ("box", "variance", "uncertainty", "iou"):
        assert torch.allclose(getattr(ensemble, name), getattr(alone, name), atol=1e-6), name
    if max_boxes > 1:
        assert ensemble.slots.reported() == alone.slots.reported()
        assert torch.allclose(ensemble.slots.presence, alone.slots.presence)


def test_a_shifted_read_is_moved_back_by_its_offset():
    decoder, features, queries, rows = decoder_case(1)
    with torch.no_grad():
        alone = decoder(features, queries, rows)
        ensemble = decoder(features, queries, rows, [ShiftedView(features, (0.1, -0.05))])
    expected = alone.hypotheses - torch.tensor([0.1, -0.05, 0.0, 0.0])
    assert torch.allclose(ensemble.hypotheses[:, 3:], expected, atol=1e-6)


@pytest.mark.parametrize("max_boxes", [1, 4])
def test_shifted_reads_change_the_uncertainty_not_the_boxes(max_boxes):
    """Shifted copies of other features: the boxes, the reported slots and their presence are
    the image's own read's; the variance is the 2N hypotheses' squared deviation from the box,
    and the IoU head's output the reads' mean."""
    decoder, features, queries, rows = decoder_case(max_boxes)
    other = torch.randn(features.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        alone = decoder(features, queries, rows)
        shifted = decoder(other, queries, rows)
        ensemble = decoder(features, queries, rows, [ShiftedView(other, (0.0, 0.0))])
    assert torch.equal(ensemble.box, alone.box)
    expected = (ensemble.hypotheses - alone.box.unsqueeze(1)).pow(2).mean(dim=1)
    assert torch.allclose(ensemble.variance, expected, atol=1e-7)
    assert not torch.allclose(ensemble.uncertainty, alone.uncertainty)
    if max_boxes == 1:
        assert torch.allclose(ensemble.iou, (alone.iou + shifted.iou) / 2, atol=1e-6)
    else:
        assert ensemble.slots.reported() == alone.slots.reported()
        assert torch.equal(ensemble.slots.presence, alone.slots.presence)
        assert torch.equal(ensemble.slots.boxes.box, alone.slots.boxes.box)
        assert torch.allclose(ensemble.slots.boxes.iou,
                              (alone.slots.boxes.iou + shifted.slots.boxes.iou) / 2, atol=1e-6)


def test_merge_averages_the_iou_and_keeps_the_first_reads_presence_and_count():
    first = DecoderOutputs(torch.zeros(2, 5, 3, 4), torch.tensor([0.2] * 10),
                           torch.tensor([[1.0, 3.0, 0.0, 0.0]] * 2), torch.zeros(2, 4))
    second = DecoderOutputs(torch.ones(2, 5, 3, 4), torch.tensor([0.6] * 10),
                            torch.tensor([[3.0, 1.0, 0.0, 0.0]] * 2), torch.ones(2, 4))
    merged = DecoderOutputs.merge([first, second])
    assert merged.hypotheses.shape == (2, 5, 6, 4)
    assert merged.hypotheses[:, :, :3].eq(0).all() and merged.hypotheses[:, :, 3:].eq(1).all()
    assert torch.allclose(merged.slot_iou, torch.tensor([0.4] * 10))
    assert merged.presence_logits[0].tolist() == [1.0, 3.0, 0.0, 0.0]
    assert merged.count_logits.eq(0).all()


def calibration(shift: int) -> BoxCalibration:
    return BoxCalibration(alpha=0.1, quantile=1.0, scale_floor=0.0, signal="spread",
                          target_risk=0.2, delta=0.1, threshold=None, n_findings=10,
                          test_time_shift=shift)


@pytest.mark.parametrize("flag, calibrated, expected", [
    (None, None, 0), (8, None, 8), (None, 8, 8), (8, 8, 8), (0, 0, 0),
    (4, 8, "fitted with --test_time_shift 8"), (0, 8, "fitted with --test_time_shift 8"),
    (256, None, "leaves nothing of SAM's 256-px input")])
def test_the_flag_follows_the_calibration(flag, calibrated, expected):
    model = SimpleNamespace(calibration=None if calibrated is None else calibration(calibrated),
                            config=SimpleNamespace(version="m", sam={"image_size": 256}),
                            test_time_shift=0)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            set_test_time_shift(model, flag)
    else:
        set_test_time_shift(model, flag)
        assert model.test_time_shift == expected


@pytest.mark.parametrize("shift", [-1, 2.5, True])
def test_the_calibration_refuses_a_bad_shift(shift):
    with pytest.raises(ValueError, match="test_time_shift"):
        calibration(shift)


@pytest.mark.parametrize("training, shift, views", [(True, 8, 0), (False, 0, 0), (False, 8, 4)])
def test_only_evaluation_reads_shifted_copies(training, shift, views):
    model = SimpleNamespace(training=training, test_time_shift=shift,
                            encode_images=lambda images: images.mean(dim=1, keepdim=True))
    found = UMedGround.shifted_views(model, torch.rand(1, 3, 32, 32))
    assert len(found) == views
