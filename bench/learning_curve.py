"""Does feedback make replies better for the person who gave it? Learning curves with simulated users.

    python -m bench.learning_curve [--quick] [--jobs 2] [--users bench.users:population] [--max-users N]
                                   [--mode pair|single] [--set KEY=VALUE ...]
                                   [--output bench/results/learning_curve.json]

It drives Attune's real product loop — the same storage, trainer, worker, blending and generation code — through
`PreferenceChatEnv`: for each simulated user, in a fresh data home, ask a training prompt → show A and B (compare
mode) → the user chooses → feedback is stored and training is queued exactly as in the app; the worker's jobs
run before the next prompt. A user with `comment(prompt, reply)` also writes, with the choice, what was wrong with
the reply they did not choose (`comments`). `--mode single` is the default path instead: one reply, served as the
app serves it (`served_temperature`); the user gives 👍/👎 by their threshold and, with a 👎, maybe a comment; after
a comment they retry once and the retry follows it (the app's "Retry with this in mind"), and its 👍/👎 is one more
feedback event. At each feedback budget it measures on held-out prompts, judged by that user's reward:

- win rate against the base model of the served blend, of global only and of personal only (greedy replies;
  a tie counts half); and `served_win_rate`, the same with replies sampled as the app serves them by default
  (T 0.2 since 2026-12-01, T 0.7 before; 4 per prompt, each against each of the base model's samples; a seed of
  its own, so measuring it leaves the run's draws alone);
- preference accuracy on held-out pairs (two base samples per prompt, the user's better one as chosen): the
  share of pairs whose chosen reply the model finds more likely;
- drift: perplexity of neutral text relative to the base model;
- `ties`: of the held-out prompts, how many got a (greedy) reply the user values exactly as the base model's — each
  counts half in `win_rate` — and `same_as_base`, how many of those are the base model's reply word for word.

Then one population run: all users in one shared data home, taking turns, so the global adapter learns from
everyone under the per-profile cap. `--quick` runs the tiny test model with 2 users and small budgets (≈ 20 s).

Sizes (the defaults of `CurveConfig`) fit 60 minutes on the 2-core machine: measured on 2026-11-30 with the current
defaults (duel pairing, served samples for the blend, LoRA on the top two thirds), 48.1 min in all (seed 2, alone on
an AMD EPYC; with the top third: 54.2 min on a Xeon, 48.9 min on the EPYC); one user to 64 choices takes 7.7–9.5 min
of one core (an A/B pair of 32-token replies ≈ 3.4 s,
the personal update every 4 choices, 5 evaluations; a user alone has no global adapter, see
`LearningConfig.min_profiles`); users run two at a time (`--jobs 2`, one core each); the population run, 16 choices
per user, 26.9–28.8 min. 128 choices per user would
add ≈ 30 min. One run is one draw (an 8-user mean at 32 choices varied by sd 0.025–0.04 over seeds): compare
settings over seeds with `bench.seeds`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from adapters.blend import AdapterServer, Blend
from adapters.data import PairExample, collate, encode
from adapters.drift import perplexity
from adapters.evaluation import preference_margins
from adapters.registry import GLOBAL, AdapterRegistry, personal_adapter
from adapters.worker import ADAPTERS_DIR, Worker
from assistant.config import PLAIN, AppConfig, ExploreConfig, GenerationSettings, LearningConfig, ModelConfig
from assistant.executor import GenerationExecutor
from assistant.generation import left_padded, sampling_kwargs, visible_text
from assistant.model import load_model
from assistant.overrides import with_overrides
from assistant.prompts import build_prompt
from assistant.service import ChatService
from assistant.words import is_own
from bench.env import PreferenceChatEnv, load_prompts, split_prompts
from bench.provenance import machine, write_result
from bench.users import load_users, thumbs
from storage.db import DB_FILENAME
from storage.store import Store, seeded_ids

log = logging.getLogger("bench.learning_curve")
REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
EXAMPLES = 3
"""Held-out prompts whose base and served replies are kept in the results, at every budget."""
MODES = ("pair", "single")
TARGET = {"pair": 0.7, "single": 0.65}
"""The issues' target win rate of the blend at the target budget, per mode."""
ORPHAN_CHECK_SECONDS = 1.0
"""How often a pool process checks that the benchmark's process is still there."""
NEUTRAL_TEXT = [
    "The library opens at nine in the morning and closes at six in the evening on weekdays.",
    "Water boils at one hundred degrees Celsius at sea level, and at a lower temperature on high mountains.",
    "The train leaves the station every twenty minutes and the journey to the city centre takes half an hour.",
    "Most houses in the village are built of stone, and many of them have small gardens at the back.",
    "The committee will meet again next month to review the budget and discuss the new schedule.",
    "Apples, pears and plums grow well in this region because the summers are warm and the winters are mild.",
]


