"""LoRA training from preference examples: DPO on pairs (with a distillation term on the chosen reply, see
`TrainConfig.chosen_term`) plus KTO on unpaired feedback, a few steps at a time.

The caller passes the model: the base for the global adapter, or base + global merged for a personal one
(a residual on top of the global adapter). In both cases the reference policy is that model with the LoRA disabled, so
the KL leash pulls towards the model the adapter is trained on top of. Reference values are computed once per
example before the steps (`adapters.references`); log-probabilities come from `adapters.logprobs`.
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from peft import PeftModel

from adapters.data import Encoded, Examples, PairExample, collate, encode_examples, fit_prompt
from adapters.logprobs import (Sequence, completion_log_probs, logps_in_chunks, shared_prompt_log_probs,
                               shares_prompts, summed_logps, teachers)
from adapters.lora import autocast
from adapters.losses import Teacher, distill_kl, dpo_loss, kto_loss, kto_reference_point, pair_metrics
from adapters.references import ReferenceCache, everyday_references, pair_references
from adapters.rloo import Scorer, rloo_steps
from assistant.config import TrainConfig
from assistant.explore import instructed
from assistant.generation import left_padded, sampling_kwargs
from assistant.model import LoadedModel
from storage.errors import InvalidInput

log = logging.getLogger(__name__)


def objective(config: TrainConfig, rewarded: bool = True) -> str:
    """The loss an update trained with, as its manifest names it: "dpo+kto", then "+distill" or "+nll" when the
    chosen-reply term is on, "+on_policy_distill" and "+everyday_distill" when those terms are; "rloo" alone, or
    "…+rloo" after the DPO steps of "hybrid". `rewarded`: whether a learned reward was there for the RLOO steps
    (without one an "rloo" update trains as "dpo")."""
    offline = ("dpo+kto" + (f"+{config.chosen_term}" if config.rpo_alpha > 0 else "")
               + ("+on_policy_distill" if config.on_policy_weight > 0 else "")
               + ("+everyday_distill" if config.everyday_weight > 0 else ""))
    if config.objective == "dpo" or not rewarded:
        return offline
    return "rloo" if config.objective == "rloo" else offline + "+rloo"


@torch.no_grad()
def on_policy_targets(model: PeftModel, loaded: LoadedModel, pairs: list[PairExample],
                      config: TrainConfig) -> tuple[list[Sequence], list[Teacher]]:
    """The policy's own replies to the plain prompts of the first `config.on_policy_pairs` pairs whose chosen reply
    followed an instruction, as (ids, prompt length) sequences, and the reference's (adapter disabled) distribution
    at each of their tokens given the instructed prompt. Sampled from a seed fixed by the prompts; the caller's
    random state is left as it was."""
    tokenizer = loaded.tokenizer
    plain, taught_prompts = [], []
    for p in pairs:
        if not p.chosen_instruction:
            continue
        try:
            fitted = [fit_prompt(loaded, prompt, config.max_length, config.max_prompt_tokens, config.on_policy_tokens)
                      for prompt in (p.prompt, instructed(p.prompt, p.chosen_instruction))]
        except InvalidInput:  # no room for the instruction: this pair teaches through "distill" alone
            continue
        plain.append(fitted[0])
        taught_prompts.append(fitted[1])
        if len(plain) == config.on_policy_pairs:
            break
    if not plain:
        return [], []
    input_ids, attention_mask = left_padded(plain, tokenizer.pad_token_id)  # (rows, widest prompt)
    model.eval()
    with torch.random.fork_rng(devices=[]), autocast(config):
        torch.manual_seed(zlib.crc32(json.dumps([config.seed, plain]).encode()))
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                             max_new_tokens=config.on_policy_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             **sampling_kwargs(config.on_policy_temperature, 1.0))
    replies = []
    for row in out[:, input_ids.shape[1]:].tolist():  # up to and with the first end-of-sequence, no padding
        replies.append(row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row)
    with model.disable_adapter(), autocast(config):
        taught, _ = teachers(model, [(t + r, len(t)) for t, r in zip(taught_prompts, replies)],
                             tokenizer.pad_token_id, config.distill_top_k)
    return [(p + r, len(p)) for p, r in zip(plain, replies)], taught


@dataclass(frozen=True)
class _Targets:
    """What every step compares the policy with, computed before the first."""

    ref_chosen: torch.Tensor  # (pairs,) reference log-probs of the chosen replies
    ref_rejected: torch.Tensor  # (pairs,)
    taught: list[Teacher | None]  # per pair: the chosen reply's distillation teacher (None: not distilling)
    ref_unpaired: torch.Tensor  # (unpaired,)
    unpaired_taught: list[Teacher]  # per unpaired reply: its distillation teacher (empty: not distilling)
    ref_mismatched: torch.Tensor  # (unpaired,) each reply after another prompt: KTO's z0
    labels: torch.Tensor  # (unpaired,) bool: desirable
    on_policy: list[Sequence]
    on_policy_taught: list[Teacher]
    everyday: list[Sequence]
    everyday_taught: list[Teacher]


@dataclass(frozen=True)
class _Orders:
    """Endless index streams, one per kind of example: each step draws its batches from them."""

    pairs: Iterator[int]
    unpaired: Iterator[int]
    on_policy: Iterator[int]
    everyday: Iterator[int]


def train_adapter(
    model: PeftModel,
    loaded: LoadedModel,
    examples: Examples,
    config: TrainConfig,
    progress: Callable[[int, int, dict], None] | None = None,
    new_examples: int | None = None,
    references: ReferenceCache | None = None,
    reference_key: str = "",
    reward: Scorer | None = None,
) -> dict:
    """Run `config.steps_for(examples)` optimizer steps (DPO/KTO), then the RLOO rounds (`adapters.rloo`) when the
    objective has them and a `reward` scores samples; return TRL-named metrics of the last step of each.

    `references`: where the reference model's values of each pair are kept across calls; `reference_key` names that
    reference model (the same key must mean the same weights, e.g. the global version a personal adapter sits on).
    `reward`: the profile's learned reward; None trains an "rloo" update as "dpo"."""
    if not len(examples):
        raise ValueError("no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    on_policy = config.objective != "dpo" and reward is not None
    metrics = {} if config.objective == "rloo" and on_policy else _offline_steps(
        model, loaded, examples, config, optimizer, progress, new_examples, references, reference_key)
    if on_policy:
        prompts = [e.prompt for e in (*examples.pairs, *examples.unpaired)]
        total = config.rloo_rounds * config.rloo_reuse
        done = iter(range(1, total + 1))
        metrics.update(rloo_steps(model, loaded, prompts, reward, config, optimizer,
                                  (lambda: progress(next(done), total, metrics)) if progress else None))
    return metrics


def _offline_steps(model: PeftModel, loaded: LoadedModel, examples: Examples, config: TrainConfig,
                   optimizer: torch.optim.Optimizer, progress, new_examples: int | None,
                   references: ReferenceCache | None, reference_key: str) -> dict:
    """The DPO/KTO steps of an update (with the chosen-reply and optional distillation terms)."""
    enc = encode_examples(loaded, examples, config.max_length, config.max_prompt_tokens)
    config = balanced(config, enc.labels)
    steps = config.steps_for(examples, new_examples)
    targets = _targets(model, loaded, examples, enc, config, references, reference_key)
    rng = random.Random(config.seed)  # pairs and unpaired share it: their passes interleave as the steps draw
    orders = _Orders(_cycle(len(enc.chosen), rng), _cycle(len(enc.unpaired), rng),
                     _cycle(len(targets.on_policy), random.Random(config.seed + 1)),  # the pairs' order as it was
                     _cycle(len(targets.everyday), random.Random(config.seed + 2)))
    metrics: dict = {}
    _train_mode(model)
    for step in range(steps):
        loss, metrics = _step_loss(model, enc, targets, orders, config, loaded.tokenizer.pad_token_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        metrics["loss"] = loss.item()
        if enc.unpaired:
            metrics["kto/undesirable_weight"] = round(config.undesirable_weight, 4)
        if progress:
            progress(step + 1, steps, metrics)
    model.eval()
    return metrics


def balanced(config: TrainConfig, labels: list[bool]) -> TrainConfig:
    """`config` with KTO's 👎 weight lowered, when `kto_balance` is on and 👎 outnumber 👍, to the top of TRL's
    advised range: λ_U·n_U = λ_D·max(n_D, 1) (KTOTrainer warns outside [1, 4/3] for λ_D·n_D / λ_U·n_U). Thumbs are
    mostly 👎 for a taste the model misses, and undesirable examples alone only push likelihood down: without the
    balance a few of them drove the anchor perplexity past ×2 in one update (docs/learning.md)."""
    undesirable = len(labels) - sum(labels)
    if not config.kto_balance or not undesirable:
        return config
    top = config.desirable_weight * max(sum(labels), 1) / undesirable
    return replace(config, undesirable_weight=min(config.undesirable_weight, top))


def _distilling(config: TrainConfig) -> bool:
    return config.rpo_alpha > 0 and config.chosen_term == "distill"


def _targets(model: PeftModel, loaded: LoadedModel, examples: Examples, enc: Encoded, config: TrainConfig,
             references: ReferenceCache | None, reference_key: str) -> _Targets:
    """The reference's values (adapter disabled, no grad) and the on-policy targets."""
    pad = loaded.tokenizer.pad_token_id
    model.eval()
    with torch.no_grad(), model.disable_adapter(), autocast(config):
        ref_chosen, ref_rejected, taught = pair_references(model, enc, examples.pairs, config, _distilling(config),
                                                           pad, references, reference_key)
        ref_unpaired = logps_in_chunks(model, enc.unpaired, pad, 8)
        unpaired_taught = (teachers(model, enc.unpaired_taught, pad, config.distill_top_k)[0]
                           if _distilling(config) and enc.unpaired else [])
        ref_mismatched = logps_in_chunks(model, enc.mismatched, pad, 8)
        everyday, everyday_taught = (everyday_references(model, loaded, config, references, reference_key)
                                     if config.everyday_weight > 0 else ([], []))
    labels = torch.tensor(enc.labels, dtype=torch.bool)
    on_policy, on_policy_taught = (on_policy_targets(model, loaded, examples.pairs, config)
                                   if config.on_policy_weight > 0 else ([], []))
    return _Targets(ref_chosen, ref_rejected, taught, ref_unpaired, unpaired_taught, ref_mismatched, labels,
                    on_policy, on_policy_taught, everyday, everyday_taught)


def _step_loss(model, enc: Encoded, targets: _Targets, orders: _Orders, config: TrainConfig,
               pad: int) -> tuple[torch.Tensor, dict]:
    """One step's loss on fresh batches of every kind of example, and its metrics (TRL's names)."""
    loss = torch.zeros(())
    metrics: dict = {}
    if enc.chosen:
        pair_term, metrics = _pair_term(model, enc, targets, orders.pairs, config, pad)
        loss = loss + pair_term
    for name, weight, sequences, taught, order in (
            ("on_policy_distill_loss", config.on_policy_weight, targets.on_policy, targets.on_policy_taught,
             orders.on_policy),
            ("everyday_distill_loss", config.everyday_weight, targets.everyday, targets.everyday_taught,
             orders.everyday)):
        if sequences:
            kl = _distill_step(model, sequences, taught, order, pad, config)
            loss = loss + weight * kl
            metrics[name] = kl.item()
    if enc.unpaired:
        idx, policy, mismatched, (log_probs, rows) = _step_logps(model, enc.unpaired, enc.mismatched, orders.unpaired,
                                                                 pad, config)
        z0 = kto_reference_point(mismatched, targets.ref_mismatched[idx])
        unpaired = kto_loss(policy, targets.ref_unpaired[idx], targets.labels[idx], z0, config.beta,
                            config.desirable_weight, config.undesirable_weight)
        loss = loss + config.unpaired_weight * unpaired.losses.mean()
        if targets.unpaired_taught:  # the chosen-reply term of pairs, for thumbs: a lesson on 👍, a leash on 👎
            kl = distill_kl(log_probs, rows, [targets.unpaired_taught[i] for i in idx]).mean()
            loss = loss + config.rpo_alpha * kl
            metrics["kto/distill_loss"] = kl.item()
        metrics["kto/loss"] = unpaired.losses.mean().item()
        metrics["kl"] = z0.item()
    return loss, metrics


def _pair_term(model, enc: Encoded, targets: _Targets, order: Iterator[int], config: TrainConfig,
               pad: int) -> tuple[torch.Tensor, dict]:
    """DPO on a batch of pairs, plus the chosen-reply term (distillation or NLL, weighted by `rpo_alpha`)."""
    metrics: dict = {}
    idx, chosen, rejected, (log_probs, rows) = _step_logps(model, enc.chosen, enc.rejected, order, pad, config)
    pair = dpo_loss(chosen, rejected, targets.ref_chosen[idx], targets.ref_rejected[idx], config.beta,
                    config.label_smoothing)
    loss = pair.losses.mean()
    if _distilling(config):
        kl = distill_kl(log_probs, rows, [targets.taught[i] for i in idx]).mean()
        loss = loss + config.rpo_alpha * kl
        metrics["distill_loss"] = kl.item()
    elif config.rpo_alpha:
        tokens = torch.tensor([max(1, len(enc.chosen[i][0]) - enc.chosen[i][1]) for i in idx], dtype=chosen.dtype)
        nll = -(chosen / tokens).mean()
        loss = loss + config.rpo_alpha * nll
        metrics["nll_loss"] = nll.item()
    metrics.update(pair_metrics(pair))
    metrics["logps/chosen"] = chosen.mean().item()
    metrics["logps/rejected"] = rejected.mean().item()
    return loss, metrics


def _distill_step(model, sequences: list[Sequence], taught: list[Teacher], order: Iterator[int], pad: int,
                  config: TrainConfig) -> torch.Tensor:
    """Mean KL(teacher ‖ policy) over a batch of `sequences` drawn from `order` (`distill_kl`)."""
    idx = [next(order) for _ in range(min(config.batch_size, len(sequences)))]
    with autocast(config):
        log_probs, rows = completion_log_probs(model, collate([sequences[i] for i in idx], pad))
    return distill_kl(log_probs, rows, [taught[i] for i in idx]).mean()


def _train_mode(model: torch.nn.Module) -> None:
    """Training mode for LoRA's own dropout only. The base model's dropout (GPT-2's 0.1) stays off, as TRL's
    `disable_dropout`: the reference log-probs are computed without it, and a policy term drawn with it would
    compare a noisy policy with a clean reference."""
    model.eval()
    for name, module in model.named_modules():
        if name.endswith("lora_dropout") or ".lora_dropout." in name:
            module.train()


def _step_logps(model, first: list[Sequence], second: list[Sequence], order: Iterator[int], pad: int,
                config: TrainConfig):
    """Draw a batch of indices; return them, the summed log-probs of `first[i]` and `second[i]`, and the per-token
    log-probabilities they were summed from (`completion_log_probs`' layout; `first`'s rows come first). Pairs that
    share their prompts (DPO's chosen and rejected) run it once (`shared_prompt_log_probs`)."""
    idx = [next(order) for _ in range(min(config.batch_size, len(first)))]
    a, b = [first[i] for i in idx], [second[i] for i in idx]
    batch = collate(a + b, pad)
    with autocast(config):
        if config.share_prompts and shares_prompts(a, b):
            log_probs, rows = shared_prompt_log_probs(model, a, b, pad)
        else:
            log_probs, rows = completion_log_probs(model, batch)
        logps = summed_logps(batch, log_probs, rows)
    return idx, logps[: len(idx)], logps[len(idx):], (log_probs, rows)


def _cycle(n: int, rng: random.Random) -> Iterator[int]:
    """Indices 0..n-1 in a fresh shuffled order each pass."""
    while n:
        order = list(range(n))
        rng.shuffle(order)
        yield from order
