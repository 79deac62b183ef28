"""A learned reward R(s, a) = θᵀφ(s, a): Bradley–Terry on choices, a logistic reference point for thumbs, and a
hierarchical prior θ_profile = θ_global + δ that pulls δ toward 0 (maximum-entropy IRL's linear reward, MAP-fitted).

- φ(s, a): the base model's hidden state at `RewardConfig.layer` of the depth, averaged over the reply's tokens
  after the conversation s, the reply's mean per-token log-probability and log(1 + reply tokens), all from one
  forward pass; standardised by the same statistics of the everyday replies (`adapters.everyday`), so no taste chose
  the scale. No list of tastes names a feature.
- A choice of a over b is the event θᵀ(φ_a − φ_b) > 0 (Bradley–Terry); a 👍 (👎) on a is θᵀφ_a − z > 0 (< 0), z the
  profile's reference point (KTO's z0 in spirit), fitted with θ.
- The fit is the MAP estimate: Σ softplus losses over votes + λ‖θ − θ_global‖² (L-BFGS, a few ms for hundreds of
  votes). Once everyone's reward exists, profiles are fitted in its space (`principal_basis`): the top principal
  directions of the hidden states of the replies everyone voted on, whitened, with fluency and length — few
  dimensions, so 32 votes can move them; the weights are mapped back onto φ, so every version scores φ directly.

Pure functions of tensors here; `adapters.rewards` keeps the features and versions of each profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adapters.data import collate, encode_answers
from adapters.everyday import EVERYDAY, EVERYDAY_MAX_TOKENS
from adapters.logprobs import Sequence
from assistant.model import LoadedModel

CHUNK = 8
"""Sequences per forward pass when computing features (their logits at reply positions are kept)."""


def feature_layer(loaded: LoadedModel, fraction: float) -> int:
    """The hidden-state index (0: embeddings) `fraction` of the way up the model."""
    return max(1, math.ceil(fraction * loaded.model.config.num_hidden_layers))


@torch.no_grad()
def raw_features(model: torch.nn.Module, sequences: list[Sequence], pad_id: int, layer: int) -> torch.Tensor:
    """Per sequence, from one forward pass: the mean hidden state at `layer` over its reply tokens, then the reply's
    mean per-token log-probability (how fluent the model finds it), then log(1 + reply tokens); shape
    (sequences, hidden + 2), float32. `model` is the base model (no adapter active on this thread)."""
    out = []
    for start in range(0, len(sequences), CHUNK):
        batch = collate(sequences[start:start + CHUNK], pad_id)
        predicts = torch.zeros_like(batch.completion_mask)
        predicts[:, :-1] = batch.completion_mask[:, 1:]  # position t predicts token t+1
        result = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True,
                       logits_to_keep=predicts)
        states = result.hidden_states[layer].float()
        log_probs = torch.log_softmax(result.logits.reshape(-1, result.logits.shape[-1]).float(), dim=-1)
        targets = batch.input_ids[:, 1:][batch.completion_mask[:, 1:]]
        token_logps = log_probs.gather(1, targets[:, None]).squeeze(1)
        mask = batch.completion_mask[..., None].float()
        tokens = mask.sum(1)
        fluency = torch.zeros(len(tokens)).index_add(0, predicts.nonzero()[:, 0], token_logps)[:, None]
        out.append(torch.cat([(states * mask).sum(1) / tokens.clamp(min=1), fluency / tokens.clamp(min=1),
                              torch.log1p(tokens)], 1))
    return torch.cat(out) if out else torch.zeros(0, 0)


@dataclass(frozen=True)
class Scale:
    """Per-feature centre and spread that standardise φ: those of the everyday replies under the same model."""

    mean: torch.Tensor
    std: torch.Tensor

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std


def everyday_scale(loaded: LoadedModel, layer: int) -> Scale:
    """The standardisation of φ for `loaded` (16 short forward passes). A feature that barely varies on them gets the
    median spread, so no single one dominates by a tiny denominator."""
    raw = raw_features(loaded.model, encode_answers(loaded, EVERYDAY, EVERYDAY_MAX_TOKENS),
                       loaded.tokenizer.pad_token_id, layer)
    std = raw.std(0)
    return Scale(raw.mean(0), torch.maximum(std, std.median()).clamp(min=1e-6))


@dataclass(frozen=True)
class Votes:
    """A profile's votes as feature rows: choices as differences φ(chosen) − φ(rejected), thumbs as φ with a label."""

    pairs: torch.Tensor
    """(choices, d)."""
    thumbs: torch.Tensor
    """(thumbs, d)."""
    labels: torch.Tensor
    """(thumbs,) bool: 👍."""

    @classmethod
    def empty(cls, d: int) -> Votes:
        return cls(torch.zeros(0, d), torch.zeros(0, d), torch.zeros(0, dtype=torch.bool))

    def __len__(self) -> int:
        return len(self.pairs) + len(self.thumbs)

    @staticmethod
    def join(parts: list[Votes], d: int) -> Votes:
        parts = [p for p in parts if len(p)] or [Votes.empty(d)]
        return Votes(torch.cat([p.pairs for p in parts]), torch.cat([p.thumbs for p in parts]),
                     torch.cat([p.labels for p in parts]))


