"""Compare mode's exploration: which hidden style probes one candidate may follow, and how pairs are drawn
(the method is in `assistant.explore`)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.errors import InvalidInput
from storage.store import PLAIN_ARM


@dataclass(frozen=True)
class Probe:
    name: str
    """Stored with the candidate that followed it (`settings.probe`) and used to keep its record."""
    instruction: str
    """Added, after a blank line, to the newest user message of the probed candidate only."""


# Each moves the feature it names on SmolLM2-135M-Instruct (bench/probes.py; docs/benchmarks.md#probes);
# wordings that barely moved this 135M model were replaced.
DEFAULT_PROBES = (
    Probe("short", "Answer in one short sentence."),
    Probe("detailed", "Answer in detail."),
    Probe("list", "Answer as a bulleted list."),
    Probe("formal", "Answer in formal, professional language."),
    Probe("casual", "Answer in a relaxed, chatty way, like texting a friend."),
    Probe("emoji", "Use emoji 😊 in your answer."),
    Probe("example", "Give a concrete example."),
    Probe("question", "Answer, then ask me a follow-up question."),
    Probe("direct", "Answer directly, using the words of my question."),
)

PLAIN = PLAIN_ARM
"""The record key of the plain sample's arm (a candidate sampled from the message as sent); not a probe name."""
PAIRINGS = ("single", "duel")
WORDINGS = ("as_written", "quoted")
"""How a person's own words are put to the model as a personal probe (see `assistant.words`)."""


@dataclass(frozen=True)
class ExploreConfig:
    rate: float = 1.0
    """Share of compare requests that explore, in [0, 1] (0: never, plain samples only). Default 1: every pair
    probed learned faster than half of them (experiments/2026-11-29-exploration)."""
    probes: tuple[Probe, ...] = DEFAULT_PROBES
    """The style axes to explore, each an instruction the model can follow (see `DEFAULT_PROBES`)."""
    prior_strength: float = 2.0
    """How many of a profile's own choices the global record of a probe is worth, ≥ 0 (0: no global prior)."""
    pairing: str = "duel"
    """What an explored pair sets against each other: "single" — the drawn probe and a plain sample; "duel" — the
    top two arms of one Thompson draw, the plain sample being an arm (`PLAIN`, so no probe may be named so).
    Default "duel": it won more choices than "single" over four paired seeds (experiments/2026-11-30-duels)."""

    own_words: int = 8
    """How many of a profile's newest distinct comments (👎's, 👍's and choices') are explored as personal probes
    beside `probes`, ≥ 0 (0: comments are stored, never explored)."""
    wording: str = "as_written"
    """How a comment becomes an instruction (`assistant.words`): "as_written" — the comment itself; "quoted" — inside
    a fixed sentence saying it is feedback on earlier answers. Default "as_written": it moved the commenters' own
    reward more (docs/benchmarks.md#probes)."""
    own_prior: float = 0.75
    """The prior mean chance, in (0, 1), that a personal probe's reply is chosen, worth `prior_strength` choices: the
    person asked for it, so it is tried early; their own record takes over from there."""
    single_rate: float = 0.0
    """Share of single replies (not compare mode) that explore, in [0, 1]: one arm of a Thompson draw over the probes,
    the personal probes and the plain sample; a probed reply is served and its 👍/👎 is the arm's record. 0 (the
    default): single replies follow the message as sent (a retry that follows a comment still follows it)."""
    crowd_profiles: int = 3
    """How many different profiles must have written alike comments before those words become a probe for
    everyone (`assistant.crowd`), ≥ 2; 0: no crowd probes."""
    crowd_similarity: float = 0.6
    """How much two comments' content words must overlap (Jaccard, in (0, 1]) to count as one request."""
    crowd_arms: int = 8
    """At most this many crowd probes are explored, those said by most profiles first, ≥ 0."""
    crowd_retire_after: int = 16
    """A crowd probe retires once it has this many explored outcomes across everyone, ≥ 1 …"""
    crowd_retire_below: float = 0.25
    """… and was chosen (or liked) in less than this share of them, in [0, 1]."""

    def __post_init__(self):
        if self.crowd_profiles < 0 or self.crowd_profiles == 1:
            raise InvalidInput("crowd_profiles is 0 (off) or at least 2: one person's words are not a crowd's.")
        if not 0.0 < float(self.crowd_similarity) <= 1.0:
            raise InvalidInput(f"crowd_similarity must be in (0, 1] (got {self.crowd_similarity}).")
        if self.crowd_arms < 0 or self.crowd_retire_after < 1 or not 0.0 <= self.crowd_retire_below <= 1.0:
            raise InvalidInput("crowd_arms ≥ 0, crowd_retire_after ≥ 1 and crowd_retire_below in [0, 1].")
        for name in ("rate", "single_rate"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise InvalidInput(f"The exploration {name.replace('_', ' ')} must be between 0 and 1 "
                                   f"(got {getattr(self, name)}).")
        if not 0.0 < float(self.own_prior) < 1.0:
            raise InvalidInput(f"own_prior must be between 0 and 1, both excluded (got {self.own_prior}).")
        if self.own_words < 0:
            raise InvalidInput("own_words cannot be negative.")
        if self.wording not in WORDINGS:
            raise InvalidInput(f"Wording must be one of {', '.join(WORDINGS)} (got {self.wording!r}).")
        if not 0.0 <= float(self.rate) <= 1.0:
            raise InvalidInput(f"The exploration rate must be between 0 and 1 (got {self.rate}).")
        if self.rate > 0 and not self.probes:
            raise InvalidInput("Exploration needs at least one probe (or rate 0).")
        names = [p.name for p in self.probes]
        if len(set(names)) != len(names) or not all(n and p.instruction.strip() for n, p in zip(names, self.probes)):
            raise InvalidInput("Probes need distinct names and non-empty instructions.")
        if self.prior_strength < 0:
            raise InvalidInput("prior_strength cannot be negative.")
        if self.pairing not in PAIRINGS:
            raise InvalidInput(f"Pairing must be one of {', '.join(PAIRINGS)} (got {self.pairing!r}).")
        if PLAIN in names:
            raise InvalidInput(f"{PLAIN!r} names the plain sample's arm; give the probe another name.")
