"""Does feedback make replies better for the person who gave it? Learning curves with simulated users.

    python -m bench.learning_curve [--quick] [--users bench.users:population] [--max-users N]
                                   [--output bench/results/learning_curve.json]

It drives Attune's real product loop — the same storage, trainer, worker, blending and generation code — through
`PreferenceChatEnv`: for each simulated user, in a fresh data home, ask a training prompt → show A and B (compare
mode) → the user chooses → feedback is stored and training is queued exactly as in the app; the worker's jobs
run before the next prompt. At each feedback budget it measures on held-out prompts, judged by that user's reward:

- win rate against the base model of the served blend, of global only and of personal only (greedy replies;
  a tie counts half);
- preference accuracy on held-out pairs (two base samples per prompt, the user's better one as chosen): the
  share of pairs whose chosen reply the model finds more likely;
- drift: perplexity of neutral text relative to the base model.

Then one population run: all users in one shared data home, taking turns, so the global adapter learns from
everyone under the per-profile cap. `--quick` runs the tiny test model with 2 users and small budgets (≈ 1 min).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from adapters.blend import AdapterServer, Blend
from adapters.data import PairExample
from adapters.jobs import LearningConfig
from adapters.registry import GLOBAL, AdapterRegistry, personal_adapter
from adapters.training import preference_margins, sequence_logps
from adapters.data import collate, encode
from adapters.worker import ADAPTERS_DIR, Worker
from assistant.config import AppConfig, GenerationSettings, ModelConfig
from assistant.generation import ReplyStream
from assistant.model import load_model
from assistant.prompts import build_prompt
from assistant.service import ChatService
from bench.env import PreferenceChatEnv, load_prompts, split_prompts
from bench.model_speed import machine
from bench.users import load_users
from storage.db import DB_FILENAME
from storage.store import Store

log = logging.getLogger("bench.learning_curve")
REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
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
    budgets: tuple[int, ...] = (0, 8, 16, 32, 64, 128)
    """Feedback events (A/B choices) after which each user's adapters are evaluated."""
    held_out_prompts: int = 12
    eval_pairs: int = 12
    max_new_tokens: int = 40
    sample_temperature: float = 0.9
    users: str = "bench.users:population"
    max_users: int | None = None
    population_budgets: tuple[int, ...] = (0, 16, 32)
    seed: int = 0
    learning: LearningConfig = field(default_factory=LearningConfig)


def quick_config(model_dir: Path) -> CurveConfig:
    return CurveConfig(model=str(model_dir), budgets=(0, 4, 8), held_out_prompts=4, eval_pairs=4, max_new_tokens=8,
                       max_users=2, population_budgets=(0, 4), learning=LearningConfig(personal_every=4, global_every=8))


class Harness:
    """One data home: the app's service (storage, blending, generation) and an in-process worker."""

    def __init__(self, home: Path, config: CurveConfig, cache: Path):
        model = ModelConfig(model=config.model, cache_dir=cache)
        self.config = config
        self.loaded = load_model(model, cache)
        self.store = Store(home / DB_FILENAME)
        registry = AdapterRegistry(home / ADAPTERS_DIR, self.store)
        self.server = AdapterServer(self.loaded, registry, self.store, config.learning.blend)
        self.service = ChatService(self.store, self.loaded, AppConfig(data_dir=home, model=model),
                                   adapters=self.server, learning=config.learning)
        self.worker = Worker(load_model(model, cache), self.store, registry, config.learning)
        self.registry = registry

    def generate(self, prompt: str, blend: Blend | None, temperature: float, n: int = 1) -> list[str]:
        settings = GenerationSettings(temperature=temperature, max_new_tokens=self.config.max_new_tokens)
        fitted = build_prompt(self.loaded, settings.system_prompt, [{"role": "user", "content": prompt}],
                              settings.max_new_tokens)
        stream = ReplyStream(self.loaded, fitted, settings, num_candidates=n,
                             activate=(lambda: self.server.activate(blend)) if blend else None)
        list(stream)
        return stream.texts

    def feedback_step(self, env: PreferenceChatEnv, user_id: str, prompt: str) -> str:
        """One turn of the product loop: compare mode, the user's choice, training as the app queues it."""
        conversation = self.service.new_conversation(user_id)["id"]
        settings = GenerationSettings(temperature=self.config.sample_temperature,
                                      max_new_tokens=self.config.max_new_tokens)
        final = list(self.service.send(user_id, conversation, prompt, settings, compare=True))[-1]
        next_prompt, _, _, _, info = env.step((final.pair.a.content, final.pair.b.content))
        self.service.choose(user_id, final.pair.id, info["choice"])
        while self.worker.run_once():  # the worker's jobs, before the next prompt
            pass
        return next_prompt

    def blends(self, user_id: str) -> dict[str, Blend | None]:
        g = self.registry.current(GLOBAL)
        p = self.registry.current(personal_adapter(user_id))
        return {
            "blend": self.server.blend_for(user_id),
            "global": Blend(g.version if g else None, None, 0.0, "global only", user_id),
            "personal": Blend(None, p.version if p else None, 1.0 if p else 0.0, "personal only", user_id),
        }

    def margins(self, blend: Blend | None, pairs: list[PairExample]) -> torch.Tensor:
        with self.server.activate(blend) if blend else _null():
            return preference_margins(self.loaded.model, self.loaded, pairs, self.config.learning.train)

    def neutral_perplexity(self, blend: Blend | None) -> float:
        seqs = [encode(self.loaded, [{"role": "user", "content": "Say something."}], text, 256) for text in NEUTRAL_TEXT]
        batch = collate(seqs, self.loaded.tokenizer.pad_token_id)
        with torch.no_grad(), (self.server.activate(blend) if blend else _null()):
            logps = sequence_logps(self.loaded.model, batch)
        tokens = batch.completion_mask.sum().item()
        return math.exp(-logps.sum().item() / tokens)


