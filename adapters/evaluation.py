"""Held-out evaluation: preference margins, accuracy, and `HeldOutEval`, what a version's manifest records of it.

A pair's margin is log π(chosen) − log π(rejected) under a model, summed over reply tokens (nats); the model prefers
the chosen reply when it is positive.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from peft import PeftModel

from adapters.data import PairExample, encode
from adapters.logprobs import logps_in_chunks
from adapters.lora import autocast
from adapters.references import ReferenceCache, pair_key
from assistant.config import TrainConfig
from assistant.model import LoadedModel

METRICS_PREFIX = "eval/"
"""`HeldOutEval`'s fields in a manifest's metrics: "eval/<field>", beside TRL's training metrics."""


@dataclass(frozen=True)
class HeldOutEval:
    """How a new version does on held-out votes: the share of pairs whose chosen reply the model's own likelihood
    prefers. The contract between the worker, which measures it and writes `to_metrics()` into the version's
    manifest, and the readers of that manifest — the serving gate (`adapters.blend`) and the Learning panel
    (`ChatService.learning_status`) — which read it back with `from_metrics`. A field the manifest lacks is None."""

    pairs: int = 0
    """Held-out pairs evaluated (0: none, and no other field is measured)."""
    accuracy_personal: float | None = None
    """A personal version's accuracy (base + global + the version at full weight); None for the global adapter."""
    accuracy_global: float | None = None
    """The global adapter's accuracy: the global version itself, or for a personal one the model it sits on."""
    only_personal_right: int | None = None
    """Pairs the personal version gets right and the model below it does not (personal versions only)."""
    only_global_right: int | None = None
    """Pairs the model below gets right and the personal version does not (personal versions only)."""
    accuracy_base: float | None = None
    """The bare base model's accuracy."""

    @classmethod
    def of_global(cls, adapter: torch.Tensor, base: torch.Tensor) -> HeldOutEval:
        """From the held-out margins, shape (pairs,), of a global version and of the base it sits on."""
        return cls(len(adapter), accuracy_global=_accuracy(adapter), accuracy_base=_accuracy(base))

    @classmethod
    def of_personal(cls, adapter: torch.Tensor, below: torch.Tensor, base: torch.Tensor) -> HeldOutEval:
        """From the held-out margins, shape (pairs,), of a personal version, of the model below it (base + global)
        and of the bare base."""
        mine, theirs = adapter > 0, below > 0
        return cls(len(adapter), accuracy_personal=_accuracy(adapter), accuracy_global=_accuracy(below),
                   only_personal_right=int((mine & ~theirs).sum()), only_global_right=int((theirs & ~mine).sum()),
                   accuracy_base=_accuracy(base))

    def to_metrics(self) -> dict:
        """The measured fields under their manifest names ("eval/pairs", "eval/accuracy_personal", …)."""
        measured = {f.name: getattr(self, f.name) for f in fields(self)}
        return {METRICS_PREFIX + name: value for name, value in measured.items() if value is not None}

    @classmethod
    def from_metrics(cls, metrics: dict) -> HeldOutEval:
        """Read back from a manifest's metrics (`to_metrics`); other metrics are ignored."""
        keys = {f.name: METRICS_PREFIX + f.name for f in fields(cls)}
        return cls(**{name: metrics[key] for name, key in keys.items() if key in metrics})


def _accuracy(margins: torch.Tensor) -> float:
    return (margins > 0).float().mean().item()


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
        return logps_in_chunks(model, chosen, pad, 8) - logps_in_chunks(model, rejected, pad, 8)


def cached_margins(model: torch.nn.Module, loaded: LoadedModel, pairs: list[PairExample], key: str | None,
                   config: TrainConfig, cache: ReferenceCache) -> torch.Tensor:
    """`preference_margins` of a model that does not change while `key` names it (the base: None; base + a global
    version: that version), kept in `cache` per pair *content*: a changed vote swaps chosen and rejected and so gets
    its own entry."""
    keys = [pair_key(f"margin {key}", p, config) for p in pairs]
    missing = [(k, p) for k, p in zip(keys, pairs) if cache.get(k) is None]
    if missing:
        fresh = preference_margins(model, loaded, [p for _, p in missing], config).tolist()
        for (k, _), m in zip(missing, fresh):
            cache.put(k, m)
    return torch.tensor([cache.get(k) for k in keys])


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
