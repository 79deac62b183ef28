"""Can a reward learned from a person's choices pick the best of several served replies?

    python -m bench.reward_rerank [--train-prompts 32] [--choices 32] [--draws 3] [--output bench/results/reward_rerank.json]

A learned reward R(s, a) = θᵀφ(s, a) (Bradley–Terry, as in maximum-entropy IRL) fit on one simulated user's A/B
choices, then used to serve the best of n replies sampled as the app serves them (T 0.7). No adapter is trained:
this measures what reranking alone could add on top of the served model, the base model here.

- Choices: `--choices` pairs between candidates of compare mode's arms (the plain sample and each exploration probe,
  T 0.9, as `bench.learning_curve` asks them), the two arms drawn uniformly, on the first `--train-prompts` training
  prompts; one in `LearningConfig.holdout_every` is left out as the product leaves it out of training; the user
  chooses by its Bradley–Terry model. `--draws` independent sets of choices per user.
- Features φ of a reply (each standardised over the pool of candidates):
  "hidden" — the base model's hidden state two thirds up, averaged over the reply's tokens (576 numbers);
  "style" — per exploration probe, the reply's mean per-token log-likelihood after the probe's instruction minus
  after the prompt alone: how much more the reply reads like that style (9 numbers, the product's own style axes);
  "style+length" — those and log(1 + reply tokens).
- θ: L2-regularised Bradley–Terry (logistic loss on φ(chosen) − φ(rejected), no intercept).
- Scored on the learning curve's 24 held-out prompts against the same base samples `served_win_rate` uses (4 per
  prompt, its seed): a sampled reply (`sample`), the best of n by θ (`rerank_n`), and the best of 4 by the user's
  own reward (`oracle_4`, the ceiling of reranking 4). 35 min on the 2-core AMD EPYC while a learning-curve pilot
  shared its cores (5,100 forward passes for the style features).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from adapters.data import collate, encode
from adapters.logprobs import sequence_logps
from adapters.lora import autocast
from assistant.config import DEFAULT_PROBES, LearningConfig
from assistant.explore import probed
from assistant.overrides import with_overrides
from bench.env import load_prompts, split_prompts
from bench.learning_curve import REPO, RESULTS, CurveConfig, Harness, _wins, quick_config, served_replies
from bench.provenance import machine, write_result
from bench.users import choose, population
from storage.errors import InvalidInput

log = logging.getLogger("bench.reward_rerank")
FEATURE_SETS = ("hidden", "style", "style+length")
L2 = 0.1
"""Weight of ‖θ‖² next to the mean logistic loss (features standardised); 0.01 and 1 gave the same means to ±0.01."""
CHUNK = 16


def _turns(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


class Featurizer:
    def __init__(self, h: Harness):
        self.h, self.loaded = h, h.loaded
        self.layer = math.ceil(2 * self.loaded.model.config.num_hidden_layers / 3)

    def _sequences(self, turns: list[list[dict]], replies: list[str]) -> list[tuple[list[int], int]]:
        train = self.h.config.learning.train
        return [encode(self.loaded, t, r, train.max_length, train.max_prompt_tokens) for t, r in zip(turns, replies)]

    def hidden(self, prompts: list[str], replies: list[str]) -> torch.Tensor:
        seqs, out = self._sequences([_turns(p) for p in prompts], replies), []
        for start in range(0, len(seqs), CHUNK):
            batch = collate(seqs[start:start + CHUNK], self.loaded.tokenizer.pad_token_id)
            with torch.inference_mode(), autocast(self.h.config.learning.train):
                states = self.loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                           output_hidden_states=True).hidden_states[self.layer].float()
            mask = batch.completion_mask[..., None].float()
            out.append((states * mask).sum(1) / mask.sum(1).clamp(min=1))
        return torch.cat(out)

    def _mean_logps(self, turns: list[list[dict]], replies: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs, sums, counts = self._sequences(turns, replies), [], []
        for start in range(0, len(seqs), CHUNK):
            batch = collate(seqs[start:start + CHUNK], self.loaded.tokenizer.pad_token_id)
            with torch.inference_mode(), autocast(self.h.config.learning.train):
                sums.append(sequence_logps(self.loaded.model, batch).float())
            counts.append(batch.completion_mask.sum(1).float())
        counts = torch.cat(counts)
        return torch.cat(sums) / counts, counts

    def style(self, prompts: list[str], replies: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        plain, tokens = self._mean_logps([_turns(p) for p in prompts], replies)
        ratios = [self._mean_logps([probed(_turns(p), probe) for p in prompts], replies)[0] - plain
                  for probe in DEFAULT_PROBES]
        return torch.stack(ratios, 1), torch.log1p(tokens)[:, None]

    def all(self, prompts: list[str], replies: list[str]) -> dict[str, torch.Tensor]:
        style, length = self.style(prompts, replies)
        return {"hidden": self.hidden(prompts, replies), "style": style, "style+length": torch.cat([style, length], 1)}


def fit(diffs: torch.Tensor, l2: float = L2) -> torch.Tensor:
    """θ minimising mean softplus(−θᵀd) + l2·‖θ‖² over the rows d = φ(chosen) − φ(rejected)."""
    theta = torch.zeros(diffs.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-diffs @ theta).mean() + l2 * theta.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def _win_rate(user, prompts: list[str], mine: list[str], theirs: list[list[str]]) -> float:
    """One reply per prompt against each of the base model's samples for it (a tie counts half)."""
    return statistics.mean(w for p, reply, others in zip(prompts, mine, theirs)
                           for w in _wins([user.reward(p, reply)], [user.reward(p, x) for x in others]))


