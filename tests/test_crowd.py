"""Probes from the crowd: words several profiles wrote alike become an arm of everyone's bandit, a probe nobody
chooses retires, and one person's words never reach others on their own."""

from __future__ import annotations

import logging
import random
from dataclasses import replace

import pytest

from adapters.data import examples_from_feedback
from assistant.config import ExploreConfig, GenerationSettings, Probe
from assistant.crowd import crowd_groups, crowd_name, crowd_probes, is_crowd, retired, shareable
from assistant.service import ChatService
from storage.errors import InvalidInput

SETTINGS = GenerationSettings(temperature=1.0, max_new_tokens=8)
PROBES = (Probe("list", "Answer as a list."),)
CONFIG = ExploreConfig(probes=PROBES)


def test_alike_words_of_enough_profiles_are_one_probe_and_unlike_or_lone_words_are_none():
    words = [("ann", "Too long."), ("bob", "Way too long!"), ("cy", "far too long"), ("ann", "too LONG."),
             ("bob", "No emoji, please."), ("cy", "More emoji!"), ("dee", "no emoji")]
    groups = crowd_groups(words, CONFIG)
    assert groups == ((3, Probe(crowd_name("Too long."), "Too long.")),)  # the most-said words speak for the group
    assert is_crowd(groups[0][1].name) and not is_crowd("own-1") and not is_crowd(None)
    emoji = Probe(crowd_name("No emoji, please."), "No emoji, please.")  # of those words' wordings, the newest
    assert crowd_groups(words, replace(CONFIG, crowd_profiles=2))[1] == (2, emoji)  # "More emoji!" is not alike
    assert crowd_groups([("ann", "Too long.")] * 5 + [("bob", "Too long.")], CONFIG) == ()  # two people, not three
    assert crowd_groups(words, replace(CONFIG, crowd_profiles=0)) == ()
    assert crowd_groups(words, replace(CONFIG, crowd_similarity=1.0)) == ()  # "far too long" has a word more
    # Words with a person's particulars never speak for a group, however many wrote alike.
    assert not any(shareable(t) for t in ("Call me at 555 0100", "see https://example.com", "me@example.com",
                                          "x " * 100, "  "))
    private = [(p, "I am 34, too long.") for p in ("ann", "bob", "cy")]
    assert crowd_groups(private, CONFIG) == ()


@pytest.mark.parametrize("bad", [dict(crowd_profiles=1), dict(crowd_profiles=-1), dict(crowd_similarity=0.0),
                                 dict(crowd_similarity=1.5), dict(crowd_arms=-1), dict(crowd_retire_after=0),
                                 dict(crowd_retire_below=2.0)])
def test_crowd_settings_out_of_range_are_refused(bad):
    with pytest.raises(InvalidInput, match="crowd"):
        ExploreConfig(**bad)


def test_a_crowd_probe_nobody_chooses_retires_and_the_most_said_are_kept():
    config = replace(CONFIG, crowd_arms=1, crowd_retire_after=16, crowd_retire_below=0.25)
    words = [(p, "Too long.") for p in "abcd"] + [(p, "Use simpler words.") for p in "abc"]
    long, simple = (probe for _, probe in crowd_groups(words, config))
    assert crowd_probes(crowd_groups(words, config), config) == (long,)  # the one four people said
    assert not retired(long.name, {long.name: (1.0, 10.0)}, config)  # 11 outcomes: too early to tell
    assert retired(long.name, {long.name: (3.0, 13.0)}, config) and not retired(long.name, {long.name: (4.0, 12.0)},
                                                                                config)
    gone = {long.name: (2.0, 18.0)}
    assert crowd_probes(crowd_groups(words, config), config, gone) == (simple,)


def _service(store, tiny_loaded, app_config, seed=0):
    return ChatService(store, tiny_loaded, replace(app_config, explore=replace(CONFIG, rate=1.0, pairing="duel")),
                       rng=random.Random(seed))


def test_words_three_profiles_wrote_alike_are_explored_for_a_fourth_and_go_with_an_erased_one(
        store, tiny_loaded, app_config, caplog):
    service = _service(store, tiny_loaded, app_config, seed=2)
    ann, bob, cy, dee = (service.create_profile(n)["id"] for n in ("Ann", "Bob", "Cy", "Dee"))
    for profile, words in ((bob, "Way too long!"), (ann, "Too long."), (bob, "too long")):
        reply = list(service.send(profile, None, "Plan my day.", SETTINGS))[-1].reply
        service.vote(profile, reply.id, -1, words)
    assert service.crowd_probes() == ()  # two people are not a crowd
    reply = list(service.send(cy, None, "Plan my day.", SETTINGS))[-1].reply
    with caplog.at_level(logging.INFO, logger="assistant.service.exploring"):
        service.vote(cy, reply.id, -1, "far too long")
        crowd = Probe(crowd_name("Too long."), "too long")  # Ann's and Bob's words, as Bob wrote them last
        assert service.crowd_probes() == (crowd,) and crowd_name("too long") == crowd.name
    assert "from 3 profiles: 'too long'" in caplog.text  # the operator sees what everyone's replies may follow
    asked = []
    for i in range(6):
        pair = list(service.send(dee, None, f"Plan my week {i}.", SETTINGS, compare=True))[-1].comparison
        side = next((s for s, m in (("a", pair.a), ("b", pair.b)) if m.settings.get("probe") == crowd.name), None)
        if side:
            asked.append(side)
            assert (pair.a if side == "a" else pair.b).settings["probe_instruction"] == "too long"
        service.choose(dee, pair.id, side or "tie")
    assert len(asked) >= 2
    assert store.probe_record(dee)[crowd.name] == (len(asked), 0.0)
    assert any(r["probe"] == crowd.name and not r["own"] for r in service._record(dee))  # the panel lists it
    # A crowd's words, unlike a person's own, teach everyone's adapter under the instruction they were written with.
    shared = examples_from_feedback(store.feedback(dee), private=False).pairs
    assert sum(p.chosen_instruction == "too long" for p in shared) == len(asked)
    service.delete_profile(cy)
    assert service.crowd_probes() == ()  # Cy's words left with Cy
