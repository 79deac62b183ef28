"""Does a decoding setting alone make the base model's replies better for the simulated users?

    python -m bench.decoding --change repetition_penalty=1.2 [--set KEY=VALUE ...]
                             [--output bench/results/decoding.json]

The learning-curve benchmark compares the served model with the base model decoded the same way, so a decoding
setting such as the repetition penalty changes both sides. This measures the setting on the base model alone,
without any learning: on the learning curve's held-out prompts, the win rate (judged by each user's reward, a tie
counting half) of the base model decoded with the setting against the base model decoded without it, for greedy
replies and for replies sampled as the app serves them (its default temperature, `served_samples` per prompt, each
against each; both sides from one seed), plus the mean shared taste (on topic, polite, not degenerate) of each.
`--set` changes both sides (`model=FOLDER`, `held_out_prompts=8`, …), as in `bench.learning_curve`. ≈ 1 min
on the 2-core machine.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from assistant.overrides import with_overrides
from bench.env import load_prompts, split_prompts
from bench.learning_curve import REPO, RESULTS, CurveConfig, Harness, served_replies, served_win_rate
from bench.provenance import machine, write_result
from bench.users import population, shared_reward

log = logging.getLogger("bench.decoding")


def replies(config: CurveConfig, prompts: list[str], cache: Path) -> dict[str, list[list[str]]]:
    """Greedy and served (sampled) replies of the base model decoded as `config` says."""
    with tempfile.TemporaryDirectory(prefix="attune-decoding-") as tmp:
        h = Harness(Path(tmp), config, cache, executor=None, worker=False)
        return {"greedy": h.generate(prompts, None, 0.0), "served": served_replies(h, prompts, None)}


def compare(changed: dict, base: dict, prompts: list[str]) -> dict:
    users = population()
    out = {}
    for kind in ("greedy", "served"):
        out[kind] = {
            "win_rate_vs_unchanged": {u.name: served_win_rate(u, prompts, changed[kind], base[kind]) for u in users},
            "shared_taste": {name: round(statistics.mean(shared_reward(p, r) for p, rs in zip(prompts, side[kind])
                                                         for r in rs), 3)
                             for name, side in (("changed", changed), ("unchanged", base))},
        }
        wins = out[kind]["win_rate_vs_unchanged"].values()
        out[kind]["mean_win_rate_vs_unchanged"] = round(statistics.mean(wins), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--change", action="append", default=[], metavar="KEY=VALUE",
                        help="the decoding setting to measure, as in bench.learning_curve (repetition_penalty=1.2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of both sides (model=FOLDER, held_out_prompts=8, …)")
    parser.add_argument("--model-cache", type=Path, default=REPO / ".cache" / "models")
    parser.add_argument("--output", type=Path, default=RESULTS / "decoding.json")
    args = parser.parse_args(argv)
    if not args.change:
        parser.error("give the setting to measure with --change KEY=VALUE")
    torch.set_num_threads(2)
    began = time.perf_counter()
    try:
        unchanged = with_overrides(CurveConfig(), args.set)
        changed = with_overrides(unchanged, args.change)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    prompts = split_prompts(load_prompts())[1][: unchanged.held_out_prompts]
    base = replies(unchanged, prompts, args.model_cache)
    result = {"benchmark": "decoding", "machine": machine(), "change": args.change, "set": args.set,
              "model": unchanged.model, "prompts": len(prompts),
              "served_samples": unchanged.served_samples, "served_temperature": unchanged.served_temperature,
              **compare(replies(changed, prompts, args.model_cache), base, prompts),
              "seconds": round(time.perf_counter() - began, 1)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, result, vars(args))
    log.info("%s: greedy %s, served %s (mean win rate vs unchanged); %.0f s -> %s", args.change,
             result["greedy"]["mean_win_rate_vs_unchanged"], result["served"]["mean_win_rate_vs_unchanged"],
             result["seconds"], args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
