"""Learning curves over several seeds: one run's win rate is too noisy to judge a change or a target by.

    python -m bench.seeds RUN.json RUN.json ... [--output bench/results/learning_curve_seeds.json]
    python -m bench.seeds CHANGE.json ... --against BASELINE.json ... [--output ...comparison.json]

Each RUN.json is a `bench.learning_curve` result (same users and budgets; another `--set seed=N`). With 24
held-out prompts one win rate has a standard error near 0.1, and the run itself is a draw: which prompts each user
is asked, the sampled candidates and the probes tried steer everything after. This combines the runs per user and
budget — mean, standard deviation and the values — and judges the issue's targets on the means. It also counts
them per run, so the spread of the verdict itself is visible. Writes JSON and a PNG (mean ± sd per user, and the
mean over users of blend, global-only and personal-only with each run's mean as a dot). `--table` prints the
README table of an earlier combination.

With `--against`, a change is judged against a baseline run by run: runs of one seed share the prompts asked and
the first draws, so the difference of a pair is less noisy than the difference of two means. Budgets and users
both have are compared (a pilot to 32 choices against full runs, say).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

from bench.learning_curve import RESULTS, mean_panel, save_figure
from bench.learning_curve import markdown_table as run_table
from bench.provenance import write_result

log = logging.getLogger("bench.seeds")
MODELS = ("blend", "global", "personal")
METRICS = ("win_rate", "served_win_rate")


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 3),
            "sd": round(statistics.stdev(values), 3) if len(values) > 1 else None,
            "values": values}


def combine(runs: list[dict], names: list[str]) -> dict:
    """Per user and budget, each model's win rate over the runs; the targets judged on the means."""
    if len(runs) < 2:
        raise ValueError("combine at least two runs")
    users = list(runs[0]["users"])
    budgets = list(next(iter(runs[0]["users"].values()))["curve"])
    for name, run in zip(names, runs):
        if list(run["users"]) != users or list(next(iter(run["users"].values()))["curve"]) != budgets:
            raise ValueError(f"{name} has other users or budgets than {names[0]}: combine runs of one setting")
    per_user = {}
    for user in users:
        per_user[user] = {}
        for b in budgets:
            points = [run["users"][user]["curve"][b] for run in runs]
            per_user[user][b] = {m: _stats([p["win_rate"][m] for p in points]) for m in MODELS}
            ppl = [p["perplexity_ratio"]["blend"] for p in points]
            per_user[user][b]["perplexity_ratio_blend"] = {"mean": round(statistics.mean(ppl), 4),
                                                           "max": max(ppl), "values": ppl}
    target = str(runs[0]["summary"]["target_budget"])
    mean = {b: {m: round(statistics.mean(per_user[u][b][m]["mean"] for u in users), 3) for m in MODELS}
            for b in budgets}
    run_means = {b: {m: [round(statistics.mean(run["users"][u]["curve"][b]["win_rate"][m] for u in users), 3)
                         for run in runs] for m in MODELS} for b in budgets}
    bar = runs[0]["summary"].get("target_win_rate", 0.7)  # results written before single mode: compare mode's 0.7
    share = 0.5 if runs[0]["summary"].get("mode") == "single" else 0.75
    winners = [u for u in users if per_user[u][target]["blend"]["mean"] >= bar]
    served = {u: [run["users"][u]["curve"][target]["served_win_rate"]["blend"] for run in runs] for u in users}
    served_winners = [u for u, values in served.items() if None not in values and statistics.mean(values) >= bar]
    at = mean[target]
    worst_ppl = max(per_user[u][target]["perplexity_ratio_blend"]["mean"] for u in users)
    summary = {
        "target_budget": int(target), "target_win_rate": bar,
        "mean_win_rate": mean,
        "mean_win_rate_per_run": run_means,
        "sd_of_run_means": {b: {m: round(statistics.stdev(v), 3) for m, v in run_means[b].items()} for b in budgets},
        "users_with_mean_blend_at_target": winners, "users_with_mean_served_blend_at_target": served_winners,
        "users_at_least_0.7_per_run": [len(r["summary"]["users_with_blend_win_rate_at_least_0.7"]) for r in runs],
        "blend_minus_best_single_per_run": [round(a - max(g, p), 3) for a, g, p in zip(
            run_means[target]["blend"], run_means[target]["global"], run_means[target]["personal"])],
        "max_mean_perplexity_ratio_at_target": worst_ppl,
        "targets_on_means": {
            "blend_at_target_for_enough_users": len(winners) >= math.ceil(share * len(users)),
            "served_blend_at_target_for_enough_users": len(served_winners) >= math.ceil(share * len(users)),
            "blend_at_least_best_single": at["blend"] >= max(at["global"], at["personal"]),
            "perplexity_rise_at_most_10_percent": worst_ppl <= 1.10,
        },
    }
    result = {"benchmark": "learning_curve_seeds", "date": time.strftime("%Y-%m-%d"),
              "machine": runs[0]["machine"], "model": runs[0]["model"],
              "runs": [{"file": name, "seed": run["config"].get("seed"), "seconds": run["seconds"],
                        "date": run["date"]} for name, run in zip(names, runs)],
              "users": per_user, "summary": summary}
    if all("population" in run for run in runs):
        pop_budgets = list(runs[0]["population"]["curve"])
        result["population"] = {b: {m: _stats([round(statistics.mean(
            point["win_rate"][m] for point in run["population"]["curve"][b].values()), 3) for run in runs])
            for m in MODELS} for b in pop_budgets}
    return result


