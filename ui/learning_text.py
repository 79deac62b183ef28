"""The Learning panel in plain words: what a profile taught, which versions serve it, how much of it, what is
training now, and what its choices say about its taste. Pure functions of `ChatService.learning_status`."""

from __future__ import annotations

from datetime import datetime, timezone

MIN_SHOWN = 3
"""Choices a probe's candidate must have been part of before the panel says anything about it."""
STALE_WORKER = 30.0
"""Seconds without a heartbeat after which the panel says the training worker is not heard from (it beats every 5 s
and during each training step)."""
LEANING = 0.25
"""How far from an even split (½) the smoothed share of choices must be for the panel to call it a taste."""


def learning_markdown(status: dict, now: datetime | None = None) -> str:
    """The panel's text for one profile."""
    now = now or datetime.now(timezone.utc)
    lines = [_taught(status), _note(status.get("note")), _personal(status, now), _global(status, now),
             _share(status), _reward(status.get("reward"))]
    lines += [_job(job, now) for job in status.get("jobs", [])]
    lines += [_unusable(bad) for bad in status.get("unusable", [])]
    lines.append(_worker(status.get("worker"), now))
    lines.append(taste_words(status.get("record", [])))
    return "\n\n".join(line for line in lines if line)


def _taught(status: dict) -> str:
    n, since, every = status["feedback"], status["since_personal"], status["every"]
    if not n["total"]:
        return ("**What you taught Attune:** nothing yet. Give a 👍 or 👎 to a reply, or tick *Compare two replies* "
                "and choose the better one.")
    taught = _and([_count(n["thumbs"], "👍/👎 on a reply", "👍/👎 on replies"),
                   _count(n["comparison"], "choice between two replies", "choices between two replies")])
    left = max(every - since["total"], 0)
    when = ("your next vote starts an update (or press *Train now*)" if left == 0 else
            f"{_count(left, 'more vote', 'more votes')} and Attune learns from them (or press *Train now*)")
    return f"**What you taught Attune:** {taught}; {_count(since['total'], 'is', 'are')} new since the last " \
           f"update: {when}."


def _note(note: dict | None) -> str:
    """Whether the profile's note still rides in every prompt, and how far the personal adapter has learned it."""
    if not note or not note["text"]:
        return ""
    learned = note["learned"]
    if not note["sent"]:
        return (f"**Your note:** learned ({learned:.0%}): your version answers that way unasked, so the note is no "
                "longer added to your messages.")
    so_far = "not measured yet (after your next update)" if learned is None else f"{learned:.0%} learned so far"
    return f"**Your note:** added, hidden, to each of your messages until your version has learned it — {so_far}."


def _reward(reward: dict | None) -> str:
    """How well the learned reward knows the person's choices, and whether it picks their replies (best-of-n)."""
    if not reward:
        return ""
    record = ("no choice of yours is held out to check it yet" if not reward["pairs"] else
              f"it orders {reward['right']:g} of your {_count(reward['pairs'], 'held-out choice', 'held-out choices')}"
              f" right")
    line = f"**Your reward model:** a score of replies fitted to your votes after each one; {record}."
    if reward["best_of"] > 1:
        line += (f" Each reply is the best of {reward['best_of']} by it." if reward["trusted"] else
                 f" It picks the best of {reward['best_of']} replies once it orders at least "
                 f"{reward['trust_accuracy']:.0%} of {reward['trust_min_pairs']} or more right.")
    return line


def _personal(status: dict, now: datetime) -> str:
    info = status["personal"]
    if info is None:
        return f"**Your own version:** not made yet. Attune makes it after your first {status['every']} votes."
    return (f"**Your own version:** version {_number(info['version'])}, updated {ago(info['created_at'], now)}."
            + _guard_note(info.get("metrics", {})))


def _global(status: dict, now: datetime) -> str:
    info, profiles = status["global"], status["global_profiles"]
    if info is not None:
        return f"**Everyone's version:** version {_number(info['version'])}, updated {ago(info['created_at'], now)}."
    if profiles["profiles"] < profiles["needed"]:
        return (f"**Everyone's version:** not made yet: it learns once {profiles['needed']} profiles have given "
                f"feedback ({profiles['profiles']} so far).")
    return "**Everyone's version:** not made yet."


def _share(status: dict) -> str:
    share = f"**Everyone ↔ Just me:** replies are {status['alpha']:.0%} you"
    source = status.get("alpha_source")
    if source == "you":
        return f"{share}, as you set it." + (" (You have no version of your own yet, so for now it is 0%.)"
                                              if status["personal"] is None else "")
    if source == "none":
        return f"{share}: there is no version of your own yet."
    if source == "held back":
        return (f"{share}: your newest version agreed with your own held-out votes less often than everyone's "
                f"version, so replies follow everyone's taste until a better one is trained.")
    k = status.get("k", 0)
    return f"{share}, set automatically: the more you vote, the more the replies follow you " \
           f"(half you after {k:g} votes)."


