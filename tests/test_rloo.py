"""The on-policy objective: RLOO's advantages and PPO's clipped loss against hand-computed numbers and TRL 1.16's
RLOOTrainer on the same tensors; an update that raises a reward on the tiny model; and the worker choosing it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from adapters.data import Examples, PairExample
from adapters.logprobs import logps_in_chunks
from adapters.lora import add_lora
from adapters.losses import clipped_policy_loss, rloo_advantages
from adapters.registry import GLOBAL, personal_adapter
from adapters.rloo import rloo_prompts, sample
from adapters.training import objective, train_adapter
from assistant.config import LearningConfig, LoraSettings, ModelConfig, TrainConfig
from assistant.model import load_model
from tests.test_worker import HOLD_NONE, _choices, _loop


def test_advantages_are_leave_one_out_with_the_kl_as_a_reward_penalty():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])  # two prompts, k = 3
    advantages, _ = rloo_advantages(rewards, 3)
    # sample 0: 1 − (2 + 6)/2 = −3; sample 1: 2 − 3.5; sample 2: 6 − 1.5 = 4.5; prompt 2: 0 − 1.5, 0 − 1.5, 3 − 0
    assert advantages.tolist() == pytest.approx([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    old, ref = torch.tensor([-5.0, -5.0, -9.0, -1.0, -1.0, -1.0]), torch.tensor([-6.0, -5.0, -5.0, -1.0, -1.0, -1.0])
    penalised_adv, penalised = rloo_advantages(rewards, 3, old, ref, beta=0.5)
    assert penalised.tolist() == pytest.approx([0.5, 2.0, 8.0, 0.0, 0.0, 3.0])  # R − β·(log π_old − log π_ref)
    assert penalised_adv.tolist() == pytest.approx([-4.5, -2.25, 6.75, -1.5, -1.5, 3.0])
    with pytest.raises(ValueError, match="k ≥ 2"):
        rloo_advantages(rewards, 4)


def test_advantages_match_trl_rloo_on_the_same_rewards():
    g = torch.Generator().manual_seed(0)
    k, rewards = 4, torch.randn(32, generator=g, dtype=torch.float64)
    old, ref = (torch.randn(32, generator=g, dtype=torch.float64) * 3 - 20 for _ in range(2))
    beta = 0.05
    # TRL 1.16 RLOOTrainer._generate_and_score_completions (trl/trainer/rloo_trainer.py, lines 1664-1690): the
    # summed first-order KL as a reward penalty, then the leave-one-out baseline over the group.
    trl_rewards = rewards - beta * (old - ref)
    grouped = trl_rewards.view(-1, k)
    baselines = ((grouped.sum(1, keepdim=True) - grouped) / (k - 1)).view(-1)
    trl = trl_rewards - baselines
    assert torch.allclose(rloo_advantages(rewards, k, old, ref, beta)[0], trl)


class _Accelerator:
    """TRL's calls on a one-process accelerator: every gather and reduce is the identity."""

    gather = gather_for_metrics = staticmethod(lambda t: t)
    reduce = staticmethod(lambda t, reduction="sum": t)


def test_clipped_loss_is_trl_rloo_compute_loss_on_the_same_tensors():
    from trl import RLOOTrainer

    g = torch.Generator().manual_seed(1)
    n, width = 16, 5
    per_token = torch.randn(n, width, generator=g, dtype=torch.float64) * 0.5 - 2
    mask = torch.ones(n, width, dtype=torch.long)
    mask[::3, 3:] = 0  # some replies ended early
    logps = (per_token * mask).sum(1)
    old = logps + torch.randn(n, generator=g, dtype=torch.float64) * 0.4  # steps away: some ratios outside 1 ± ε
    advantages = torch.randn(n, generator=g, dtype=torch.float64)
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (per_token, torch.zeros_like(per_token), None),
        epsilon_low=0.2, epsilon_high=0.28, aux_loss_enabled=False, accelerator=_Accelerator(),
        model=SimpleNamespace(training=True), _metrics={"train": defaultdict(list)})
    inputs = {"prompt_ids": torch.zeros(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2, dtype=torch.long),
              "completion_ids": torch.zeros(n, width, dtype=torch.long), "completion_mask": mask,
              "old_logps": old, "advantages": advantages}
    trl = RLOOTrainer._compute_loss(trainer, None, inputs)
    ours = clipped_policy_loss(logps, old, advantages, epsilon=0.2, epsilon_high=0.28)
    assert torch.allclose(ours.losses.mean(), trl)
    assert ours.clipped.float().mean().item() == pytest.approx(trainer._metrics["train"]["clip_ratio/region_mean"][0])
    assert 0 < ours.clipped.sum() < n  # the comparison covered clipped and unclipped samples


def test_the_first_step_on_fresh_samples_is_reinforce():
    logps = torch.tensor([-3.0, -4.0], requires_grad=True)
    advantages = torch.tensor([2.0, -1.0])
    clipped_policy_loss(logps, logps.detach(), advantages).losses.sum().backward()
    assert logps.grad.tolist() == pytest.approx([-2.0, 1.0])  # −A·∇log π at ratio 1


