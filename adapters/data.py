"""From stored feedback to training examples (TRL's keys) and to token tensors.

- A/B choice a or b → a pair (`prompt`, `chosen`, `rejected`).
- Tie → nothing: it states no preference between the two.
- Both bad → two undesirable unpaired examples.
- Thumbs → an unpaired example (`prompt`, `completion`, `label`); and when the reply was a retry, a 👍 on it
  also forms a pair against each reply it superseded (a 👎 on a retry says nothing about the one before). A retry
  that followed the person's comment (or any explored reply) carries its hidden instruction into that pair, as a
  chosen candidate of compare mode does. A reply written under the profile's note carries the note in the same way
  (before the probe's instruction, as it was written): context distillation teaches it to answer so unasked.

A reply that ended by itself is trained with the end-of-sequence token after it; one cut at its token budget
is not (else every cut reply would teach the model to stop at that length).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from assistant.config import DEFAULT_PROBES
from assistant.explore import instructed
from assistant.model import LoadedModel
from assistant.prompts import build_prompt
from assistant.words import is_own
from storage.errors import InvalidInput


@dataclass(frozen=True)
class PairExample:
    prompt: list[dict]
    chosen: str
    rejected: str
    feedback_id: str
    profile_id: str
    chosen_ended: bool = True
    rejected_ended: bool = True
    chosen_instruction: str | None = None
    """The hidden exploration instruction the chosen reply was generated with (None: the prompt as it is): training
    distils the model's behaviour under it (see adapters/training.py, `TrainConfig.chosen_term`)."""


@dataclass(frozen=True)
class UnpairedExample:
    prompt: list[dict]
    completion: str
    label: bool
    feedback_id: str
    profile_id: str
    ended: bool = True
    instruction: str | None = None
    """The hidden instruction the reply was written under (a probe, the person's words, the note; None: the prompt
    as it is): a 👍 reply is distilled under it, as a chosen one is."""


@dataclass(frozen=True)
class Examples:
    pairs: list[PairExample]
    unpaired: list[UnpairedExample]

    def __len__(self) -> int:
        return len(self.pairs) + len(self.unpaired)

    @property
    def feedback_ids(self) -> list[str]:
        return sorted({e.feedback_id for e in (*self.pairs, *self.unpaired)})


def examples_from_feedback(events: list[dict], private: bool = True) -> Examples:
    """`events` as `Store.feedback` returns them (each with its prompt and texts). `private=False` (everyone's
    adapter): the hidden instructions a profile's own words or note gave its replies are left out — those replies are
    distilled under the prompt as sent — so one person's words never shape the replies of others; the built-in
    probes' instructions stay."""
    pairs: list[PairExample] = []
    unpaired: list[UnpairedExample] = []
    for e in events:
        key = dict(feedback_id=e["id"], profile_id=e["profile_id"])
        ended = e.get("ended", {})
        notes = e.get("note", {}) if private else {}
        probes = e.get("probe", {})
        instruction = {side: hidden_instruction(notes.get(side), text or _instruction_of(probes.get(side)))
                       if private or not is_own(probes.get(side)) else None
                       for side, text in e.get("instruction", {}).items()}
        if e["kind"] == "comparison":
            if e["choice"] in ("a", "b"):
                won, lost = ("a", "b") if e["choice"] == "a" else ("b", "a")
                pairs.append(PairExample(e["prompt"], e[won], e[lost], **key, chosen_ended=ended.get(won, True),
                                         rejected_ended=ended.get(lost, True),
                                         chosen_instruction=instruction.get(won)))
            elif e["choice"] == "both_bad":
                unpaired += [UnpairedExample(e["prompt"], e[side], False, **key, ended=ended.get(side, True))
                             for side in ("a", "b")]
        else:
            done = ended.get("completion", True)
            unpaired.append(UnpairedExample(e["prompt"], e["completion"], e["value"] > 0, **key, ended=done,
                                            instruction=instruction.get("completion")))
            if e["value"] > 0:
                old_ended = ended.get("superseded", [True] * len(e.get("superseded", [])))
                pairs += [PairExample(e["prompt"], e["completion"], old, **key, chosen_ended=done,
                                      rejected_ended=old_done, chosen_instruction=instruction.get("completion"))
                          for old, old_done in zip(e.get("superseded", []), old_ended, strict=True)]
    return Examples(pairs, unpaired)


def hidden_instruction(note: str | None, probe: str | None) -> str | None:
    """Everything a reply was written under, as added to the newest message: the profile's note, then the probe."""
    return "\n\n".join(part for part in (note, probe) if part) or None


def _instruction_of(probe: str | None) -> str | None:
    """The instruction of a shipped probe, by name: candidates stored before the text was kept name only the probe."""
    return next((p.instruction for p in DEFAULT_PROBES if p.name == probe), None) if probe else None


