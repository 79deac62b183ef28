"""A profile's note ("How should Attune answer you?"): kept, added hidden to each message, taught to the adapters,
measured after each personal update, and no longer sent once learned."""

from __future__ import annotations

import copy
import random
from dataclasses import replace

import pytest

from adapters.blend import AdapterServer
from adapters.data import examples_from_feedback
from adapters.lora import add_lora
from adapters.note import KEY, LEARNED, learned_from, learned_share, note_gaps, note_key, still_sent
from adapters.registry import AdapterRegistry, personal_adapter
from adapters.worker import ADAPTERS_DIR, Worker
from assistant.config import (BlendConfig, ExploreConfig, GenerationSettings, LearningConfig, LoraSettings,
                              ModelConfig, Probe, TrainConfig)
from assistant.model import load_model
from assistant.service import ChatService
from storage.errors import InvalidInput
from storage.profiles import MAX_NOTE_CHARS

NOTE = "Keep it short and give me numbers."
GREEDY = GenerationSettings(temperature=0, max_new_tokens=8)
LEARNING = LearningConfig(personal_every=4, min_profiles=5, holdout_every=10**9,
                          train=TrainConfig(steps=2, learning_rate=1e-3))


def test_a_note_is_kept_tidy_and_bad_ones_are_refused_without_loss(store):
    ann = store.create_profile("Ann")["id"]
    assert store.note(ann) == ""
    assert store.set_note(ann, f"  {NOTE}\n ") == NOTE and store.note(ann) == NOTE
    for bad in (None, 3, "x" * (MAX_NOTE_CHARS + 1)):
        with pytest.raises(InvalidInput):
            store.set_note(ann, bad)
    assert store.note(ann) == NOTE  # a refused note leaves the kept one alone
    assert store.set_note(ann, "") == "" and store.note(ann) == ""


def test_the_note_is_sent_until_the_current_version_has_learned_this_note():
    assert not still_sent("", {}, 0.9)
    assert still_sent(NOTE, {}, 0.9) and still_sent(NOTE, {KEY: note_key(NOTE), LEARNED: 0.89}, 0.9)
    assert not still_sent(NOTE, {KEY: note_key(NOTE), LEARNED: 0.9}, 0.9)
    assert still_sent("Be brief.", {KEY: note_key(NOTE), LEARNED: 1.0}, 0.9)  # another note is learned afresh
    assert still_sent(NOTE, {KEY: note_key(NOTE), LEARNED: 1.0}, 0.9, alpha=0.8)  # served at 0.8 of its weight
    assert note_key(f" {NOTE} ") == note_key(NOTE)


def test_replies_follow_the_note_hidden_and_training_learns_it(store, tiny_loaded, app_config):
    service = ChatService(store, tiny_loaded, replace(app_config, explore=ExploreConfig(
        probes=(Probe("list", "Answer as a list."),), rate=1.0, pairing="single")), rng=random.Random(0))
    ann, bob = service.create_profile("Ann")["id"], service.create_profile("Bob")["id"]
    service.set_note(ann, NOTE)
    mine = list(service.send(ann, None, "Plan my day.", GREEDY))[-1].reply
    asked = list(service.send(bob, None, f"Plan my day.\n\n{NOTE}", GREEDY))[-1].reply
    plain = list(service.send(bob, None, "Plan my day.", GREEDY))[-1].reply
    assert mine.content == asked.content != plain.content  # written as if the note had been typed ...
    assert mine.settings["note"] == NOTE and "note" not in plain.settings
    assert service.transcript(ann, mine.conversation_id)[0].content == "Plan my day."  # ... but stored as sent
    pair = list(service.send(ann, None, "Plan my week.", GREEDY, compare=True))[-1].comparison
    service.choose(ann, pair.id, "a" if pair.a.settings.get("probe") else "b")
    service.vote(ann, mine.id, -1)
    again = list(service.retry(ann, mine.conversation_id, GREEDY))[-1].reply
    service.vote(ann, again.id, 1)
    pairs = examples_from_feedback(store.feedback(ann)).pairs
    # The chosen replies were written under the note (then the probe): distillation teaches both, unasked.
    assert sorted(p.chosen_instruction for p in pairs) == [NOTE, f"{NOTE}\n\nAnswer as a list."]
    assert all(NOTE not in m["content"] for p in pairs for m in p.prompt)


def test_an_adapter_that_changed_nothing_needs_the_note_as_much_as_the_model_below(tiny_loaded):
    model = add_lora(copy.deepcopy(tiny_loaded.model), LoraSettings())  # B = 0: the same as the model below
    gap, below = note_gaps(model, tiny_loaded, ["Plan my day.", "Tell me about cats."], NOTE, TrainConfig(),
                           max_new_tokens=6)
    assert gap != 0 and gap == pytest.approx(below, abs=1e-5)
    assert (learned_from(2.0, 4.0), learned_from(0.0, 4.0), learned_from(5.0, 4.0), learned_from(1.0, 0.0)) == (
        0.5, 1.0, 0.0, 1.0)  # half the note's pull left; none; more than below; a note that moves nothing
    assert learned_share(model, tiny_loaded, [], NOTE, TrainConfig()) is None


def test_each_personal_update_measures_the_note_and_a_learned_one_stops_being_sent(store, data_home, tiny_loaded,
                                                                                   tiny_model_dir, app_config):
    registry = AdapterRegistry(data_home / ADAPTERS_DIR, store)
    service = ChatService(store, tiny_loaded, app_config, learning=LEARNING,
                          adapters=AdapterServer(tiny_loaded, registry, store, BlendConfig()))
    worker = Worker(load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent), store, registry,
                    LEARNING)
    ann = service.create_profile("Ann")["id"]
    service.set_note(ann, NOTE)
    for i in range(4):
        reply = list(service.send(ann, None, f"Plan day {i}.", GREEDY))[-1].reply
        assert reply.settings["note"] == NOTE
        service.vote(ann, reply.id, 1 if i % 2 else -1)
    while worker.run_once():
        pass
    metrics = registry.current(personal_adapter(ann)).manifest["metrics"]
    assert metrics[KEY] == note_key(NOTE) and 0.0 <= metrics[LEARNED] <= 1.0
    status = service.learning_status(ann)["note"]
    alpha = service.adapters.blend_for(ann).alpha
    assert status == {"text": NOTE, "sent": metrics[LEARNED] * alpha < 0.9, "learned": metrics[LEARNED]}
    # A service whose bar this version clears sends the note no more (the tiny model's replies are greedy and its
    # weights seeded: the share is the same every run, and above 0, else no bar could be cleared and missed).
    assert metrics[LEARNED] > 0
    satisfied = ChatService(store, tiny_loaded, app_config, adapters=service.adapters,
                            learning=replace(LEARNING, note_learned_at=metrics[LEARNED] * 0.99))
    satisfied.set_alpha(ann, 1.0)  # measured at full weight: served at full weight
    assert satisfied.learning_status(ann)["note"]["sent"] is False
    assert "note" not in list(satisfied.send(ann, None, "Plan day 9.", GREEDY))[-1].reply.settings
    satisfied.set_alpha(ann, 0.0)  # "Everyone": the version that learned it does not serve, so the note rides again
    assert satisfied.learning_status(ann)["note"]["sent"] is True
    satisfied.set_alpha(ann, 1.0)
    satisfied.set_note(ann, "Answer in French.")  # a new note is sent again until it, too, is learned
    assert list(satisfied.send(ann, None, "Plan day 10.", GREEDY))[-1].reply.settings["note"] == "Answer in French."