@dataclass(frozen=True)
class CurveConfig:
    model: str = "embedded"
    budgets: tuple[int, ...] = (0, 8, 16, 32, 64)
    """Feedback events (A/B choices, or 👍/👎 in single mode) after which each user's adapters are evaluated."""
    mode: str = "pair"
    """"pair": compare mode, the user chooses between A and B; "single": one reply and a 👍/👎 (the default path)."""
    comments: bool = True
    """Users with `comment(prompt, reply)` write their words: on the reply they did not choose, or on a 👎."""
    retry_comments: bool = True
    """Single mode: after a 👎 with a comment the user retries once, the retry following the comment."""
    notes: bool = False
    """Users with a `note` write it in their profile's "How should Attune answer you?" before the first prompt; each
    budget then also measures the blend's greedy replies with the note against those without (`note`)."""
    held_out_prompts: int = 24
    """Held-out prompts of the win rates (greedy replies, one batch per model)."""
    served_samples: int = 4
    """Also: replies per held-out prompt sampled as the app serves them by default (`served_temperature`), for
    `served_win_rate`; 0 skips it."""
    served_temperature: float = GenerationSettings().temperature
    """The app's default temperature: what a person is served unless they change the settings."""
    served_models: tuple[str, ...] = ("blend",)
    """Which of blend, global and personal get `served_win_rate` (the others: None). The blend is what a person is
    served; sampling all three put the full run on course for ≈ 70 min (2026-11-30, seed 1: the population run took
    20.7 min to its 8-choice point, a user alone 12.3 min to 64 choices, against 5.7–9.8 min without served
    samples), over the benchmark's 60."""
    eval_pairs: int = 16
    """Held-out prompts whose two base samples make the preference-accuracy pairs."""
    max_new_tokens: int = 32
    """Reply length, in training and evaluation alike."""
    sample_temperature: float = 0.9
    """Temperature of the A/B candidates shown to the simulated user."""
    repetition_penalty: float = GenerationSettings().repetition_penalty
    """Of every reply the run generates (candidates and evaluation alike), as the app's setting."""
    users: str = "bench.users:population"
    max_users: int | None = 8
    only: tuple[str, ...] = ()
    """Run just these users (by name); empty: all, up to `max_users`."""
    population_budgets: tuple[int, ...] = (0, 8, 16)
    """Choices per user in the shared-home run (8 users take turns, so 16 each is 128 events for the global adapter):
    21–30 min of one core with context distillation (22 with the NLL term). An earlier run used (0, 16, 32): 44 min,
    which made the whole run 62.9 min."""
    seed: int = 0
    """Decides the prompts each user is asked, the sampled candidates, the probes drawn, the ids (so the held-out
    pairs and replay samples): one seed repeats a run exactly, given the same machine and library versions
    (`--set seed=1` for another draw)."""
    learning: LearningConfig = field(default_factory=LearningConfig)
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    """Compare mode's style probes, as in the app (`--set explore.rate=0`: plain samples only;
    `--set explore.probes=list,direct`: only these probes, by name)."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode is one of {', '.join(MODES)} (got {self.mode!r})")
        unknown = set(self.served_models) - {"blend", "global", "personal"}
        if unknown:
            raise ValueError(f"served_models takes blend, global and personal, not {', '.join(sorted(unknown))}")


def quick_config(model_dir: Path) -> CurveConfig:
    # A global update every 4 events: on the random tiny model most choices are ties (equal rewards), so an update
    # over 8 events could find no pair to learn from and the population run would publish no global version.
    return CurveConfig(model=str(model_dir), budgets=(0, 4, 8), held_out_prompts=4, eval_pairs=4, max_new_tokens=8,
                       max_users=2, population_budgets=(0, 4),
                       learning=LearningConfig(personal_every=4, global_every=4, min_profiles=2,
                                                               global_min_age_hours=0))


class Harness:
    """One data home: the app's service (storage, blending, generation) and an in-process worker."""

    def __init__(self, home: Path, config: CurveConfig, cache: Path, executor: GenerationExecutor | None,
                 worker: bool = True, run: str = ""):
        model = ModelConfig(model=config.model, cache_dir=cache)
        self.config = config
        self.loaded = load_model(model, cache)
        # Ids drawn from the seed (and the run's name): they fix the held-out pairs and each update's replay
        # sample, so one seed repeats the run exactly.
        self.store = Store(home / DB_FILENAME, new_id=seeded_ids(f"{config.seed}:{run}"))
        registry = AdapterRegistry(home / ADAPTERS_DIR, self.store)
        self.server = AdapterServer(self.loaded, registry, self.store, config.learning.blend)
        self.executor = executor
        app = AppConfig(data_dir=home, model=model, explore=config.explore)
        self.service = ChatService(self.store, self.loaded, app, executor, adapters=self.server,
                                   learning=config.learning, rng=random.Random(config.seed))
        self.worker = Worker(load_model(model, cache), self.store, registry, config.learning) if worker else None
        self.registry = registry
        self.shown: dict[str, list[tuple[str, float, float, dict[str, str | None]]]] = {}
        """Per profile: (choice, the user's reward of A, of B, each side's probe name or None) of every pair
        shown."""
        self.thumbed: dict[str, list[dict]] = {}
        """Per profile, single mode: each reply's vote, the user's reward, its probe, comment and whether it was a
        retry."""

    def on_main(self, fn):
        """Run `fn()` where the app runs `generate` (the main thread: see assistant/executor.py); its result."""
        if self.executor is None:  # a one-thread process: any thread is as fast
            return fn()
        done, box = threading.Event(), {}

        def job():
            try:
                box["value"] = fn()
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc
            finally:
                done.set()

        self.executor.submit(job)
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def generate(self, prompts: list[str], blend: Blend | None, temperature: float, n: int = 1,
                 seed: int | None = None) -> list[list[str]]:
        """Replies to many single-turn prompts in one left-padded `generate` call (n per prompt), with the
        app's prompt building, stop strings and blending. With `seed`, sampling starts from that seed and the run's
        random state is restored afterwards (so measuring does not change what is learned), and two models sampled
        with one seed share their random draws (common random numbers)."""
        settings = GenerationSettings(temperature=temperature, max_new_tokens=self.config.max_new_tokens,
                                      repetition_penalty=self.config.repetition_penalty)
        tokenizer = self.loaded.tokenizer
        fitted = [build_prompt(self.loaded, settings.system_prompt, [{"role": "user", "content": p}],
                               settings.max_new_tokens) for p in prompts]
        input_ids, mask = left_padded([f.input_ids for f in fitted], tokenizer.pad_token_id)
        width = input_ids.shape[1]
        kwargs = dict(input_ids=input_ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                      num_return_sequences=n, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        kwargs.update(sampling_kwargs(temperature, settings.top_p, settings.repetition_penalty, width))

        def run():
            with torch.inference_mode(), (self.server.activate(blend) if blend else nullcontext()), \
                    (torch.random.fork_rng(devices=[]) if seed is not None else nullcontext()):
                if seed is not None:
                    torch.manual_seed(seed)
                return self.loaded.model.generate(**kwargs)

        out = self.on_main(run)[:, width:]
        stops = fitted[0].stop_strings
        texts = [visible_text(tokenizer.decode(row, skip_special_tokens=True), stops)[0].strip() for row in out]
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def feedback_step(self, env: PreferenceChatEnv, profile_id: str, prompt: str, room: int = 1) -> tuple[str, int]:
        """One turn of the product loop, training as the app queues it: the next prompt and how many feedback
        events the turn gave (at most `room`)."""
        if self.config.mode == "single":
            return self._thumbs_step(env, profile_id, prompt, room)
        conversation = self.service.new_conversation(profile_id)["id"]
        settings = GenerationSettings(temperature=self.config.sample_temperature,
                                      max_new_tokens=self.config.max_new_tokens,
                                      repetition_penalty=self.config.repetition_penalty)
        final = list(self.service.send(profile_id, conversation, prompt, settings, compare=True))[-1]
        comparison = final.comparison
        observation, _, _, _, info = env.step((comparison.a.content, comparison.b.content))
        choice = info["choice"]
        other = {"a": comparison.b, "b": comparison.a}.get(choice)
        comment = self._comment(env.user, prompt, other.content) if other else None
        self.service.choose(profile_id, comparison.id, choice, comment or "")
        self.settle()
        arms = {"a": comparison.a.settings.get("probe"), "b": comparison.b.settings.get("probe")}
        self.shown.setdefault(profile_id, []).append((choice, *info["user_rewards"], arms))
        self._train()
        return observation["prompt"], 1

    def _thumbs_step(self, env: PreferenceChatEnv, profile_id: str, prompt: str, room: int) -> tuple[str, int]:
        """Single mode: a reply served as the app serves it, the user's 👍/👎 (and maybe words); after a commented 👎,
        with room for a second event, a retry that follows the comment, and its 👍/👎."""
        conversation = self.service.new_conversation(profile_id)["id"]
        settings = GenerationSettings(temperature=self.config.served_temperature,
                                      max_new_tokens=self.config.max_new_tokens,
                                      repetition_penalty=self.config.repetition_penalty)
        reply = list(self.service.send(profile_id, conversation, prompt, settings))[-1].reply
        observation, _, _, _, info = env.step(reply.content)
        comment = self._vote(env.user, profile_id, prompt, reply, info["thumbs"], retry=False)
        used = 1
        if comment and room >= 2 and self.config.retry_comments:
            again = list(self.service.retry(profile_id, conversation, settings, follow_comment=True))[-1].reply
            self._vote(env.user, profile_id, prompt, again, thumbs(env.user, prompt, again.content), retry=True)
            used = 2
        self._train()
        return observation["prompt"], used

    def _vote(self, user, profile_id: str, prompt: str, reply, vote: int, retry: bool) -> str | None:
        comment = self._comment(user, prompt, reply.content) if vote < 0 else None
        self.service.vote(profile_id, reply.id, vote, comment)
        self.settle()
        self.thumbed.setdefault(profile_id, []).append({
            "vote": vote, "reward": user.reward(prompt, reply.content), "probe": reply.settings.get("probe"),
            "explored": bool(reply.settings.get("explored")), "comment": comment, "retry": retry})
        return comment

    def _comment(self, user, prompt: str, reply: str) -> str | None:
        write = getattr(user, "comment", None)
        return write(prompt, reply) if self.config.comments and write else None

    def settle(self) -> None:
        """Wait for the learned reward's refits queued by the votes so far (the app runs them on their own thread)."""
        if self.service.rewards:
            self.service.rewards.settle()

    def _train(self) -> None:
        self.settle()  # (every vote's refit done: what is trained and measured never depends on thread timing)
        while self.on_main(self.worker.run_once):  # the worker's jobs, before the next prompt
            pass

    def blends(self, profile_id: str) -> dict[str, Blend | None]:
        g = self.registry.current(GLOBAL)
        p = self.registry.current(personal_adapter(profile_id))
        return {
            "blend": self.server.blend_for(profile_id),
            "global": Blend(g.version if g else None, None, 0.0, "global only", profile_id),
            "personal": Blend(None, p.version if p else None, 1.0 if p else 0.0, "personal only", profile_id),
        }

    def drift_guard(self, profile_id: str) -> dict:
        """What the drift guard did to this user's adapters so far: per adapter, its published versions, how many
        the guard backtracked, the smallest update scale it kept (`adapters.drift`), and the current version's anchor
        perplexity ratio as trained and as published (to set against the benchmark's own neutral text)."""
        out = {}
        for name, adapter in (("global", GLOBAL), ("personal", personal_adapter(profile_id))):
            metrics = [v.manifest.get("metrics", {}) for v in self.registry.history(adapter)]
            scales = [m["drift/update_scale"] for m in metrics if "drift/update_scale" in m]
            current = metrics[-1] if metrics else {}
            out[name] = {"versions": len(metrics), "backtracked": sum(s < 1 for s in scales),
                         "min_update_scale": min(scales) if scales else None,
                         "anchor_ratio_trained": current.get("drift/perplexity_ratio_trained"),
                         "anchor_ratio": current.get("drift/perplexity_ratio")}
        return out

    def margins(self, blend: Blend | None, pairs: list[PairExample]) -> torch.Tensor:
        def run():
            with self.server.activate(blend) if blend else nullcontext():
                return preference_margins(self.loaded.model, self.loaded, pairs, self.config.learning.train)

        return self.on_main(run)

    def neutral_perplexity(self, blend: Blend | None) -> float:
        seqs = [encode(self.loaded, [{"role": "user", "content": "Say something."}], text, 256) for text in NEUTRAL_TEXT]
        batch = collate(seqs, self.loaded.tokenizer.pad_token_id)

        def run():
            with self.server.activate(blend) if blend else nullcontext():
                return perplexity(self.loaded.model, batch)

        return self.on_main(run)


def feedback_stats(shown: list[tuple[str, float, float, dict[str, str | None]]]) -> dict:
    """How much the shown pairs could teach: a pair whose replies the user values alike carries no taste; and how
    exploration went: how often each arm was asked and how often its candidate was chosen (a tie counts half) — a
    probe, "own" for any of the person's comments (personal probes), or "plain" for a plain sample facing a probed
    one, as `Store.probe_records` counts them.
    `probed_share`: pairs with at least one probed candidate; `probed_chosen`: the share of probed candidates
    chosen — against the plain sample in "single" pairing, but in a duel of two probes one of them always wins, so
    the two pairings' figures do not compare."""
    gaps = [abs(a - b) for _, a, b, _ in shown]
    decided = [(c, a, b) for c, a, b, _ in shown if c != "tie" and a != b]
    probes: dict[str, list[float]] = {}
    for choice, _, _, arms in shown:
        for side, other in (("a", "b"), ("b", "a")):
            name = arms[side] or (PLAIN if arms[other] else None)
            name = "own" if is_own(name) else name  # the person's own words, whichever comment
            if name:
                counts = probes.setdefault(name, [0, 0.0])
                counts[0] += 1
                counts[1] += 1.0 if choice == side else 0.5 if choice == "tie" else 0.0
    probed = {name: counts for name, counts in probes.items() if name != PLAIN}
    asked = sum(n for n, _ in probed.values())
    return {"pairs": len(shown), "ties": sum(c == "tie" for c, *_ in shown),
            "reward_gap_mean": round(statistics.mean(gaps), 3) if gaps else None,
            "informative_share": round(sum(g >= 0.25 for g in gaps) / len(gaps), 3) if gaps else None,
            "choice_agrees_with_reward": round(sum((c == "a") == (a > b) for c, a, b in decided) / len(decided), 3)
            if decided else None,
            "probed_share": round(sum(any(arms.values()) for *_, arms in shown) / len(shown), 3) if shown else None,
            "probed_chosen": round(sum(w for _, w in probed.values()) / asked, 3) if asked else None,
            "probes": {name: {"asked": n, "chosen": w}
                       for name, (n, w) in sorted(probes.items(), key=lambda item: -item[1][0])}}


def thumbs_stats(thumbed: list[dict]) -> dict:
    """Single mode: how many replies were liked, commented and retried, and how the explored arms fared (a 👍 is a
    success)."""
    probes: dict[str, list[int]] = {}
    for t in thumbed:
        if t["explored"]:
            counts = probes.setdefault("own" if is_own(t["probe"]) else t["probe"] or PLAIN, [0, 0])
            counts[0] += 1
            counts[1] += t["vote"] > 0
    firsts = [t for t in thumbed if not t["retry"]]
    retries = [t for t in thumbed if t["retry"]]
    return {"events": len(thumbed), "up_share": round(sum(t["vote"] > 0 for t in thumbed) / len(thumbed), 3)
            if thumbed else None,
            "comments": sum(bool(t["comment"]) for t in thumbed), "retries": len(retries),
            "retries_liked": sum(t["vote"] > 0 for t in retries),
            "first_reply_up_share": round(sum(t["vote"] > 0 for t in firsts) / len(firsts), 3) if firsts else None,
            "explored": {name: {"served": n, "liked": up} for name, (n, up) in
                         sorted(probes.items(), key=lambda item: -item[1][0])}}


def _samples(h: Harness, prompts: list[str]) -> list[tuple[str, str]]:
    """Two base-model samples per held-out prompt: the material of the held-out pairs."""
    return [(a, b) for a, b in h.generate(prompts, None, 1.0, n=2)]


def _eval_pairs(user, prompts: list[str], samples: list[tuple[str, str]]) -> list[PairExample]:
    """The samples as pairs labelled by this user's reward (equal rewards: no pair)."""
    pairs = []
    for i, (prompt, (a, b)) in enumerate(zip(prompts, samples)):
        ra, rb = user.reward(prompt, a), user.reward(prompt, b)
        if ra != rb:
            chosen, rejected = (a, b) if ra > rb else (b, a)
            pairs.append(PairExample([{"role": "user", "content": prompt}], chosen, rejected, f"eval{i}", "sim"))
    return pairs


class Evaluation:
    """Greedy replies and neutral-text perplexity of each distinct blend at one budget, computed once and shared
    by the users it is scored for (in the population run every user shares the global-only model)."""

    def __init__(self, h: Harness, prompts: list[str], base: dict):
        self.h, self.prompts, self.base = h, prompts, base
        self._replies: dict[tuple, list[str]] = {}
        self._served: dict[tuple, list[list[str]]] = {}
        self._perplexity: dict[tuple, float] = {}

    @staticmethod
    def key(blend: Blend) -> tuple:
        personal = (blend.profile_id, blend.personal_version, round(blend.alpha, 4)) if blend.personal_version else None
        return blend.global_version, personal

    def replies(self, blend: Blend) -> list[str]:
        key = self.key(blend)
        if key == (None, None):
            return self.base["replies"]
        if key not in self._replies:
            self._replies[key] = [r[0] for r in self.h.generate(self.prompts, blend, 0.0)]
        return self._replies[key]

    def served(self, blend: Blend) -> list[list[str]]:
        """`served_samples` replies per prompt at the app's default temperature, on the base model's seed."""
        key = self.key(blend)
        if key == (None, None):
            return self.base["served"]
        if key not in self._served:
            self._served[key] = served_replies(self.h, self.prompts, blend)
        return self._served[key]

    def noted(self, blend: Blend, note: str) -> list[str]:
        """Greedy replies of `blend` with `note` added to each prompt, as the app adds it while it is sent."""
        key = (self.key(blend), note)
        if key not in self._replies:
            self._replies[key] = [r[0] for r in self.h.generate([f"{p}\n\n{note}" for p in self.prompts], blend,
                                                                0.0)]
        return self._replies[key]

    def perplexity_ratio(self, blend: Blend) -> float:
        key = self.key(blend)
        if key == (None, None):
            return 1.0
        if key not in self._perplexity:
            self._perplexity[key] = self.h.neutral_perplexity(blend) / self.base["perplexity"]
        return self._perplexity[key]


def served_replies(h: Harness, prompts: list[str], blend: Blend | None) -> list[list[str]]:
    config = h.config
    if not config.served_samples:
        return []
    return h.generate(prompts, blend, config.served_temperature, n=config.served_samples, seed=config.seed)


def _wins(mine: list[float], theirs: list[float]) -> list[float]:
    return [1.0 if r > b else 0.5 if r == b else 0.0 for r in mine for b in theirs]


def served_win_rate(user, prompts: list[str], served: list[list[str]], base: list[list[str]]) -> float | None:
    """Each sampled reply against each of the base model's samples for the same prompt (a tie counts half)."""
    if not served:
        return None
    return round(statistics.mean(w for p, mine, theirs in zip(prompts, served, base) for w in _wins(
        [user.reward(p, r) for r in mine], [user.reward(p, b) for b in theirs])), 3)


def evaluate(ev: Evaluation, user, profile_id: str, pairs: list[PairExample]) -> dict:
    h, prompts, base = ev.h, ev.prompts, ev.base["replies"]
    out = {"win_rate": {}, "served_win_rate": {}, "preference_accuracy": {}, "perplexity_ratio": {},
           "mean_user_reward": {}, "ties": {}, "same_as_base": {}}
    base_rewards = [user.reward(p, b) for p, b in zip(prompts, base)]
    blends = h.blends(profile_id)
    for name, blend in blends.items():
        replies = ev.replies(blend)
        rewards = [user.reward(p, r) for p, r in zip(prompts, replies)]
        out["win_rate"][name] = round(statistics.mean(
            w for r, b in zip(rewards, base_rewards) for w in _wins([r], [b])), 3)
        out["ties"][name] = sum(r == b for r, b in zip(rewards, base_rewards))
        out["same_as_base"][name] = sum(r == b for r, b in zip(replies, base))
        out["served_win_rate"][name] = served_win_rate(user, prompts, ev.served(blend), ev.base["served"]) \
            if name in h.config.served_models else None
        active = blend if Evaluation.key(blend) != (None, None) else None
        out["preference_accuracy"][name] = round((h.margins(active, pairs) > 0).float().mean().item(), 3) \
            if pairs else None
        out["perplexity_ratio"][name] = round(ev.perplexity_ratio(blend), 4)
        out["mean_user_reward"][name] = round(statistics.mean(rewards), 3)
    out["mean_user_reward"]["base"] = round(statistics.mean(base_rewards), 3)
    note = h.service.note(profile_id)
    if note:
        out["note"] = note_point(ev, user, blends["blend"], note, out["mean_user_reward"]["blend"],
                                 out["mean_user_reward"]["base"], h.service.learning_status(profile_id)["note"])
    out["reward"] = reward_point(ev, user, profile_id, pairs)
    out["served"] = blends["blend"].record()
    out["published"] = {"global": blends["global"].global_version, "personal": blends["personal"].personal_version}
    out["drift_guard"] = h.drift_guard(profile_id)
    out["examples"] = [{"prompt": p, "base": b, "blend": r} for p, b, r in
                       list(zip(prompts, base, ev.replies(blends["blend"])))[:EXAMPLES]]
    return out


def reward_point(ev: Evaluation, user, profile_id: str, pairs: list[PairExample]) -> dict | None:
    """The profile's learned reward as the app holds it now (its own, else everyone's; None: none yet): its accuracy
    on the held-out pairs the adapters' `preference_accuracy` is measured on, the app's own held-out figure, and the
    served blend's samples re-ranked by it — best of `served_samples` by the reward against a plain sample (the
    first) and against the best by the user's own reward (the ceiling), each against the base model's samples."""
    ev.h.settle()
    rewards = ev.h.service.rewards
    fitted = rewards.scorer(profile_id) if rewards else None
    if fitted is None:
        return None
    prompt = GenerationSettings().system_prompt  # the votes' replies were asked under it: their features include it
    system = [{"role": "system", "content": prompt}] if prompt else []
    chosen = rewards.score(fitted, [(system + p.prompt, p.chosen, True) for p in pairs]) if pairs else []
    rejected = rewards.score(fitted, [(system + p.prompt, p.rejected, True) for p in pairs]) if pairs else []
    own = ev.h.store.current_reward(profile_id)
    out = {"accuracy": round(statistics.mean(c > r for c, r in zip(chosen, rejected)), 3) if pairs else None,
           "own": own is not None,  # the app's own held-out figures, without its timings (they are the clock's)
           "app_held_out": {k: v for k, v in own["metrics"].items() if not k.endswith("_ms")} if own else None}
    samples = ev.served(ev.h.blends(profile_id)["blend"])
    if samples:
        scores = [rewards.score(fitted, [(system + [{"role": "user", "content": p}], r, True) for r in replies])
                  for p, replies in zip(ev.prompts, samples)]
        best = [[replies[max(range(len(s)), key=s.__getitem__)]] for replies, s in zip(samples, scores)]
        ceiling = [[max(replies, key=lambda r, p=p: user.reward(p, r))] for p, replies in zip(ev.prompts, samples)]
        out[f"best_of_{len(samples[0])}_win_rate"] = served_win_rate(user, ev.prompts, best, ev.base["served"])
        out["sample_win_rate"] = served_win_rate(user, ev.prompts, [[r[0]] for r in samples], ev.base["served"])
        out[f"oracle_{len(samples[0])}_win_rate"] = served_win_rate(user, ev.prompts, ceiling, ev.base["served"])
    return out


def note_point(ev: Evaluation, user, blend: Blend, note: str, without: float, base: float, status: dict) -> dict:
    """The served blend's greedy replies with the profile's note against without it, by the user's reward: the
    ratio of their means, and the share of the note's lift over the base model the blend keeps without it; and what
    the app decided (`sent`) from the worker's own measure (`learned`, adapters/note.py)."""
    with_note = round(statistics.mean(user.reward(p, r) for p, r in zip(ev.prompts, ev.noted(blend, note))), 3)
    return {"reward_with_note": with_note, "reward_without_note": without, "reward_base": base,
            "ratio": round(without / with_note, 3) if with_note > 0 else None,
            "share_of_lift": round((without - base) / (with_note - base), 3) if with_note > base else None,
            "sent": status["sent"], "learned": status["learned"]}


def reference(config: CurveConfig, held: list[str], cache: Path, executor: GenerationExecutor | None) -> dict:
    """What every run is measured against, computed once: the base model's greedy replies to the held-out prompts,
    its perplexity on neutral text and two samples per prompt for the held-out pairs."""
    with tempfile.TemporaryDirectory(prefix="attune-curve-reference-") as tmp:
        h = Harness(Path(tmp), config, cache, executor, worker=False)
        prompts = held[: config.held_out_prompts]
        return {"prompts": prompts, "replies": [r[0] for r in h.generate(prompts, None, 0.0)],
                "served": served_replies(h, prompts, None),
                "perplexity": h.neutral_perplexity(None), "pair_prompts": held[: config.eval_pairs],
                "samples": _samples(h, held[: config.eval_pairs])}


def run_user(user, config: CurveConfig, train: list[str], base: dict, cache: Path,
             executor: GenerationExecutor | None) -> dict:
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"attune-curve-{user.name}-") as tmp:
        h = Harness(Path(tmp), config, cache, executor, run=user.name)
        profile_id = h.service.create_profile(user.name[:40])["id"]
        if config.notes and getattr(user, "note", ""):
            h.service.set_note(profile_id, user.note)
        prompts = base["prompts"]
        pairs = _eval_pairs(user, base["pair_prompts"], base["samples"])
        env = PreferenceChatEnv(user, train, mode=config.mode, episode_length=max(config.budgets))
        prompt = env.reset(seed=config.seed)[0]["prompt"]
        curve, given = {}, 0
        for point in sorted(config.budgets):
            while given < point:
                prompt, used = h.feedback_step(env, profile_id, prompt, room=point - given)
                given += used
            curve[point] = evaluate(Evaluation(h, prompts, base), user, profile_id, pairs)
            curve[point]["elapsed_s"] = round(time.perf_counter() - began)
            log.info("%s after %d events: win rate %s", user.name, point, curve[point]["win_rate"])
        return {"description": getattr(user, "description", ""), "curve": curve, "eval_pairs": len(pairs),
                "feedback": _stats(h, profile_id), "seconds": round(time.perf_counter() - began)}


