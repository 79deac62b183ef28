"""Simulated users, the gymnasium environment, and the learning-curve harness in --quick mode."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.env import PreferenceChatEnv, load_prompts, split_prompts
from bench.users import (SimulatedUser, choose, concise, load_users, population, prefers_a_probability,
                         shared_reward, thumbs)
from tests.conftest import HANG, REPO


PROMPT = "How do I keep basil alive on a windowsill?"


def test_prompt_set_is_large_varied_and_split():
    prompts = load_prompts()
    assert len(prompts) >= 300 and len(set(prompts)) == len(prompts)
    train, held = split_prompts(prompts)
    assert len(held) >= 60 and not set(train) & set(held)
    assert split_prompts(prompts) == (train, held)  # fixed by the seed


def test_shared_taste_rewards_on_topic_polite_and_punishes_degenerate():
    on_topic = "Sure! Keep the basil in sun on the windowsill and water it when the soil is dry."
    off_topic = "The stock market closed higher on Tuesday after a quiet session."
    assert shared_reward(PROMPT, on_topic) > shared_reward(PROMPT, off_topic)
    assert shared_reward(PROMPT, "basil " * 30) < shared_reward(PROMPT, on_topic)
    assert shared_reward(PROMPT, "") == -2.0
    assert shared_reward(PROMPT, on_topic + " You are stupid.") < shared_reward(PROMPT, on_topic)


@pytest.mark.parametrize("name, better, worse", [
    ("concise", "Water it when dry and give it sun.", "Basil " + "needs lots of careful attention and " * 10),
    ("detailed", "Basil needs sun. " * 20, "Give it sun."),
    ("bullets", "- sun on the windowsill\n- water when dry\n- pinch the tops", "Give basil sun and water."),
    ("formal", "Basil requires sunlight; therefore, place it on the windowsill.", "Hey, it's cool! Don't worry!"),
    ("casual", "Hey, it's easy! Give it sun, it'll love that!", "Basil requires sunlight."),
    ("emoji_lover", "Give basil sun 🌿☀️🙂", "Give basil sun."),
    ("emoji_hater", "Give basil sun.", "Give basil sun 🌿☀️🙂"),
    ("examples", "Herbs such as basil like sun, for example a south window.", "Basil likes sun."),
    ("questions_back", "Give it sun. Which window do you have?", "Give it sun."),
    ("nature_lover", "Like a plant in a garden, basil loves the sun and rain.", "Basil likes light."),
])
def test_each_user_type_has_a_distinct_measurable_taste(name, better, worse):
    user = next(u for u in population() if u.name == name)
    assert user.reward(PROMPT, better) > user.reward(PROMPT, worse)
    assert user.reward(PROMPT, better) == user.reward(PROMPT, better)  # deterministic
    assert user.description


def test_population_has_at_least_eight_tastes_that_disagree():
    users = population()
    assert len(users) >= 8 and len({u.name for u in users}) == len(users)
    replies = ["- one\n- two\n- three 🙂", "Therefore, basil requires sunlight.", "Hey! It's easy, isn't it?"]
    favourites = {max(replies, key=lambda r: u.reward(PROMPT, r)) for u in users}
    assert len(favourites) == 3  # no single reply pleases everyone


def test_choices_follow_bradley_terry_and_thumbs_a_threshold():
    user = SimulatedUser("c", concise, temperature=1.0)
    short, long = "Water it and give it sun.", "Basil " + "needs lots of attention and " * 10
    p = prefers_a_probability(user, PROMPT, short, long)
    rng = random.Random(0)
    picks = [choose(user, PROMPT, short, long, rng) for _ in range(2000)]
    assert 0.5 < p < 1.0 and abs(picks.count("a") / 2000 - p) < 0.04
    assert choose(user, PROMPT, short, short, rng) == "tie"
    sharp = SimulatedUser("c", concise, temperature=0.01)
    assert all(choose(sharp, PROMPT, short, long, rng) == "a" for _ in range(50))
    assert thumbs(user, PROMPT, short) == (1 if user.reward(PROMPT, short) >= user.threshold else -1)


def test_users_load_from_module_callable():
    assert [u.name for u in load_users("bench.users:population")] == [u.name for u in population()]
    with pytest.raises(ValueError, match="module:callable"):
        load_users("bench.users")


def test_environment_steps_pairs_and_thumbs():
    user = population()[0]
    prompts = load_prompts()[:20]
    env = PreferenceChatEnv(user, prompts, mode="pair", episode_length=4, history_length=2)
    obs, info = env.reset(seed=1)
    assert obs["prompt"] in prompts and obs["history"] == () and info["user"] == user.name
    assert env.observation_space.contains(obs)
    short, long = "Short answer.", "A much longer answer " * 10
    assert env.action_space.contains((short, long))
    asked, seen = [], []
    for step in range(4):
        asked.append(obs["prompt"])
        obs, reward, terminated, truncated, info = env.step((short, long) if step % 2 else (long, short))
        assert reward in (1.0, -1.0, 0.0) and info["choice"] in ("a", "b", "tie") and not terminated
        assert info["prompt"] == asked[-1] and env.observation_space.contains(obs)
        seen.append({"prompt": asked[-1], "reply": long if (info["choice"] == "b") == (step % 2 == 1) else short,
                     "feedback": int(reward)})
        # the newest steps, oldest first, each with the reply the chat went on with (A on a tie)
        assert list(obs["history"]) == seen[-2:]
        assert truncated == (step == 3)  # the episode length was reached
    # the concise user prefers the short reply: most choices went to it (Bradley–Terry, temperature 0.5)
    assert sum(s["reply"] == short for s in seen) >= 3
    assert PreferenceChatEnv(user, prompts, history_length=0).reset(seed=1)[0]["history"] == ()
    with pytest.raises(ValueError, match="history_length"):
        PreferenceChatEnv(user, prompts, history_length=-1)
    single = PreferenceChatEnv(user, load_prompts()[:5], mode="single")
    obs, _ = single.reset(seed=0)
    obs2, reward, *_, info = single.step("Sure! Here is a short answer.")
    assert reward == float(info["thumbs"])
    assert obs2["history"] == ({"prompt": obs["prompt"], "reply": "Sure! Here is a short answer.",
                                "feedback": info["thumbs"]},)


def test_learning_curve_quick_mode_runs_the_product_loop(tmp_path):
    out = tmp_path / "curve.json"
    result = subprocess.run([sys.executable, "-m", "bench.learning_curve", "--quick", "--jobs", "2", "--output", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=HANG)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert data["quick"] is True and len(data["users"]) == 2 and data["seconds"] < 180
    for user in data["users"].values():
        assert set(user["curve"]) == {"0", "4", "8"}
        for point in user["curve"].values():
            for metric in ("win_rate", "served_win_rate", "preference_accuracy"):
                assert set(point[metric]) == {"blend", "global", "personal"}
                assert all(v is None or 0 <= v <= 1 for v in point[metric].values())
            assert all(v > 0 for v in point["perplexity_ratio"].values())
            prompts = data["config"]["held_out_prompts"]
            assert all(0 <= point["same_as_base"][m] <= point["ties"][m] <= prompts for m in point["ties"])
        assert user["curve"]["0"]["same_as_base"] == {m: data["config"]["held_out_prompts"]
                                                      for m in ("blend", "global", "personal")}
        # Before any feedback every model is the base model: its samples against themselves win exactly half.
        # (the served samples are drawn for the served blend only, `CurveConfig.served_models`)
        assert user["curve"]["0"]["served_win_rate"] == {"blend": 0.5, "global": None, "personal": None}
        assert user["curve"]["0"]["reward"] is None  # no vote yet: no learned reward
        reward = user["curve"]["8"]["reward"]  # each choice refitted it in the app's request path
        assert reward["own"] and reward["app_held_out"]["events"] == 8
        assert all(0 <= reward[k] <= 1 for k in ("best_of_4_win_rate", "sample_win_rate", "oracle_4_win_rate"))
        assert reward["oracle_4_win_rate"] >= reward["best_of_4_win_rate"]
    # Training really happened (on the random tiny model many choices are ties, which teach nothing, so not
    # necessarily for every user).
    assert any(u["curve"]["8"]["published"]["personal"] for u in data["users"].values())
    assert set(data["population"]["curve"]) == {"0", "4"}
    # The shared home ran global updates to the end; on the tiny model most choices can be ties (equal rewards), so
    # an update may rightly find no pair to learn from and publish nothing.
    job = data["population"]["last_global_job"]
    assert job is not None and job["status"] == "done", job
    assert data["population"]["global_versions"] >= 1 or job["message"] == "nothing new to learn from", job
    assert set(data["summary"]) >= {"mean_win_rate", "users_with_blend_win_rate_at_least_0.7", "targets"}
    for user in data["users"].values():  # every shown pair was recorded, with what it could teach
        assert user["feedback"]["pairs"] == 8 and 0 <= user["feedback"]["informative_share"] <= 1
    assert set(data["population"]["feedback"]) == set(data["users"])
    table = subprocess.run([sys.executable, "-m", "bench.learning_curve", "--table", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=HANG)
    lines = table.stdout.splitlines()
    assert table.returncode == 0 and lines[0].startswith("| user | blend @0 | blend @4 | blend @8 |")
    assert len(lines) == 2 + len(data["users"]) + 1 and lines[-1].startswith("| **mean** |")


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_benchmark_leaves_no_pool_process_running(tmp_path):
    run = subprocess.Popen([sys.executable, "-m", "bench.learning_curve", "--quick", "--jobs", "2", "--output",
                            str(tmp_path / "curve.json")], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + HANG
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
            workers = [pid for pid in _children(run.pid)
                       if b"spawn_main" in (Path("/proc") / str(pid) / "cmdline").read_bytes()]
        assert len(workers) == 2, "the pool never started"
        run.kill()  # SIGKILL: no handler of the parent runs
        run.wait(timeout=HANG)
        deadline = time.monotonic() + HANG
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers)
    finally:
        run.kill()


def _curve_without_clock(path: Path) -> dict:
    """A result file without what the clock and the temporary model folder decide."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in ("seconds", "elapsed_s", "date", "model", "config")}
        return [strip(v) for v in obj] if isinstance(obj, list) else obj

    return strip(json.loads(path.read_text()))


