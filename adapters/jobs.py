"""When to train, and on what: triggers, the per-profile cap of a global update, held-out splits, replay."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from adapters.blend import BlendConfig
from adapters.data import Examples, examples_from_feedback
from adapters.registry import GLOBAL, personal_adapter
from adapters.training import LoraSettings, TrainConfig
from storage.store import Store


@dataclass(frozen=True)
class LearningConfig:
    personal_every: int = 4
    """Train a profile's personal adapter after this many new feedback events of that profile (M)."""
    global_every: int = 16
    """Train the global adapter after this many new feedback events across all profiles (G)."""
    max_share: float = 0.25
    """Most of one global update a single profile may supply (a fraction of its feedback events)."""
    max_per_profile: int = 32
    """Most feedback events one profile may supply to one global update."""
    min_per_profile: int = 2
    """A lone profile still teaches the global adapter this much per update (the share alone would give it nothing)."""
    min_profiles: int = 3
    """The global adapter trains only once this many profiles have given feedback. A global adapter of one or two profiles is
    those people: their personal adapters already learn their taste, and a global one would serve it — their data —
    to every newcomer. In the learning-curve benchmark a user alone in a home fed each global update 2 events
    (the cap): global-only won 0.51 and 0.55 against base in two full runs, and each new global version moved the
    base under the personal adapter. Without it the benchmark's lone users train only their own adapter (54.7 →
    41.2 min for the whole run); the shared-home run, where the global adapter is meant to work, is unchanged."""
    replay: int = 16
    """Older examples mixed into each update with the new ones, against forgetting. 32 instead of 16 (8 users to
    32 choices, seed 2, paired with the default's run; bench/results/learning_curve_comparison_replay32_seed2
    {,_served}.json): the same run up to 16 choices, then blend win rate −0.031 greedy and −0.016 as served at 32,
    worst neutral perplexity ×1.150 vs ×1.161 with 2 users past ×1.10 in both."""
    personal_refit: int = 0
    """0: a personal version is warm-started from the previous one and trained on the new events plus `replay`
    (the step size decaying along the chain, `TrainConfig.decay`). N > 0: every personal version is trained from
    scratch, at the first update's step size, on the profile's newest N trainable events — each choice then weighs
    the same whenever it came, where the decaying chain lets the first few choices (when exploration has learned
    least about the person) move the adapter most. It costs up to `TrainConfig.max_steps` steps per update.
    Measured against the default (bench/results/learning_curve_comparison_refit.json; N = 64, lr 3e-3 — 16 steps at
    3e-3 move about as far as the 1/k chain's 8 updates of 4 steps at 4e-3/k; 8 users to 32 choices, seeds 1 and
    2 paired with the full runs): blend win rate +0.018 at 32 (+0.073 and −0.036 by seed; 7 users up, 6 down), worst
    neutral perplexity ×1.20 vs ×1.13, training 10–14 s per update vs 3–6 s. Not evidence of a gain; left off."""
    holdout_every: int = 5
    """One pair in this many (fixed by its feedback id) is held out of training to evaluate the adapters."""
    stale_seconds: float = 120.0
    """A running job whose worker has not reported for this long is taken over (the worker died)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    global_rpo_alpha: float | None = None
    """The weight of the chosen-reply term (`TrainConfig.chosen_term`) in global updates; None: `train.rpo_alpha`, as
    for personal ones. The global adapter learns from everyone's chosen replies at once, so that term pulls it toward
    every style people chose."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    blend: BlendConfig = field(default_factory=BlendConfig)
    max_drift: float | None = 0.5
    """Largest rise of the anchor replies' perplexity (`adapters.drift`) over the base model's a published version
    may bring, as a fraction (0.5: ×1.5); an update that goes further is backtracked along its update until it does
    not. None: no guard. A collapse guard, not a taste limit: held tight it made things worse. Measured at 0.08
    (8 users to 32 choices, seed 2, paired with the unguarded run; bench/results/learning_curve_pilot_guard008_seed2
    .json): the guard backtracked 17 of 64 updates (first updates reached ×1.28–1.32 on the anchor), and the mean
    blend win rate fell 0.727 → 0.625 (as served 0.610 → 0.591) while the benchmark's own neutral-text perplexity
    got *worse*, worst ×1.161 → ×1.232 (`emoji_lover` ×1.049 → ×1.232): the anchor's plain answers and the
    benchmark's neutral sentences drift differently, and a chain held at the anchor's boundary took another path.
    At 0.5 it leaves ordinary learning alone (0 of 128 updates backtracked in the two lr 3e-3 pilots; the highest
    anchor ratio was ×1.32) and stops an update that makes plain replies collapse (the test's chooser who always
    prefers babble). Its check costs one fp32 forward over the anchor per update: 0.84 s of a 12 s update on the
    2-core EPYC (bench/results/learning_speed_drift_guard.json; 1.6 s for the first, which also measures the
    base). It stays fp32 although bf16 autocast runs it ≈ 2.8× faster there: the served model is fp32, and on
    SmolLM2 bf16 read the ratio 2–4 % low (an adapter pushed along the anchor's gradient: fp32 ×1.034 / ×1.159 /
    ×1.278, bf16 ×1.016 / ×1.122 / ×1.229), so a bf16 guard would let the served replies drift past its limit."""

    def __post_init__(self):
        if self.personal_every < 1 or self.global_every < 1:
            raise ValueError("personal_every and global_every must be at least 1")
        if not 0 < self.max_share <= 1 or self.max_per_profile < 1 or self.holdout_every < 2:
            raise ValueError("max_share in (0, 1], max_per_profile ≥ 1, holdout_every ≥ 2")
        if self.personal_refit < 0:
            raise ValueError("personal_refit must be ≥ 0 (0: warm-started updates)")
        if self.min_profiles < 1:
            raise ValueError("min_profiles must be at least 1")
        if self.global_rpo_alpha is not None and self.global_rpo_alpha < 0:
            raise ValueError("global_rpo_alpha must be ≥ 0 (or None)")
        if self.max_drift is not None and self.max_drift <= 0:
            raise ValueError("max_drift must be > 0 (or None: no drift guard)")


