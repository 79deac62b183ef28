"""A person's own words as exploration probes: what they wrote in a feedback box, as an instruction.

The 👎 box asks "What was wrong?", the 👍 box "What did you like?"; people answer in their own words ("too long",
"skip the disclaimer", "talk to me like a colleague"). Each distinct comment of a profile becomes a *personal
probe*: an instruction added, hidden, to the message of an explored candidate, exactly like a built-in probe, so
the bandit asks it beside the built-in ones and a chosen (or liked) reply written under it teaches the adapters,
through context distillation, to answer that way unasked.

How the words are put to the model (`ExploreConfig.wording`, measured with `python -m bench.probes --words`):
"as_written" adds the comment itself; "quoted" wraps it in a fixed sentence that says it is feedback on earlier
answers. A third candidate, the model rewriting the comment into an instruction, was measured and is not offered:
SmolLM2-135M answers the request instead of rewriting it (see docs/benchmarks.md#probes).
"""

from __future__ import annotations

import hashlib

from assistant.config.explore import WORDINGS, Probe

MAX_OWN_CHARS = 300
"""A longer comment is kept with its vote but not explored: an instruction that long would crowd out the message."""
OWN_PREFIX = "own-"
"""Personal probes' names start with this (then a hash of the words), so they never clash with a built-in probe."""
QUOTED = {
    "down": 'About my earlier answers I said: "{text}" Answer with that in mind.',
    "up": 'About an earlier answer I liked I said: "{text}" Answer with that in mind.',
    "note": "{text}",
}
"""The "quoted" wording per source of the words: a 👎's comment, a 👍's, or the profile's note (already written as
an instruction to the assistant, so used as written)."""


def normalised(text: str) -> str:
    """The words as one line, single-spaced: two comments that differ only in spacing are one probe."""
    return " ".join(text.split())


def own_probe(text: str, source: str, wording: str) -> Probe:
    """The personal probe of one comment (`source`: "down", "up" or "note"), named by a hash of its words alone so
    the same words keep one record in the bandit whichever reply, and whichever vote, they were written on."""
    if wording not in WORDINGS:
        raise ValueError(f"wording is one of {', '.join(WORDINGS)} (got {wording!r})")
    if source not in QUOTED:
        raise ValueError(f"source is one of {', '.join(QUOTED)} (got {source!r})")
    words = normalised(text)
    if not words:
        raise ValueError("a personal probe needs words")
    digest = hashlib.sha256(words.lower().encode()).hexdigest()[:10]
    instruction = words if wording == "as_written" else QUOTED[source].format(text=words)
    return Probe(f"{OWN_PREFIX}{digest}", instruction)


def usable(text: str) -> bool:
    """Whether a comment can be a personal probe: words, and short enough (`MAX_OWN_CHARS`) to ride beside a
    message without crowding it out."""
    return bool(normalised(text)) and len(text) <= MAX_OWN_CHARS


def is_own(name: str | None) -> bool:
    return bool(name) and name.startswith(OWN_PREFIX)
