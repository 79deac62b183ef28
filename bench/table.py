"""The README's table of today's benchmark figures, generated from the result files in bench/results (and, for
issue 25's runs, in their experiments' folders: `WORDS_RUNS`).

    python -m bench.table                    # print the table (markdown)
    python -m bench.table --check README.md  # exit 1 if the README's table differs from it

The README holds the table between `<!-- bench-table -->` and `<!-- /bench-table -->`; paste the printed table
there after a result file changes. Each row links to where its details live (docs/benchmarks.md or an experiment's
folder). Learning-curve figures are at 32 A/B choices, for seeds 2 and 3 (the runs of today's defaults), with their
mean from `bench.seeds.combine`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

from bench.seeds import combine

log = logging.getLogger("bench.table")
RESULTS = Path(__file__).parent / "results"
BEGIN, END = "<!-- bench-table -->", "<!-- /bench-table -->"
SEEDS = ("learning_curve_repeat_t02_seed2.json", "learning_curve_repeat_t02_seed3.json")
"""Today's defaults to 32 choices, served at T 0.2, ties counted (experiments/2026-12-01-ties)."""
AT = "32"
CURVES = "docs/benchmarks.md#learning-curves"
TIES = "experiments/2026-12-01-ties/"
SPEED = "docs/benchmarks.md#online-learning"
LLAMACPP_LATENCY = "learning_speed_llamacpp.json"
TORCH_LATENCY = "learning_speed_torch_latency.json"


def _load(results: Path, name: str) -> dict:
    return json.loads((results / name).read_text(encoding="utf-8"))


def _points(run: dict) -> list[dict]:
    return [user["curve"][AT] for user in run["users"].values()]


def _served(run: dict) -> float:
    return statistics.mean(p["served_win_rate"]["blend"] for p in _points(run))


def _link(text: str, target: str) -> str:
    return f"[{text}]({target})"