@dataclass(frozen=True)
class Fitted:
    theta: torch.Tensor
    """(d,) the weights."""
    z: float
    """The thumbs' reference point: a 👍 is expected where θᵀφ > z."""

    def to_bytes(self) -> bytes:
        return torch.cat([self.theta, torch.tensor([self.z])]).float().numpy().tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Fitted:
        values = torch.frombuffer(bytearray(blob), dtype=torch.float32)
        return cls(values[:-1].clone(), float(values[-1]))


def fit(votes: Votes, center: torch.Tensor, prior: float, thumbs_weight: float = 1.0,
        max_iter: int = 50) -> Fitted:
    """MAP θ and z: Σ softplus(−θᵀd) over choices + w·Σ softplus(∓(θᵀφ − z)) over thumbs + prior·‖θ − center‖²."""
    theta = center.clone().requires_grad_(True)
    z = torch.zeros(1, requires_grad=True)
    if not len(votes):
        return Fitted(center.clone(), 0.0)
    signs = votes.labels.float() * 2 - 1
    optimizer = torch.optim.LBFGS([theta, z], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.softplus(-(votes.pairs @ theta)).sum() + prior * (theta - center).pow(2).sum()
        if len(votes.thumbs):
            loss = loss + thumbs_weight * F.softplus(-signs * (votes.thumbs @ theta - z)).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return Fitted(theta.detach(), float(z.detach()))


def principal_basis(phi: torch.Tensor, k: int) -> torch.Tensor:
    """The map, shape (d, k' + 2), from φ to the space profiles are fitted in: the top k' = min(k, rows − 1) principal
    directions of the hidden-state part over the rows of `phi` (replies people were shown), whitened so each has unit
    variance there, then fluency and length as they are. No vote decides it."""
    d = phi.shape[1]
    hidden = phi[:, :-2] - phi[:, :-2].mean(0)
    k = max(1, min(k, len(phi) - 1))
    _, singular, directions = torch.linalg.svd(hidden, full_matrices=False)
    scale = (singular[:k] / max(1, len(phi) - 1) ** 0.5).clamp(min=1e-6)
    top = torch.zeros(d, k)
    top[:-2] = directions[:k].T / scale
    return torch.cat([top, torch.eye(d)[:, -2:]], 1)


def project(votes: Votes, basis: torch.Tensor) -> Votes:
    return Votes(votes.pairs @ basis, votes.thumbs @ basis, votes.labels)


def ordered(fitted: Fitted, votes: Votes) -> tuple[float, int]:
    """(right, total) over the orderings the votes state: each choice, and each 👍 reply against each 👎 reply (a
    thumb says where a reply stands against the person's other replies, not against a threshold). An exact tie of
    scores counts half."""
    margins = [votes.pairs @ fitted.theta]
    ups = votes.thumbs[votes.labels] @ fitted.theta
    downs = votes.thumbs[~votes.labels] @ fitted.theta
    margins.append((ups[:, None] - downs[None, :]).reshape(-1))
    margin = torch.cat(margins)
    return float((margin > 0).sum() + 0.5 * (margin == 0).sum()), len(margin)