def measure(args: argparse.Namespace, config: CurveConfig) -> dict:
    train, held = split_prompts(load_prompts())
    asked, held = train[: args.train_prompts], held[: config.held_out_prompts]
    arms = (None, *DEFAULT_PROBES)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="attune-rerank-") as tmp:
        h = Harness(Path(tmp), config, args.model_cache, executor=None, worker=False)
        pool = {arm: [r[0] for r in h.generate([probed(_turns(p), arm)[-1]["content"] if arm else p for p in asked],
                                               None, config.sample_temperature)] for arm in arms}
        base = served_replies(h, held, None)
        n = max(args.n)
        candidates = h.generate(held, None, config.served_temperature, n=n, seed=args.seed + 1)
        log.info("replies sampled (%.0f s)", time.perf_counter() - args.began)
        features = Featurizer(h)
        pooled = features.all([p for _ in arms for p in asked], [r for arm in arms for r in pool[arm]])
        served = features.all([p for p in held for _ in range(n)], [r for rs in candidates for r in rs])
        log.info("features computed (%.0f s)", time.perf_counter() - args.began)
    holdout = LearningConfig().holdout_every
    users, out = population()[: config.max_users], {}
    for user in users:
        row = {"sample": _win_rate(user, held, [c[0] for c in candidates], base),
               "oracle_4": _win_rate(user, held, [max(c[:4], key=lambda r, p=p: user.reward(p, r))
                                                  for p, c in zip(held, candidates)], base)}
        for kind in FEATURE_SETS:
            mean, sd = pooled[kind].mean(0), pooled[kind].std(0) + 1e-6
            phi = {arm: (pooled[kind][i * len(asked):(i + 1) * len(asked)] - mean) / sd for i, arm in enumerate(arms)}
            scores_of = ((served[kind] - mean) / sd).reshape(len(held), n, -1)
            rates = {k: [] for k in args.n}
            for draw in range(args.draws):
                rng, diffs = random.Random(f"{args.seed}:{user.name}:{draw}"), []
                for k in range(args.choices):
                    i, (a, b) = rng.randrange(len(asked)), rng.sample(range(len(arms)), 2)
                    picked = choose(user, asked[i], pool[arms[a]][i], pool[arms[b]][i], rng)
                    if picked == "tie" or k % holdout == holdout - 1:
                        continue
                    won, lost = (a, b) if picked == "a" else (b, a)
                    diffs.append(phi[arms[won]][i] - phi[arms[lost]][i])
                # no informative choice (all ties): θ = 0 keeps the first candidate, a plain sample
                theta = fit(torch.stack(diffs)) if diffs else torch.zeros(scores_of.shape[-1])
                scores = scores_of @ theta
                for k in args.n:
                    best = [c[int(scores[j, :k].argmax())] for j, c in enumerate(candidates)]
                    rates[k].append(_win_rate(user, held, best, base))
            for k in args.n:
                row[f"{kind}/rerank_{k}"] = statistics.mean(rates[k])
        out[user.name] = {key: round(v, 3) for key, v in row.items()}
        log.info("%s: %s", user.name, out[user.name])
    keys = list(next(iter(out.values())))
    summary = {key: {"mean": round(statistics.mean(r[key] for r in out.values()), 3),
                     "users_at_least_0.7": sum(r[key] >= 0.7 for r in out.values())} for key in keys}
    return {"users": out, "summary": summary, "held_out_prompts": len(held), "base_samples": len(base[0])}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-prompts", type=int, default=32)
    parser.add_argument("--choices", type=int, default=32)
    parser.add_argument("--draws", type=int, default=3, help="independent sets of choices per user")
    parser.add_argument("--n", type=int, nargs="+", default=[4, 8], help="candidates reranked per prompt")
    parser.add_argument("--users", type=int, default=8, help="the first N users of the shipped population")
    parser.add_argument("--quick", action="store_true", help="the tiny test model, 2 users, small sizes (≈ 10 s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model-cache", type=Path, default=REPO / ".cache" / "models")
    parser.add_argument("--output", type=Path, default=RESULTS / "reward_rerank.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a CurveConfig setting (bench/learning_curve.py), e.g. learning.train.beta=0.2")
    args = parser.parse_args(argv)
    if min(args.n) < 1 or args.train_prompts < 1 or args.choices < 2 or args.draws < 1:
        parser.error("--n, --train-prompts, --draws must be at least 1 and --choices at least 2")
    torch.set_num_threads(2)
    args.began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attune-rerank-model-") as tmp:
        if args.quick:
            from bench.tiny_model import make_tiny_gpt2

            config = replace(quick_config(make_tiny_gpt2(Path(tmp) / "tiny")), seed=args.seed)
            args.model_cache = Path(tmp) / "cache"
            args.train_prompts, args.choices, args.draws, args.n, args.users = 4, 8, 1, [2], config.max_users
        else:
            config = CurveConfig(seed=args.seed, max_users=args.users)
        try:
            config = with_overrides(config, args.set)
        except (ValueError, TypeError, InvalidInput) as exc:
            parser.error(f"Bad --set: {exc}")
        measured = measure(args, config)
    result = {"benchmark": "reward_rerank", "quick": args.quick, "model": config.model, "machine": machine(),
              "date": time.strftime("%Y-%m-%d"),
              "settings": {k: v for k, v in vars(args).items() if k not in ("began", "model_cache", "output")},
              "l2": L2, **measured, "seconds": round(time.perf_counter() - args.began)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, result, vars(args))
    log.info("%s; %d s → %s", result["summary"], result["seconds"], args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
