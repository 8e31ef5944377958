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
# far = (0.4, 0.4, 0.4, 0.7): xyxy (0.2, 0.05, 0.6, 0.75); L1 = 0.3;
#        intersection 0.4 x 0.4 = 0.16, union 0.16 + 0.28 - 0.16 = 0.28, IoU 4/7,
#        enclosing 0.4 x 0.7 = 0.28 = union, so the GIoU loss is 3/7
FAR = [0.4, 0.4, 0.4, 0.7]
L_FAR = 2.0 * 0.3 + 1.0 * 3 / 7
# mean(h1, far) = (0.45, 0.4, 0.4, 0.55): xyxy (0.25, 0.125, 0.65, 0.675); L1 = 0.05 + 0.15;
#        intersection 0.35 x 0.4 = 0.14, union 0.16 + 0.22 - 0.14 = 0.24,
#        enclosing 0.45 x 0.55 = 0.2475, GIoU = 0.14/0.24 - (0.2475 - 0.24)/0.2475
MEAN_H1_FAR_LOSS = 2.0 * 0.2 + 1.0 * (1 - (0.14 / 0.24 - 0.0075 / 0.2475))


def scalars(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: float(value.detach()) for key, value in losses.items()}


def prediction(*hypotheses: list[float]) -> BoxPrediction:
    return BoxPrediction.from_hypotheses(torch.tensor([list(hypotheses)], requires_grad=True))


def config(mode: str, **changes) -> BoxLossConfig:
    return BoxLossConfig(**{"mode": mode, "l1_weight": 2.0, "giou_weight": 1.0,
                            "hypothesis_weight": 1.0, **changes})


def test_single():
    losses = scalars(compute_box_losses(prediction(H1), TARGET, config("single")))
    assert losses["box_l1"] == pytest.approx(0.2, abs=1e-6)
    assert losses["box_giou"] == pytest.approx(0.4, abs=1e-6)
    assert losses["box_hyp"] == 0.0
    assert losses["box_total"] == pytest.approx(L1, abs=1e-6)
    with pytest.raises(ValueError, match="'single' needs 1 hypothesis, the decoder has 2"):
        compute_box_losses(prediction(H0, H1), TARGET, config("single"))


def test_mhp_relaxed_winner_takes_all():
    eps = 0.05
    losses = scalars(compute_box_losses(prediction(H1, H0), TARGET, config("mhp", mhp_epsilon=eps)))
    # best is h0 (index 1): (1 - eps) * L0 + eps / (N - 1) * L1, plus the mean box's loss
    assert losses["box_l1"] + losses["box_giou"] == pytest.approx((1 - eps) * L0 + eps * L1,
                                                                  abs=1e-6)
    assert losses["box_hyp"] == pytest.approx(MEAN_LOSS, abs=1e-6)
    # N = 3: weights (eps/2, 1 - eps, eps/2) on (h1, h0, far)
    three = prediction(H1, H0, FAR)
    weights = hypothesis_weights(three, TARGET, config("mhp", mhp_epsilon=eps))
    assert weights[0].tolist() == pytest.approx([eps / 2, 1 - eps, eps / 2])
    losses = scalars(compute_box_losses(three, TARGET, config("mhp", mhp_epsilon=eps)))
    assert losses["box_l1"] == pytest.approx(2.0 * eps / 2 * (0.1 + 0.3), abs=1e-6)
    assert losses["box_giou"] == pytest.approx(eps / 2 * (0.4 + 3 / 7), abs=1e-6)


