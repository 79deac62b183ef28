"""Probes from the crowd: words that several people wrote alike become an exploration arm for everyone.

A person's comment is a personal probe for them alone (`assistant.words`). When comments from at least
`ExploreConfig.crowd_profiles` different profiles ask for the same thing — "Too long.", "Way too long!", "far too
long" — that request is a taste more people share than the one who wrote it, so it becomes a *crowd probe*: an arm
of every profile's bandit beside the built-in probes, with the global record as its prior like them. The built-in
list stops being the ceiling of what exploration can ask.

"Ask for the same thing" is judged by the words: two comments are alike when their content words (`content_words`:
lower-cased, filler such as "please", "the", "way" left out; "no", "not", "more", "less" kept) overlap by at least
`crowd_similarity` (Jaccard). That is precise and blind to paraphrase ("too long" and "too wordy" stay apart). Two
ways to see paraphrase with the embedded model were measured and are not used (experiments/2026-12-05-crowd): the
model's mean hidden state (a comment's nearest neighbour was a paraphrase for 40–57% of comments) and the shift an
instruction gives the likelihood of reference replies (pairs above a threshold were paraphrases 8–53% of the time,
and it cost seconds per comment); a false merge would let one person's words reach everyone on others' count.

Grouping is leader clustering: requests said by most profiles first, each joins the first group whose leader it is
alike, else leads a new one — no chains of weak links. A group said by enough profiles is put to the model as its
most-said request, in the wording most profiles used, as last written. What keeps one person's words out of
everyone's prompts: the profile count, words that are only words (`shareable`: short, no digits, addresses or
links), and that the groups are derived from the comments stored now (an erased profile's words leave the groups at
the next request). A crowd probe that people do not choose retires: once its global record has `crowd_retire_after`
explored outcomes with a chosen share under `crowd_retire_below`, it is no longer drawn.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from assistant.config.explore import ExploreConfig, Probe
from assistant.words import normalised, usable

CROWD_PREFIX = "crowd-"
"""Crowd probes' names start with this (then a hash of the words put to the model, `wording`)."""
MAX_SHARED_CHARS = 120
"""A longer comment stays a personal probe only: a shared instruction is a short request, not a story."""
FILLER = frozenset(
    "a an the please just really very so bit little way much me i you your this that it is it's its was are be to of "
    "and my for with like can could would some".split())
"""Words left out when comparing comments: they rarely change what is asked."""
_PRIVATE = re.compile(r"\d|@|https?:|www\.", re.IGNORECASE)

Record = dict[str, tuple[float, float]]


def shareable(text: str) -> bool:
    """Whether a comment may speak for a group: usable as a probe, short, and without digits, addresses or links
    (where a person's particulars would be)."""
    return usable(text) and len(normalised(text)) <= MAX_SHARED_CHARS and not _PRIVATE.search(text)


def wording(text: str) -> str:
    """The words of a comment, case and punctuation aside: what names a crowd probe, so its record stays with it
    whichever of those spellings was written last."""
    return " ".join(re.findall(r"[a-z']+", text.lower()))


def crowd_name(instruction: str) -> str:
    return CROWD_PREFIX + hashlib.sha256(wording(instruction).encode()).hexdigest()[:10]


def is_crowd(name: str | None) -> bool:
    return bool(name) and name.startswith(CROWD_PREFIX)


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in wording(text).split() if w not in FILLER)


def alike(first: frozenset[str], second: frozenset[str]) -> float:
    """Jaccard overlap of two comments' content words, in [0, 1] (0 when either has none)."""
    return len(first & second) / len(first | second) if first and second else 0.0


def crowd_groups(words: Sequence[tuple[str, str]], config: ExploreConfig) -> tuple[tuple[int, Probe], ...]:
    """The requests of `words` — (profile id, comment) of every profile, newest first — that enough profiles made,
    each as (how many profiles, its probe), most profiles first."""
    if config.crowd_profiles <= 0:
        return ()
    said: dict[frozenset[str], tuple[dict, set[str]]] = {}  # content words → (wordings, profiles)
    for profile_id, text in words:
        bag = content_words(text)
        if shareable(text) and bag:
            wordings, profiles = said.setdefault(bag, ({}, set()))
            wordings.setdefault(wording(text), (normalised(text), set()))[1].add(profile_id)
            profiles.add(profile_id)
    if len({p for _, profiles in said.values() for p in profiles}) < config.crowd_profiles:
        return ()
    bags = sorted(said, key=lambda b: (-len(said[b][1]), sorted(b)))
    groups: list[list[int]] = []
    for i in range(len(bags)):
        leader = next((g for g in groups if alike(bags[g[0]], bags[i]) >= config.crowd_similarity), None)
        if leader is None:
            groups.append([i])
        else:
            leader.append(i)
    found = []
    for group in groups:
        profiles = set().union(*(said[bags[i]][1] for i in group))
        if len(profiles) >= config.crowd_profiles:
            wordings = said[bags[group[0]]][0].values()  # the most-said request, in the wording most profiles
            typical = max(wordings, key=lambda w: len(w[1]))[0]  # used (ties: the newest), as last written
            found.append((len(profiles), Probe(crowd_name(typical), typical)))
    return tuple(sorted(found, key=lambda pair: (-pair[0], pair[1].name)))


def crowd_probes(groups: Sequence[tuple[int, Probe]], config: ExploreConfig,
                 everyone: Record | None = None) -> tuple[Probe, ...]:
    """The crowd probes explored now: of `crowd_groups`, those not retired by `everyone`'s record, at most
    `config.crowd_arms`."""
    live = [probe for _, probe in groups if not retired(probe.name, everyone or {}, config)]
    return tuple(live[:config.crowd_arms])


def retired(name: str, everyone: Record, config: ExploreConfig) -> bool:
    """Whether people have had enough chances to choose this probe and mostly did not."""
    won, lost = everyone.get(name, (0.0, 0.0))
    return won + lost >= config.crowd_retire_after and won / (won + lost) < config.crowd_retire_below