def enqueue_due(store: Store, profile_id: str, config: LearningConfig) -> list[dict]:
    """After a feedback event: queue the personal and/or global update if enough new events arrived."""
    jobs = []
    mine = personal_adapter(profile_id)
    if store.feedback_counts(profile_id, since=store.trained_until(mine))["total"] >= config.personal_every:
        jobs.append(store.enqueue_job(mine, profile_id, "auto"))
    if store.feedback_counts(None, since=store.trained_until(GLOBAL))["total"] >= config.global_every \
            and global_ready(store, config):
        jobs.append(store.enqueue_job(GLOBAL, None, "auto"))
    return jobs


def global_ready(store: Store, config: LearningConfig) -> bool:
    """Whether enough profiles have given feedback for a global update (`LearningConfig.min_profiles`)."""
    return store.count_profiles_with_feedback(at_most=config.min_profiles) >= config.min_profiles


def enqueue_now(store: Store, profile_id: str) -> list[dict]:
    """"Train now": this profile's adapter and the global one."""
    return [store.enqueue_job(personal_adapter(profile_id), profile_id, "manual"), store.enqueue_job(GLOBAL, None, "manual")]


def profile_cap(counts: dict[str, int], config: LearningConfig) -> int:
    """Feedback events per profile in a global update, so that none supplies more than `max_share` of it.

    Solves c = min(max_per_profile, max(min_per_profile, ⌊max_share · Σ min(n_i, c)⌋)) by iteration from the top;
    the sequence only decreases, so it stops.
    """
    cap = config.max_per_profile
    while True:
        total = sum(min(n, cap) for n in counts.values())
        new = min(config.max_per_profile, max(config.min_per_profile, int(config.max_share * total)))
        if new >= cap:
            return cap
        cap = new


def held_out(feedback_id: str, every: int) -> bool:
    return int(hashlib.sha256(feedback_id.encode()).hexdigest(), 16) % every == 0


@dataclass(frozen=True)
class UpdateData:
    train: Examples
    held_out: Examples
    trained_until: str | None
    new_events: int


def _split(events: list[dict], config: LearningConfig) -> tuple[list[dict], list[dict]]:
    """(trainable, held out): only events that make pairs are held out, so thumbs-only users still train."""
    pairs_kinds = [e for e in events if e["kind"] == "comparison" and e["choice"] in ("a", "b")]
    held = {e["id"] for e in pairs_kinds if held_out(e["id"], config.holdout_every)}
    return [e for e in events if e["id"] not in held], [e for e in events if e["id"] in held]


def personal_update(store: Store, profile_id: str, since: str | None, config: LearningConfig, seed: int) -> UpdateData:
    events = store.feedback(profile_id)
    trainable, held = _split(events, config)
    newest = max((e["updated_at"] for e in events), default=since)
    if config.personal_refit:  # from scratch on the newest N, each counted as new (it sets the steps)
        window = sorted(trainable, key=lambda e: e["updated_at"])[-config.personal_refit:]
        return UpdateData(examples_from_feedback(window), examples_from_feedback(held), newest, len(window))
    new = [e for e in trainable if since is None or e["updated_at"] > since]
    old = [e for e in trainable if not (since is None or e["updated_at"] > since)]
    replay = random.Random(seed).sample(old, min(config.replay, len(old)))
    return UpdateData(examples_from_feedback(new + replay), examples_from_feedback(held), newest, len(new))


def global_update(store: Store, since: str | None, config: LearningConfig, seed: int) -> UpdateData:
    rng = random.Random(seed)
    per_profile: dict[str, list[dict]] = {}
    held_all: list[dict] = []
    newest = since
    new_by_profile: dict[str, int] = {}
    for profile_id in store.profiles_with_feedback():
        events = store.feedback(profile_id)
        trainable, held = _split(events, config)
        held_all += held
        new = sorted((e for e in trainable if since is None or e["updated_at"] > since),
                     key=lambda e: e["updated_at"], reverse=True)
        old = [e for e in trainable if not (since is None or e["updated_at"] > since)]
        new_by_profile[profile_id] = len(new)
        per_profile[profile_id] = new + rng.sample(old, min(len(old), max(1, config.replay // 4)))
        newest = max([newest or ""] + [e["updated_at"] for e in events]) or None
    cap = profile_cap({u: len(v) for u, v in per_profile.items()}, config)
    chosen = [e for events in per_profile.values() for e in events[:cap]]
    new_count = sum(min(n, cap) for n in new_by_profile.values())  # new events come first in each list
    return UpdateData(examples_from_feedback(chosen), examples_from_feedback(held_all), newest, new_count)