def _stats(h: Harness, profile_id: str) -> dict:
    if h.config.mode == "single":
        return thumbs_stats(h.thumbed.get(profile_id, []))
    return feedback_stats(h.shown.get(profile_id, []))


def run_population(users, config: CurveConfig, train: list[str], base: dict, cache: Path,
                   executor: GenerationExecutor | None) -> dict:
    """Everyone in one data home, taking turns: the global adapter learns from all under the cap."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attune-curve-population-") as tmp:
        h = Harness(Path(tmp), config, cache, executor, run="population")
        prompts = base["prompts"]
        members = []
        for i, user in enumerate(users):
            env = PreferenceChatEnv(user, train, mode=config.mode, episode_length=max(config.population_budgets))
            prompt = env.reset(seed=config.seed + i)[0]["prompt"]
            profile_id = h.service.create_profile(user.name[:40])["id"]
            if config.notes and getattr(user, "note", ""):
                h.service.set_note(profile_id, user.note)
            members.append([user, profile_id, env, prompt, _eval_pairs(user, base["pair_prompts"], base["samples"]), 0])
        curve = {}
        for point in sorted(config.population_budgets):
            while any(m[5] < point for m in members):  # turns: each member one step, until all reach the point
                for member in (m for m in members if m[5] < point):
                    member[3], used = h.feedback_step(member[2], member[1], member[3], room=point - member[5])
                    member[5] += used
            ev = Evaluation(h, prompts, base)
            curve[point] = {user.name: evaluate(ev, user, uid, pairs) for user, uid, _, _, pairs, _ in members}
            log.info("population after %d events each: blend win rates %s", point,
                     {name: p["win_rate"]["blend"] for name, p in curve[point].items()})
        jobs = h.store.latest_job(GLOBAL)
        return {"curve": curve, "seconds": round(time.perf_counter() - began),
                "global_versions": len(h.registry.history(GLOBAL)),
                "feedback": {user.name: _stats(h, uid) for user, uid, *_ in members},
                "last_global_job": {k: jobs[k] for k in ("status", "message")} if jobs else None}


def _mean_win_rates(curves: list[dict], budgets: list[str]) -> dict:
    return {b: {m: round(statistics.mean(c[b]["win_rate"][m] for c in curves), 3) for m in ("blend", "global", "personal")}
            for b in budgets if all(b in c for c in curves)}


def summarise(result: dict, config: CurveConfig) -> dict:
    """The issues' targets, measured: blend win rate ≥ 0.7 at 32 choices for ≥ 6 of 8 users (single mode: ≥ 0.65
    for half of them); the blend on average at least as good as the better of global-only and personal-only; neutral
    perplexity up ≤ 10 %. The served (sampled) blend's figures beside them."""
    users = result["users"]
    budgets = [str(b) for b in config.budgets]
    mean = _mean_win_rates([u["curve"] for u in users.values()], budgets)
    target = "32" if "32" in budgets else budgets[-1]
    bar = TARGET[config.mode]
    winners = [name for name, u in users.items() if u["curve"][target]["win_rate"]["blend"] >= bar]
    served = {name: u["curve"][target]["served_win_rate"]["blend"] for name, u in users.items()}
    served_winners = [name for name, w in served.items() if w is not None and w >= bar]
    at = mean.get(target, {})
    ppl = max(u["curve"][b]["perplexity_ratio"]["blend"] for u in users.values() for b in budgets)
    share = 0.75 if config.mode == "pair" else 0.5
    summary = {
        "mode": config.mode, "mean_win_rate": mean, "target_budget": int(target), "target_win_rate": bar,
        "users_with_blend_win_rate_at_least_0.7": [n for n, u in users.items()
                                                    if u["curve"][target]["win_rate"]["blend"] >= 0.7],
        "users_at_target": winners, "users_at_target_served": served_winners,
        "mean_served_win_rate": round(statistics.mean(w for w in served.values() if w is not None), 3)
        if any(w is not None for w in served.values()) else None,
        "max_perplexity_ratio_of_blend": ppl,
        "targets": {
            "blend_at_target_for_enough_users": len(winners) >= math.ceil(share * len(users)),
            "served_blend_at_target_for_enough_users": len(served_winners) >= math.ceil(share * len(users)),
            "blend_at_least_best_single": bool(at) and at["blend"] >= max(at["global"], at["personal"]),
            "perplexity_rise_at_most_10_percent": ppl <= 1.10,
        },
    }
    summary["reward"] = reward_summary(users, budgets)
    if "population" in result:
        curve = result["population"]["curve"]
        summary["population_mean_win_rate"] = {
            b: {m: round(statistics.mean(p[m] for p in (u["win_rate"] for u in curve[b].values())), 3)
                for m in ("blend", "global", "personal")} for b in curve}
    return summary