def rows(results: Path = RESULTS) -> list[list[str]]:
    """[benchmark, figure, today, target, details] per figure."""
    runs = [_load(results, name) for name in SEEDS]
    both = combine(runs, list(SEEDS))["summary"]
    greedy = [r["summary"]["mean_win_rate"][AT] for r in runs]
    full = _load(results, "learning_curve.json")
    shared = full["summary"]["population_mean_win_rate"]["16"]
    latency = _load(results, "learning_speed_drift_guard.json")["update_latency"]
    depth = _load(results, "learning_speed_layers.json")["summary"]["two_thirds (0.66: 20 of 30 layers)"]
    serving = _load(results, "learning_speed_two_thirds_serving.json")["serving_speed"]
    switch = _load(results, "learning_speed.json")["profile_switch"]
    model = _load(results, "model_speed.json")
    ceilings = _load(results, "probes.json")["best_ceiling_per_user"]
    load = _load(results, "load.json")
    poisoning = _load(results, "poisoning.json")
    users = list(runs[0]["users"])
    lone = "a user alone, 32 choices"
    return [
        [lone, "blend's replies beat the base model's, greedy: seed 2 / 3 (mean)",
         f"{greedy[0]['blend']:.3f} / {greedy[1]['blend']:.3f} ({both['mean_win_rate'][AT]['blend']:.3f})",
         "", _link("learning curves", CURVES)],
        [lone, "the same, replies sampled as served (T 0.2)",
         f"{_served(runs[0]):.3f} / {_served(runs[1]):.3f} ({statistics.mean(map(_served, runs)):.3f})",
         "", _link("served and ties", TIES)],
        [lone, "users of 8 at ≥ 0.70, greedy",
         " / ".join(str(len(r["summary"]["users_with_blend_win_rate_at_least_0.7"])) for r in runs),
         "≥ 6 of 8", _link("learning curves", CURVES)],
        [lone, "blend vs personal-only adapter",
         " / ".join(f"{g['blend']:.3f} vs {g['personal']:.3f}" for g in greedy), "blend ≥ personal", _link("learning curves", CURVES)],
        [lone, "worst user's neutral-text perplexity, × base",
         " / ".join(f"×{max(p['perplexity_ratio']['blend'] for p in _points(r)):.3f}" for r in runs), "≤ ×1.10",
         _link("why it falls short", "docs/benchmarks.md#why-the-targets-are-not-met")],
        [lone, "ties among 8 × 24 held-out prompts",
         " / ".join(str(sum(p["ties"]["blend"] for p in _points(r))) for r in runs), "", _link("ties", TIES)],
        ["8 users in one home, 16 choices each", "blend / global-only / personal-only (seed 2)",
         f"{shared['blend']:.3f} / {shared['global']:.3f} / {shared['personal']:.3f}", "blend ≥ both",
         _link("learning curves", CURVES)],
        ["whole learning-curve benchmark", f"minutes (seed 2, {len(users)} users to 64 choices + shared home)",
         f"{full['seconds'] / 60:.1f}", "≤ 60", _link("learning curves", CURVES)],
        ["online learning", "vote → first token from the new version, median",
         f"{latency['median_s']:.1f} s", "≤ 15 s", _link("online learning", SPEED)],
        ["online learning", "training compute vs TRL DPOTrainer", f"{depth['ratio_vs_trl_default']:.2f}×", "≤ 0.4×",
         _link("adapted depth", "experiments/2026-11-30-prompt-sharing-and-depth/")],
        ["online learning", "tokens/s, base + global + 0.5·personal vs bare", f"{serving['blend_vs_bare_ratio']:.2f}×",
         "≥ 0.95×", _link("online learning", SPEED)],
        ["online learning", f"profile switch p95, {switch['profiles_on_disk']:,} profiles on disk",
         f"{switch['switch_ms']['p95']:.1f} ms", "≤ 20 ms", _link("online learning", SPEED)],
        ["model speed", "tokens/s streaming (× bare generate), first token",
         f"{model['medians']['attune_main_thread']['tokens_per_s']:.1f} "
         f"({model['ratio_vs_bare']['attune_main_thread']:.3f}×), {model['medians']['attune_main_thread']['ttft_s']:.2f} s",
         "", _link("model speed", "docs/benchmarks.md#model-speed")],
        *_llamacpp_rows(model, results),
        ["load", f"{load['clients']} accounts × {load['seconds']:.0f} s: lost votes, errors, mix-ups",
         f"{load['lost_votes']}, {load['errors']}, {load['mixups']}", "0, 0, 0",
         _link("load", "docs/benchmarks.md#load")],
        ["load", "reply (16 tokens, tiny model) / vote, p50 and p95",
         f"{load['reply']['p50_s']:.1f} / {load['reply']['p95_s']:.1f} s, {load['vote']['p50_s']:.2f} / "
         f"{load['vote']['p95_s']:.2f} s", "", _link("load", "docs/benchmarks.md#load")],
        ["poisoning", "hostile account of 10 profiles: marker in others' replies, vs base",
         f"{poisoning['rules']['account']['shift_pp']:+.1f} pp", "≤ 5 pp",
         _link("poisoning", "docs/benchmarks.md#poisoning")],
        ["poisoning", "its share of each global update: by account / by profile",
         f"{max(poisoning['rules']['account']['hostile_share_of_global_updates']):.2f} / "
         f"{max(poisoning['rules']['profile']['hostile_share_of_global_updates']):.2f}", "≤ 0.25",
         _link("poisoning", "docs/benchmarks.md#poisoning")],
        ["exploration probes", "best probe's greedy ceiling, per user",
         f"{min(ceilings[u][1] for u in users):.2f}–{max(ceilings[u][1] for u in users):.2f}", "",
         _link("probes", "docs/benchmarks.md#probes")],
        *_words_rows(),
        *_reward_rows(results),
    ]


WORDS = "docs/benchmarks.md#words-thumbs-and-tastes-no-one-listed"
EXPERIMENTS = Path(__file__).parent.parent / "experiments"
WORDS_RUNS = {
    "open_pair": "2026-12-05-open-population/open_pair_seed{seed}.json",
    "open_single": "2026-12-05-thumbs/open_single_seed{seed}.json",
    "shipped_single": "2026-12-05-thumbs/shipped_single_seed{seed}.json",
    "open_notes": "2026-12-05-note/open_pair_notes_seed{seed}.json",
}
"""Issue 25's runs of today's defaults to 32 events, per seed, in their experiments' folders: the open population in
compare mode, both populations thumbs-only, and the open population with its notes."""
WORDS_SEEDS = (1, 2)


def _at_target(run: dict) -> str:
    summary = run["summary"]
    return f"{len(summary['users_at_target'])} ({len(summary['users_at_target_served'])})"


