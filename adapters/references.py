"""The reference model's values a training run compares the policy with, and a cache that keeps them across updates.

The reference is the model with the LoRA disabled (TRL's PEFT trick): the base for the global adapter, base + global
for a personal one. Its summed log-probabilities of each pair's replies, its distillation teachers on the chosen
replies and on the everyday-text leash's replies are computed once per example before the steps, and kept in a
`ReferenceCache` while the reference stays the same. Call these without grad, with the adapter disabled.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

import torch

from adapters.data import Encoded, PairExample
from adapters.everyday import everyday_sequences
from adapters.logprobs import Sequence, logps_in_chunks, teachers
from adapters.losses import Teacher
from assistant.config import TrainConfig
from assistant.model import LoadedModel


class ReferenceCache:
    """The reference model's values of training pairs — summed log-probs of both replies and the chosen one's
    distillation teacher — and its teachers on the everyday-text leash's replies, kept across updates: an update
    replays older pairs, and while the reference stays the same (for a personal adapter: until the global version
    changes) their values do too. Least recently used first out. Keys come from `pair_key` (and, for the leash,
    `everyday_references`); the worker keeps the held-out margins of the model below an adapter in another one."""

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


def pair_references(model: torch.nn.Module, enc: Encoded, pairs: list[PairExample], config: TrainConfig,
                    distilling: bool, pad: int, cache: ReferenceCache | None,
                    reference_key: str) -> tuple[torch.Tensor, torch.Tensor, list[Teacher | None]]:
    """(reference log-probs of the chosen replies, shape (pairs,), of the rejected ones, distillation teachers of
    the chosen ones when `distilling`) — from `cache` where it has them, else from the model."""
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
                chosen[probed] = logps_in_chunks(model, [enc.chosen[i] for i in probed], pad, 8)
        else:
            chosen[missing] = logps_in_chunks(model, [enc.chosen[i] for i in missing], pad, 8)
        rejected[missing] = logps_in_chunks(model, [enc.rejected[i] for i in missing], pad, 8)
        if cache is not None:
            for i in missing:
                cache.put(keys[i], (chosen[i].item(), rejected[i].item(), taught[i]))
    return chosen, rejected, taught


def everyday_references(model: torch.nn.Module, loaded: LoadedModel, config: TrainConfig,
                        cache: ReferenceCache | None, reference_key: str) -> tuple[list[Sequence], list[Teacher]]:
    """The plain replies (`adapters.everyday`) and the reference's teachers on them, from `cache` while the reference
    stays the same."""
    sequences = everyday_sequences(loaded)
    key = hashlib.sha256(json.dumps([reference_key, "everyday", sequences, config.distill_top_k]).encode()).hexdigest()
    taught = cache.get(key) if cache is not None else None
    if taught is None:
        taught, _ = teachers(model, sequences, loaded.tokenizer.pad_token_id, config.distill_top_k)
        if cache is not None:
            cache.put(key, taught)
    return sequences, taught