def test_learning_curve_repeats_exactly_with_one_seed_and_seeds_combine(tmp_path):
    # Profile and feedback ids decide which pairs are held out and each update's replay sample; with random ids two
    # runs of one seed published different global versions (measured before ids were drawn from the seed).
    runs = {}
    for name, extra in (("first", []), ("again", []), ("seed1", ["--set", "seed=1"]),
                        ("greedy_only", ["--set", "served_samples=0"])):
        out = tmp_path / f"{name}.json"
        result = subprocess.run([sys.executable, "-m", "bench.learning_curve", "--quick", "--jobs", "2", "--output",
                                 str(out), *extra], cwd=REPO, capture_output=True, text=True, timeout=HANG)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = _curve_without_clock(out)
    assert runs["first"] == runs["again"]
    assert runs["first"]["users"] != runs["seed1"]["users"]
    # Sampling the served replies draws from a generator of its own: measuring them changes nothing that is learned.
    for name, user in runs["greedy_only"]["users"].items():
        for budget, point in user["curve"].items():
            measured = runs["first"]["users"][name]["curve"][budget]
            assert point["served_win_rate"] == {"blend": None, "global": None, "personal": None}
            for key in ("win_rate", "preference_accuracy", "perplexity_ratio", "published", "examples"):
                assert point[key] == measured[key], (name, budget, key)
    # Two seeds combined: per user and budget the mean of the runs, the targets judged on the means.
    out = tmp_path / "seeds.json"
    result = subprocess.run([sys.executable, "-m", "bench.seeds", str(tmp_path / "first.json"),
                             str(tmp_path / "seed1.json"), "--output", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=HANG)
    assert result.returncode == 0, result.stderr[-3000:]
    combined = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert [r["seed"] for r in combined["runs"]] == [0, 1]
    for name, user in runs["first"]["users"].items():
        for budget, point in user["curve"].items():
            values = [point["win_rate"]["blend"], runs["seed1"]["users"][name]["curve"][budget]["win_rate"]["blend"]]
            assert combined["users"][name][budget]["blend"]["values"] == values
            assert combined["users"][name][budget]["blend"]["mean"] == pytest.approx(sum(values) / 2, abs=1e-3)
    assert set(combined["summary"]["targets_on_means"]) == set(runs["first"]["summary"]["targets"])
    table = subprocess.run([sys.executable, "-m", "bench.seeds", "--table", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=HANG).stdout.splitlines()
    assert table[0].startswith("| user | blend @0 |") and len(table) == 2 + len(runs["first"]["users"]) + 1
    # --table also prints one run's table (as bench.learning_curve does), and refuses a file that is no such result.
    tables = [subprocess.run([sys.executable, "-m", module, "--table", str(tmp_path / "first.json")], cwd=REPO,
                             capture_output=True, text=True, timeout=HANG)
              for module in ("bench.seeds", "bench.learning_curve")]
    assert tables[0].returncode == 0 and tables[0].stdout == tables[1].stdout and "| **mean** |" in tables[0].stdout
    (tmp_path / "other.json").write_text('{"benchmark": "model_speed"}')
    other = subprocess.run([sys.executable, "-m", "bench.seeds", "--table", str(tmp_path / "other.json")], cwd=REPO,
                           capture_output=True, text=True, timeout=HANG)
    assert other.returncode == 2 and "'model_speed'" in other.stderr and not other.stdout
    # A change judged against a baseline run by run (paired by seed): a repeat differs by nothing; no baseline of
    # the seed is an error.
    versus = tmp_path / "versus.json"
    result = subprocess.run([sys.executable, "-m", "bench.seeds", str(tmp_path / "again.json"), "--against",
                             str(tmp_path / "seed1.json"), str(tmp_path / "first.json"), "--output", str(versus)],
                            cwd=REPO, capture_output=True, text=True, timeout=HANG)
    assert result.returncode == 0, result.stderr[-3000:]
    paired = json.loads(versus.read_text())
    assert [(p["seed"], p["baseline"]) for p in paired["pairs"]] == [(0, "first.json")]
    assert all(v["blend_diff_mean"] == 0 and v["up"] == v["down"] == 0 for v in paired["per_budget"].values())
    # The same on the served (sampled) win rates; a run that did not measure them is refused, not read as zeros.
    served = subprocess.run([sys.executable, "-m", "bench.seeds", str(tmp_path / "again.json"), "--against",
                             str(tmp_path / "first.json"), "--metric", "served_win_rate", "--output",
                             str(tmp_path / "served.json")], cwd=REPO, capture_output=True, text=True, timeout=HANG)
    assert served.returncode == 0, served.stderr[-3000:]
    paired = json.loads((tmp_path / "served.json").read_text())
    assert paired["metric"] == "served_win_rate"
    assert all(v["blend_diff_mean"] == 0 and v["up"] == v["down"] == 0 for v in paired["per_budget"].values())
    missing = subprocess.run([sys.executable, "-m", "bench.seeds", str(tmp_path / "greedy_only.json"), "--against",
                              str(tmp_path / "first.json"), "--metric", "served_win_rate", "--output",
                              str(tmp_path / "missing.json")], cwd=REPO, capture_output=True, text=True, timeout=HANG)
    assert missing.returncode == 2 and "has no served_win_rate" in missing.stderr
    unpaired = subprocess.run([sys.executable, "-m", "bench.seeds", str(tmp_path / "seed1.json"), "--against",
                               str(tmp_path / "first.json"), "--output", str(tmp_path / "none.json")], cwd=REPO,
                              capture_output=True, text=True, timeout=HANG)
    assert unpaired.returncode == 2 and "no baseline run with that seed" in unpaired.stderr
    refused = subprocess.run([sys.executable, "-m", "bench.seeds", str(tmp_path / "first.json"), "--output",
                              str(tmp_path / "one.json")], cwd=REPO, capture_output=True, text=True, timeout=HANG)
    assert refused.returncode == 2 and "at least two" in refused.stderr and not (tmp_path / "one.json").exists()


def test_benchmark_settings_override_nested_frozen_configs_and_refuse_unknown_ones():
    from assistant.overrides import settings_diff, with_overrides
    from bench.learning_curve import CurveConfig, select_users

    config = with_overrides(CurveConfig(), ["held_out_prompts=8", "learning.train.learning_rate=2e-3",
                                            "learning.blend.k=4", "budgets=0,4", "only=formal,casual",
                                            "learning.train.bf16=false", "max_users=1"])
    assert config.held_out_prompts == 8 and config.budgets == (0, 4) and config.max_users == 1
    assert config.learning.train.learning_rate == 2e-3 and config.learning.blend.k == 4.0
    assert config.learning.train.bf16 is False and config.only == ("formal", "casual")
    assert CurveConfig().learning.train.learning_rate != 2e-3  # the default is untouched (frozen copies)
    assert [u.name for u in select_users(config)] == ["formal"]  # population order, then the cap
    with pytest.raises(ValueError, match="no setting 'learning_rat'"):
        with_overrides(CurveConfig(), ["learning.train.learning_rat=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        with_overrides(CurveConfig(), ["held_out_prompts"])
    with pytest.raises(ValueError, match="no such users"):
        select_users(with_overrides(CurveConfig(), ["only=nobody"]))
    probes = with_overrides(CurveConfig(), ["explore.probes=list,direct", "explore.pairing=single"]).explore
    assert [(p.name, p.instruction) for p in probes.probes] == [
        (p.name, p.instruction) for p in CurveConfig().explore.probes if p.name in ("list", "direct")]
    with pytest.raises(ValueError, match="names among"):
        with_overrides(CurveConfig(), ["explore.probes=lists"])
    assert with_overrides(CurveConfig(), ["served_models=blend,personal"]).served_models == ("blend", "personal")
    with pytest.raises(ValueError, match="served_models takes"):
        with_overrides(CurveConfig(), ["served_models=blnd"])
    changed = with_overrides(CurveConfig(), ["explore.probes=list,direct", "learning.lora.top_layers=1.0",
                                             "learning.train.bf16=false", "served_models=blend,personal", "seed=3",
                                             "learning.lora.target_modules=q_proj,v_proj"])
    assert settings_diff(CurveConfig(), CurveConfig()) == []
    assert sorted(settings_diff(changed, CurveConfig())) == [
        "explore.probes=list,direct", "learning.lora.target_modules=q_proj,v_proj", "learning.lora.top_layers=1.0",
        "learning.train.bf16=false", "seed=3", "served_models=blend,personal"]
    assert with_overrides(CurveConfig(), settings_diff(changed, CurveConfig())) == changed  # the round trip
    off = with_overrides(CurveConfig(), ["learning.max_drift=none"])  # a setting that may be None is switched off
    assert off.learning.max_drift is None and settings_diff(off, CurveConfig()) == ["learning.max_drift=none"]
    assert with_overrides(off, ["learning.max_drift=0.1"]).learning.max_drift == 0.1
    with pytest.raises(ValueError, match="max_drift must be > 0"):
        with_overrides(CurveConfig(), ["learning.max_drift=0"])


def test_probe_benchmark_takes_new_wordings_and_refuses_malformed_ones():
    from assistant.config import Probe
    from bench.probes import _probe

    assert _probe(' sure = Begin your answer with "Sure". ') == Probe("sure", 'Begin your answer with "Sure".')
    assert _probe("a=b=c").instruction == "b=c"  # only the first '=' separates the name
    for bad in ("no-equals", "=instruction only", "name=  "):
        with pytest.raises(SystemExit, match="NAME=INSTRUCTION"):
            _probe(bad)


def test_feedback_stats_count_each_explored_candidate_of_plain_pairs_and_duels():
    from bench.learning_curve import feedback_stats

    shown = [("a", 2.0, 0.0, {"a": "list", "b": None}),  # a probe against the plain sample: chosen
             ("tie", 1.0, 1.0, {"a": None, "b": "list"}),  # tied: half each
             ("b", 0.0, 1.0, {"a": "list", "b": "short"}),  # a duel of two probes: short chosen, list not
             ("a", 1.0, 0.5, {"a": None, "b": "short"}),  # the plain sample chosen over a probe
             ("b", 0.0, 0.1, {"a": None, "b": None})]  # not explored: no arm
    stats = feedback_stats(shown)
    assert stats["probes"] == {"list": {"asked": 3, "chosen": 1.5}, "short": {"asked": 2, "chosen": 1.0},
                               "plain": {"asked": 3, "chosen": 1.5}}
    assert stats["probed_share"] == 0.8 and stats["probed_chosen"] == 0.5  # 2.5 of the 5 probed candidates
    assert stats["pairs"] == 5 and stats["ties"] == 1 and stats["informative_share"] == 0.6


def test_decoding_benchmark_measures_a_setting_on_the_base_model(tmp_path, tiny_model_dir):
    out = tmp_path / "decoding.json"
    common = ["--set", f"model={tiny_model_dir}", "--set", "held_out_prompts=4", "--set", "max_new_tokens=12"]
    result = subprocess.run([sys.executable, "-m", "bench.decoding", "--change", "repetition_penalty=2.0", *common,
                             "--model-cache", str(tmp_path / "cache"), "--output", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=HANG)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RepetitionPenaltyLogitsProcessor" not in result.stderr  # the deliberate override is not a warning
    data = json.loads(out.read_text())
    assert data["change"] == ["repetition_penalty=2.0"] and data["prompts"] == 4
    names = {u.name for u in population()}
    for kind in ("greedy", "served"):
        wins = data[kind]["win_rate_vs_unchanged"]
        assert set(wins) == names and all(0 <= w <= 1 for w in wins.values())
        assert set(data[kind]["shared_taste"]) == {"changed", "unchanged"}
    # A change that changes nothing wins exactly half against itself.
    same = subprocess.run([sys.executable, "-m", "bench.decoding", "--change", "repetition_penalty=1.0", *common,
                           "--model-cache", str(tmp_path / "cache"), "--output", str(tmp_path / "same.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG)
    assert same.returncode == 0, same.stderr[-3000:]
    unchanged = json.loads((tmp_path / "same.json").read_text())
    assert all(w == 0.5 for kind in ("greedy", "served") for w in unchanged[kind]["win_rate_vs_unchanged"].values())
    refused = subprocess.run([sys.executable, "-m", "bench.decoding", *common], cwd=REPO, capture_output=True,
                             text=True, timeout=HANG)
    assert refused.returncode == 2 and "--change" in refused.stderr


def test_learning_speed_refuses_bad_settings_and_parts_before_loading_anything(tmp_path):
    """`--set` reaches the trainer and the worker process; a typo must stop the run at once, not after minutes
    of timing the wrong settings (or leave the worker unable to start while the benchmark waits for it)."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "bench.learning_speed", *args, "--output",
                               str(tmp_path / "speed.json")], cwd=REPO, capture_output=True, text=True, timeout=HANG)

    typo = run("--set", "lora.top_layer=1.0", "--parts", "latency")
    assert typo.returncode == 2 and "no setting 'top_layer'" in typo.stderr
    refused = run("--set", "lora.top_layers=2", "--parts", "latency")  # LoraSettings' own validation
    assert refused.returncode == 2 and "top_layers" in refused.stderr
    alone = run("--parts", "serving")
    assert alone.returncode == 2 and "serving needs latency" in alone.stderr
    assert run("--parts", "trainin").returncode == 2
    assert not (tmp_path / "speed.json").exists()