@dataclass(frozen=True)
class Batch:
    """Right-padded prompt+completion sequences. Shapes: (batch, seq)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    """True where the token belongs to the completion (what the log-probability is summed over)."""


def encode(loaded: LoadedModel, prompt: list[dict], completion: str, max_length: int,
           max_prompt: int | None = None, ended: bool = True) -> tuple[list[int], int]:
    """Token ids of prompt + completion (+ end-of-sequence if the completion `ended` by itself), and the prompt's
    length. The prompt is fitted as for serving (oldest turns left out first) into `max_prompt` tokens, and
    everything into `max_length`."""
    tokenizer = loaded.tokenizer
    spacer = "" if loaded.has_chat_template else " "  # tagged transcripts put a space after "Assistant:"
    completion_ids = tokenizer(spacer + completion.strip(), add_special_tokens=False)["input_ids"]
    kept = completion_ids[: max_length // 2]
    # An empty reply keeps its end-of-sequence even if it was cut: a completion needs at least one token.
    whole = len(kept) == len(completion_ids)
    completion_ids = kept + [tokenizer.eos_token_id] if (ended and whole) or not kept else kept
    fitted = fit_prompt(loaded, prompt, max_length, max_prompt, len(completion_ids))
    return fitted + completion_ids, len(fitted)


def encode_answers(loaded: LoadedModel, answers, max_length: int) -> list[tuple[list[int], int]]:
    """(question, reply) pairs as single-turn chats without a system prompt, each `encode`d: the fixed plain
    replies of the drift guard's anchor and of the everyday-text leash."""
    return [encode(loaded, [{"role": "user", "content": q}], reply, max_length) for q, reply in answers]


def fit_prompt(loaded: LoadedModel, prompt: list[dict], max_length: int, max_prompt: int | None,
               reply_tokens: int) -> list[int]:
    """Token ids of `prompt` fitted as for serving (oldest turns left out first) into `max_prompt` tokens, leaving
    room for `reply_tokens` within `max_length`."""
    system = prompt[0]["content"] if prompt and prompt[0]["role"] == "system" else ""
    turns = [m for m in prompt if m["role"] != "system"]
    window = min(loaded.context_window, max_length, (max_prompt or max_length) + reply_tokens)
    return build_prompt(_Windowed(loaded, window), system, turns, max_new_tokens=reply_tokens).input_ids


class _Windowed:
    """A LoadedModel seen with a smaller context window (training caps sequence length to bound compute)."""

    def __init__(self, loaded: LoadedModel, window: int):
        self._loaded, self.context_window = loaded, window

    def __getattr__(self, name):
        return getattr(self._loaded, name)


def collate(sequences: list[tuple[list[int], int]], pad_token_id: int) -> Batch:
    longest = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    completion_mask = torch.zeros((len(sequences), longest), dtype=torch.bool)
    for row, (ids, prompt_len) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        completion_mask[row, prompt_len: len(ids)] = True
    return Batch(input_ids, attention_mask, completion_mask)


@dataclass
class Encoded:
    """Training examples as (token ids, prompt length) sequences, in the order of `Examples`' lists."""

    chosen: list[tuple[list[int], int]] = field(default_factory=list)
    rejected: list[tuple[list[int], int]] = field(default_factory=list)
    unpaired: list[tuple[list[int], int]] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    mismatched: list[tuple[list[int], int]] = field(default_factory=list)
    """Unpaired reply i after the prompt of reply i+1: KTO's reference point z0 (a reply that does not answer)."""
    taught: list[tuple[list[int], int]] = field(default_factory=list)
    """Each chosen reply after the prompt it was generated from (the exploration instruction included)."""
    unpaired_taught: list[tuple[list[int], int]] = field(default_factory=list)
    """Each unpaired reply after the prompt its teacher reads: a 👍 reply's, the instruction included; a 👎 reply's,
    the prompt as sent (a leash, never a lesson in what was disliked)."""


def encode_examples(loaded: LoadedModel, examples: Examples, max_length: int, max_prompt: int | None) -> Encoded:
    """Every sequence a training run needs from `examples` (`encode`)."""
    enc = Encoded()
    for p in examples.pairs:
        enc.chosen.append(encode(loaded, p.prompt, p.chosen, max_length, max_prompt, p.chosen_ended))
        enc.rejected.append(encode(loaded, p.prompt, p.rejected, max_length, max_prompt, p.rejected_ended))
        enc.taught.append(_generated_from(loaded, p, max_length, max_prompt) if p.chosen_instruction
                          else enc.chosen[-1])
    items = examples.unpaired
    for i, u in enumerate(items):
        enc.unpaired.append(encode(loaded, u.prompt, u.completion, max_length, max_prompt, u.ended))
        enc.labels.append(u.label)
        other = items[(i + 1) % len(items)]
        enc.mismatched.append(encode(loaded, other.prompt, u.completion, max_length, max_prompt, u.ended))
        enc.unpaired_taught.append(_generated_from(loaded, PairExample(u.prompt, u.completion, "", u.feedback_id,
                                                                       u.profile_id, u.ended,
                                                                       chosen_instruction=u.instruction),
                                                   max_length, max_prompt)
                                   if u.label and u.instruction else enc.unpaired[-1])
    return enc


def _generated_from(loaded: LoadedModel, p: PairExample, max_length: int,
                    max_prompt: int | None) -> tuple[list[int], int]:
    try:
        return encode(loaded, instructed(p.prompt, p.chosen_instruction), p.chosen, max_length, max_prompt,
                      p.chosen_ended)
    except InvalidInput:  # the instruction does not fit: the reply's own prompt teaches instead
        return encode(loaded, p.prompt, p.chosen, max_length, max_prompt, p.chosen_ended)