def _seeds(run: str) -> list[tuple[int, dict]]:
    """The runs of `run` present, by seed."""
    paths = [(seed, EXPERIMENTS / WORDS_RUNS[run].format(seed=seed)) for seed in WORDS_SEEDS]
    return [(seed, json.loads(path.read_text(encoding="utf-8"))) for seed, path in paths if path.exists()]


def _per_seed(runs: list[tuple[int, dict]], show) -> str:
    return "; ".join(f"seed {seed}: {show(run)}" for seed, run in runs)


def _words_rows() -> list[list[str]]:
    """Issue 25's figures: tastes no probe names, thumbs only, and a stated note (32 events), per seed."""
    pair, single, shipped, notes = (_seeds(run) for run in ("open_pair", "open_single", "shipped_single",
                                                             "open_notes"))
    link = _link("words and thumbs", WORDS)

    def compare(run: dict) -> str:
        mean = run["summary"]["mean_win_rate"][AT]["blend"]
        return f"{_at_target(run)}, {mean:.3f} / {run['summary']['mean_served_win_rate']:.3f}"

    def noted(run: dict) -> str:
        at = [u["curve"][AT]["note"] for u in run["users"].values()]
        helped = [n for n in at if n["reward_with_note"] > n["reward_base"]]  # the note in the prompt helps at all
        learned = [n for n in helped if n["ratio"] is not None and n["ratio"] >= 0.9]
        return f"{len(helped)} of {len(at)}; {len(learned)}"

    shipped_by_seed = dict(shipped)
    return [
        ["open population (no probe names its tastes), compare + words", "users of 8 at ≥ 0.70, greedy (served); "
         "mean greedy / served", _per_seed(pair, compare), "≥ 6 of 8", link],
        ["thumbs only (single mode) + words, 32 events", "users of 8 at ≥ 0.65, greedy (served): open / shipped",
         _per_seed(single, lambda r: _at_target(r) + " / " + _at_target(shipped_by_seed[r["config"]["seed"]])),
         "≥ 4 of 8", link],
        ["a stated note (open population, compare)", "users whose note in the prompt helps at all; of them, "
         "reward without ÷ with ≥ 0.90", _per_seed(notes, noted), "≥ 0.90", link],
    ]


REWARD = "docs/benchmarks.md#the-learned-reward-and-the-rl-path"
RL_RUNS = "2026-12-06-rl-path"
"""Issue 27's runs: the learned reward's accuracy (`bench.reward_accuracy`) per population and seed, and the three
objectives on 4 users of each population, seed 1 (`bench.learning_curve`)."""
RL_REWARD = ("reward_accuracy_population_seed{seed}.json", "reward_accuracy_open_population_seed{seed}.json")
RL_OBJECTIVES = ("dpo", "rloo", "hybrid")


def _experiment(name: str) -> dict | None:
    path = EXPERIMENTS / RL_RUNS / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _objective(summary: dict) -> str:
    return (f"{summary['mean_win_rate'][AT]['blend']:.3f}, {summary['mean_served_win_rate']:.3f}; "
            f"×{summary['max_perplexity_ratio_of_blend']:.2f}")


