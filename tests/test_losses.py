"""Losses against hand-computed numbers and against TRL 1.16's formulas on the same tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adapters.losses import Teacher, distill_kl, dpo_loss, kto_loss, kto_reference_point, pair_metrics


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_loss_by_hand():
    # Δ = (−10 − −12) − (−14 − −13) = 2 − (−1) = 3; β = 0.5 → margin 1.5
    out = dpo_loss(_t(-10.0), _t(-14.0), _t(-12.0), _t(-13.0), beta=0.5)
    expected = math.log(1 + math.exp(-1.5))  # −log σ(1.5) = 0.201413
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)
    assert out.losses.item() == pytest.approx(0.2014132779827524, abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(1.0) and out.rejected_rewards.item() == pytest.approx(-0.5)


def test_dpo_label_smoothing_by_hand():
    out = dpo_loss(_t(-10.0), _t(-14.0), _t(-12.0), _t(-13.0), beta=0.5, label_smoothing=0.1)
    # 0.9·log(1+e^−1.5) + 0.1·log(1+e^1.5) = 0.9·0.2014133 + 0.1·1.7014133
    assert out.losses.item() == pytest.approx(0.9 * 0.2014132779827524 + 0.1 * 1.7014132779827524, abs=1e-12)
    with pytest.raises(ValueError):
        dpo_loss(_t(0.0), _t(0.0), _t(0.0), _t(0.0), label_smoothing=0.5)


def test_dpo_at_the_reference_is_log_two_and_gradient_favours_chosen():
    chosen = _t(-5.0, -7.0).requires_grad_()
    rejected = _t(-6.0, -2.0).requires_grad_()
    out = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.1)
    assert out.losses.tolist() == pytest.approx([math.log(2)] * 2)
    out.losses.sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected


def test_dpo_matches_trl_sigmoid_formula_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(64, generator=g, dtype=torch.float64) * 5 - 20 for _ in range(4))
    beta, eps = 0.2, 0.15
    # TRL 1.16 DPOTrainer._compute_loss, loss_type "sigmoid" (trl/trainer/dpo_trainer.py, around line 1454):
    delta = (pc - rc) - (pr - rr)
    trl = -F.logsigmoid(beta * delta) * (1 - eps) - F.logsigmoid(-beta * delta) * eps
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, beta, eps).losses, trl)


def test_kto_loss_by_hand():
    # r = [2, −1], z0 = 0.5, β = 1: desirable 1 − σ(1.5); undesirable 1 − σ(0.5 − (−1)) = 1 − σ(1.5)
    out = kto_loss(_t(-8.0, -11.0), _t(-10.0, -10.0), torch.tensor([True, False]), _t(0.5), beta=1.0,
                   desirable_weight=1.0, undesirable_weight=2.0)
    s = 1 / (1 + math.exp(-1.5))
    assert out.losses.tolist() == pytest.approx([1 - s, 2 * (1 - s)], abs=1e-12)
    assert out.rewards.tolist() == pytest.approx([2.0, -1.0])


def test_kto_reference_point_is_clamped_and_detached():
    policy = _t(-3.0, -5.0).requires_grad_()
    z0 = kto_reference_point(policy, _t(-2.0, -4.0))  # mean −1 → clamped to 0
    assert z0.item() == 0.0 and not z0.requires_grad
    assert kto_reference_point(_t(-1.0, -1.0), _t(-2.0, -4.0)).item() == pytest.approx(2.0)


def test_kto_matches_trl_formula_on_random_tensors():
    g = torch.Generator().manual_seed(1)
    policy, ref = (torch.randn(32, generator=g, dtype=torch.float64) * 3 - 15 for _ in range(2))
    labels = torch.rand(32, generator=g) > 0.4
    kl, beta, wd, wu = torch.tensor(0.3, dtype=torch.float64), 0.1, 1.0, 1.33
    out = kto_loss(policy, ref, labels, kl, beta, wd, wu)
    # TRL 1.16 KTOTrainer._compute_loss (trl/trainer/kto_trainer.py, around lines 1453-1480):
    logratios = policy - ref
    chosen = 1 - torch.sigmoid(beta * (logratios[labels] - kl))
    rejected = 1 - torch.sigmoid(beta * (kl - logratios[~labels]))
    trl = torch.cat((wd * chosen, wu * rejected))
    assert torch.allclose(torch.cat((out.losses[labels], out.losses[~labels])), trl)


def test_pair_metrics_use_trl_names():
    metrics = pair_metrics(dpo_loss(_t(-1.0, -5.0), _t(-2.0, -1.0), _t(-1.5, -1.5), _t(-1.5, -1.5), beta=1.0))
    assert set(metrics) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert metrics["rewards/accuracies"] == 0.5
    # chosen rewards [0.5, -3.5], rejected [-0.5, 0.5] → margins [1, -4]
    assert metrics["rewards/margins"] == pytest.approx(-1.5)


def test_distill_kl_against_hand_computed_numbers():
    # Policy rows 0 (three tokens of a chosen reply) and 1 (a rejected reply's, ignored); vocabulary of 3; the
    # teacher keeps its top 2 tokens per position and the rest as one outcome.
    policy = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]]))
    rows = torch.tensor([0, 0, 0, 1])
    teacher = Teacher(torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [0.6, 0.2, 0.2]])),
                      torch.tensor([[0, 1], [1, 0], [2, 1]]))
    kl = distill_kl(policy, rows, [teacher])
    by_hand = (0.5 * math.log(0.5 / 0.5) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.25)  # token 1
               + 0.9 * math.log(0.9 / 0.8) + 0.05 * math.log(0.05 / 0.1) + 0.05 * math.log(0.05 / 0.1)  # token 2
               + 0.0) / 3  # token 3: the same distribution
    assert kl.shape == (1,) and kl.item() == pytest.approx(by_hand, abs=1e-6)
    with pytest.raises(ValueError, match="length"):
        distill_kl(policy, torch.tensor([0, 0, 1, 1]), [teacher])