def compare(runs: list[dict], baselines: list[dict], names: list[str], baseline_names: list[str],
            metric: str = "win_rate") -> dict:
    """A change against the baseline, run by run with the same seed (the same prompts, the same first draws), over
    the budgets and users both have: per user and budget the blend's win-rate difference; per budget its mean over
    users and seeds, the mean of each seed, and how many (user, seed) went up or down. `metric`: "win_rate"
    (greedy replies) or "served_win_rate" (sampled as served; runs measured before it existed have none)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    by_seed = {run["config"].get("seed"): (run, name) for run, name in zip(baselines, baseline_names)}
    pairs = []
    for run, name in zip(runs, names):
        seed = run["config"].get("seed")
        if seed not in by_seed:
            raise ValueError(f"{name} (seed {seed}) has no baseline run with that seed")
        pairs.append((seed, run, *by_seed[seed]))
    users = [u for u in runs[0]["users"] if all(u in r["users"] and u in b["users"] for _, r, b, _ in pairs)]
    first = next(iter(runs[0]["users"].values()))["curve"]
    budgets = [b for b in first if all(b in r["users"][u]["curve"] and b in base["users"][u]["curve"]
                                       for _, r, base, _ in pairs for u in users)]
    if not users or not budgets:
        raise ValueError("the runs and their baselines share no user and budget")

    def point(run, user, budget):
        return run["users"][user]["curve"][budget]

    def blend(run, user, budget) -> float:
        value = point(run, user, budget).get(metric, {}).get("blend")
        if value is None:
            raise ValueError(f"a run has no {metric} for {user} at {budget} (measured before it existed, or off)")
        return value

    diffs = {u: {b: [round(blend(r, u, b) - blend(base, u, b), 3)
                     for _, r, base, _ in pairs] for b in budgets} for u in users}
    per_budget = {}
    for b in budgets:
        flat = [d for u in users for d in diffs[u][b]]
        seed_means = [round(statistics.mean(diffs[u][b][i] for u in users), 3) for i in range(len(pairs))]
        per_budget[b] = {
            "blend_diff_mean": round(statistics.mean(flat), 3), "blend_diff_per_seed": seed_means,
            "up": sum(d > 0 for d in flat), "down": sum(d < 0 for d in flat), "same": sum(d == 0 for d in flat),
            "mean_blend": round(statistics.mean(blend(r, u, b) for _, r, _, _ in pairs for u in users), 3),
            "mean_blend_baseline": round(statistics.mean(blend(base, u, b) for _, _, base, _ in pairs
                                                         for u in users), 3),
            "worst_perplexity_ratio": max(point(r, u, b)["perplexity_ratio"]["blend"] for _, r, _, _ in pairs
                                          for u in users),
            "worst_perplexity_ratio_baseline": max(point(base, u, b)["perplexity_ratio"]["blend"]
                                                   for _, _, base, _ in pairs for u in users),
        }
    return {"benchmark": "learning_curve_comparison", "metric": metric, "date": time.strftime("%Y-%m-%d"),
            "machine": runs[0]["machine"], "model": runs[0]["model"],
            "pairs": [{"seed": seed, "run": name, "baseline": base_name, "run_seconds": r["seconds"]}
                      for (seed, r, _, base_name), name in zip(pairs, names)],
            "users": users, "budgets": [int(b) for b in budgets], "blend_diff": diffs, "per_budget": per_budget}


def comparison_table(result: dict) -> str:
    """Per user the blend's win-rate difference (change − baseline) at each budget, mean over seeds; then the mean
    over users and seeds, each seed's mean, the (user, seed) count up/down and the worst perplexity ratio."""
    budgets = [str(b) for b in result["budgets"]]
    label = "Δ blend" if result.get("metric", "win_rate") == "win_rate" else "Δ served blend"
    rows = [["user"] + [f"{label} @{b}" for b in budgets], ["---"] * (len(budgets) + 1)]
    for user, curve in result["blend_diff"].items():
        rows.append([f"`{user}`"] + [f"{statistics.mean(curve[b]):+.2f}" for b in budgets])
    per = result["per_budget"]
    rows.append(["**mean**"] + [f"**{per[b]['blend_diff_mean']:+.3f}**" for b in budgets])
    rows.append(["per seed"] + [" / ".join(f"{d:+.3f}" for d in per[b]["blend_diff_per_seed"]) for b in budgets])
    rows.append(["up / down / same"] + [f"{per[b]['up']} / {per[b]['down']} / {per[b]['same']}" for b in budgets])
    rows.append(["blend, change vs baseline"] + [f"{per[b]['mean_blend']:.3f} vs {per[b]['mean_blend_baseline']:.3f}"
                                                 for b in budgets])
    rows.append(["worst ppl ×, change vs baseline"] + [
        f"{per[b]['worst_perplexity_ratio']:.3f} vs {per[b]['worst_perplexity_ratio_baseline']:.3f}" for b in budgets])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def markdown_table(result: dict) -> str:
    """Per user: blend win rate at each budget as mean ± sd over the runs; at the target budget global-only and
    personal-only means, and the blend's perplexity ratio (mean, worst run)."""
    users = result["users"]
    budgets = list(next(iter(users.values())))
    target = str(result["summary"]["target_budget"])
    head = (["user"] + [f"blend @{b}" for b in budgets]
            + [f"global @{target}", f"personal @{target}", f"ppl ratio @{target} (worst run)"])
    rows = [head, ["---"] * len(head)]

    def pm(s: dict) -> str:
        return f"{s['mean']:.2f} ± {s['sd']:.2f}" if s["sd"] is not None else f"{s['mean']:.2f}"

    for name, curve in users.items():
        point = curve[target]
        ppl = point["perplexity_ratio_blend"]
        rows.append([f"`{name}`"] + [pm(curve[b]["blend"]) for b in budgets]
                    + [f"{point['global']['mean']:.2f}", f"{point['personal']['mean']:.2f}",
                       f"{ppl['mean']:.3f} ({ppl['max']:.3f})"])
    mean, spread = result["summary"]["mean_win_rate"], result["summary"]["sd_of_run_means"]
    rows.append(["**mean**"] + [f"**{mean[b]['blend']:.2f}** ± {spread[b]['blend']:.2f}" for b in budgets]
                + [f"{mean[target]['global']:.2f}", f"{mean[target]['personal']:.2f}", ""])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, curve in result["users"].items():
        xs = [int(b) for b in curve]
        axes[0].errorbar(xs, [curve[b]["blend"]["mean"] for b in curve], yerr=[curve[b]["blend"]["sd"] or 0
                                                                                for b in curve],
                         marker="o", capsize=3, label=name)
    runs = len(result["runs"])
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].axhline(0.7, color="grey", lw=0.8, ls=":")
    axes[0].set(title=f"Served blend vs base, per user (mean ± sd of {runs} runs)", xlabel="A/B choices given",
                ylabel="win rate on held-out", ylim=(0, 1))
    axes[0].legend(fontsize=7)
    mean, per_run = result["summary"]["mean_win_rate"], result["summary"]["mean_win_rate_per_run"]
    lines = mean_panel(axes[1], mean, "Mean over users (dots: each run)")
    for model, line in lines.items():
        for b in mean:
            axes[1].scatter([int(b)] * runs, per_run[b][model], color=line.get_color(), s=10, alpha=0.5)
    save_figure(fig, f"Attune learning curves over {runs} runs — {result['model']}", path)