def _reward_rows(results: Path) -> list[list[str]]:
    """Issue 27's figures: the learned reward's held-out accuracy at 32 votes, the time a refit adds to a vote, the
    objectives side by side, and best-of-4 by the reward."""
    link, rows = _link("reward and RL", REWARD), []
    accuracy = []
    for name, label in zip(RL_REWARD, ("shipped", "open")):
        runs = [(seed, _experiment(name.format(seed=seed))) for seed in WORDS_SEEDS]
        shown = [f"s{seed} {r['summary']['all/flat/100.0/32']:.2f} ({r['summary']['pca8/hierarchical/10.0/32']:.2f})"
                 for seed, r in runs if r]
        if shown:
            accuracy.append(f"{label}: " + ", ".join(shown))
    if accuracy:
        rows.append(["learned reward, 32 choices (today's settings)", "held-out accuracy, alone (around everyone's); "
                     "chosen on shipped s1", "; ".join(accuracy), "≥ 0.75", link])
    if (results / "reward_speed.json").exists():
        point = _load(results, "reward_speed.json")["points"]["32"]
        rows.append(["learned reward, 32 votes before", "the refit's fit; its features; the vote's request, vs "
                     "reward off (medians)", f"{point['fit_ms']:.0f} ms; {point['features_ms']:.0f} ms, after the "
                     f"request; {point['reward_adds_ms']:+.0f} ms", "fit ≤ 100 ms", link])
    for population, label in (("population", "shipped"), ("open_population", "open")):
        runs = {o: _experiment(f"{population}_{o}_seed1.json") for o in RL_OBJECTIVES}
        runs = {o: r for o, r in runs.items() if r}
        if len(runs) < 2:
            continue
        rows.append([f"objectives, 4 {label} users, 32 choices, seed 1", " / ".join(o.upper() for o in runs)
                     + ": blend greedy, served; worst drift",
                     " / ".join(_objective(r["summary"]) for r in runs.values()), "best is the default", link])
        reward = runs.get("dpo", next(iter(runs.values())))["summary"]["reward"].get(AT, {})
        if "best_of_4_win_rate" in reward:
            rows.append([f"best-of-4 by the learned reward, {label}, 32 choices", "served win rate: best of 4 vs a "
                         "plain sample (the user's own best of 4)", f"{reward['best_of_4_win_rate']:.3f} vs "
                         f"{reward['sample_win_rate']:.3f} ({reward['oracle_4_win_rate']:.3f})", "", link])
    return rows


def _llamacpp_rows(model: dict, results: Path) -> list[list[str]]:
    """The llamacpp backend's figures, when the model-speed run had llama-cpp-python."""
    m, t = model["medians"], model.get("targets", {})
    if not t:
        return []
    link = _link("model speed", "docs/benchmarks.md#model-speed")
    llama, torch_ = m["llamacpp_1000_prompt"]["ttft_s"], m["attune_main_thread_1000_prompt"]["ttft_s"]
    rows = [
        ["model speed", "llama.cpp backend, base + global + 0.5·personal: tokens/s (× torch's streaming)",
         f"{m['llamacpp_blend']['tokens_per_s']:.1f} ({t['blend_vs_torch']:.2f}×)", "≥ 2.5×", link],
        ["model speed", "llama.cpp: the blend vs bare llama.cpp", f"{t['blend_vs_bare_llamacpp']:.2f}×", "≥ 0.9×",
         link],
        ["model speed", "first token, 1,000-token prompt, llama.cpp / torch: read from scratch; next turn",
         f"{llama:.2f} / {torch_:.2f} s ({t['ttft_1000_vs_torch']:.2f}×); "
         f"{m['llamacpp_1000_prompt_next_turn']['ttft_s']:.2f} s ({t['ttft_1000_next_turn_vs_torch']:.2f}×)",
         "≤ 0.5×", link],
        ["model speed", "llama.cpp: two profiles at once vs one after the other",
         f"{t['two_profiles_at_once_vs_one_after_the_other']:.2f}×", "≥ 1.4×", link],
    ]
    if (results / LLAMACPP_LATENCY).exists() and (results / TORCH_LATENCY).exists():
        llama_s = _load(results, LLAMACPP_LATENCY)["update_latency"]["median_s"]
        torch_s = _load(results, TORCH_LATENCY)["update_latency"]["median_s"]
        rows.append(["online learning", "vote → first token of the new version, median: llama.cpp / torch, same day",
                     f"{llama_s:.1f} / {torch_s:.1f} s", "≤ 15 s, no worse", _link("online learning", SPEED)])
    return rows


def markdown(results: Path = RESULTS) -> str:
    table = [["benchmark", "figure", "today", "target", "details"], ["---"] * 5] + rows(results)
    return "\n".join("| " + " | ".join(row) + " |" for row in table)


def readme_block(text: str) -> str:
    """The text between the README's markers, without surrounding blank lines."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"no {BEGIN} … {END} block")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", type=Path, default=None, metavar="README.md",
                        help="compare the table between the markers of this file with the generated one")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the result files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table = markdown(args.results)
    if args.check is None:
        sys.stdout.write(table + "\n")
        return 0
    try:
        current = readme_block(args.check.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        parser.error(f"{args.check}: {exc}")
    if current != table:
        log.error("%s: the benchmark table differs from `python -m bench.table`; paste its output between the markers",
                  args.check)
        return 1
    log.info("%s: the benchmark table matches the result files", args.check)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
