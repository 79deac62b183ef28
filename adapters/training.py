"""LoRA training from preference examples: DPO on pairs (with a distillation term on the chosen reply, see
`TrainConfig.chosen_term`) plus KTO on unpaired feedback, a few steps at a time.

The caller passes the model: the base for the global adapter, or base + global merged for a personal one
(a residual on top of the global adapter). In both cases the reference policy is that model with the LoRA disabled, so
the KL leash pulls towards the model the adapter is trained on top of. Reference log-probs are computed
once per example before the steps. Logits are only computed at reply positions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel

from adapters.data import Batch, Examples, PairExample, collate, encode, fit_prompt
from adapters.losses import (Teacher, distill_kl, dpo_loss, kto_loss, kto_reference_point, pair_metrics,
                             rest_log_mass)
from adapters.everyday import everyday_sequences
from adapters.lora import autocast
from assistant.config import TrainConfig
from assistant.explore import instructed
from assistant.generation import left_padded, sampling_kwargs
from assistant.model import LoadedModel
from storage.errors import InvalidInput

log = logging.getLogger(__name__)

def objective(config: TrainConfig) -> str:
    """The loss an update trained with, as its manifest names it: "dpo+kto", then "+distill" or "+nll" when the
    chosen-reply term is on, "+on_policy_distill" and "+everyday_distill" when those terms are."""
    return ("dpo+kto" + (f"+{config.chosen_term}" if config.rpo_alpha > 0 else "")
            + ("+on_policy_distill" if config.on_policy_weight > 0 else "")
            + ("+everyday_distill" if config.everyday_weight > 0 else ""))


def completion_log_probs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probabilities at every position that predicts a completion token, shape (tokens, vocab), in
    row-major order, and the batch row of each, shape (tokens,)."""
    predicts = torch.zeros_like(batch.completion_mask)
    predicts[:, :-1] = batch.completion_mask[:, 1:]  # position t predicts token t+1
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=predicts)
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()  # (tokens kept, vocab), row-major order
    return torch.log_softmax(logits, dim=-1), predicts.nonzero()[:, 0]


