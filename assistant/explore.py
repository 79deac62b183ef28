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

A person's own words are arms too: each distinct comment (`assistant.words`) is a *personal probe*, with a prior
of `ExploreConfig.own_prior` (they asked for it) instead of the global record, which no one else shares. And a
single reply (not compare mode) may explore (`ExploreConfig.single_rate`): the top arm of one Thompson draw over the
probes, the personal probes and the plain sample is served, and its 👍/👎 is that arm's record. Words that several
profiles wrote alike are arms for everyone: crowd probes (`assistant.crowd`), with the global record as prior.

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

from assistant.config.explore import PLAIN, ExploreConfig, Probe

Record = dict[str, tuple[float, float]]
"""Probe name → (successes, failures) of its candidates."""


def choose_arms(config: ExploreConfig, mine: Record, everyone: Record, rng: random.Random,
                own: Sequence[Probe] = (), crowd: Sequence[Probe] = ()) -> tuple[Probe | None, Probe | None]:
    """The two candidates' arms for this request, each a probe or None (a plain sample), drawn by Thompson
    sampling: (None, None) when it does not explore; with "single" pairing (the probe with the highest draw, None);
    with "duel" the two arms with the highest draws over the probes and the plain sample (record key `PLAIN`), the
    higher first. `everyone` is the record of all profiles, this one included (its own share is taken out of the
    prior); `own` are this profile's personal probes, `crowd` the crowd's (assistant/crowd.py)."""
    probes = (*config.probes, *crowd, *own)
    if not probes or rng.random() >= config.rate:
        return None, None
    if config.pairing == "single":
        return _ranked(config, probes, mine, everyone, rng, own)[0], None
    first, second, *_ = _ranked(config, (*probes, None), mine, everyone, rng, own)
    return first, second


def choose_single_arm(config: ExploreConfig, mine: Record, everyone: Record, rng: random.Random,
                      own: Sequence[Probe] = (), crowd: Sequence[Probe] = ()) -> tuple[bool, Probe | None]:
    """Whether this single reply explores (`single_rate`) and, if so, its arm: the highest Thompson draw over the
    probes, the crowd's, the personal probes and the plain sample (None)."""
    probes = (*config.probes, *crowd, *own)
    if not probes or rng.random() >= config.single_rate:
        return False, None
    return True, _ranked(config, (*probes, None), mine, everyone, rng, own)[0]


def _ranked(config: ExploreConfig, arms: Sequence[Probe | None], mine: Record, everyone: Record,
            rng: random.Random, own: Sequence[Probe] = ()) -> list[Probe | None]:
    """`arms` (probes, None for the plain sample) by one Thompson draw each, highest first (ties: first listed)."""
    personal = {p.name for p in own}
    draws = []
    for arm in arms:
        name = arm.name if arm else PLAIN
        wins, losses = mine.get(name, (0.0, 0.0))
        all_wins, all_losses = everyone.get(name, (0.0, 0.0))
        global_wins, global_losses = max(0.0, all_wins - wins), max(0.0, all_losses - losses)
        global_mean = config.own_prior if name in personal else (global_wins + 1) / (global_wins + global_losses + 2)
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