def _prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Say something about item {i}."}] for i in range(n)]


def test_rounds_take_the_newest_distinct_prompts_first():
    config = TrainConfig(rloo_prompts=2)
    prompts = _prompts(3) + _prompts(1)  # item 0 asked again, newest
    assert [p[0]["content"][-7:] for p in rloo_prompts(prompts, config, 0)] == ["item 0.", "item 2."]
    assert [p[0]["content"][-7:] for p in rloo_prompts(prompts, config, 1)] == ["item 1.", "item 0."]


@pytest.fixture
def fresh_tiny(tiny_model_dir):
    return load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent)


def _letters(items) -> torch.Tensor:
    """A reward for the tiny random model: the share of a reply's characters that are lowercase ASCII letters."""
    return torch.tensor([sum(c.islower() and c.isascii() for c in text) / max(1, len(text)) for _, text, _ in items])


def test_an_rloo_step_moves_likelihood_toward_the_samples_with_advantage(fresh_tiny):
    model = add_lora(fresh_tiny.model, LoraSettings(rank=8, alpha=16))
    config = TrainConfig(objective="rloo", learning_rate=1e-2, rloo_k=4, rloo_prompts=4, rloo_tokens=8,
                         rloo_rounds=1, rloo_reuse=1, rloo_temperature=1.0, rloo_beta=0.0)
    prompts = _prompts(4)
    sequences, items = sample(model, fresh_tiny, rloo_prompts(prompts, config, 0), config, 0)  # round 0's samples
    pad = fresh_tiny.tokenizer.pad_token_id
    before = logps_in_chunks(model, sequences, pad)
    advantages, _ = rloo_advantages(_letters(items), config.rloo_k)
    pairs = [PairExample(p, "a", "b", f"f{i}", "u") for i, p in enumerate(prompts)]
    seen = []
    metrics = train_adapter(model, fresh_tiny, Examples(pairs, []), config, reward=_letters,
                            progress=lambda step, total, m: seen.append((step, total)))
    moved = logps_in_chunks(model, sequences, pad) - before
    assert (advantages * moved).sum() > 0  # REINFORCE: up where A > 0, down where A < 0
    best, worst = advantages.argmax(), advantages.argmin()
    assert moved[best] > moved[worst]
    assert metrics["reward"] == pytest.approx(_letters(items).mean().item())  # the very samples it scored
    assert seen == [(1, 1)]
    assert {"reward", "reward_std", "kl", "clip_ratio/region_mean", "rloo/loss"} <= set(metrics)
    assert "rewards/accuracies" not in metrics  # "rloo" alone runs no DPO step
    assert objective(config) == "rloo" and objective(config, rewarded=False) == "dpo+kto+distill"


def test_hybrid_runs_dpo_then_rloo_and_no_reward_means_dpo(fresh_tiny):
    model = add_lora(fresh_tiny.model, LoraSettings(rank=8, alpha=16))
    pairs = [PairExample(p, "a", "b", f"f{i}", "u") for i, p in enumerate(_prompts(4))]
    hybrid = TrainConfig(objective="hybrid", steps=2, rloo_rounds=1, rloo_reuse=1, rloo_tokens=4)
    seen = []
    both = train_adapter(model, fresh_tiny, Examples(pairs, []), hybrid, reward=_letters,
                         progress=lambda step, total, m: seen.append((step, total)))
    assert {"rewards/accuracies", "reward"} <= set(both) and objective(hybrid) == "dpo+kto+distill+rloo"
    assert seen == [(1, 2), (2, 2), (1, 1)]
    alone = train_adapter(model, fresh_tiny, Examples(pairs, []), replace(hybrid, objective="rloo"), reward=None)
    assert "reward" not in alone and "rewards/accuracies" in alone  # no reward: the update trains as DPO
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="ppo")


def test_the_worker_scores_rloo_samples_with_the_profile_reward(store, data_home, tiny_model_dir, app_config):
    learning = LearningConfig(personal_every=4, global_every=4, min_profiles=1, global_min_age_hours=0,
                              holdout_every=HOLD_NONE,
                              train=TrainConfig(objective="rloo", rloo_rounds=1, rloo_reuse=1, rloo_tokens=4))
    registry, service, worker = _loop(store, data_home, tiny_model_dir, app_config, learning)
    ann = service.create_profile("Ann")["id"]
    _choices(service, ann, 4)
    service.rewards.settle()
    assert store.current_reward(ann)["metrics"]["events"] == 4  # the choices refitted Ann's reward
    scored = []
    real = worker.rewards.score
    worker.rewards.score = lambda fitted, items: scored.append((fitted, len(items))) or real(fitted, items)
    while worker.run_once():
        pass
    manifest = registry.current(personal_adapter(ann)).manifest
    assert manifest["objective"] == "rloo" and "reward" in manifest["metrics"]
    assert torch.equal(scored[0][0].theta, worker.rewards.current(ann).theta) and scored[0][1] == 4 * 4
    assert registry.current(GLOBAL).manifest["objective"] == "rloo"  # everyone's reward: fitted with one profile