def shared_prompt_log_probs(model: torch.nn.Module, first: list[tuple[list[int], int]],
                            second: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_log_probs(model, collate(first + second, pad_id))` for pairs whose two sequences share their
    prompt (`first[i]` and `second[i]`: the same ids up to the same prompt length), with each prompt run once.

    The prompts go through the model once, right-padded, keeping their key/value cache; the cache is repeated for
    the two completions of each pair, which then run with positions that continue their own prompt (a padded
    prompt's gap is masked). Gradients flow through the cache into the prompt, as in the plain forward. A DPO
    step's prompt is then computed once instead of twice: in a long conversation it is most of the tokens."""
    n = len(first)
    prompts = [ids[:plen] for ids, plen in first]
    lengths = torch.tensor([len(p) for p in prompts])
    prompt_ids = torch.full((n, int(lengths.max())), pad_id, dtype=torch.long)
    for row, ids in enumerate(prompts):
        prompt_ids[row, : len(ids)] = torch.tensor(ids)
    prompt_mask = (torch.arange(prompt_ids.shape[1])[None, :] < lengths[:, None]).long()
    last = torch.zeros_like(prompt_mask, dtype=torch.bool)
    last[torch.arange(n), lengths - 1] = True  # the prompt's last token predicts the completion's first
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True, logits_to_keep=last)
    first_logits, cache = out.logits, out.cache  # (n, vocab): row i is prompt i's prediction
    completions = [ids[plen:] for ids, plen in (*first, *second)]  # rows: every first, then every second
    sizes = torch.tensor([len(c) for c in completions])
    cont_ids = torch.full((2 * n, int(sizes.max())), pad_id, dtype=torch.long)
    for row, ids in enumerate(completions):
        cont_ids[row, : len(ids)] = torch.tensor(ids)
    order = torch.arange(2 * n) % n  # each row's prompt
    cache.batch_select_indices(order)
    steps = torch.arange(cont_ids.shape[1])[None, :]
    cont_mask = (steps < sizes[:, None]).long()
    keep = steps < (sizes - 1)[:, None]  # completion token t predicts token t+1 (the last predicts nothing kept)
    out = model(input_ids=cont_ids, attention_mask=torch.cat([prompt_mask[order], cont_mask], dim=1),
                position_ids=lengths[order][:, None] + steps, cache=cache, logits_to_keep=keep)
    cont_logits = out.logits.reshape(-1, out.logits.shape[-1])  # (kept, vocab), row-major
    # Row-major order as the plain forward gives it: each row's first prediction (from its prompt), then the rest.
    starts = torch.cumsum(sizes - 1, 0) - (sizes - 1)
    index = torch.cat([torch.cat([order[r:r + 1], n + starts[r] + torch.arange(int(sizes[r]) - 1)])
                       for r in range(2 * n)])
    logits = torch.cat([first_logits.reshape(n, -1), cont_logits])[index].float()
    return torch.log_softmax(logits, dim=-1), torch.repeat_interleave(torch.arange(2 * n), sizes)


def shares_prompts(first: list[tuple[list[int], int]], second: list[tuple[list[int], int]]) -> bool:
    """Whether each pair's two sequences start with the same prompt (what `shared_prompt_log_probs` needs)."""
    return all(a_len == b_len and a[:a_len] == b[:b_len] for (a, a_len), (b, b_len) in zip(first, second))


def _summed(batch: Batch, log_probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    targets = batch.input_ids[:, 1:][batch.completion_mask[:, 1:]]
    token_logps = log_probs.gather(1, targets[:, None]).squeeze(1)
    return torch.zeros(batch.input_ids.shape[0], dtype=token_logps.dtype).index_add(0, rows, token_logps)


def sequence_logps(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed log-probability of each row's completion tokens, shape (batch,)."""
    return _summed(batch, *completion_log_probs(model, batch))


def teachers(model: torch.nn.Module, sequences: list[tuple[list[int], int]], pad_id: int, top_k: int,
             chunk: int = 8) -> tuple[list[Teacher], torch.Tensor]:
    """`model`'s top-k next-token distributions at each sequence's completion positions, and the summed
    log-probability of each completion, shape (sequences,), from the same forward (call without grad)."""
    out, sums = [], []
    for start in range(0, len(sequences), chunk):
        batch = collate(sequences[start:start + chunk], pad_id)
        log_probs, rows = completion_log_probs(model, batch)
        sums.append(_summed(batch, log_probs, rows))
        top, ids = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1)
        top = torch.cat([top, rest_log_mass(top)], dim=-1)
        for row in range(min(chunk, len(sequences) - start)):
            mine = rows == row
            out.append(Teacher(top[mine], ids[mine].to(torch.int32)))
    return out, torch.cat(sums) if sums else torch.zeros(0)


@dataclass
class _Encoded:
    chosen: list[tuple[list[int], int]] = field(default_factory=list)
    rejected: list[tuple[list[int], int]] = field(default_factory=list)
    unpaired: list[tuple[list[int], int]] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    mismatched: list[tuple[list[int], int]] = field(default_factory=list)
    taught: list[tuple[list[int], int]] = field(default_factory=list)
    """Each chosen reply after the prompt it was generated from (the exploration instruction included)."""


def _encode_all(loaded: LoadedModel, examples: Examples, max_length: int, max_prompt: int) -> _Encoded:
    enc = _Encoded()
    for p in examples.pairs:
        enc.chosen.append(encode(loaded, p.prompt, p.chosen, max_length, max_prompt, p.chosen_ended))
        enc.rejected.append(encode(loaded, p.prompt, p.rejected, max_length, max_prompt, p.rejected_ended))
        enc.taught.append(_generated_from(loaded, p, max_length, max_prompt) if p.chosen_instruction else enc.chosen[-1])
    items = examples.unpaired
    for i, u in enumerate(items):
        enc.unpaired.append(encode(loaded, u.prompt, u.completion, max_length, max_prompt, u.ended))
        enc.labels.append(u.label)
        # Reply i against the prompt of i+1: what the policy does to replies that do not answer (KTO's z0).
        other = items[(i + 1) % len(items)]
        enc.mismatched.append(encode(loaded, other.prompt, u.completion, max_length, max_prompt, u.ended))
    return enc


def _generated_from(loaded: LoadedModel, p: PairExample, max_length: int, max_prompt: int) -> tuple[list[int], int]:
    try:
        return encode(loaded, instructed(p.prompt, p.chosen_instruction), p.chosen, max_length, max_prompt,
                      p.chosen_ended)
    except InvalidInput:  # the instruction does not fit: the reply's own prompt teaches instead
        return encode(loaded, p.prompt, p.chosen, max_length, max_prompt, p.chosen_ended)


class ReferenceCache:
    """The reference model's values of training pairs — summed log-probs of both replies and the chosen one's
    distillation teacher — and its teachers on the everyday-text leash's replies, kept across updates: an update
    replays older pairs, and while the reference stays the same (for a personal adapter: until the global version
    changes) their values do too. Least recently used first out. Keys come from `pair_key` (and, for the leash,
    `_everyday_references`); the worker keeps the held-out margins of the model below an adapter in another one."""

    def __init__(self, size: int = 2048):
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def pair_key(reference_key: str, pair: PairExample, config: TrainConfig, distilling: bool = False) -> str:
    """Everything a pair's reference values depend on besides the reference's weights."""
    facts = [reference_key, pair.prompt, pair.chosen, pair.rejected, pair.chosen_ended, pair.rejected_ended,
             pair.chosen_instruction, config.max_length, config.max_prompt_tokens, distilling and config.distill_top_k]
    return hashlib.sha256(json.dumps(facts, ensure_ascii=False).encode()).hexdigest()


def _pair_references(model, enc: _Encoded, pairs: list[PairExample], config: TrainConfig, distilling: bool, pad: int,
                     cache: ReferenceCache | None, reference_key: str):
    """(reference log-probs of the chosen replies, of the rejected ones, distillation teachers) — from `cache` where
    it has them, else from the model (call without grad, adapter disabled)."""
    keys = [pair_key(reference_key, p, config, distilling) for p in pairs] if cache is not None else []
    known = {i: v for i, k in enumerate(keys) if (v := cache.get(k)) is not None} if cache is not None else {}
    missing = [i for i in range(len(pairs)) if i not in known]
    chosen, rejected = torch.zeros(len(pairs)), torch.zeros(len(pairs))
    taught: list[Teacher | None] = [None] * len(pairs)
    for i, (c, r, t) in known.items():
        chosen[i], rejected[i], taught[i] = c, r, t
    if missing:
        if distilling:  # a plain chosen reply is its own teacher sequence: one forward gives both
            new_taught, sums = teachers(model, [enc.taught[i] for i in missing], pad, config.distill_top_k)
            chosen[missing] = sums
            for i, t in zip(missing, new_taught):
                taught[i] = t
            probed = [i for i in missing if enc.taught[i] is not enc.chosen[i]]
            if probed:
                chosen[probed] = _logps_in_chunks(model, [enc.chosen[i] for i in probed], pad, 8)
        else:
            chosen[missing] = _logps_in_chunks(model, [enc.chosen[i] for i in missing], pad, 8)
        rejected[missing] = _logps_in_chunks(model, [enc.rejected[i] for i in missing], pad, 8)
        if cache is not None:
            for i in missing:
                cache.put(keys[i], (chosen[i].item(), rejected[i].item(), taught[i]))
    return chosen, rejected, taught


@torch.no_grad()
def on_policy_targets(model: PeftModel, loaded: LoadedModel, pairs: list[PairExample],
                      config: TrainConfig) -> tuple[list[tuple[list[int], int]], list[Teacher]]:
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


def _logps_in_chunks(model, sequences, pad_id: int, chunk: int) -> torch.Tensor:
    if not sequences:
        return torch.zeros(0)
    return torch.cat([sequence_logps(model, collate(sequences[i:i + chunk], pad_id))
                      for i in range(0, len(sequences), chunk)])


def train_adapter(
    model: PeftModel,
    loaded: LoadedModel,
    examples: Examples,
    config: TrainConfig,
    progress: Callable[[int, int, dict], None] | None = None,
    new_examples: int | None = None,
    references: ReferenceCache | None = None,
    reference_key: str = "",
) -> dict:
    """Run `config.steps_for(examples)` optimizer steps; return TRL-named metrics of the last step.

    `references`: where the reference model's values of each pair are kept across calls; `reference_key` names that
    reference model (the same key must mean the same weights, e.g. the global version a personal adapter sits on)."""
    if not len(examples):
        raise ValueError("no training examples")
    pad = loaded.tokenizer.pad_token_id
    enc = _encode_all(loaded, examples, config.max_length, config.max_prompt_tokens)
    steps = config.steps_for(examples, new_examples)
    model.eval()
    distilling = config.rpo_alpha > 0 and config.chosen_term == "distill"
    with torch.no_grad(), model.disable_adapter(), autocast(config):
        ref_chosen, ref_rejected, taught = _pair_references(model, enc, examples.pairs, config, distilling, pad,
                                                            references, reference_key)
        ref_unpaired = _logps_in_chunks(model, enc.unpaired, pad, 8)
        ref_mismatched = _logps_in_chunks(model, enc.mismatched, pad, 8)
        plain, plain_taught = (_everyday_references(model, loaded, config, references, reference_key)
                               if config.everyday_weight > 0 else ([], []))
    labels = torch.tensor(enc.labels, dtype=torch.bool)
    on_policy, on_policy_taught = (on_policy_targets(model, loaded, examples.pairs, config)
                                   if config.on_policy_weight > 0 else ([], []))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    rng = random.Random(config.seed)
    pair_order = _cycle(len(enc.chosen), rng)
    unpaired_order = _cycle(len(enc.unpaired), rng)
    on_policy_order = _cycle(len(on_policy), random.Random(config.seed + 1))  # leaves the pairs' order as it was
    plain_order = _cycle(len(plain), random.Random(config.seed + 2))
    metrics: dict = {}
    _train_mode(model)
    for step in range(steps):
        loss = torch.zeros(())
        metrics = {}
        if enc.chosen:
            idx, chosen, rejected, (log_probs, rows) = _step_logps(model, enc.chosen, enc.rejected, pair_order, pad,
                                                                   config)
            pair = dpo_loss(chosen, rejected, ref_chosen[idx], ref_rejected[idx], config.beta, config.label_smoothing)
            loss = loss + pair.losses.mean()
            if distilling:
                kl = distill_kl(log_probs, rows, [taught[i] for i in idx]).mean()
                loss = loss + config.rpo_alpha * kl
                metrics["distill_loss"] = kl.item()
            elif config.rpo_alpha:
                tokens = torch.tensor([max(1, len(enc.chosen[i][0]) - enc.chosen[i][1]) for i in idx],
                                      dtype=chosen.dtype)
                nll = -(chosen / tokens).mean()
                loss = loss + config.rpo_alpha * nll
                metrics["nll_loss"] = nll.item()
            metrics.update(pair_metrics(pair))
            metrics["logps/chosen"] = chosen.mean().item()
            metrics["logps/rejected"] = rejected.mean().item()
        for name, weight, sequences, taught_here, order in (
                ("on_policy_distill_loss", config.on_policy_weight, on_policy, on_policy_taught, on_policy_order),
                ("everyday_distill_loss", config.everyday_weight, plain, plain_taught, plain_order)):
            if sequences:
                kl = _distill_step(model, sequences, taught_here, order, pad, config)
                loss = loss + weight * kl
                metrics[name] = kl.item()
        if enc.unpaired:
            idx, policy, mismatched, _ = _step_logps(model, enc.unpaired, enc.mismatched, unpaired_order, pad, config)
            z0 = kto_reference_point(mismatched, ref_mismatched[idx])
            unpaired = kto_loss(policy, ref_unpaired[idx], labels[idx], z0, config.beta, config.desirable_weight,
                                config.undesirable_weight)
            loss = loss + config.unpaired_weight * unpaired.losses.mean()
            metrics["kto/loss"] = unpaired.losses.mean().item()
            metrics["kl"] = z0.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        metrics["loss"] = loss.item()
        if progress:
            progress(step + 1, steps, metrics)
    model.eval()
    return metrics


def _distill_step(model, sequences: list, taught: list[Teacher], order, pad: int, config: TrainConfig) -> torch.Tensor:
    """Mean KL(teacher ‖ policy) over a batch of `sequences` drawn from `order` (`distill_kl`)."""
    idx = [next(order) for _ in range(min(config.batch_size, len(sequences)))]
    with autocast(config):
        log_probs, rows = completion_log_probs(model, collate([sequences[i] for i in idx], pad))
    return distill_kl(log_probs, rows, [taught[i] for i in idx]).mean()


def _everyday_references(model, loaded: LoadedModel, config: TrainConfig, cache: ReferenceCache | None,
                      reference_key: str) -> tuple[list[tuple[list[int], int]], list[Teacher]]:
    """The plain replies (`adapters.everyday`) and the reference's teachers on them, from `cache` while the reference
    stays the same (call without grad, adapter disabled)."""
    sequences = everyday_sequences(loaded)
    key = hashlib.sha256(json.dumps([reference_key, "everyday", sequences, config.distill_top_k]).encode()).hexdigest()
    taught = cache.get(key) if cache is not None else None
    if taught is None:
        taught, _ = teachers(model, sequences, loaded.tokenizer.pad_token_id, config.distill_top_k)
        if cache is not None:
            cache.put(key, taught)
    return sequences, taught


def _train_mode(model: torch.nn.Module) -> None:
    """Training mode for LoRA's own dropout only. The base model's dropout (GPT-2's 0.1) stays off, as TRL's
    `disable_dropout`: the reference log-probs are computed without it, and a policy term drawn with it would
    compare a noisy policy with a clean reference."""
    model.eval()
    for name, module in model.named_modules():
        if name.endswith("lora_dropout") or ".lora_dropout." in name:
            module.train()


def _step_logps(model, first: list, second: list, order, pad: int, config: TrainConfig):
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
        logps = _summed(batch, log_probs, rows)
    return idx, logps[: len(idx)], logps[len(idx):], (log_probs, rows)


def _cycle(n: int, rng: random.Random):
    """Indices 0..n-1 in a fresh shuffled order each pass."""
    while n:
        order = list(range(n))
        rng.shuffle(order)
        yield from order


@torch.no_grad()
def preference_margins(model: torch.nn.Module, loaded: LoadedModel, pairs: list[PairExample],
                       config: TrainConfig = TrainConfig()) -> torch.Tensor:
    """log π(chosen) − log π(rejected) for each pair, shape (pairs,)."""
    pad = loaded.tokenizer.pad_token_id
    chosen = [encode(loaded, p.prompt, p.chosen, config.max_length, config.max_prompt_tokens, p.chosen_ended)
              for p in pairs]
    rejected = [encode(loaded, p.prompt, p.rejected, config.max_length, config.max_prompt_tokens,
                       p.rejected_ended) for p in pairs]
    model.eval()
    with autocast(config):
        return _logps_in_chunks(model, chosen, pad, 8) - _logps_in_chunks(model, rejected, pad, 8)


def preference_accuracy(model: PeftModel, loaded: LoadedModel, pairs: list[PairExample],
                        config: TrainConfig = TrainConfig(), reference: bool = True) -> float:
    """Share of pairs the model prefers the chosen reply of.

    reference=True: TRL's `rewards/accuracies` — the implicit reward margin against the adapter-disabled model is
    positive. reference=False: the model's own log-likelihood of the chosen reply is higher.
    """
    if not pairs:
        return float("nan")
    margin = preference_margins(model, loaded, pairs, config)
    if reference:
        with model.disable_adapter():
            margin = margin - preference_margins(model, loaded, pairs, config)
    return (margin > 0).float().mean().item()
