"""Box losses of each head mode against values computed by hand."""
from __future__ import annotations

import pytest
import torch

from model.box_decoder import BoxPrediction
from model.box_losses import BoxLossConfig, compute_box_losses, hypothesis_weights

# One target and two hypotheses, all axis-aligned squares (cxcywh):
#   target  t  = xyxy (0.2, 0.2, 0.6, 0.6)  -> cxcywh (0.4, 0.4, 0.4, 0.4)
#   h0 = (0.4, 0.4, 0.4, 0.4): identical, L1 = 0, IoU = 1, GIoU loss = 0
#   h1 = (0.5, 0.4, 0.4, 0.4): xyxy (0.3, 0.2, 0.7, 0.6); L1 = 0.1;
#        intersection 0.3 x 0.4 = 0.12, union 0.16 + 0.16 - 0.12 = 0.2, IoU 0.6,
#        enclosing 0.5 x 0.4 = 0.2 = union, so GIoU = 0.6 and its loss 0.4
TARGET = torch.tensor([[0.2, 0.2, 0.6, 0.6]])
H0 = [0.4, 0.4, 0.4, 0.4]
H1 = [0.5, 0.4, 0.4, 0.4]
L0, L1 = 0.0, 2.0 * 0.1 + 1.0 * 0.4   # l1_weight 2, giou_weight 1
MEAN = [0.45, 0.4, 0.4, 0.4]            # xyxy (0.25, 0.2, 0.65, 0.6): IoU 0.14/0.18
MEAN_LOSS = 2.0 * 0.05 + 1.0 * (1 - 0.14 / 0.18 + (0.18 - 0.18) / 0.18)


def prediction(*hypotheses: list[float]) -> BoxPrediction:
    return BoxPrediction.from_hypotheses(torch.tensor([list(hypotheses)], requires_grad=True))


def config(mode: str, **changes) -> BoxLossConfig:
    return BoxLossConfig(mode=mode, l1_weight=2.0, giou_weight=1.0, hypothesis_weight=1.0, **changes)


def test_single():
    losses = {k: v.detach() for k, v in
              compute_box_losses(prediction(H1), TARGET, config("single")).items()}
    assert float(losses["box_l1"]) == pytest.approx(0.2, abs=1e-6)
    assert float(losses["box_giou"]) == pytest.approx(0.4, abs=1e-6)
    assert float(losses["box_hyp"]) == 0.0
    assert float(losses["box_total"]) == pytest.approx(L1, abs=1e-6)


def test_mhp_relaxed_winner_takes_all():
    eps = 0.05
    losses = compute_box_losses(prediction(H1, H0), TARGET, config("mhp", mhp_epsilon=eps))
    # best is h0 (index 1): (1 - eps) * L0 + eps / (N - 1) * L1, plus the mean box's loss
    assert float(losses["box_l1"] + losses["box_giou"]) == pytest.approx((1 - eps) * L0 + eps * L1,
                                                                          abs=1e-6)
    assert float(losses["box_hyp"]) == pytest.approx(MEAN_LOSS, abs=1e-6)


def test_umhp_weights_are_normalised_distances():
    pred = prediction(H0, H1)
    weights = hypothesis_weights(pred, TARGET, config("umhp"))
    # distances: |h0 - t| = 0 (clamped to 1e-8), |h1 - t| = 0.1 -> weights ~ (0, 1)
    assert weights[0].tolist() == pytest.approx([1e-7, 1.0], abs=1e-6)
    losses = compute_box_losses(pred, TARGET, config("umhp"))
    assert float(losses["box_l1"] + losses["box_giou"]) == pytest.approx(L1, abs=1e-5)
    far = [0.4, 0.4, 0.4, 0.7]   # |far - t| = 0.3 (h), so weights 0.1/0.4 and 0.3/0.4
    weights = hypothesis_weights(prediction(H1, far), TARGET, config("umhp"))
    assert weights[0].tolist() == pytest.approx([0.25, 0.75], abs=1e-6)
    sharper = hypothesis_weights(prediction(H1, far), TARGET, config("umhp", umhp_temperature=0.5))
    assert sharper[0].tolist() == pytest.approx([0.01 / 0.1, 0.09 / 0.1], abs=1e-6)


def test_hinge_margin_keeps_hypotheses_apart():
    margin = 0.2
    losses = compute_box_losses(prediction(H0, H1), TARGET, config("hinge", hinge_margin=margin))
    # |h0 - h1| = (0.1, 0, 0, 0): mean over coordinates of max(0, 0.2 - gap)
    assert float(losses["box_hyp"]) == pytest.approx((0.1 + 0.2 + 0.2 + 0.2) / 4, abs=1e-6)
    assert float(losses["box_l1"] + losses["box_giou"]) == pytest.approx(MEAN_LOSS, abs=1e-6)
    apart = compute_box_losses(prediction(H0, [0.8, 0.8, 0.2, 0.2]), TARGET,
                               config("hinge", hinge_margin=0.01))
    assert float(apart["box_hyp"]) == 0.0


def test_no_box_keeps_the_graph():
    empty = BoxPrediction.from_hypotheses(torch.zeros(0, 3, 4, requires_grad=True))
    losses = compute_box_losses(empty, torch.zeros(0, 4), config("umhp"))
    assert float(losses["box_total"]) == 0.0
    losses["box_total"].backward()


def test_gradients_flow_to_every_hypothesis():
    for mode in ("mhp", "umhp", "hinge"):
        hypotheses = torch.tensor([[H1, [0.3, 0.5, 0.2, 0.3], [0.6, 0.6, 0.3, 0.3]]],
                                  requires_grad=True)
        compute_box_losses(BoxPrediction.from_hypotheses(hypotheses), TARGET,
                           config(mode))["box_total"].backward()
        assert (hypotheses.grad.abs().sum(dim=-1) > 0).all(), mode