def _job(job: dict, now: datetime) -> str:
    whose = "your version" if job["profile_id"] else "everyone's version"
    if job["status"] == "queued":
        return f"**Training {whose}:** waiting its turn."
    progress = float(job.get("progress") or 0.0)
    text = f"**Training {whose}:** {job.get('message') or 'started'} ({progress:.0%})"
    left = eta_seconds(job, progress, now)
    return text + (f", about {_duration(left)} left." if left is not None else ".")


def _unusable(bad: dict) -> str:
    whose = "Your" if bad["whose"] == "yours" else "Everyone's"
    return (f"**{whose} version {bad['version']} could not be used:** {bad['reason']} The version before it serves "
            "instead (or none, if there is no earlier one); the next update makes a new one.")


def _worker(heartbeat: dict | None, now: datetime) -> str:
    """The training worker's health, by the age of its last heartbeat."""
    if not heartbeat:
        return "**Training worker:** not started yet; your feedback is kept and learned from once it runs."
    age = max((now - datetime.fromisoformat(heartbeat["beat_at"])).total_seconds(), 0.0)
    if age <= STALE_WORKER:
        return f"**Training worker:** running, last heard from {_duration(age)} ago."
    return (f"**Training worker:** not heard from for {_duration(age)}; the app starts it again. Replies go on with "
            "the versions you have, and your feedback waits for it.")


def eta_seconds(job: dict, progress: float, now: datetime) -> float | None:
    """Time left at the pace so far (None before the first step: no pace yet)."""
    if progress <= 0 or not job.get("started_at"):
        return None
    elapsed = (now - datetime.fromisoformat(job["started_at"])).total_seconds()
    return max(elapsed, 0.0) * (1 - progress) / progress


def taste_words(record: list[dict]) -> str:
    """What the profile's choices say, from the exploration record: the instructions whose replies it chose
    clearly more (or less) often than an even split, with how often — a built-in probe's, or the person's own words
    (`own`). Nothing before `MIN_SHOWN` choices."""
    said: dict[tuple[bool, bool], list[str]] = {}
    for arm in sorted(record, key=lambda r: -r["shown"]):
        if arm["shown"] < MIN_SHOWN:
            continue
        share = (arm["chosen"] + 1) / (arm["shown"] + 2)  # a uniform prior: 2 of 2 is not yet a certainty
        own = bool(arm.get("own"))
        words = arm["instruction"] if own else arm["instruction"].rstrip(".").lower()
        text = f"“{words}” ({_times(arm['chosen'])} of {arm['shown']:g})"
        if share >= 0.5 + LEANING / 2:
            said.setdefault((True, own), []).append(text)
        elif share <= 0.5 - LEANING / 2:
            said.setdefault((False, own), []).append(text)
    heads = {(True, False): "you chose replies asked to ", (False, False): "you passed over replies asked to ",
             (True, True): "you chose replies that followed your words ",
             (False, True): "you passed over replies that followed your words "}
    parts = [head + _and(said[key]) for key, head in heads.items() if key in said]
    return f"**What your choices say:** {'; '.join(parts)}." if parts else ""


def ago(iso: str | None, now: datetime) -> str:
    """An ISO-8601 time as words relative to `now`: "just now", "2 minutes ago", "3 hours ago", "on Dec 4"."""
    if not iso:
        return "at an unknown time"
    moment = datetime.fromisoformat(iso)
    seconds = (now - moment).total_seconds()
    if seconds < 45:
        return "just now"
    for size, unit, below in ((60, "minute", 3600), (3600, "hour", 86400), (86400, "day", 7 * 86400)):
        if seconds < below:
            return f"{_count(max(round(seconds / size), 1), unit, unit + 's')} ago"
    return f"on {moment:%b} {moment.day}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(round(seconds), 1)} s"
    return f"{round(seconds / 60)} min"


def _guard_note(metrics: dict) -> str:
    """What the drift guard (adapters/drift.py) did to a version, if anything."""
    trained, kept = metrics.get("drift/perplexity_ratio_trained"), metrics.get("drift/perplexity_ratio")
    if metrics.get("drift/update_scale", 1.0) >= 1.0 or trained is None:
        return ""
    if "drift/adapter_scale" in metrics:
        done = f"scaled the whole adapter to {metrics['drift/adapter_scale']:.0%}"
    else:
        done = f"kept {metrics['drift/update_scale']:.0%} of its last update"
    return (f" (the drift guard {done}: as trained, plain replies were ×{trained:.2f} harder to predict than for "
            f"the base model; now ×{kept:.2f})")


def _number(label: str) -> int:
    return int(label.lstrip("v"))


def _count(n: float, one: str, many: str) -> str:
    return f"{n:g} {one if n == 1 else many}"


def _times(n: float) -> str:
    return f"{n:g}"


def _and(items: list[str]) -> str:
    items = [i for i in items if i and not i.startswith("0 ")]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
