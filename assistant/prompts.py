"""Turning a conversation into prompt tokens that fit the model's context window.

Models with a chat template use it. Models without one (GPT-2 and friends) get a tagged transcript,

    {system prompt}

    User: …
    Assistant: …
    User: …
    Assistant:

and generation stops at the next "User:". When the history is too long the oldest turns are left out (the
system prompt and the newest turns stay); if the newest message alone is too long, its beginning is cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from assistant.model import LoadedModel
from storage.errors import InvalidInput

USER_TAG = "User:"
ASSISTANT_TAG = "Assistant:"
TAGGED_STOP_STRINGS = ("\n" + USER_TAG,)
MIN_PROMPT_TOKENS = 16


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    max_new_tokens: int
    """The reply budget after fitting the window (may be below what the settings asked for)."""
    stop_strings: tuple[str, ...]
    dropped_messages: int
    """Earliest messages of the conversation left out to fit."""
    cut_tokens: int
    """Tokens cut from the start of the newest message to fit."""

    @property
    def was_cut(self) -> bool:
        return self.dropped_messages > 0 or self.cut_tokens > 0

    def notice(self) -> str | None:
        if not self.was_cut:
            return None
        parts = []
        if self.dropped_messages:
            parts.append(f"the {self.dropped_messages} oldest message(s) were left out")
        if self.cut_tokens:
            parts.append(f"the first {self.cut_tokens} tokens of your message were cut")
        return "To fit the model's context window, " + " and ".join(parts) + "."

    def facts(self) -> dict:
        return {"prompt_tokens": len(self.input_ids), "dropped_messages": self.dropped_messages,
                "cut_tokens": self.cut_tokens}


def _render(loaded: LoadedModel, system_prompt: str, turns: list[dict], prefix: str = "") -> list[int]:
    tokenizer = loaded.tokenizer
    if loaded.has_chat_template:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + turns
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        lines = [system_prompt.strip() + "\n"] if system_prompt.strip() else []
        for turn in turns:
            tag = USER_TAG if turn["role"] == "user" else ASSISTANT_TAG
            lines.append(f"{tag} {turn['content'].strip()}")
        lines.append(ASSISTANT_TAG + (" " if prefix else ""))
        text = "\n".join(lines)
    return tokenizer(text + prefix, add_special_tokens=False)["input_ids"]


def build_prompt(loaded: LoadedModel, system_prompt: str, turns: list[dict], max_new_tokens: int,
                 prefix: str = "") -> Prompt:
    """Fit `turns` (role/content dicts ending with the user's message) plus a reply into the context window.
    `prefix`: the start of the reply, already written (Continue); the model writes on from its last token."""
    if not turns or turns[-1]["role"] != "user":
        raise InvalidInput("There is no user message to answer.")
    window = loaded.context_window
    reply_budget = max(1, min(max_new_tokens, window // 2))
    budget = window - reply_budget
    stops = () if loaded.has_chat_template else TAGGED_STOP_STRINGS

    kept = list(turns)
    ids = _render(loaded, system_prompt, kept, prefix)
    while len(ids) > budget and len(kept) > 1:
        kept = kept[1:]
        while kept[0]["role"] != "user" and len(kept) > 1:  # a transcript starts with the user
            kept = kept[1:]
        ids = _render(loaded, system_prompt, kept, prefix)

    cut = 0
    if len(ids) > budget:
        tokenizer = loaded.tokenizer
        content_ids = tokenizer(kept[-1]["content"], add_special_tokens=False)["input_ids"]
        cut = len(ids) - budget + 2  # +2: re-tokenizing a cut string can merge differently at the edge
        if cut >= len(content_ids) - MIN_PROMPT_TOKENS // 4:
            raise InvalidInput("The system prompt leaves no room for your message in this model's context window; "
                               "shorten the system prompt in Settings.")
        kept = [{"role": "user", "content": tokenizer.decode(content_ids[cut:])}]
        ids = _render(loaded, system_prompt, kept, prefix)
        if len(ids) > budget:
            raise InvalidInput("This message does not fit the model's context window even after cutting it.")
    return Prompt(input_ids=ids, max_new_tokens=reply_budget, stop_strings=stops,
                  dropped_messages=len(turns) - len(kept), cut_tokens=cut)
