"""When to train, and on what: triggers, the per-contributor cap of a global update, held-out splits, replay."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from adapters.data import Examples, examples_from_feedback
from adapters.registry import GLOBAL, personal_adapter
from assistant.config import LearningConfig
from storage.store import Store


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


def contributors(store: Store, config: LearningConfig) -> dict[str, str]:
    """Profile id → contributor (its account, or itself in household mode) of the profiles old and active enough
    to teach the global adapter (`LearningConfig.global_min_age_hours`, `global_min_events`)."""
    before = (datetime.now(timezone.utc) - timedelta(hours=config.global_min_age_hours)).isoformat(
        timespec="microseconds")
    return store.global_contributors(before, config.global_min_events)


def global_ready(store: Store, config: LearningConfig) -> bool:
    """Whether enough contributors have given feedback for a global update (`LearningConfig.min_profiles`)."""
    return len(set(contributors(store, config).values())) >= config.min_profiles


def enqueue_now(store: Store, profile_id: str) -> list[dict]:
    """"Train now": this profile's adapter and the global one."""
    return [store.enqueue_job(personal_adapter(profile_id), profile_id, "manual"),
            store.enqueue_job(GLOBAL, None, "manual")]


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


def split_held_out(events: list[dict], config: LearningConfig) -> tuple[list[dict], list[dict]]:
    """(trainable, held out): only events that make pairs are held out, so thumbs-only users still train."""
    pairs_kinds = [e for e in events if e["kind"] == "comparison" and e["choice"] in ("a", "b")]
    held = {e["id"] for e in pairs_kinds if held_out(e["id"], config.holdout_every)}
    return [e for e in events if e["id"] not in held], [e for e in events if e["id"] in held]


def personal_update(store: Store, profile_id: str, since: str | None, config: LearningConfig, seed: int) -> UpdateData:
    events = store.feedback(profile_id)
    trainable, held = split_held_out(events, config)
    newest = max((e["updated_at"] for e in events), default=since)
    if config.personal_refit:  # from scratch on the newest N, each counted as new (it sets the steps)
        window = sorted(trainable, key=lambda e: e["updated_at"])[-config.personal_refit:]
        return UpdateData(examples_from_feedback(window), examples_from_feedback(held), newest, len(window))
    new = [e for e in trainable if since is None or e["updated_at"] > since]
    old = [e for e in trainable if not (since is None or e["updated_at"] > since)]
    replay = random.Random(seed).sample(old, min(config.replay, len(old)))
    return UpdateData(examples_from_feedback(new + replay), examples_from_feedback(held), newest, len(new))


def global_update(store: Store, since: str | None, config: LearningConfig, seed: int) -> UpdateData:
    """Each contributor's new events (newest first) and a replay sample of its older ones, capped per contributor
    (`profile_cap`): an account supplies at most `max_share` of an update however many profiles it makes."""
    rng = random.Random(seed)
    new: dict[str, list[dict]] = {}
    replay: dict[str, list[dict]] = {}
    held_all: list[dict] = []
    newest = since
    for profile_id, contributor in contributors(store, config).items():
        events = store.feedback(profile_id)
        trainable, held = split_held_out(events, config)
        held_all += held
        fresh = [e for e in trainable if since is None or e["updated_at"] > since]
        old = [e for e in trainable if not (since is None or e["updated_at"] > since)]
        new.setdefault(contributor, []).extend(fresh)
        replay.setdefault(contributor, []).extend(rng.sample(old, min(len(old), max(1, config.replay // 4))))
        newest = max([newest or ""] + [e["updated_at"] for e in events]) or None
    per_contributor = {c: sorted(new[c], key=lambda e: e["updated_at"], reverse=True) + replay[c] for c in new}
    cap = profile_cap({c: len(v) for c, v in per_contributor.items()}, config)
    chosen = [e for events in per_contributor.values() for e in events[:cap]]
    new_count = sum(min(len(n), cap) for n in new.values())  # new events come first in each list
    return UpdateData(examples_from_feedback(chosen, private=False), examples_from_feedback(held_all, private=False),
                      newest, new_count)
