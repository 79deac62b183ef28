"""Active choice of the pair to ask: in compare mode one candidate may follow a hidden style probe.

Two samples of the same model at the same prompt usually differ in wording, not in the things people have tastes
about (length, lists, register, emoji, examples, a question back): a choice between them teaches little. So in a
share of compare requests (`ExploreConfig.rate`) one candidate — A or B at random — is generated with a short
style instruction added to the person's message. The person sees only the two replies; the stored prompt and the
training prompt are the message as sent, so a chosen probed reply teaches the adapters to answer that way
*without* being asked (off-policy data for DPO). The probe's name is stored with the candidate.

Which probe: Thompson sampling on a Beta–Bernoulli bandit per profile, arm = probe, success = the probed
candidate was chosen (a tie counts half). Each profile's prior is the global record of that probe scaled to
`prior_strength` choices, so a new profile starts from what most people liked and a regular from their own
record. Styles someone keeps choosing get asked more, which is what gives the personal adapter pairs to learn
from; styles never tried keep a chance.

Pairing (`ExploreConfig.pairing`): "single" sets the drawn probe against a plain sample. "duel" makes the plain
sample one more arm (`PLAIN`, whose record is its wins against probes) and sets the two arms with the highest
draws of one Thompson sample against each other — a variant of Self-Sparring (Sui, Zhuang, Burdick & Yue 2017,
"Multi-dueling bandits with dependent arms"), which draws each slot independently and so may pair an arm with
itself. Once a person's favourite style is clear it is in nearly every pair and the other slot ranks the rest
against it, where "single" pairing asks it at most as often as Thompson sampling draws it and only ever against the
plain sample.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from storage.errors import InvalidInput
from storage.store import PLAIN_ARM


@dataclass(frozen=True)
class Probe:
    name: str
    """Stored with the candidate that followed it (`settings.probe`) and used to keep its record."""
    instruction: str
    """Added, after a blank line, to the newest user message of the probed candidate only."""


# Measured on SmolLM2-135M-Instruct with bench/probes.py (24 training prompts × 2 samples, 32 tokens): each moves
# the feature it names, e.g. the `bullets` user's mean reward −0.21 → 1.73 with "list", `emoji_lover`'s −0.23 →
# 0.85 with "emoji". Wordings that barely moved this 135M model were replaced ("Use a few emoji." without an
# example emoji, "Answer in a formal tone.", "Answer warmly and politely." — the last one drifted off topic).
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


@dataclass(frozen=True)
class ExploreConfig:
    rate: float = 1.0
    """Share of compare requests that explore (0: never, plain samples only): with "single" pairing one candidate
    follows a probe and the other is a plain sample, so each choice compares against what the assistant would say
    unasked; in duels at least one candidate follows a probe. Every pair probed learned faster than half of them in
    the learning-curve pilot (see adapters/training.py's `rpo_alpha`)."""
    probes: tuple[Probe, ...] = DEFAULT_PROBES
    """The style axes to explore, each an instruction the model can follow (see `DEFAULT_PROBES`)."""
    prior_strength: float = 2.0
    """How many of a profile's own choices the global record of a probe is worth."""
    pairing: str = "duel"
    """What an explored pair sets against each other (see the module docstring): "single" — the drawn probe and a
    plain sample; "duel" — the top two arms of one Thompson draw, the plain sample being an arm (`PLAIN`, so no
    probe may be named so). Learning-curve benchmark, 8 users to 32 choices, three seeds each paired with a plain
    run of the same seed (bench/results/learning_curve_comparison_duel.json): blend win rate vs base 0.622 vs 0.564
    (+0.089, +0.005, +0.081 by seed; 13 users up, 9 down); `concise`, `bullets` and `casual` up in all three seeds,
    `formal` down in all three (−0.02 to −0.08). Worst neutral perplexity ×1.08 / ×1.28 / ×1.08 vs ×1.13 / ×1.13 /
    ×1.08: a favourite asked in most pairs is learnt harder, `emoji_lover`'s emoji (57 of 128 candidates) too.
    A fourth paired seed: 0.682 vs 0.539; over the four, 0.637 vs 0.558 (21 users up, 9 down)."""

    def __post_init__(self):
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


Record = dict[str, tuple[float, float]]
"""Probe name → (successes, failures) of its candidates."""


def choose_arms(config: ExploreConfig, mine: Record, everyone: Record,
                rng: random.Random) -> tuple[Probe | None, Probe | None]:
    """The two candidates' arms for this request, each a probe or None (a plain sample), drawn by Thompson
    sampling: (None, None) when it does not explore; with "single" pairing (the probe with the highest draw, None);
    with "duel" the two arms with the highest draws over the probes and the plain sample (record key `PLAIN`), the
    higher first. `everyone` is the record of all profiles, this one included (its own share is taken out of the
    prior)."""
    if not config.probes or rng.random() >= config.rate:
        return None, None
    if config.pairing == "single":
        return _ranked(config, config.probes, mine, everyone, rng)[0], None
    first, second, *_ = _ranked(config, (*config.probes, None), mine, everyone, rng)
    return first, second


def _ranked(config: ExploreConfig, arms: Sequence[Probe | None], mine: Record, everyone: Record,
            rng: random.Random) -> list[Probe | None]:
    """`arms` (probes, None for the plain sample) by one Thompson draw each, highest first (ties: first listed)."""
    draws = []
    for arm in arms:
        name = arm.name if arm else PLAIN
        wins, losses = mine.get(name, (0.0, 0.0))
        all_wins, all_losses = everyone.get(name, (0.0, 0.0))
        global_wins, global_losses = max(0.0, all_wins - wins), max(0.0, all_losses - losses)
        global_mean = (global_wins + 1) / (global_wins + global_losses + 2)
        draws.append(rng.betavariate(1 + config.prior_strength * global_mean + wins,
                                     1 + config.prior_strength * (1 - global_mean) + losses))
    return [arms[i] for i in sorted(range(len(arms)), key=lambda i: -draws[i])]


def probed(turns: list[dict], probe: Probe) -> list[dict]:
    """`turns` with the probe's instruction added to the newest user message."""
    return instructed(turns, probe.instruction)


def instructed(turns: list[dict], instruction: str) -> list[dict]:
    """`turns` with `instruction` added, after a blank line, to the newest message (the prompt a probed candidate
    was generated from; training rebuilds it from the stored instruction)."""
    last = turns[-1]
    return [*turns[:-1], {**last, "content": f"{last['content'].rstrip()}\n\n{instruction}"}]