def _write(result: dict, output: Path) -> None:
    """The combination with its provenance; its configuration is the command that combined the run files."""
    write_result(output, result, {"argv": sys.argv[1:]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="learning_curve result files of one setting")
    parser.add_argument("--against", nargs="+", type=Path, default=None, metavar="BASELINE.json",
                        help="compare the runs with these (paired by seed) instead of combining them")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: bench/results/learning_curve_seeds.json (learning_curve_comparison.json "
                             "with --against)")
    parser.add_argument("--metric", choices=METRICS, default="win_rate",
                        help="with --against: greedy win rates (default) or those of replies sampled as served")
    parser.add_argument("--table", type=Path, default=None, metavar="RESULT_JSON",
                        help="print the README table of a run, a combination or a comparison, and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.table:
        try:
            earlier = json.loads(args.table.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"cannot read {args.table}: {exc}")
        tables = {"learning_curve_comparison": comparison_table, "learning_curve_seeds": markdown_table,
                  "learning_curve": run_table}
        kind = earlier.get("benchmark") if isinstance(earlier, dict) else None
        if kind not in tables:
            parser.error(f"{args.table} is not a result of bench.learning_curve or bench.seeds "
                         f"(its benchmark is {kind!r})")
        sys.stdout.write(tables[kind](earlier) + "\n")
        return 0
    if args.against:
        output = args.output or RESULTS / "learning_curve_comparison.json"
        try:
            result = compare([json.loads(p.read_text()) for p in args.runs],
                             [json.loads(p.read_text()) for p in args.against],
                             [p.name for p in args.runs], [p.name for p in args.against], args.metric)
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"cannot compare these runs: {exc}")
        _write(result, output)
        log.info("%d pairs -> %s: %s", len(args.runs), output,
                 {b: v["blend_diff_mean"] for b, v in result["per_budget"].items()})
        return 0
    if len(args.runs) < 2:
        parser.error("give at least two result files")
    output = args.output or RESULTS / "learning_curve_seeds.json"
    try:
        result = combine([json.loads(p.read_text()) for p in args.runs], [p.name for p in args.runs])
    except (OSError, ValueError, KeyError) as exc:
        parser.error(f"cannot combine these runs: {exc}")
    _write(result, output)
    plot(result, output.with_suffix(".png"))
    log.info("%d runs -> %s: %s", len(args.runs), output, result["summary"]["targets_on_means"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