def test_umhp_weights_are_normalised_distances():
    pred = prediction(H0, H1)
    weights = hypothesis_weights(pred, TARGET, config("umhp"))
    # distances: |h0 - t| = 0 (clamped to 1e-8), |h1 - t| = 0.1 -> weights ~ (0, 1)
    assert weights[0].tolist() == pytest.approx([1e-7, 1.0], abs=1e-6)
    losses = scalars(compute_box_losses(pred, TARGET, config("umhp")))
    assert losses["box_l1"] + losses["box_giou"] == pytest.approx(L1, abs=1e-5)
    # |h1 - t| = 0.1 and |far - t| = 0.3 (in h only), so weights 0.1/0.4 and 0.3/0.4
    far = prediction(H1, FAR)
    weights = hypothesis_weights(far, TARGET, config("umhp"))
    assert weights[0].tolist() == pytest.approx([0.25, 0.75], abs=1e-6)
    losses = scalars(compute_box_losses(far, TARGET, config("umhp", hypothesis_weight=0.5)))
    assert losses["box_l1"] + losses["box_giou"] == pytest.approx(0.25 * L1 + 0.75 * L_FAR,
                                                                  abs=1e-5)
    assert losses["box_hyp"] == pytest.approx(0.5 * MEAN_H1_FAR_LOSS, abs=1e-5)
    assert losses["box_total"] == pytest.approx(0.25 * L1 + 0.75 * L_FAR
                                                + 0.5 * MEAN_H1_FAR_LOSS, abs=1e-5)
    # temperature 0.5: w proportional to d**2 = 0.01 and 0.09
    sharper = hypothesis_weights(far, TARGET, config("umhp", umhp_temperature=0.5))
    assert sharper[0].tolist() == pytest.approx([0.01 / 0.1, 0.09 / 0.1], abs=1e-6)
    # the Euclidean norm over coordinates: |(0.3, 0.4, 0, 0)| = 0.5 against |far - t| = 0.3
    diagonal = prediction([0.7, 0.8, 0.4, 0.4], FAR)
    assert hypothesis_weights(diagonal, TARGET, config("umhp"))[0].tolist() == pytest.approx(
        [0.5 / 0.8, 0.3 / 0.8], abs=1e-6)


def test_hinge_margin_keeps_hypotheses_apart():
    margin = 0.2
    losses = scalars(compute_box_losses(prediction(H0, H1), TARGET,
                                        config("hinge", hinge_margin=margin)))
    # |h0 - h1| = (0.1, 0, 0, 0): mean over coordinates of max(0, 0.2 - gap)
    assert losses["box_hyp"] == pytest.approx((0.1 + 0.2 + 0.2 + 0.2) / 4, abs=1e-6)
    assert losses["box_l1"] + losses["box_giou"] == pytest.approx(MEAN_LOSS, abs=1e-6)
    # three pairs of (h0, h1, far): gaps (0.1,0,0,0), (0,0,0,0.3), (0.1,0,0,0.3), margin 0.2
    three = scalars(compute_box_losses(prediction(H0, H1, FAR), TARGET,
                                       config("hinge", hinge_margin=margin, hypothesis_weight=2.0)))
    pair_terms = [(0.1 + 0.2 * 3) / 4, (0.2 * 3 + 0.0) / 4, (0.1 + 0.2 * 2 + 0.0) / 4]
    assert three["box_hyp"] == pytest.approx(2.0 * sum(pair_terms) / 3, abs=1e-6)
    apart = scalars(compute_box_losses(prediction(H0, [0.8, 0.8, 0.2, 0.2]), TARGET,
                                       config("hinge", hinge_margin=0.01)))
    assert apart["box_hyp"] == 0.0
    with pytest.raises(ValueError, match="'hinge' regresses the mean box"):
        hypothesis_weights(prediction(H0, H1), TARGET, config("hinge"))


def test_no_box_keeps_the_graph():
    hypotheses = torch.zeros(0, 3, 4, requires_grad=True)
    for mode in ("mhp", "umhp", "hinge"):
        losses = compute_box_losses(BoxPrediction.from_hypotheses(hypotheses), torch.zeros(0, 4),
                                    config(mode))
        assert scalars(losses) == {"box_l1": 0.0, "box_giou": 0.0, "box_hyp": 0.0,
                                   "box_total": 0.0}
        losses["box_total"].backward()
        assert hypotheses.grad is not None


def test_bad_targets_and_settings():
    with pytest.raises(ValueError, match=r"box targets have shape \(2, 4\), expected \(1, 4\)"):
        compute_box_losses(prediction(H0, H1), torch.zeros(2, 4), config("umhp"))
    for bad in ({"mode": "wta"}, {"mhp_epsilon": 1.0}, {"umhp_temperature": 0.0},
                {"hinge_margin": -0.1}):
        with pytest.raises(ValueError):
            BoxLossConfig(**bad)


def test_gradients_flow_to_every_hypothesis():
    for mode in ("mhp", "umhp", "hinge"):
        hypotheses = torch.tensor([[H1, [0.3, 0.5, 0.2, 0.3], [0.6, 0.6, 0.3, 0.3]]],
                                  requires_grad=True)
        compute_box_losses(BoxPrediction.from_hypotheses(hypotheses), TARGET,
                           config(mode))["box_total"].backward()
        assert (hypotheses.grad.abs().sum(dim=-1) > 0).all(), mode