def _null():
    from contextlib import nullcontext

    return nullcontext()


def _eval_pairs(h: Harness, user, prompts: list[str]) -> list[PairExample]:
    pairs = []
    for i, prompt in enumerate(prompts):
        a, b = h.generate(prompt, None, 1.0, n=2)
        ra, rb = user.reward(prompt, a), user.reward(prompt, b)
        if ra != rb:
            chosen, rejected = (a, b) if ra > rb else (b, a)
            pairs.append(PairExample([{"role": "user", "content": prompt}], chosen, rejected, f"eval{i}", "sim"))
    return pairs


def evaluate(h: Harness, user, user_id: str, prompts: list[str], pairs: list[PairExample], base: dict) -> dict:
    out = {"win_rate": {}, "preference_accuracy": {}, "perplexity_ratio": {}}
    for name, blend in h.blends(user_id).items():
        active = blend if (blend.global_version or blend.personal_version) else None
        replies = [h.generate(p, active, 0.0)[0] for p in prompts] if active else base["replies"]
        wins = [1.0 if user.reward(p, r) > user.reward(p, b) else 0.5 if user.reward(p, r) == user.reward(p, b)
                else 0.0 for p, r, b in zip(prompts, replies, base["replies"])]
        out["win_rate"][name] = round(statistics.mean(wins), 3)
        out["preference_accuracy"][name] = round((h.margins(active, pairs) > 0).float().mean().item(), 3) \
            if pairs else None
        out["perplexity_ratio"][name] = round(h.neutral_perplexity(active) / base["perplexity"], 4)
        out.setdefault("mean_user_reward", {})[name] = round(statistics.mean(user.reward(p, r) for p, r in
                                                                             zip(prompts, replies)), 3)
    out["mean_user_reward"]["base"] = round(statistics.mean(user.reward(p, r) for p, r in
                                                            zip(prompts, base["replies"])), 3)
    blends = h.blends(user_id)
    out["served"] = blends["blend"].record()
    out["published"] = {"global": blends["global"].global_version, "personal": blends["personal"].personal_version}
    return out


def _baseline(h: Harness, prompts: list[str]) -> dict:
    return {"replies": [h.generate(p, None, 0.0)[0] for p in prompts], "perplexity": h.neutral_perplexity(None)}


def run_user(user, config: CurveConfig, train: list[str], held: list[str], cache: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"attune-curve-{user.name}-") as tmp:
        h = Harness(Path(tmp), config, cache)
        user_id = h.service.create_profile(user.name[:40])["id"]
        prompts = held[: config.held_out_prompts]
        base = _baseline(h, prompts)
        pairs = _eval_pairs(h, user, held[: config.eval_pairs])
        env = PreferenceChatEnv(user, train, mode="pair", episode_length=max(config.budgets))
        prompt, _ = env.reset(seed=config.seed)
        curve = {}
        for given in range(max(config.budgets) + 1):
            if given in config.budgets:
                curve[given] = evaluate(h, user, user_id, prompts, pairs, base)
                log.info("%s after %d choices: win rate %s", user.name, given, curve[given]["win_rate"])
            if given < max(config.budgets):
                prompt = h.feedback_step(env, user_id, prompt)
        return {"description": getattr(user, "description", ""), "curve": curve, "eval_pairs": len(pairs)}


