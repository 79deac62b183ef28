"""Preference losses: small pure functions of summed log-probabilities, returning per-example losses and rewards.

Inputs are sequence log-probabilities (summed over reply tokens), shape (batch,), of the policy and of the
reference policy. Rewards are the implicit DPO rewards β·(log π − log π_ref), in nats.

- `dpo_loss`: Bradley–Terry on the reward margin (Rafailov et al. 2023), with conservative label smoothing ε
  for noisy choosers (the chosen label is flipped with probability ε): TRL's `loss_type="sigmoid"`.
- `kto_loss`: Kahneman–Tversky optimisation for unpaired thumbs (Ethayarajh et al. 2024): a desirable reply
  is pushed above the reference point z0 (the policy/reference KL, estimated on mismatched prompt–reply
  pairs, clamped at 0 and not differentiated), an undesirable one below it. TRL's `KTOTrainer` formula.
- `distill_kl`: per-token KL(teacher ‖ policy) over a reply, the teacher kept as its top-k tokens plus "any other
  token" (`Teacher`); the inputs here are per-token log-probabilities, not sums.
- `rloo_advantages`: REINFORCE leave-one-out (Ahmadian et al. 2024) with the KL to the reference as a penalty in the
  reward, and `clipped_policy_loss`: PPO's clipped surrogate on the sequence ratio π/π_old — together TRL's
  `RLOOTrainer` (its `_generate_and_score_completions` and `_compute_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PairLoss:
    losses: torch.Tensor  # (batch,)
    chosen_rewards: torch.Tensor  # (batch,) detached
    rejected_rewards: torch.Tensor  # (batch,) detached


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PairLoss:
    """−(1−ε)·log σ(β·Δ) − ε·log σ(−β·Δ), Δ = (log π_c − log π_ref,c) − (log π_r − log π_ref,r)."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    margin = beta * (chosen_logratios - rejected_logratios)
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return PairLoss(losses, (beta * chosen_logratios).detach(), (beta * rejected_logratios).detach())


@dataclass(frozen=True)
class UnpairedLoss:
    losses: torch.Tensor  # (batch,), already weighted
    rewards: torch.Tensor  # (batch,) detached
    kl: torch.Tensor  # () the reference point z0 used


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    labels: torch.Tensor,
    kl: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> UnpairedLoss:
    """Desirable (label True): w_d·(1 − σ(β·(r − z0))); undesirable: w_u·(1 − σ(β·(z0 − r))), r = log π − log π_ref.

    `kl` is the reference point z0, e.g. `kto_reference_point(...)`; it is clamped at 0 and detached here.
    """
    labels = labels.bool()
    z0 = kl.detach().clamp(min=0)
    logratios = policy_logps - reference_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratios)))
    losses = torch.where(labels, desirable, undesirable)
    return UnpairedLoss(losses, (beta * logratios).detach(), z0)


def kto_reference_point(mismatched_policy_logps: torch.Tensor, mismatched_reference_logps: torch.Tensor) -> torch.Tensor:
    """z0: mean log-ratio of replies scored against prompts they do not answer (a cheap KL estimate)."""
    return (mismatched_policy_logps - mismatched_reference_logps).mean().detach().clamp(min=0)


def pair_metrics(loss: PairLoss, prefix: str = "") -> dict[str, float]:
    """TRL's metric names for a batch of pairs."""
    margins = loss.chosen_rewards - loss.rejected_rewards
    return {
        f"{prefix}loss": loss.losses.mean().item(),
        f"{prefix}rewards/chosen": loss.chosen_rewards.mean().item(),
        f"{prefix}rewards/rejected": loss.rejected_rewards.mean().item(),
        f"{prefix}rewards/margins": margins.mean().item(),
        f"{prefix}rewards/accuracies": (margins > 0).float().mean().item(),
    }


@dataclass(frozen=True)
class Teacher:
    """The reference's next-token distributions at one reply's positions, as k + 1 outcomes: its top-k tokens and
    "any other token"."""

    log_probs: torch.Tensor
    """Shape (reply tokens, k + 1): the top-k tokens' log-probabilities, then the log of the rest's mass."""
    token_ids: torch.Tensor
    """Shape (reply tokens, k), int32 (half the memory of int64: teachers are cached across updates)."""


def rest_log_mass(top: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(top)) along the last axis, kept finite: the log-mass outside the given tokens, shape (..., 1)."""
    return torch.log1p(-torch.logsumexp(top, dim=-1, keepdim=True).exp().clamp(max=1 - 1e-6))


def distill_kl(log_probs: torch.Tensor, rows: torch.Tensor, taught: list[Teacher]) -> torch.Tensor:
    """Per row of the first `len(taught)` rows: mean over its tokens of KL(teacher ‖ policy) over the teacher's
    top-k tokens and "any other token", shape (len(taught),). `log_probs`, `rows`: as `completion_log_probs`
    returns them."""
    n = len(taught)
    mine = rows < n
    student, student_rows = log_probs[mine], rows[mine]  # row-major: row 0's tokens first, in order
    teacher_lp = torch.cat([t.log_probs for t in taught])
    teacher_ids = torch.cat([t.token_ids for t in taught]).long()
    if teacher_lp.shape[0] != student.shape[0]:
        raise ValueError("teacher and policy disagree on the reply's length")
    picked = student.gather(1, teacher_ids)
    student_lp = torch.cat([picked, rest_log_mass(picked)], dim=-1)
    per_token = (teacher_lp.exp() * (teacher_lp - student_lp)).sum(-1)
    counts = torch.tensor([max(1, t.log_probs.shape[0]) for t in taught], dtype=per_token.dtype)
    return torch.zeros(n, dtype=per_token.dtype).index_add(0, student_rows, per_token) / counts


def rloo_advantages(rewards: torch.Tensor, k: int, old_logps: torch.Tensor | None = None,
                    reference_logps: torch.Tensor | None = None,
                    beta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out advantages of `rewards`, shape (prompts·k,), k consecutive samples per prompt: each sample's
    penalised reward r_i = R_i − β·(log π_old − log π_ref)_i (sequence sums: the first-order KL estimate, TRL's) minus
    the mean of the other k − 1 samples' of the same prompt. Returns (advantages, the penalised rewards)."""
    if k < 2 or rewards.shape[0] % k:
        raise ValueError(f"RLOO needs k ≥ 2 samples per prompt and a multiple of k rewards, got k={k}, "
                         f"{rewards.shape[0]} rewards")
    penalised = rewards if old_logps is None or not beta else rewards - beta * (old_logps - reference_logps)
    grouped = penalised.view(-1, k)
    baselines = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baselines).reshape(-1).detach(), penalised.detach()


@dataclass(frozen=True)
class PolicyLoss:
    losses: torch.Tensor  # (samples,)
    clipped: torch.Tensor  # (samples,) bool: the clip bound the objective (no gradient through this sample)


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                        epsilon: float = 0.2, epsilon_high: float | None = None) -> PolicyLoss:
    """−min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A) per sample, ρ = exp(log π − log π_old) over the whole reply (sequence
    sums). At ρ = 1 (the first step on fresh samples) it is REINFORCE's −A·log π in gradient."""
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps.detach())
    losses = -torch.min(ratio * advantages, ratio.clamp(1 - epsilon, 1 + high) * advantages)
    clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + high) & (advantages > 0))
    return PolicyLoss(losses, clipped)
