"""Exploration in compare mode: which probe is asked, that it stays hidden from what is stored and trained on,
and its record in the database."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

import app
from adapters.data import encode, examples_from_feedback
from assistant.config import DEFAULT_PROBES, PLAIN, ExploreConfig, GenerationSettings, Probe
from assistant.explore import choose_arms, probed
from assistant.prompts import build_prompt
from assistant.service import ChatService
from storage.errors import InvalidInput

SETTINGS = GenerationSettings(temperature=1.0, max_new_tokens=8)
PROBES = (Probe("list", "Answer as a list."), Probe("short", "Be short."), Probe("joke", "Tell a joke."))


def choose_probe(config: ExploreConfig, mine, everyone, rng: random.Random) -> Probe | None:
    """The probe of "single" pairing, whose other candidate is always a plain sample."""
    probe, plain = choose_arms(replace(config, pairing="single"), mine, everyone, rng)
    assert plain is None
    return probe


def test_rate_zero_never_probes_and_rate_one_always_does():
    rng = random.Random(0)
    assert all(choose_probe(ExploreConfig(rate=0.0), {}, {}, rng) is None for _ in range(50))
    assert all(choose_probe(ExploreConfig(rate=1.0), {}, {}, rng) in DEFAULT_PROBES for _ in range(50))
    share = sum(choose_probe(ExploreConfig(rate=0.3), {}, {}, rng) is not None for _ in range(2000)) / 2000
    assert 0.25 < share < 0.35


def test_thompson_sampling_asks_more_of_what_this_person_chose_and_still_tries_the_rest():
    config = ExploreConfig(rate=1.0, probes=PROBES)
    rng = random.Random(1)
    mine = {"list": (9.0, 1.0), "short": (1.0, 9.0)}
    counts = Counter(choose_probe(config, mine, {}, rng).name for _ in range(1000))
    assert counts["list"] > 700  # won 9 of 10
    assert counts["short"] < 20  # lost 9 of 10
    assert 0 < counts["joke"] < counts["list"]  # never tried: still asked sometimes


def test_a_new_profile_starts_from_the_global_record():
    config = ExploreConfig(rate=1.0, probes=PROBES, prior_strength=8.0)
    rng = random.Random(2)
    everyone = {"joke": (80.0, 20.0), "list": (20.0, 80.0), "short": (20.0, 80.0)}
    with_global = Counter(choose_probe(config, {}, everyone, rng).name for _ in range(1000))
    no_global = Counter(choose_probe(replace(config, prior_strength=0.0), {}, everyone, rng).name for _ in range(1000))
    assert with_global["joke"] > 600 and 250 < no_global["joke"] < 420


@pytest.mark.parametrize("kwargs", [dict(rate=1.5), dict(rate=-0.1), dict(probes=()),
                                    dict(probes=(Probe("a", "x"), Probe("a", "y"))), dict(probes=(Probe("a", " "),)),
                                    dict(prior_strength=-1.0), dict(pairing="triple"),
                                    dict(probes=(Probe(PLAIN, "x"),))])
def test_bad_exploration_settings_get_a_clear_error(kwargs):
    with pytest.raises(InvalidInput):
        ExploreConfig(**kwargs)


def test_single_pairing_draws_the_same_random_numbers_as_before_duels_existed():
    """Seeded benchmark runs must repeat: these probes and the generator's next number after each choice were
    recorded with the explorer of commit 6a45561, before `pairing` existed."""
    config = ExploreConfig(rate=0.7, probes=PROBES)
    mine = {"list": (3.0, 1.0), "joke": (0.0, 2.0)}
    everyone = {"list": (5.0, 1.0), "short": (4.0, 4.0), "joke": (0.0, 2.0)}
    recorded = [(None, 0.757954), ("short", 0.945271), (None, 0.947827), ("list", 0.868045), ("list", 0.106183),
                ("short", 0.21673), (None, 0.821954), ("list", 0.826852)]
    for seed, (name, following) in enumerate(recorded):
        rng = random.Random(seed)
        probe = choose_probe(config, mine, everyone, rng)
        assert (probe.name if probe else None, round(rng.random(), 6)) == (name, following)


def test_a_duel_sets_the_two_best_arms_against_each_other_the_plain_sample_being_one():
    config = ExploreConfig(rate=1.0, probes=PROBES, pairing="duel")
    rng = random.Random(4)
    # This person chose lists over everything and the plain sample over the rest; jokes lost every time.
    mine = {"list": (18.0, 2.0), PLAIN: (12.0, 8.0), "short": (6.0, 14.0), "joke": (0.0, 20.0)}
    duels = [choose_arms(config, mine, {}, rng) for _ in range(1000)]
    assert Counter(first.name if first else PLAIN for first, _ in duels)["list"] > 900  # the higher draw first
    names = Counter(frozenset(p.name if p else PLAIN for p in duel) for duel in duels)
    assert names[frozenset({"list", PLAIN})] > 700  # the favourite in nearly every pair, against the runner-up
    assert sum(n for pair, n in names.items() if "list" in pair) > 950
    assert 0 < sum(n for pair, n in names.items() if "short" in pair) < 250  # the rest still get a chance
    assert sum(n for pair, n in names.items() if "joke" in pair) < 10
    # With no record every arm, the plain sample included, is asked alike.
    fresh = Counter(p.name if p else PLAIN for _ in range(2000) for p in choose_arms(config, {}, {}, rng))
    assert set(fresh) == {"list", "short", "joke", PLAIN} and min(fresh.values()) > 850
    assert all(choose_arms(replace(config, rate=0.0), mine, {}, rng) == (None, None) for _ in range(20))


def test_probe_goes_to_the_newest_user_message_only():
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Plan my day.  "}]
    out = probed(turns, Probe("list", "Answer as a list."))
    assert out[:2] == turns[:2] and out[2] == {"role": "user", "content": "Plan my day.\n\nAnswer as a list."}
    assert turns[2]["content"] == "Plan my day.  "  # the caller's turns are not modified


@pytest.fixture
def exploring(store, tiny_loaded, app_config) -> ChatService:
    config = replace(app_config, explore=ExploreConfig(rate=1.0, probes=PROBES, pairing="single"))
    return ChatService(store, tiny_loaded, config, rng=random.Random(0))


def test_one_candidate_explores_hidden_from_the_transcript_and_the_training_data(exploring, store):
    ann = exploring.create_profile("Ann")["id"]
    sides = []
    for i in range(6):
        pair = list(exploring.send(ann, None, f"Plan my day number {i}.", SETTINGS, compare=True))[-1].comparison
        probes = [pair.a.settings.get("probe"), pair.b.settings.get("probe")]
        assert sum(p is not None for p in probes) == 1 and set(probes) - {None} <= {p.name for p in PROBES}
        sides.append("a" if probes[0] else "b")
        # Each candidate's own facts replace the batch's lists.
        assert isinstance(pair.a.settings["new_tokens"], int) and isinstance(pair.b.settings["ended"], bool)
        transcript = exploring.transcript(ann, pair.a.conversation_id)
        assert transcript[0].content == f"Plan my day number {i}."  # stored as sent
        exploring.choose(ann, pair.id, sides[-1] if i % 2 == 0 else "tie")
    assert set(sides) == {"a", "b"}  # the explorer's side is random, so position says nothing
    events = [e for e in store.feedback(ann) if e["choice"] != "tie"]
    examples = examples_from_feedback(events)
    assert len(examples.pairs) == 3
    for event, example in zip(events, examples.pairs):
        assert all("Answer as a list." not in m["content"] and "Be short." not in m["content"] and
                   "Tell a joke." not in m["content"] for m in example.prompt)
        # ... but training knows which instruction the chosen explorer followed, to distil it.
        side = "a" if event["instruction"]["a"] else "b"
        assert event["instruction"]["a" if side == "b" else "b"] is None
        assert example.chosen == event[side] and example.chosen_instruction == event["instruction"][side]
        assert example.chosen_instruction in {p.instruction for p in PROBES}
    record = store.probe_record(ann)
    plain = record.pop(PLAIN)  # the plain samples' record mirrors the probes'
    assert sum(w for w, _ in record.values()) == 3 + 3 * 0.5 and sum(l for _, l in record.values()) == 1.5
    assert plain == (1.5, 3 + 1.5)


def test_probe_record_counts_each_profile_and_everyone(exploring, store):
    ann, bob = exploring.create_profile("Ann")["id"], exploring.create_profile("Bob")["id"]
    won = {}
    for user, verdict in ((ann, "won"), (bob, "lost"), (bob, "both_bad")):
        pair = list(exploring.send(user, None, "Hello", SETTINGS, compare=True))[-1].comparison
        side = "a" if pair.a.settings.get("probe") else "b"
        probe = (pair.a if side == "a" else pair.b).settings["probe"]
        choice = {"won": side, "lost": "b" if side == "a" else "a", "both_bad": "both_bad"}[verdict]
        exploring.choose(user, pair.id, choice)
        won.setdefault(user, []).append((probe, verdict == "won"))
    assert store.probe_record(ann) == {won[ann][0][0]: (1.0, 0.0), PLAIN: (0.0, 1.0)}
    bobs = store.probe_record(bob)
    assert bobs.pop(PLAIN) == (1.0, 1.0)  # chosen over the probe once; "both bad" once
    assert sum(w for w, _ in bobs.values()) == 0.0 and sum(l for _, l in bobs.values()) == 2.0
    everyone = store.probe_record()
    assert sum(w + l for w, l in everyone.values()) == 6.0 and everyone[PLAIN] == (1.0, 2.0)


def test_duels_store_both_arms_train_on_the_winners_instruction_and_keep_both_records(store, tiny_loaded,
                                                                                      app_config):
    config = replace(app_config, explore=ExploreConfig(rate=1.0, probes=PROBES, pairing="duel"))
    service = ChatService(store, tiny_loaded, config, rng=random.Random(5))
    ann = service.create_profile("Ann")["id"]
    instructions = {p.name: p.instruction for p in PROBES}
    seen, wins = set(), Counter()
    for i in range(12):
        pair = list(service.send(ann, None, f"Plan my day number {i}.", SETTINGS, compare=True))[-1].comparison
        arms = tuple(side.settings.get("probe") or PLAIN for side in (pair.a, pair.b))
        assert arms[0] != arms[1] and set(arms) <= {*instructions, PLAIN}
        for side, arm in zip((pair.a, pair.b), arms):
            assert side.settings.get("probe_instruction") == instructions.get(arm)  # the plain sample has none
        seen.add(frozenset(arms))
        service.choose(ann, pair.id, "a")
        wins[arms[0]] += 1
    assert any(PLAIN not in duel for duel in seen)  # two probes faced each other
    examples = examples_from_feedback(store.feedback(ann))
    assert [p.chosen_instruction for p in examples.pairs] == [
        instructions.get(e["probe"]["a"]) for e in store.feedback(ann)]
    record = store.probe_record(ann)
    assert {name: won for name, (won, _) in record.items() if won} == dict(wins)
    assert sum(won + lost for won, lost in record.values()) == 24  # both candidates of each pair counted


def test_plain_compare_mode_without_exploration_has_no_probe(store, tiny_loaded, app_config):
    service = ChatService(store, tiny_loaded, replace(app_config, explore=ExploreConfig(rate=0.0)))
    ann = service.create_profile("Ann")["id"]
    pair = list(service.send(ann, None, "Hi", SETTINGS, compare=True))[-1].comparison
    assert "probe" not in pair.a.settings and "probe" not in pair.b.settings
    assert store.probe_record(ann) == {}
    service.choose(ann, pair.id, "b")
    assert examples_from_feedback(store.feedback(ann)).pairs[0].chosen_instruction is None


def test_a_reply_cut_at_its_budget_is_trained_without_end_of_sequence(tiny_loaded, store):
    prompt = [{"role": "user", "content": "Hi"}]
    eos = tiny_loaded.tokenizer.eos_token_id
    ended, _ = encode(tiny_loaded, prompt, "Hello there", 64, ended=True)
    cut, _ = encode(tiny_loaded, prompt, "Hello there", 64, ended=False)
    assert ended[-1] == eos and ended[:-1] == cut and cut[-1] != eos
    # Through storage: the facts of each stored candidate decide it.
    user = store.create_profile("Ann")["id"]
    conv = store.create_conversation(user, "t")["id"]
    q = store.add_message(user, conv, "user", "Hi")
    pair = store.create_comparison(user, conv, q.id, "long cut reply", "short", model_id="m", settings={},
                             candidate_settings=({"ended": False}, {"ended": True}))
    store.record_choice(user, pair.id, "a")
    old = store.add_message(user, conv, "user", "Again")
    reply = store.add_message(user, conv, "assistant", "cut", parent_id=old.id, settings={"ended": [False]})
    store.record_thumbs(user, reply.id, 1)
    examples = examples_from_feedback(store.feedback(user))
    assert [(p.chosen, p.chosen_ended, p.rejected_ended) for p in examples.pairs] == [("long cut reply", False, True)]
    assert [(u.completion, u.ended) for u in examples.unpaired] == [("cut", False)]


def test_the_command_line_sets_the_rate_and_refuses_a_bad_one():
    config = app.parse_args(["--set", "explore.rate=0.25"])
    assert config.explore.rate == 0.25 and config.explore.probes == DEFAULT_PROBES
    assert config.explore.pairing == ExploreConfig().pairing
    assert app.parse_args(["--set", "explore.pairing=single"]).explore.pairing == "single"
    assert app.parse_args(["--set", "explore.probes=list,short"]).explore.probes == DEFAULT_PROBES[2:3] + DEFAULT_PROBES[:1]
    with pytest.raises(SystemExit):
        app.parse_args(["--set", "explore.rate=2"])


@pytest.mark.parametrize("pairing", ["single", "duel"])
def test_the_candidate_labelled_with_the_probe_is_the_one_generated_with_it(store, tiny_loaded, app_config,
                                                                          monkeypatch, pairing):
    """The row of the batch that `generate` receives for the labelled candidate is the hinted prompt, the other
    row the plain one, whichever side explores (one probe: a duel is always it against the plain sample)."""
    probe = Probe("story", "Tell me a long story about a fox.")
    config = replace(app_config, explore=ExploreConfig(rate=1.0, probes=(probe,), pairing=pairing))
    service = ChatService(store, tiny_loaded, config, rng=random.Random(3))
    turns = [{"role": "user", "content": "Hi"}]
    plain = build_prompt(tiny_loaded, "", turns, 8).input_ids
    hinted = build_prompt(tiny_loaded, "", probed(turns, probe), 8).input_ids
    rows = []
    original = tiny_loaded.model.generate

    def recording_generate(**kwargs):
        mask = kwargs["attention_mask"].bool()
        rows.append([ids[m].tolist() for ids, m in zip(kwargs["input_ids"], mask)])  # left padding removed
        return original(**kwargs)

    monkeypatch.setattr(tiny_loaded.model, "generate", recording_generate)
    ann = service.create_profile("Ann")["id"]
    sides = set()
    for i in range(8):
        pair = list(service.send(ann, None, "Hi", SETTINGS, compare=True))[-1].comparison
        side = 0 if pair.a.settings.get("probe") else 1
        assert rows[i][side] == hinted and rows[i][1 - side] == plain
        explorer, other = (pair.a, pair.b) if side == 0 else (pair.b, pair.a)
        assert (explorer.settings["prompt_tokens"], other.settings["prompt_tokens"]) == (len(hinted), len(plain))
        sides.add(side)
        service.choose(ann, pair.id, "tie")
    assert sides == {0, 1}


def test_ended_flags_follow_each_text_into_the_examples():
    prompt = [{"role": "user", "content": "Hi"}]
    base = dict(profile_id="u", prompt=prompt)
    events = [
        {**base, "id": "f1", "kind": "comparison", "choice": "b", "a": "A", "b": "B", "ended": {"a": True, "b": False}},
        {**base, "id": "f2", "kind": "comparison", "choice": "both_bad", "a": "A2", "b": "B2",
         "ended": {"a": False, "b": True}},
        {**base, "id": "f3", "kind": "thumbs", "value": 1, "completion": "new", "superseded": ["old1", "old2"],
         "ended": {"completion": True, "superseded": [False, True]}},
    ]
    ex = examples_from_feedback(events)
    assert [(p.chosen, p.chosen_ended, p.rejected, p.rejected_ended) for p in ex.pairs] == [
        ("B", False, "A", True), ("new", True, "old1", False), ("new", True, "old2", True)]
    assert [(u.completion, u.ended) for u in ex.unpaired] == [("A2", False), ("B2", True), ("new", True)]


def test_a_superseded_reply_keeps_its_ended_flag_through_storage(store):
    user = store.create_profile("Ann")["id"]
    conv = store.create_conversation(user, "t")["id"]
    q = store.add_message(user, conv, "user", "Hi")
    first = store.add_message(user, conv, "assistant", "cut off", parent_id=q.id, settings={"ended": [False]})
    second = store.add_message(user, conv, "assistant", "whole", parent_id=q.id, replaces=first.id,
                               settings={"ended": [True]})
    store.record_thumbs(user, second.id, 1)
    [pair] = examples_from_feedback(store.feedback(user)).pairs
    assert (pair.chosen, pair.chosen_ended, pair.rejected, pair.rejected_ended) == ("whole", True, "cut off", False)