def reward_summary(users: dict, budgets: list[str]) -> dict:
    """Per budget, means over the users with a learned reward: its held-out accuracy beside the blend's
    `preference_accuracy` on the same pairs, and the win rates of best-of-n by it, of a plain sample, of the oracle."""
    out = {}
    for b in budgets:
        points = [u["curve"][b] for u in users.values() if u["curve"][b].get("reward")]
        if not points:
            continue
        row = {"users": len(points)}
        for key in points[0]["reward"]:
            values = [p["reward"][key] for p in points if isinstance(p["reward"].get(key), float)]
            if values:
                row[key] = round(statistics.mean(values), 3)
        row["adapter_accuracy"] = round(statistics.mean(p["preference_accuracy"]["blend"] for p in points
                                                        if p["preference_accuracy"]["blend"] is not None), 3)
        out[b] = row
    return out


def markdown_table(result: dict) -> str:
    """Per user: the served blend's win rate vs base at each budget, and at the target budget global-only,
    personal-only, held-out preference accuracy and perplexity ratio of the blend."""
    users = result["users"]
    budgets = list(next(iter(users.values()))["curve"])
    target = str(result["summary"]["target_budget"])
    head = ["user"] + [f"blend @{b}" for b in budgets] + [f"global @{target}", f"personal @{target}",
                                                         f"pref. acc. blend @{target}", f"ppl ratio @{target}",
                                                         "informative pairs"]
    rows = [head, ["---"] * len(head)]
    for name, u in users.items():
        point = u["curve"][target]
        rows.append([f"`{name}`"] + [f"{u['curve'][b]['win_rate']['blend']:.2f}" for b in budgets] + [
            f"{point['win_rate']['global']:.2f}", f"{point['win_rate']['personal']:.2f}",
            f"{point['preference_accuracy']['blend']:.2f}" if point["preference_accuracy"]["blend"] is not None
            else "–", f"{point['perplexity_ratio']['blend']:.3f}", _informative(u['feedback'])])
    mean = result["summary"]["mean_win_rate"]
    rows.append(["**mean**"] + [f"**{mean[b]['blend']:.2f}**" for b in budgets] + [
        f"{mean[target]['global']:.2f}", f"{mean[target]['personal']:.2f}", "", "", ""])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _informative(feedback: dict) -> str:
    """Pairs whose rewards differ by ≥ 0.25 (compare mode), or the share of 👍 (single mode)."""
    if "informative_share" in feedback:
        return f"{feedback['informative_share']:.2f}"
    return f"👍 {feedback['up_share']:.2f}" if feedback.get("up_share") is not None else "–"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, u in result["users"].items():
        xs = [int(b) for b in u["curve"]]
        axes[0].plot(xs, [u["curve"][b]["win_rate"]["blend"] for b in u["curve"]], marker="o", label=name)
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].set(title="Served blend vs base, per user", xlabel="feedback events", ylabel="win rate on held-out",
                ylim=(0, 1))
    axes[0].legend(fontsize=7)
    mean_panel(axes[1], result["summary"]["mean_win_rate"], "Mean over users")
    save_figure(fig, f"Attune learning curves — {result['model']}", path)


