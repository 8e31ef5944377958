"""The IoU-prediction head and the uncertainty signals: shapes (Q = 0 included), its loss, that
it learns, the config rules, and the export round trip of the head and of calibration.json."""
from __future__ import annotations

import json

import pytest
import torch

from model.box_decoder import BoxPrediction, build_box_decoder
from model.box_losses import BoxLossConfig, iou_prediction_loss
from model.calibration import CALIBRATION_NAME, BoxCalibration
from model.config import GroundingConfig
from model.sam_encoder import SAM_TINY_CONFIG, build_sam
from model.uncertainty import hypothesis_agreement, reported_uncertainty, uncertainty_signals


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam(SAM_TINY_CONFIG)


@pytest.mark.parametrize("queries", [0, 1, 5])
@pytest.mark.parametrize("hypotheses", [1, 3])
def test_shapes_and_signals(sam, queries, hypotheses):
    decoder, report = build_box_decoder(SAM_TINY_CONFIG, hypotheses, sam.state_dict(),
                                        iou_head=True)
    assert any(name.startswith("iou_prediction_head") for name in report.initialised)
    prediction = decoder(torch.randn(2, 64, 16, 16), torch.randn(queries, 64),
                         torch.arange(queries) % 2)
    assert prediction.iou.shape == (queries,)
    assert ((prediction.iou > 0) & (prediction.iou < 1)).all()
    signals = uncertainty_signals(prediction)
    assert set(signals) == {"spread", "iou", "combined"}
    assert all(value.shape == (queries,) for value in signals.values())
    assert (signals["combined"] >= signals["iou"] - 1e-6).all()  # agreement <= 1
    if hypotheses == 1:
        torch.testing.assert_close(signals["combined"], signals["iou"])


def test_without_the_head_only_the_spread_is_there(sam):
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict())
    prediction = decoder(torch.randn(1, 64, 16, 16), torch.randn(2, 64), torch.zeros(2).long())
    assert prediction.iou is None and decoder.iou_prediction_head is None
    assert set(uncertainty_signals(prediction)) == {"spread"}
    torch.testing.assert_close(reported_uncertainty(prediction, "spread"), prediction.uncertainty)
    with pytest.raises(ValueError, match="needs the IoU head"):
        reported_uncertainty(prediction, "iou")
    with pytest.raises(ValueError, match="no IoU head"):
        iou_prediction_loss(prediction, torch.zeros(2, 4), BoxLossConfig())


def test_agreement_of_coinciding_and_of_spread_hypotheses():
    same = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 3])
    apart = torch.tensor([[[0.4, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2]]])
    agreement = hypothesis_agreement(BoxPrediction.from_hypotheses(torch.cat([same, apart])))
    assert agreement[0] == pytest.approx(1.0) and 0.3 < float(agreement[1]) < 1.0


def test_no_box_keeps_the_head_in_the_graph(sam):
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict(), iou_head=True)
    prediction = decoder(torch.randn(2, 64, 16, 16), torch.randn(0, 64),
                         torch.zeros(0, dtype=torch.long))
    loss = iou_prediction_loss(prediction, torch.zeros(0, 4), BoxLossConfig())
    assert float(loss.detach()) == 0.0
    loss.backward()
    for name, parameter in decoder.iou_prediction_head.named_parameters():
        assert parameter.grad is not None and not parameter.grad.any(), name


def test_the_head_learns_the_iou_of_the_mean_box(sam):
    """Fixed features and queries with targets at several distances from the boxes: the head's
    MSE falls to a fraction of its start, and its target is the detached IoU."""
    torch.manual_seed(0)
    decoder, _ = build_box_decoder(SAM_TINY_CONFIG, 3, sam.state_dict(), iou_head=True)
    features, queries = torch.randn(4, 64, 16, 16), torch.randn(16, 64)
    index = torch.arange(16) % 4
    with torch.no_grad():
        boxes = decoder(features, queries, index).box
    from torchvision.ops import box_convert

    shift = torch.linspace(0.0, 0.3, 16).unsqueeze(1)
    targets = (box_convert(boxes, "cxcywh", "xyxy") + shift).clamp(0, 1)
    optimiser = torch.optim.Adam(decoder.iou_prediction_head.parameters(), lr=1e-3)
    config = BoxLossConfig(iou_weight=1.0)
    losses = []
    for _ in range(60):
        prediction = decoder(features, queries, index)
        loss = iou_prediction_loss(prediction, targets, config)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0]
    # the hypernetworks shape the boxes only, so they reach the loss only through the target
    assert decoder.centre_hypernetworks[0].layers[0].weight.grad is None


def test_config_rules_and_older_configs():
    base = {"version": "v", "vision_pretrained": "s"}
    with pytest.raises(ValueError, match="needs the IoU head"):
        GroundingConfig(**base, uncertainty="iou")
    with pytest.raises(ValueError, match="uncertainty"):
        GroundingConfig(**base, iou_head=True, uncertainty="entropy")
    old = GroundingConfig.from_dict({**base, "box_loss": {"mode": "umhp", "l1_weight": 2.0}},
                                    "an old config")
    assert old.iou_head is False and old.uncertainty == "spread"
    assert old.box_loss.iou_weight == 1.0


def test_export_round_trips_the_head_and_the_calibration(tiny_dir, synth_dir, tmp_path):
    """save_pretrained / from_pretrained keep the IoU head and calibration.json; saving a model
    without a calibration into a folder removes a stale calibration.json."""
    from model.build import build_umedground
    from model.grounding_model import UMedGround
    from utils.annotations import load_annotations
    from utils.dataset import GroundingCollator, GroundingDataset

    torch.manual_seed(0)
    config = GroundingConfig(version=str(tiny_dir / "llava"),
                             vision_pretrained=str(tiny_dir / "sam_tiny.pth"), lora_r=4,
                             iou_head=True, uncertainty="combined")
    model, processor, _ = build_umedground(config)
    samples = [s for s in load_annotations(synth_dir / "report_train.jsonl") if s.findings][:2]
    dataset = GroundingDataset(samples, processor, 256)
    batch = GroundingCollator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    inputs = {k: batch[k] for k in ("sam_images", "pixel_values", "input_ids", "attention_mask",
                                    "labels")}
    model.eval()
    with torch.no_grad():
        before = model(**inputs).prediction.iou
    calibration = BoxCalibration(alpha=0.1, quantile=1.7, scale_floor=0.0025, signal="combined",
                                 target_risk=0.2, delta=0.1, threshold=0.4, n_findings=120,
                                 dataset="report", split="val")
    model.calibration = calibration
    first = model.save_pretrained(tmp_path / "first", processor)
    loaded, loaded_processor = UMedGround.from_pretrained(first)
    assert loaded.calibration == calibration and loaded.config.uncertainty == "combined"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).prediction.iou, before)
    second = loaded.save_pretrained(tmp_path / "second", loaded_processor)
    assert json.loads((second / CALIBRATION_NAME).read_text()) == calibration.to_dict()
    assert UMedGround.from_pretrained(second)[0].calibration == calibration
    loaded.calibration = None
    loaded.save_pretrained(second, loaded_processor)
    assert not (second / CALIBRATION_NAME).exists()
    assert UMedGround.from_pretrained(second)[0].calibration is None
