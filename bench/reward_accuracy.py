"""How well does the learned reward (adapters/reward.py) predict a person's held-out choices after 8, 16, 32 votes?

    python -m bench.reward_accuracy [--seed 1] [--users bench.users:population] [--priors 1] [--output …]

No adapter is trained: the reward is fitted exactly as the product fits it after each vote (`adapters.reward.fit` on
`raw_features` standardised by `everyday_scale`), on choices a simulated user makes between compare mode's
candidates (the plain sample and each built-in probe, T 0.9, two arms drawn at random per prompt, one choice in
`holdout_every` left out as the product leaves it out), in the order the user would give them.

- Scored on the learning-curve benchmark's held-out pairs (two base samples per held-out prompt, the user's better
  one as chosen: `bench.learning_curve._eval_pairs` with the same seed), the pairs whose `preference_accuracy` the
  learning-curve runs report for the adapters — so the two are compared on the same pairs.
- "flat": θ fitted on the user's votes alone (prior centre 0). "hierarchical": centred on everyone's reward, fitted
  on the other users' 32 votes each (leave-one-user-out: a user never sees their own taste in the prior).
- `--variants`: the product's φ ("all"), or linear maps of it (`variant_map`: the hidden state alone, fluency and
  length alone, those two with a weaker prior, the hidden state's top principal directions). Equal scores count
  half.
- `--priors`: values of `RewardConfig.prior` (λ) tried; one population to choose it, another to report it.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from adapters.data import encode
from adapters.drift import ANCHOR
from adapters.everyday import EVERYDAY
from adapters.jobs import held_out
from adapters.reward import (Fitted, Votes, everyday_scale, feature_layer, fit, ordered, principal_basis,
                             raw_features)
from assistant.config import DEFAULT_PROBES, LearningConfig
from assistant.explore import probed
from assistant.overrides import with_overrides
from bench.env import load_prompts, split_prompts
from bench.learning_curve import REPO, RESULTS, CurveConfig, Harness, _eval_pairs, _samples, quick_config
from bench.provenance import machine, write_result
from bench.users import choose, load_users
from storage.errors import InvalidInput

log = logging.getLogger("bench.reward_accuracy")


def _turns(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


class Features:
    """Standardised φ of (prompt, reply) items by the base model, as `adapters.rewards.RewardLearner` computes them."""

    def __init__(self, h: Harness, layer: float):
        self.h, self.loaded = h, h.loaded
        self.layer = feature_layer(self.loaded, layer)
        self.scale = everyday_scale(self.loaded, self.layer)

    def __call__(self, prompts: list[str], replies: list[str]) -> torch.Tensor:
        train = self.h.config.learning.train
        seqs = [encode(self.loaded, _turns(p), r, train.max_length, train.max_prompt_tokens)
                for p, r in zip(prompts, replies)]
        return self.scale(raw_features(self.loaded.model, seqs, self.loaded.tokenizer.pad_token_id, self.layer))


def user_votes(user, asked: list[str], pool: dict, phi: dict, count: int, holdout: int,
               seed: int) -> list[torch.Tensor | None]:
    """The user's first `count` choices between two random arms' candidates, as φ(chosen) − φ(rejected) rows (ties
    and the held-out ones dropped), in order."""
    rng, arms, rows = random.Random(f"{seed}:{user.name}"), list(pool), []
    for k in range(count):
        i, (a, b) = rng.randrange(len(asked)), rng.sample(arms, 2)
        picked = choose(user, asked[i], pool[a][i], pool[b][i], rng)
        if picked == "tie" or held_out(f"{user.name}:{k}", holdout):
            rows.append(None)
            continue
        won, lost = (a, b) if picked == "a" else (b, a)
        rows.append(phi[won][i] - phi[lost][i])
    return rows


def _votes(rows: list, upto: int, d: int) -> Votes:
    kept = [r for r in rows[:upto] if r is not None]
    return Votes(torch.stack(kept) if kept else torch.zeros(0, d), torch.zeros(0, d), torch.zeros(0, dtype=torch.bool))


def _accuracy(fitted: Fitted, pairs: Votes) -> float:
    right, total = ordered(fitted, pairs)
    return right / total if total else float("nan")


def variant_map(variant: str, pooled: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """The linear map (d, d') from the product's φ to a variant's features. "all": φ as it is; "hidden": the hidden
    state alone; "scalars": fluency and length alone; "scalars×10": φ with fluency and length scaled up ten-fold
    (their prior a hundredth of the hidden state's); "pcaK": the hidden state's top K principal directions over the
    candidates' replies (whitened; no vote is used), then fluency and length; "fixedK": the same over 32 fixed plain
    replies (`adapters.everyday.EVERYDAY` and the drift guard's `ANCHOR`), which no person's data shapes."""
    d = pooled.shape[1]
    eye = torch.eye(d)
    if variant == "all":
        return eye
    if variant == "hidden":
        return eye[:, :-2]
    if variant == "scalars":
        return eye[:, -2:]
    if variant == "scalars×10":
        return torch.diag(torch.cat([torch.ones(d - 2), torch.full((2,), 10.0)]))
    if variant.startswith(("pca", "fixed")):
        return principal_basis(fixed if variant.startswith("fixed") else pooled,
                               int(variant.removeprefix("pca").removeprefix("fixed")))
    raise ValueError(f"unknown variant {variant!r}")


def _user(user, users, rows, m, variant, args, config, pair_prompts, samples, sample_phi, index, budgets) -> dict:
    """One user's accuracies under one variant: everyone's reward, flat and hierarchical fits per prior and budget,
    one-feature floors."""
    d = m.shape[1]
    eval_pairs = _eval_pairs(user, pair_prompts, samples)
    diffs = torch.stack([sample_phi[index[(e.prompt[0]["content"], e.chosen)]]
                         - sample_phi[index[(e.prompt[0]["content"], e.rejected)]] for e in eval_pairs]
                        ) @ m if eval_pairs else torch.zeros(0, d)
    test = Votes(diffs, torch.zeros(0, d), torch.zeros(0, dtype=torch.bool))

    def votes(name: str, upto: int) -> Votes:
        mine = _votes(rows[name], upto, m.shape[0])
        return Votes(mine.pairs @ m, torch.zeros(0, d), mine.labels)

    others = Votes.join([votes(o.name, max(budgets)) for o in users if o is not user], d)
    center = fit(others, torch.zeros(d), config.learning.reward.global_prior).theta
    row = {"eval_pairs": len(eval_pairs), f"{variant}/everyone": _accuracy(Fitted(center, 0.0), test)}
    for budget in budgets:
        mine = votes(user.name, budget)
        for prior in args.priors:
            row[f"{variant}/flat/{prior}/{budget}"] = _accuracy(fit(mine, torch.zeros(d), prior), test)
            row[f"{variant}/hierarchical/{prior}/{budget}"] = _accuracy(fit(mine, center, prior), test)
        row[f"votes/{budget}"] = len(mine)
    return row


def measure(args: argparse.Namespace, config: CurveConfig) -> dict:
    train, held = split_prompts(load_prompts())
    asked = train[: args.train_prompts]
    arms = (None, *DEFAULT_PROBES)
    users = load_users(config.users)[: config.max_users]
    torch.manual_seed(config.seed)
    with tempfile.TemporaryDirectory(prefix="attune-reward-") as tmp:
        h = Harness(Path(tmp), config, args.model_cache, executor=None, worker=False)
        pair_prompts = held[: config.eval_pairs]
        samples = _samples(h, pair_prompts)  # as `bench.learning_curve.reference` draws them, first
        pool = {arm.name if arm else "plain": [r[0] for r in h.generate(
            [probed(_turns(p), arm)[-1]["content"] if arm else p for p in asked], None, config.sample_temperature)]
            for arm in arms}
        features = Features(h, config.learning.reward.layer)
        phi = {arm: features(asked, replies) for arm, replies in pool.items()}
        sample_phi = features([p for p in pair_prompts for _ in range(2)], [r for s in samples for r in s])
        plain = EVERYDAY + ANCHOR
        fixed = features([q for q, _ in plain], [a for _, a in plain])
        log.info("replies and features ready (%.0f s)", time.perf_counter() - args.began)
    holdout, budgets = LearningConfig().holdout_every, sorted(args.budgets)
    pooled = torch.cat(list(phi.values()))
    rows = {u.name: user_votes(u, asked, pool, phi, max(budgets), holdout, config.seed) for u in users}
    index = {(p, s): 2 * i + j for i, (p, pair) in enumerate(zip(pair_prompts, samples)) for j, s in enumerate(pair)}
    out = {u.name: {} for u in users}
    for variant in args.variants:
        m = variant_map(variant, pooled, fixed)
        for user in users:
            out[user.name].update(_user(user, users, rows, m, variant, args, config, pair_prompts, samples,
                                        sample_phi, index, budgets))
    for name, row in out.items():
        out[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        log.info("%s: %s", name, out[name])
    keys = [k for k in next(iter(out.values())) if k != "eval_pairs"]
    summary = {k: round(statistics.mean(v for r in out.values() if (v := r[k]) == v), 3)  # NaN: no eval pairs
               for k in keys if any(r[k] == r[k] for r in out.values())}
    return {"users": out, "summary": summary, "train_prompts": len(asked), "pair_prompts": len(pair_prompts)}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-prompts", type=int, default=32)
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--priors", type=float, nargs="+", default=[1.0])
    parser.add_argument("--variants", nargs="+", default=["all"],
                        help="feature variants (`variant_map`): all, hidden, scalars, scalars×10, pcaK, fixedK")
    parser.add_argument("--users", default="bench.users:population", help="module:callable returning the users")
    parser.add_argument("--max-users", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="the tiny test model, 2 users, small sizes (≈ 10 s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model-cache", type=Path, default=REPO / ".cache" / "models")
    parser.add_argument("--output", type=Path, default=RESULTS / "reward_accuracy.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a CurveConfig setting (bench/learning_curve.py), e.g. learning.reward.layer=0.5")
    args = parser.parse_args(argv)
    if args.train_prompts < 1 or min(args.budgets) < 1 or min(args.priors) <= 0:
        parser.error("--train-prompts and --budgets must be at least 1, --priors positive")
    torch.set_num_threads(2)
    args.began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attune-reward-model-") as tmp:
        if args.quick:
            from bench.tiny_model import make_tiny_gpt2

            config = replace(quick_config(make_tiny_gpt2(Path(tmp) / "tiny")), seed=args.seed, users=args.users)
            args.model_cache = Path(tmp) / "cache"
            args.train_prompts, args.budgets = 4, [4, 8]
        else:
            config = CurveConfig(seed=args.seed, max_users=args.max_users, users=args.users)
        try:
            config = with_overrides(config, args.set)
        except (ValueError, TypeError, InvalidInput) as exc:
            parser.error(f"Bad --set: {exc}")
        measured = measure(args, config)
    result = {"benchmark": "reward_accuracy", "quick": args.quick, "model": config.model, "machine": machine(),
              "date": time.strftime("%Y-%m-%d"),
              "settings": {k: v for k, v in vars(args).items() if k not in ("began", "model_cache", "output")},
              "reward": config.learning.reward, **measured, "seconds": round(time.perf_counter() - args.began)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, result, vars(args))
    log.info("%s; %d s → %s", result["summary"], result["seconds"], args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
