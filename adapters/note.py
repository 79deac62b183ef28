"""Has a personal adapter learned its profile's note ("How should Attune answer you?")?

While it has not, the note rides, hidden, in every prompt of that profile (instant effect), and every reply written
under it teaches the adapter, through the chosen reply's distillation, to answer that way unasked. Once it has, the
note stops being sent: shorter prompts, and the taste lives in the weights.

The measure, after each personal update, on the profile's own recent prompts: the adapter's greedy replies *with*
the note; how much likelier each is with the note than without it, under the adapter (`gap`) and under the model it
sits on (`gap_below`, base + global). `learned = 1 − gap / gap_below`, in [0, 1]: 0 — the adapter needs the note as
much as the model below does; 1 — it writes those replies as readily without it. A note that does not move the
model below at all (`gap_below` ≤ 0) has nothing to learn: 1. It reads the model's own likelihood, not the person's
taste: the benchmark checks it against the simulated user's reward (bench/learning_curve.py, `note`).
"""

from __future__ import annotations

import hashlib

import torch
from peft import PeftModel

from adapters.data import encode
from adapters.logprobs import logps_in_chunks
from assistant.config import DEFAULT_SYSTEM_PROMPT, TrainConfig
from assistant.explore import instructed
from assistant.generation import left_padded
from assistant.model import LoadedModel
from assistant.prompts import build_prompt

KEY, LEARNED = "note/key", "note/learned"
"""A version's manifest metrics: which note was measured (`note_key`) and how far it was learned."""


def note_key(note: str) -> str:
    """Names a note's words (a changed note is measured, and sent, afresh)."""
    return hashlib.sha256(" ".join(note.split()).encode()).hexdigest()[:16]


def still_sent(note: str, metrics: dict, learned_at: float, alpha: float = 1.0) -> bool:
    """Whether `note` goes into the prompt, given the metrics of the personal version that serves the profile, the
    weight α it serves at, and the `learned` from which the note is dropped (`LearningConfig.note_learned_at`): the
    adapter was measured at full weight, and serves at α, so it must reach `learned · α ≥ learned_at`."""
    if not note:
        return False
    return not (metrics.get(KEY) == note_key(note) and metrics.get(LEARNED, 0.0) * alpha >= learned_at)


def learned_share(model: PeftModel, loaded: LoadedModel, prompts: list[str], note: str, config: TrainConfig,
                  max_new_tokens: int = 32) -> float | None:
    """`learned` (module docstring) of the active adapter of `model` on `prompts`; None without prompts."""
    if not prompts or not note:
        return None
    return learned_from(*note_gaps(model, loaded, prompts, note, config, max_new_tokens))


def learned_from(gap: float, below: float) -> float:
    """1 − gap / below, in [0, 1]; 1 when the note does not move the model below (nothing to learn)."""
    if below <= 0:
        return 1.0
    return round(min(1.0, max(0.0, 1.0 - gap / below)), 4)


def note_gaps(model: PeftModel, loaded: LoadedModel, prompts: list[str], note: str, config: TrainConfig,
              max_new_tokens: int = 32) -> tuple[float, float]:
    """(gap, gap_below): the mean log-likelihood the note adds to the adapter's greedy replies written under it,
    with the adapter and with it disabled (module docstring)."""
    plain = [[{"role": "user", "content": p}] for p in prompts]
    noted = [instructed(turns, note) for turns in plain]
    replies = _greedy(model, loaded, noted, max_new_tokens)
    pad, system = loaded.tokenizer.pad_token_id, [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}]
    with_note = [encode(loaded, system + n, r, config.max_length, config.max_prompt_tokens, ended=False)
                 for n, r in zip(noted, replies)]
    without = [encode(loaded, system + t, r, config.max_length, config.max_prompt_tokens, ended=False)
               for t, r in zip(plain, replies)]
    model.eval()
    with torch.inference_mode():
        gap = (logps_in_chunks(model, with_note, pad) - logps_in_chunks(model, without, pad)).mean().item()
        with model.disable_adapter():
            below = (logps_in_chunks(model, with_note, pad) - logps_in_chunks(model, without, pad)).mean().item()
    return gap, below


def _greedy(model: PeftModel, loaded: LoadedModel, chats: list[list[dict]], max_new_tokens: int) -> list[str]:
    tokenizer = loaded.tokenizer
    prompts = [build_prompt(loaded, DEFAULT_SYSTEM_PROMPT, chat, max_new_tokens).input_ids for chat in chats]
    input_ids, mask = left_padded(prompts, tokenizer.pad_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, input_ids.shape[1]:]]