def mean_panel(ax, mean: dict, title: str) -> dict:
    """The mean win rate vs base of blend, global-only and personal-only per budget; each model's line."""
    lines = {}
    for model in ("blend", "global", "personal"):
        lines[model], = ax.plot([int(b) for b in mean], [mean[b][model] for b in mean], marker="o", label=model)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(title=title, xlabel="feedback events", ylabel="win rate vs base", ylim=(0, 1))
    ax.legend()
    return lines


def save_figure(fig, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny test model, 2 users, small budgets")
    parser.add_argument("--users", default=CurveConfig.users)
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--budgets", default=None, help="comma-separated feedback budgets, e.g. 0,8,16,32")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="pair: compare mode, A/B choices (default); single: one reply and 👍/👎")
    parser.add_argument("--population-budgets", default=None, help="budgets of the shared-home run ('' skips it)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None, metavar="RESULT_JSON",
                        help="print the README table of an earlier run's results and exit")
    parser.add_argument("--jobs", type=int, default=2,
                        help="processes running users side by side, one core each (2 on the 2-core machine)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. held_out_prompts=16 or learning.train.learning_rate=1e-3")
    parser.add_argument("--model-cache", type=Path, default=REPO / ".cache" / "models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.table:
        sys.stdout.write(markdown_table(json.loads(args.table.read_text())) + "\n")
        return 0
    # Like the app: the main thread runs `generate` and training (see assistant/executor.py), the loop a thread.
    executor, finished, box = GenerationExecutor(), threading.Event(), {}

    def body():
        try:
            box["result"] = _run(args, executor)
        except BaseException as exc:
            box["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=body, name="benchmark", daemon=True).start()
    executor.serve_forever(should_stop=finished.is_set, poll_seconds=0.05)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _run(args: argparse.Namespace, executor: GenerationExecutor) -> int:
    began = time.perf_counter()
    random.seed(0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="attune-curve-model-") as tmp:
        if args.quick:
            from bench.tiny_model import make_tiny_gpt2

            config = quick_config(make_tiny_gpt2(Path(tmp) / "tiny"))
        else:
            config = CurveConfig()
        config = replace(config, users=args.users, max_users=args.max_users or config.max_users,
                         mode=args.mode or config.mode)
        if args.budgets:
            config = replace(config, budgets=tuple(int(b) for b in args.budgets.split(",")))
        if args.population_budgets is not None:
            config = replace(config, population_budgets=tuple(int(b) for b in args.population_budgets.split(",")
                                                              if b.strip()))
        if args.set:
            config = with_overrides(config, args.set)
        users = select_users(config)
        train, held = split_prompts(load_prompts())
        result = {"benchmark": "learning_curve", "quick": args.quick, "model": config.model if args.quick else
                  "SmolLM2-135M-Instruct (embedded)", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                  "config": {k: v for k, v in asdict(config).items() if k != "learning"},
                  "learning": asdict(config.learning),
                  "prompts": {"train": len(train), "held_out": len(held)}, "users": {}}
        base = reference(config, held, args.model_cache, executor)
        tasks = [("population", None)] if config.population_budgets else []
        tasks += [("user", i) for i in range(len(users))]
        if args.jobs > 1:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_pool_process,
                                     initargs=(os.getpid(),)) as pool:
                done = list(pool.map(_task, *zip(*[(kind, i, config, train, base, args.model_cache, None)
                                                   for kind, i in tasks])))
        else:
            done = [_task(kind, i, config, train, base, args.model_cache, executor) for kind, i in tasks]
        for (kind, i), value in zip(tasks, done):
            if kind == "population":
                result["population"] = value
        result["users"] = {users[i].name: value for (kind, i), value in zip(tasks, done) if kind == "user"}
        result["summary"] = summarise(_stringify(result), config)
    result = _stringify(result)
    result["seconds"] = round(time.perf_counter() - began, 1)
    output = args.output or RESULTS / ("learning_curve_quick.json" if args.quick else "learning_curve.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_result(output, result)
    plot(result, output.with_suffix(".png"))
    log.info("done in %.0f s: %s -> %s", result["seconds"], result["summary"], output)
    return 0


def select_users(config: CurveConfig) -> list:
    users = load_users(config.users)
    unknown = set(config.only) - {u.name for u in users}
    if unknown:
        raise ValueError(f"no such users in {config.users}: {sorted(unknown)}")
    return [u for u in users if not config.only or u.name in config.only][: config.max_users]


def _pool_process(parent: int) -> None:
    """A pool process computes on one core: two such processes decode 1.85× as many tokens per second as one
    process on both cores (measured on the 2-core machine; batch-16 decoding, 9.3 s vs 8.6 s per call). It exits
    when the benchmark's process is gone (stopped or killed), instead of computing on for nobody."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(message)s")

    def watch():
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_SECONDS)
        log.warning("the benchmark's process %d is gone: stopping", parent)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _task(kind: str, index: int | None, config: CurveConfig, train: list[str], base: dict, cache: Path,
          executor: GenerationExecutor | None) -> dict:
    """One user's curve or the population run (users are loaded afresh: a process pool pickles only the spec)."""
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    users = select_users(config)
    if kind == "population":
        return run_population(users, config, train, base, cache, executor)
    return run_user(users[index], config, train, base, cache, executor)


def _stringify(obj):
    """JSON object keys as strings (budgets are ints in memory)."""
    if isinstance(obj, dict):
        return {str(k): _stringify(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_stringify(v) for v in obj]
    return obj


if __name__ == "__main__":
    raise SystemExit(main())