def run_population(users, config: CurveConfig, train: list[str], held: list[str], cache: Path) -> dict:
    """Everyone in one data home, taking turns: the global adapter learns from all under the cap."""
    with tempfile.TemporaryDirectory(prefix="attune-curve-population-") as tmp:
        h = Harness(Path(tmp), config, cache)
        prompts = held[: config.held_out_prompts]
        base = _baseline(h, prompts)
        members = []
        for i, user in enumerate(users):
            env = PreferenceChatEnv(user, train, mode="pair", episode_length=max(config.population_budgets))
            prompt, _ = env.reset(seed=config.seed + i)
            members.append([user, h.service.create_profile(user.name[:40])["id"], env, prompt,
                            _eval_pairs(h, user, held[: config.eval_pairs])])
        curve = {}
        for given in range(max(config.population_budgets) + 1):
            if given in config.population_budgets:
                curve[given] = {user.name: evaluate(h, user, uid, prompts, pairs, base)
                                for user, uid, _, _, pairs in members}
            if given < max(config.population_budgets):
                for member in members:
                    member[3] = h.feedback_step(member[2], member[1], member[3])
        jobs = h.store.latest_job(GLOBAL)
        return {"curve": curve, "global_versions": len(h.registry.history(GLOBAL)),
                "last_global_job": {k: jobs[k] for k in ("status", "message")} if jobs else None}


def summarise(result: dict, config: CurveConfig) -> dict:
    users = result["users"]
    budgets = [str(b) for b in config.budgets]
    mean = {b: {m: round(statistics.mean(u["curve"][b]["win_rate"][m] for u in users.values()), 3)
                for m in ("blend", "global", "personal")} for b in budgets if all(b in u["curve"] for u in users.values())}
    target_budget = "32" if "32" in budgets else budgets[-1]
    winners = [name for name, u in users.items() if u["curve"][target_budget]["win_rate"]["blend"] >= 0.7]
    return {"mean_win_rate": mean, "target_budget": int(target_budget),
            "users_with_blend_win_rate_at_least_0.7": winners,
            "max_perplexity_ratio_of_blend": max(u["curve"][b]["perplexity_ratio"]["blend"]
                                                 for u in users.values() for b in budgets)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, u in result["users"].items():
        xs = [int(b) for b in u["curve"]]
        axes[0].plot(xs, [u["curve"][b]["win_rate"]["blend"] for b in u["curve"]], marker="o", label=name)
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].set(title="Served blend vs base, per user", xlabel="A/B choices given", ylabel="win rate on held-out",
                ylim=(0, 1))
    axes[0].legend(fontsize=7)
    mean = result["summary"]["mean_win_rate"]
    for model in ("blend", "global", "personal"):
        axes[1].plot([int(b) for b in mean], [mean[b][model] for b in mean], marker="o", label=model)
    axes[1].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[1].set(title="Mean over users", xlabel="A/B choices given", ylabel="win rate vs base", ylim=(0, 1))
    axes[1].legend()
    fig.suptitle(f"Attune learning curves — {result['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny test model, 2 users, small budgets")
    parser.add_argument("--users", default=CurveConfig.users)
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--budgets", default=None, help="comma-separated feedback budgets, e.g. 0,8,16,32")
    parser.add_argument("--population-budgets", default=None, help="budgets of the shared-home run ('' skips it)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--model-cache", type=Path, default=REPO / ".cache" / "models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    began = time.perf_counter()
    random.seed(0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="attune-curve-model-") as tmp:
        if args.quick:
            from bench.tiny_model import make_tiny_gpt2

            config = quick_config(make_tiny_gpt2(Path(tmp) / "tiny"))
        else:
            config = CurveConfig()
        config = replace(config, users=args.users, max_users=args.max_users or config.max_users)
        if args.budgets:
            config = replace(config, budgets=tuple(int(b) for b in args.budgets.split(",")))
        if args.population_budgets is not None:
            config = replace(config, population_budgets=tuple(int(b) for b in args.population_budgets.split(",")
                                                              if b.strip()))
        users = load_users(config.users)[: config.max_users]
        train, held = split_prompts(load_prompts())
        result = {"benchmark": "learning_curve", "quick": args.quick, "model": config.model if args.quick else
                  "SmolLM2-135M-Instruct (embedded)", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                  "config": {k: v for k, v in asdict(config).items() if k != "learning"},
                  "learning": {"personal_every": config.learning.personal_every,
                               "global_every": config.learning.global_every, "blend_k": config.learning.blend.k},
                  "prompts": {"train": len(train), "held_out": len(held)}, "users": {}}
        for user in users:
            result["users"][user.name] = run_user(user, config, train, held, args.model_cache)
        if config.population_budgets:
            result["population"] = run_population(users, config, train, held, args.model_cache)
        result["summary"] = summarise(_stringify(result), config)
    result = _stringify(result)
    result["seconds"] = round(time.perf_counter() - began, 1)
    output = args.output or RESULTS / ("learning_curve_quick.json" if args.quick else "learning_curve.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    plot(result, output.with_suffix(".png"))
    log.info("done in %.0f s: %s -> %s", result["seconds"], result["summary"], output)
    return 0


def _stringify(obj):
    """JSON object keys as strings (budgets are ints in memory)."""
    if isinstance(obj, dict):
        return {str(k): _stringify(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_stringify(v) for v in obj]
    return obj


if __name__ == "__main__":
    raise SystemExit(main())
