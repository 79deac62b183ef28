"""Do the exploration probes move the replies? Each simulated user's mean reward with and without each probe.

    python -m bench.probes [--prompts 24] [--samples 2] [--probe NAME=INSTRUCTION ...] [--output bench/results/probes.json]

For each probe of `assistant.explore.DEFAULT_PROBES` (or of `--probe`, to try new wordings; and none), the embedded model samples replies to training
prompts with the probe added to the message, exactly as compare mode does (T = 0.9, 32 tokens, the learning-curve
benchmark's settings). A probe is useful to a user when it moves that user's reward: then a choice between a
probed and a plain candidate says something about the user's taste.

Then the ceiling of learning by exploration: the win rate against the base model, on the learning-curve
benchmark's held-out prompts and judged the same way, of greedy replies *with* each probe — what an adapter that
had fully learned to answer like that probe unasked would score. ≈ 4 min on the 2-core machine.

    python -m bench.probes --words [--users bench.users:open_population]

Instead: how a person's own words move their own reward, per wording (`assistant.words`). Each user's remarks (the
words of their 👎) become personal probes "as_written", "quoted" and "rewrite" (the model asked to turn the words
into an instruction, the third candidate); each is measured, like a probe, on that user alone. ≈ 17 min for the
open population.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from assistant.config import DEFAULT_PROBES, Probe
from assistant.explore import probed
from assistant.words import WORDINGS, own_probe
from assistant.overrides import with_overrides
from bench.env import load_prompts, split_prompts
from bench.learning_curve import REPO, RESULTS, CurveConfig, Harness
from bench.provenance import machine, write_result
from bench.users import load_users, population
from storage.errors import InvalidInput

log = logging.getLogger("bench.probes")


def measure(prompts: int, samples: int, cache: Path, probes: tuple[Probe, ...] = DEFAULT_PROBES,
            config: CurveConfig | None = None) -> dict:
    config = config or CurveConfig()
    train, _ = split_prompts(load_prompts())
    asked = train[:prompts]
    users = population()
    torch.manual_seed(0)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="attune-probes-") as tmp:
        h = Harness(Path(tmp), config, cache, executor=None, worker=False)
        for probe in (None, *probes):
            name = probe.name if probe else "none"
            messages = [probed([{"role": "user", "content": p}], probe)[-1]["content"] if probe else p
                        for p in asked]
            began = time.perf_counter()
            replies = h.generate(messages, None, config.sample_temperature, n=samples)
            pairs = [(p, r) for p, rs in zip(asked, replies) for r in rs]  # judged against the prompt as sent
            out[name] = {"instruction": probe.instruction if probe else "",
                         "mean_reward": {u.name: round(statistics.mean(u.reward(p, r) for p, r in pairs), 3)
                                         for u in users},
                         "example": pairs[0][1]}
            log.info("%s (%.1f s): %s", name, time.perf_counter() - began, out[name]["mean_reward"])
        held = split_prompts(load_prompts())[1][: config.held_out_prompts]
        base = [r[0] for r in h.generate(held, None, 0.0)]
        for probe in probes:
            hinted = [r[0] for r in h.generate([probed([{"role": "user", "content": p}], probe)[-1]["content"]
                                                for p in held], None, 0.0)]
            out[probe.name]["ceiling_win_rate"] = {u.name: round(statistics.mean(
                _win(u.reward(p, x), u.reward(p, b)) for p, x, b in zip(held, hinted, base)), 3) for u in users}
            log.info("%s: greedy win rate vs base %s", probe.name, out[probe.name]["ceiling_win_rate"])
    for name, row in out.items():
        row["lift"] = {u: round(v - out["none"]["mean_reward"][u], 3) for u, v in row["mean_reward"].items()}
    return out


REWRITE_ASK = ('Someone wrote this about an answer they got: "{text}"\n'
               "Write one short instruction for the next answer, starting with a verb.")
"""The request of the "rewrite" candidate: the model turns the words into an instruction."""


def measure_words(users: list, prompts: int, samples: int, cache: Path, config: CurveConfig) -> dict:
    """Per user with `remarks`: each remark under each wording (and the model's rewrite) as a probe, its lift of
    that user's mean reward over the plain samples, and per wording the mean lift over the user's remarks."""
    train, _ = split_prompts(load_prompts())
    asked = train[:prompts]
    torch.manual_seed(0)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="attune-words-") as tmp:
        h = Harness(Path(tmp), config, cache, executor=None, worker=False)

        def mean_reward(user, instruction: str | None) -> tuple[float, str]:
            messages = [probed([{"role": "user", "content": p}], Probe("x", instruction))[-1]["content"]
                        if instruction else p for p in asked]
            replies = h.generate(messages, None, config.sample_temperature, n=samples)
            pairs = [(p, r) for p, rs in zip(asked, replies) for r in rs]
            return statistics.mean(user.reward(p, r) for p, r in pairs), pairs[0][1]

        plain = h.generate(asked, None, config.sample_temperature, n=samples)
        for user in users:
            remarks = getattr(user, "remarks", ())
            if not remarks:
                continue
            rewrites = [r[0] for r in h.generate([REWRITE_ASK.format(text=t) for t in remarks], None, 0.0)]
            none = statistics.mean(user.reward(p, r) for p, rs in zip(asked, plain) for r in rs)
            rows = []
            for text, rewrite in zip(remarks, rewrites):
                row = {"remark": text, "rewrite": rewrite, "lift": {}, "example": {}}
                candidates = {w: own_probe(text, "down", w).instruction for w in WORDINGS} | {"rewrite": rewrite}
                for wording, instruction in candidates.items():
                    reward, example = mean_reward(user, instruction)
                    row["lift"][wording], row["example"][wording] = round(reward - none, 3), example
                rows.append(row)
                log.info("%s %r: lift %s", user.name, text, row["lift"])
            out[user.name] = {"plain_mean_reward": round(none, 3), "remarks": rows,
                              "mean_lift": {w: round(statistics.mean(r["lift"][w] for r in rows), 3)
                                            for w in rows[0]["lift"]}}
    return out


def _win(mine: float, base: float) -> float:
    return 1.0 if mine > base else 0.5 if mine == base else 0.0


def _probe(spec: str) -> Probe:
    name, sep, instruction = spec.partition("=")
    if not sep or not name.strip() or not instruction.strip():
        raise SystemExit(f"--probe takes NAME=INSTRUCTION, got {spec!r}")
    return Probe(name.strip(), instruction.strip())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--model-cache", type=Path, default=REPO / ".cache" / "models")
    parser.add_argument("--probe", action="append", default=[], metavar="NAME=INSTRUCTION",
                        help="measure this probe instead of the default ones (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS / "probes.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a CurveConfig setting (bench/learning_curve.py), e.g. sample_temperature=0.7")
    parser.add_argument("--words", action="store_true",
                        help="measure each user's own words as personal probes, per wording (not the probes)")
    parser.add_argument("--users", default="bench.users:open_population",
                        help="with --words: the population whose remarks are measured")
    args = parser.parse_args(argv)
    try:
        config = with_overrides(CurveConfig(), args.set)
    except (ValueError, TypeError, InvalidInput) as exc:
        parser.error(f"Bad --set: {exc}")
    torch.set_num_threads(2)
    began = time.perf_counter()
    if args.words:
        return _main_words(args, config, began)
    chosen = tuple(_probe(spec) for spec in args.probe) or DEFAULT_PROBES
    probes = measure(args.prompts, args.samples, args.model_cache, chosen, config)
    best = {u: max((n for n in probes if n != "none"), key=lambda n: probes[n]["lift"][u])
            for u in probes["none"]["lift"]}
    ceiling = {u: max((probes[n]["ceiling_win_rate"][u], n) for n in probes if n != "none") for u in best}
    result = {"machine": machine(), "prompts": args.prompts, "samples_per_prompt": args.samples,
              "probes": probes, "best_probe_per_user": {u: [n, probes[n]["lift"][u]] for u, n in best.items()},
              "best_ceiling_per_user": {u: [n, w] for u, (w, n) in ceiling.items()},
              "seconds": round(time.perf_counter() - began, 1)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, result, vars(args))
    log.info("best probe per user (reward lift): %s; best ceiling: %s; %.0f s → %s", result["best_probe_per_user"],
             result["best_ceiling_per_user"], result["seconds"], args.output)
    return 0


def _main_words(args: argparse.Namespace, config: CurveConfig, began: float) -> int:
    users = measure_words(load_users(args.users), args.prompts, args.samples, args.model_cache, config)
    wordings = list(next(iter(users.values()))["mean_lift"])
    summary = {w: {"mean_lift": round(statistics.mean(u["mean_lift"][w] for u in users.values()), 3),
                   "users_lifted": sum(u["mean_lift"][w] > 0 for u in users.values()),
                   "best_for_users": sum(max(u["mean_lift"], key=u["mean_lift"].get) == w for u in users.values())}
               for w in wordings}
    result = {"machine": machine(), "users": args.users, "prompts": args.prompts, "samples_per_prompt": args.samples,
              "per_user": users, "summary": summary, "seconds": round(time.perf_counter() - began, 1)}
    output = args.output if args.output != RESULTS / "probes.json" else RESULTS / "probes_words.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_result(output, result, vars(args))
    log.info("own words per wording: %s; %.0f s → %s", summary, result["seconds"], output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
