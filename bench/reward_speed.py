"""How long does refitting a profile's learned reward add to a vote? (The target: ≤ 100 ms on 2 cores.)

    python -m bench.reward_speed [--votes 8 32 128] [--repeats 9] [--output bench/results/reward_speed.json]

For a profile that has already given N choices (each one's features computed and stored when it was given, as in
the app), the next choice is timed side by side through the app's own `ChatService.choose`: with the learned reward
on and with it off, alternately, `--repeats` times per N. With it on, the request only queues the refit; the time
until the refit is done (its two replies' features by one forward pass of the base model each, the MAP fit, the
version written) is measured from the same click. The replies are real: 64-token replies of
the embedded model to the benchmark's prompts, written once and reused. Prints the medians and the ratio, and the
reward's own split (features, fit) from the version's metrics.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from adapters.blend import AdapterServer
from adapters.registry import AdapterRegistry
from assistant.config import AppConfig, BlendConfig, GenerationSettings, LearningConfig, ModelConfig
from assistant.model import load_model
from assistant.service import ChatService
from bench.env import load_prompts
from bench.learning_curve import REPO, RESULTS
from bench.provenance import machine, write_result
from storage.db import DB_FILENAME
from storage.store import Store

log = logging.getLogger("bench.reward_speed")
TARGET_MS = 100.0


def _replies(service: ChatService, prompts: list[str], tokens: int) -> list[str]:
    settings = GenerationSettings(temperature=0.9, max_new_tokens=tokens)
    profile = service.create_profile("writer")["id"]
    return [list(service.send(profile, None, p, settings))[-1].reply.content for p in prompts]


def _choice(service: ChatService, profile: str, prompt: str, a: str, b: str):
    """A comparison stored as the app stores one; returns its id."""
    store = service.store
    conversation = service.new_conversation(profile)["id"]
    message = store.add_message(profile, conversation, "user", prompt)
    return store.create_comparison(profile, conversation, message.id, a, b, model_id=service.model_id,
                                   settings={}).id


def measure(args: argparse.Namespace, home: Path) -> dict:
    model = ModelConfig(model=args.model, cache_dir=args.model_cache)
    loaded = load_model(model, args.model_cache)
    store = Store(home / DB_FILENAME)
    learning = LearningConfig()
    server = AdapterServer(loaded, AdapterRegistry(home / "adapters", store), store, BlendConfig())
    service = ChatService(store, loaded, AppConfig(data_dir=home, model=model), adapters=server, learning=learning,
                          rng=random.Random(0))
    prompts = load_prompts()[: args.prompts]
    texts = _replies(service, prompts, args.tokens)
    log.info("%d replies written (%.0f s)", len(texts), time.perf_counter() - args.began)
    rewards, rng, out = service.rewards, random.Random(0), {}
    for n in sorted(args.votes):
        profile = service.create_profile(f"voter {n}")["id"]
        for _ in range(n):  # the votes given before, each refitted as the app refits it
            i, j = rng.sample(range(len(texts)), 2)
            service.choose(profile, _choice(service, profile, prompts[i], texts[i], texts[j]), "a")
            rewards.settle()
        on, off, refit, split = [], [], [], []
        for r in range(args.repeats):
            for enabled in (True, False):
                i, j = rng.sample(range(len(texts)), 2)
                comparison = _choice(service, profile, prompts[i], texts[i], texts[j])
                service.rewards = rewards if enabled else None
                began = time.perf_counter()
                service.choose(profile, comparison, "a")
                (on if enabled else off).append(1000 * (time.perf_counter() - began))
                if enabled:
                    rewards.settle()
                    refit.append(1000 * (time.perf_counter() - began))
            service.rewards = rewards
            metrics = store.current_reward(profile)["metrics"]
            split.append((metrics["features_ms"], metrics["fit_ms"]))
        row = {"votes_before": n, "with_reward_ms": round(statistics.median(on), 1),
               "without_reward_ms": round(statistics.median(off), 1),
               "vote_to_refit_ms": round(statistics.median(refit), 1),
               "features_ms": round(statistics.median(s[0] for s in split), 1),
               "fit_ms": round(statistics.median(s[1] for s in split), 1)}
        row["reward_adds_ms"] = round(row["with_reward_ms"] - row["without_reward_ms"], 1)
        row["fit_ratio_to_target"] = round(row["fit_ms"] / TARGET_MS, 3)
        out[str(n)] = row
        log.info("after %d votes: %s", n, row)
    return {"points": out, "replies": len(texts), "reply_tokens": args.tokens, "target_ms": TARGET_MS,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--votes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=64, help="length of the replies voted on")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--model-cache", type=Path, default=REPO / ".cache" / "models")
    parser.add_argument("--output", type=Path, default=RESULTS / "reward_speed.json")
    args = parser.parse_args(argv)
    if min(args.votes) < 0 or args.repeats < 1 or args.prompts < 2:
        parser.error("--votes must be ≥ 0, --repeats ≥ 1, --prompts ≥ 2")
    torch.set_num_threads(2)
    args.began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attune-reward-speed-") as tmp:
        measured = measure(args, Path(tmp))
    result = {"benchmark": "reward_speed", "model": args.model, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              **measured, "seconds": round(time.perf_counter() - args.began)}
    write_result(args.output, result, {k: v for k, v in vars(args).items() if k != "began"})
    for n, row in measured["points"].items():
        log.info("%s votes: a vote's request takes %.1f ms with the reward on, %.1f ms off (+%.1f ms); its refit is "
                 "done %.0f ms after the click (features %.1f ms, fit %.1f ms: %.2f× the %d ms target)", n,
                 row["with_reward_ms"], row["without_reward_ms"], row["reward_adds_ms"], row["vote_to_refit_ms"],
                 row["features_ms"], row["fit_ms"], row["fit_ratio_to_target"], TARGET_MS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
