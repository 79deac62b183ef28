"""A person's own words as personal probes: comments explored beside the built-in probes, a retry that follows a
comment, single replies that explore, and what training learns from them."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from adapters.data import examples_from_feedback
from assistant.config import PLAIN, ExploreConfig, GenerationSettings, Probe
from assistant.explore import choose_arms, choose_single_arm
from assistant.service import ChatService
from assistant.words import is_own, own_probe
from storage.errors import InvalidInput

SETTINGS = GenerationSettings(temperature=1.0, max_new_tokens=8)
PROBES = (Probe("list", "Answer as a list."), Probe("short", "Be short."), Probe("joke", "Tell a joke."))
WORDS = "Too long, get to the point."


def service_with(store, tiny_loaded, app_config, seed: int = 0, **explore) -> ChatService:
    config = replace(app_config, explore=ExploreConfig(probes=PROBES, **explore))
    return ChatService(store, tiny_loaded, config, rng=random.Random(seed))


def reply_to(service: ChatService, profile: str, text: str):
    return list(service.send(profile, None, text, SETTINGS))[-1].reply


def test_a_comment_is_one_probe_whatever_its_spacing_and_its_wording_is_chosen():
    probe = own_probe(WORDS, "down", "as_written")
    assert is_own(probe.name) and probe.instruction == WORDS
    assert own_probe("  too LONG,   get to the point. ", "down", "as_written").name == probe.name
    assert own_probe(WORDS, "up", "as_written") == probe  # one arm for the words, whichever vote they came with
    quoted = own_probe(WORDS, "down", "quoted").instruction
    assert WORDS in quoted and quoted != WORDS
    assert not any(is_own(p.name) for p in PROBES) and not is_own(None)
    for bad in (dict(text=" ", source="down", wording="as_written"), dict(text="x", source="side", wording="quoted"),
                dict(text="x", source="down", wording="shouted")):
        with pytest.raises(ValueError):
            own_probe(**bad)


def test_a_new_personal_probe_is_tried_early_and_its_record_takes_over():
    config = ExploreConfig(probes=PROBES, pairing="duel")
    mine = own_probe(WORDS, "down", "as_written")
    rng = random.Random(0)
    fresh = Counter(mine in choose_arms(config, {}, {}, rng, own=(mine,)) for _ in range(2000))
    # Five arms (three probes, the words, the plain sample): a duel holds a given arm 2/5 of the time by chance.
    assert fresh[True] / 2000 > 0.5
    lost = {mine.name: (0.0, 8.0)}
    assert sum(mine in choose_arms(config, lost, lost, rng, own=(mine,)) for _ in range(2000)) / 2000 < 0.15
    never = ExploreConfig(probes=PROBES, single_rate=0.0)
    assert all(choose_single_arm(never, {}, {}, rng, own=(mine,)) == (False, None) for _ in range(100))
    always = replace(never, single_rate=1.0)
    arms = Counter(choose_single_arm(always, {}, {}, rng, own=(mine,)) for _ in range(500))
    assert all(explored for explored, _ in arms) and (True, None) in arms and (True, mine) in arms


def test_own_words_are_the_newest_distinct_comments_with_their_source(store, tiny_loaded, app_config):
    service = service_with(store, tiny_loaded, app_config, rate=0.0)
    ann, bob = service.create_profile("Ann")["id"], service.create_profile("Bob")["id"]
    for text, value in (("Too long.", -1), ("too   LONG.", -1), ("Loved the example.", 1), ("Meh.", -1)):
        service.vote(ann, reply_to(service, ann, "Plan my day.").id, value, text)
    pair = list(service.send(ann, None, "Hi", SETTINGS, compare=True))[-1].comparison
    service.choose(ann, pair.id, "a", "B rambled.")
    service.vote(bob, reply_to(service, bob, "Hi").id, -1, "Bob's words.")
    undecided = list(service.send(ann, None, "Hello", SETTINGS, compare=True))[-1].comparison
    with pytest.raises(InvalidInput, match="Choose between A and B"):
        service.comment_choice(ann, undecided.id, "Too early.")
    service.choose(ann, undecided.id, "both_bad")
    service.comment_choice(ann, undecided.id, "Both too stiff.")  # words after the choice (the page's box)
    assert store.own_words(ann)[0] == ("Both too stiff.", "down")
    service.comment_choice(ann, undecided.id, "")
    assert store.own_words(ann) == [("B rambled.", "down"), ("Meh.", "down"), ("Loved the example.", "up"),
                                    ("too   LONG.", "down")]
    assert store.own_words(ann, limit=2) == [("B rambled.", "down"), ("Meh.", "down")]
    assert service._own_probes(bob) == (own_probe("Bob's words.", "down", "as_written"),)
    off = ChatService(store, tiny_loaded, replace(app_config, explore=ExploreConfig(own_words=0)))
    assert off._own_probes(ann) == ()


def test_comments_are_explored_in_compare_mode_for_their_author_only(store, tiny_loaded, app_config):
    service = service_with(store, tiny_loaded, app_config, seed=3, rate=1.0, pairing="duel")
    ann, bob = service.create_profile("Ann")["id"], service.create_profile("Bob")["id"]
    service.vote(ann, reply_to(service, ann, "Plan my day.").id, -1, WORDS)
    service.vote(bob, reply_to(service, bob, "Plan my day.").id, -1, "Bob's own words.")
    mine, his = own_probe(WORDS, "down", "as_written"), own_probe("Bob's own words.", "down", "as_written")
    asked = 0
    for i in range(8):
        for profile in (ann, bob):
            pair = list(service.send(profile, None, f"Plan my week {i}.", SETTINGS, compare=True))[-1].comparison
            sides = {"a": pair.a, "b": pair.b}
            names = {side: m.settings.get("probe") for side, m in sides.items()}
            if profile == bob:
                assert mine.name not in names.values()  # Ann's words never reach anyone else's replies
                service.choose(bob, pair.id, "a")
                continue
            assert his.name not in names.values()
            side = next((s for s, name in names.items() if name == mine.name), None)
            if side:
                asked += 1
                assert sides[side].settings["probe_instruction"] == WORDS
                assert service.transcript(ann, pair.a.conversation_id)[0].content == f"Plan my week {i}."
            service.choose(ann, pair.id, side or "a")
    assert asked >= 4
    taught = [p for p in examples_from_feedback(store.feedback(ann)).pairs if p.chosen_instruction == WORDS]
    assert len(taught) == asked and all(WORDS not in m["content"] for p in taught for m in p.prompt)
    assert store.probe_record(ann)[mine.name] == (asked, 0.0)
    # Everyone's adapter learns Ann's choices but never her words: those replies are distilled as sent.
    everyone = examples_from_feedback(store.feedback(ann), private=False).pairs
    assert len(everyone) == 8 and not any(p.chosen_instruction == WORDS for p in everyone)
    assert {p.chosen_instruction for p in everyone} - {None} <= {p.instruction for p in PROBES}


def test_a_retry_follows_the_comment_and_its_like_teaches_the_words(store, tiny_loaded, app_config):
    service = service_with(store, tiny_loaded, app_config, rate=0.0)
    ann = service.create_profile("Ann")["id"]
    first = reply_to(service, ann, "Plan my day.")
    conversation = first.conversation_id
    service.vote(ann, first.id, -1)
    with pytest.raises(InvalidInput, match="no comment"):
        list(service.retry(ann, conversation, SETTINGS, follow_comment=True))
    assert [m.id for m in service.transcript(ann, conversation)][-1] == first.id  # nothing written
    service.comment(ann, first.id, WORDS)
    again = list(service.retry(ann, conversation, SETTINGS, follow_comment=True))[-1].reply
    assert again.settings["probe_instruction"] == WORDS and again.settings["explored"] is True
    assert [m.content for m in service.transcript(ann, conversation)][0] == "Plan my day."
    service.vote(ann, again.id, 1)
    pairs = examples_from_feedback(store.feedback(ann)).pairs
    assert [(p.chosen, p.rejected, p.chosen_instruction) for p in pairs] == [(again.content, first.content, WORDS)]
    assert store.probe_record(ann) == {own_probe(WORDS, "down", "as_written").name: (1.0, 0.0)}


def test_single_replies_explore_at_their_rate_and_their_thumbs_are_the_record(store, tiny_loaded, app_config):
    service = service_with(store, tiny_loaded, app_config, seed=1, single_rate=1.0)
    ann = service.create_profile("Ann")["id"]
    served = Counter()
    for i in range(12):
        reply = reply_to(service, ann, f"Plan my day number {i}.")
        assert reply.settings["explored"] is True
        arm = reply.settings.get("probe") or PLAIN
        served[arm] += 1
        service.vote(ann, reply.id, 1 if arm == "list" else -1)
    record = store.probe_record(ann)
    assert {name: won + lost for name, (won, lost) in record.items()} == dict(served)
    assert record.get("list", (0.0, 0.0))[1] == 0.0 and all(won == 0 for n, (won, _) in record.items() if n != "list")
    plain = service_with(store, tiny_loaded, app_config, single_rate=0.0)
    assert "explored" not in reply_to(plain, ann, "Hello").settings


def test_a_continued_reply_writes_on_under_the_words_and_words_that_crowd_out_the_message_are_refused(
        store, tiny_loaded, app_config):
    service = service_with(store, tiny_loaded, app_config, rate=0.0)
    ann = service.create_profile("Ann")["id"]
    first = reply_to(service, ann, "Plan my day.")
    service.vote(ann, first.id, -1)
    again = list(service.retry_with_comment(ann, first.conversation_id, first.id, WORDS, SETTINGS))[-1].reply
    assert again.settings["ended"] == [False]  # the tiny model never ends: cut at its budget
    longer = list(service.continue_reply(ann, first.conversation_id, SETTINGS))[-1].reply
    assert longer.content.startswith(again.content) and len(longer.content) > len(again.content)
    assert longer.settings["probe_instruction"] == WORDS and longer.settings["explored"] is True
    crowded = reply_to(service, ann, "word " * 200)  # nearly fills the tiny model's context on its own
    service.vote(ann, crowded.id, -1)
    with pytest.raises(InvalidInput, match="does not fit"):
        list(service.retry_with_comment(ann, crowded.conversation_id, None, "x " * 140, SETTINGS))
