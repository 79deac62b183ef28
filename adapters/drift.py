"""The drift guard: a trust region on plain text, enforced before a version is published.

Learning a taste (examples in every reply, a casual tone, emoji) moves the model's distribution on *every* reply,
so an update can make ordinary, neutral replies much less likely: the first sign of a model sliding into its taste's
caricature. The guard measures that as the perplexity of a fixed set of plain replies (`ANCHOR`, written for this
purpose; the learning-curve benchmark judges drift on different text) relative to the base model, and when a
freshly trained adapter exceeds `max_ratio` it backtracks along the update, as TRPO's line search does with its KL
constraint: parameters start + s·(trained − start), bisecting s ∈ [0, 1] for the largest step that stays inside.
If even the starting point is outside (the global adapter underneath changed, or the limit was lowered), the whole
adapter's update is shrunk instead (LoRA B × t, which scales ΔW = B·A by t).

An update inside costs one forward pass over the anchor (≈ 170 reply tokens); one outside costs `steps` more."""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from adapters.data import Batch, collate, encode_answers
from adapters.logprobs import sequence_logps
from assistant.model import LoadedModel

log = logging.getLogger(__name__)

ANCHOR: tuple[tuple[str, str], ...] = (
    ("When does the post office open?", "The post office opens at eight in the morning from Monday to Friday."),
    ("How long should I boil an egg?", "Boil the egg for about nine minutes if you want the yolk to be firm."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid, which is also its largest city."),
    ("Why do leaves fall in autumn?",
     "Trees drop their leaves in autumn to save water and energy through the cold months."),
    ("How many days are in a leap year?", "A leap year has three hundred and sixty-six days instead of the usual "
     "three hundred and sixty-five."),
    ("What should I bring to a job interview?",
     "Bring a copy of your resume, a pen and a short list of questions about the role."),
    ("How do I keep bread fresh?", "Keep bread in a paper bag at room temperature and eat it within a few days."),
    ("What does a thermometer measure?", "A thermometer measures temperature, usually in degrees Celsius or "
     "Fahrenheit."),
    ("How far is the Moon?", "The Moon is about three hundred and eighty thousand kilometres away from the Earth."),
    ("Is it safe to drink tap water?",
     "In most towns the tap water is tested regularly and is safe to drink."),
)
"""Everyday questions with plain, neutral replies: no list, no emoji, no examples, no question back."""

ANCHOR_MAX_TOKENS = 128


def anchor_batch(loaded: LoadedModel) -> Batch:
    """The anchor replies as one right-padded batch (prompt formatted as the product serves it)."""
    return collate(encode_answers(loaded, ANCHOR, ANCHOR_MAX_TOKENS), loaded.tokenizer.pad_token_id)


@torch.no_grad()
def perplexity(model: torch.nn.Module, batch: Batch) -> float:
    """Per-token perplexity of the batch's completions under `model` (in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        logps = sequence_logps(model, batch)
    finally:
        model.train(was_training)
    return math.exp(-logps.sum().item() / batch.completion_mask.sum().item())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable (LoRA) parameters: the start of the update the guard may backtrack to."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _largest_inside(ratio_at: Callable[[float], float], max_ratio: float, steps: int) -> tuple[float, float | None]:
    """Bisection for the largest x in [0, 1] with ratio_at(x) ≤ max_ratio, 1 being outside: x to within
    2^-steps and its ratio; (0, None) if no point tried was inside (0 itself is not tried)."""
    lo, lo_ratio, hi = 0.0, None, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        r = ratio_at(mid)
        if r <= max_ratio:
            lo, lo_ratio = mid, r
        else:
            hi = mid
    return lo, lo_ratio


def limit_drift(model: torch.nn.Module, start: dict[str, torch.Tensor], batch: Batch, base_perplexity: float,
                max_ratio: float, steps: int = 4) -> dict[str, float]:
    """Keep `model`'s anchor perplexity within `max_ratio` × `base_perplexity` by backtracking its trainable
    parameters toward `start` (see the module docstring). Changes `model` in place; returns metrics:
    `drift/perplexity_ratio` (as published), `drift/perplexity_ratio_trained` (before the guard),
    `drift/update_scale` (s: 1 = the update as trained) and, when the whole adapter had to shrink,
    `drift/adapter_scale` (t). Each bisection step is one forward pass over the anchor."""
    def ratio() -> float:
        return perplexity(model, batch) / base_perplexity

    first = ratio()
    metrics = {"drift/perplexity_ratio_trained": first, "drift/perplexity_ratio": first, "drift/update_scale": 1.0}
    if first <= max_ratio:
        log.info("Drift guard: anchor perplexity ×%.3f, within ×%.3f", first, max_ratio)
        return metrics
    params = {name: p for name, p in model.named_parameters() if name in start}
    trained = {name: p.detach().clone() for name, p in params.items()}

    def along_update(s: float) -> None:
        for name, p in params.items():
            p.data.copy_(start[name] + s * (trained[name] - start[name]))

    def shrunk(t: float) -> None:
        for name, p in params.items():
            p.data.copy_(start[name] * t if "lora_B" in name else start[name])

    def measured(place: Callable[[float], None]) -> Callable[[float], float]:
        return lambda x: (place(x), ratio())[1]

    s, r = _largest_inside(measured(along_update), max_ratio, steps)
    if r is None:  # not even 2^-steps of the update fits: the start itself may be outside
        r = measured(along_update)(0.0)
    if r <= max_ratio:
        along_update(s)
        metrics.update({"drift/update_scale": s, "drift/perplexity_ratio": r})
    else:  # the start is outside (the model underneath changed, or the limit was lowered): shrink B·A itself
        t, r = _largest_inside(measured(shrunk), max_ratio, steps)
        if r is None:
            t, r = 0.0, measured(shrunk)(0.0)  # the model underneath is outside already: the adapter cannot help
        shrunk(t)
        metrics.update({"drift/update_scale": 0.0, "drift/adapter_scale": t, "drift/perplexity_ratio": r})
    log.info("Drift guard: anchor perplexity ×%.3f after training, above ×%.3f; published at ×%.3f (%s)", first,
             max_ratio, metrics["drift/perplexity_ratio"],
             ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items() if k.endswith("scale")))
    return metrics
