"""The on-policy objective (`TrainConfig.objective` "rloo", or "hybrid" after the DPO steps): the policy samples k
replies per prompt, the profile's learned reward scores them (`adapters.rewards`), and REINFORCE with a leave-one-out
baseline, a KL penalty to the reference and PPO's clipped ratio moves it (`adapters.losses.rloo_advantages`,
`clipped_policy_loss`: TRL RLOOTrainer's formulas).

The reference is the model with the adapter disabled: the base for the global adapter, base + global for a personal
one — the same leash as DPO's. Prompts are the update's own (its newest first), so the person's recent requests are
what the policy practises on. Sampling is seeded by the prompts and the round (one seed repeats an update) and leaves
the caller's random state as it was.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable

import torch
from peft import PeftModel

from adapters.data import collate, fit_prompt
from adapters.logprobs import Sequence, completion_log_probs, logps_in_chunks, summed_logps
from adapters.lora import autocast
from adapters.losses import clipped_policy_loss, rloo_advantages
from assistant.config import TrainConfig
from assistant.generation import left_padded
from assistant.model import LoadedModel
from storage.errors import InvalidInput

Scorer = Callable[[list[tuple[list[dict], str, bool]]], torch.Tensor]
"""(conversation, reply, ended) items → the learned reward of each, shape (items,)."""


def rloo_prompts(prompts: list[list[dict]], config: TrainConfig, round_: int) -> list[list[dict]]:
    """The `rloo_prompts` prompts of one round: distinct prompts, newest first, each round moving on."""
    distinct = list({json.dumps(p): p for p in reversed(prompts)}.values())
    if not distinct:
        return []
    start = (round_ * config.rloo_prompts) % len(distinct)
    return [distinct[(start + i) % len(distinct)] for i in range(min(config.rloo_prompts, len(distinct)))]


@torch.no_grad()
def sample(model: PeftModel, loaded: LoadedModel, prompts: list[list[dict]], config: TrainConfig,
           round_: int) -> tuple[list[Sequence], list[tuple[list[dict], str, bool]]]:
    """`rloo_k` samples of the policy per prompt (k consecutive rows per prompt) as (ids, prompt length) sequences,
    and as (conversation, text, ended) items for the reward."""
    tokenizer, fitted, kept = loaded.tokenizer, [], []
    for prompt in prompts:
        try:
            fitted.append(fit_prompt(loaded, prompt, config.max_length, config.max_prompt_tokens, config.rloo_tokens))
            kept.append(prompt)
        except InvalidInput:  # no room for a reply under the length cap: not practised on
            continue
    if not fitted:
        return [], []
    input_ids, attention_mask = left_padded(fitted, tokenizer.pad_token_id)
    model.eval()
    with torch.random.fork_rng(devices=[]), autocast(config):
        torch.manual_seed(zlib.crc32(json.dumps([config.seed, round_, fitted]).encode()))
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=config.rloo_tokens,
                             num_return_sequences=config.rloo_k, do_sample=True,
                             temperature=config.rloo_temperature, top_p=1.0, top_k=0,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    sequences, items = [], []
    for row, ids in enumerate(out[:, input_ids.shape[1]:].tolist()):
        prompt_ids, turns = fitted[row // config.rloo_k], kept[row // config.rloo_k]
        ended = tokenizer.eos_token_id in ids
        reply = ids[: ids.index(tokenizer.eos_token_id) + 1] if ended else ids
        reply = reply or [tokenizer.eos_token_id]
        sequences.append((prompt_ids + reply, len(prompt_ids)))
        items.append((turns, tokenizer.decode(reply, skip_special_tokens=True).strip(), ended))
    return sequences, items


def rloo_steps(model: PeftModel, loaded: LoadedModel, prompts: list[list[dict]], reward: Scorer,
               config: TrainConfig, optimizer: torch.optim.Optimizer,
               progress: Callable[[], None] | None = None) -> dict:
    """`rloo_rounds` rounds of fresh samples, each reused for `rloo_reuse` optimizer steps at `rloo_lr_scale` of the
    update's step size; TRL-named metrics of the last round ("reward", "reward_std", "kl", "clip_ratio/region_mean",
    "rloo/loss")."""
    pad, metrics = loaded.tokenizer.pad_token_id, {}
    for group in optimizer.param_groups:  # (the DPO steps, if any, ran at the full step size)
        group["lr"] = config.learning_rate * config.rloo_lr_scale
    for round_ in range(config.rloo_rounds):
        sequences, items = sample(model, loaded, rloo_prompts(prompts, config, round_), config, round_)
        if not sequences:
            break
        scores = reward(items).float()
        with torch.no_grad(), autocast(config):
            old = logps_in_chunks(model, sequences, pad, 8).float()
            with model.disable_adapter():
                reference = logps_in_chunks(model, sequences, pad, 8).float()
        advantages, penalised = rloo_advantages(scores, config.rloo_k, old, reference, config.rloo_beta)
        batch = collate(sequences, pad)
        for _ in range(config.rloo_reuse):
            with autocast(config):
                logps = summed_logps(batch, *completion_log_probs(model, batch)).float()
            policy = clipped_policy_loss(logps, old, advantages, config.rloo_epsilon)
            loss = policy.losses.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if progress:
                progress()
        metrics = {"reward": scores.mean().item(), "reward_std": scores.view(-1, config.rloo_k).std(1).mean().item(),
                   "kl": (old - reference).mean().item(), "rloo/loss": loss.item(),
                   "rloo/penalised_reward": penalised.mean().item(),
                   "clip_ratio/region_mean": policy.clipped.float().mean().item()}
    model.eval()
    return metrics
