"""The chat service on the tiny model and a real database: replies, retries, comparisons, bad input."""

from __future__ import annotations

import re
import threading
from dataclasses import replace

import pytest

from assistant.config import AppConfig, GenerationSettings, ModelConfig
from assistant.service import ChatService
from storage.errors import Conflict, InvalidInput, NotFound
from tests.conftest import BACKENDS

GREEDY = GenerationSettings(temperature=0, max_new_tokens=12, system_prompt="Be brief.")


@pytest.fixture(params=BACKENDS)
def service(request, store, tiny_loaded, app_config) -> ChatService:
    """The service on each backend: torch on the tiny GPT-2; llama.cpp on the tiny LLaMA."""
    if request.param == "torch":
        return ChatService(store, tiny_loaded, app_config)
    loaded, decoder = request.getfixturevalue("tiny_llama")
    return ChatService(store, loaded, replace(app_config, model=ModelConfig(model=loaded.model_id, backend="llamacpp")),
                       decoder=decoder)


@pytest.fixture
def ann(service) -> str:
    return service.create_profile("Ann")["id"]


def _finish(updates):
    updates = list(updates)
    assert updates[-1].done
    return updates


def test_send_stores_the_message_and_the_streamed_reply(service, ann, store):
    updates = _finish(service.send(ann, None, "Hello there!", GREEDY))
    last = updates[-1]
    assert len(updates) >= 3 and updates[0].texts == [""]
    transcript = service.transcript(ann, last.conversation_id)
    assert [(m.role, m.content) for m in transcript] == [("user", "Hello there!"), ("assistant", last.texts[0])]
    reply = transcript[1]
    assert reply.id == last.reply.id and reply.parent_id == transcript[0].id
    assert reply.model_id == service.model_id
    assert reply.settings["temperature"] == 0.0 and reply.settings["system_prompt"] == "Be brief."
    assert reply.settings["prompt_tokens"] > 0 and 1 <= reply.settings["new_tokens"][0] <= 12
    assert reply.adapter_versions == {}
    assert service.list_conversations(ann)[0]["title"] == "Hello there!"


def test_stop_ends_the_reply_being_written_in_that_conversation_only(service, ann, store, monkeypatch):
    """Stop while `generate` is held at its first token (so nothing depends on the model's speed): the stream
    finishes normally, the reply so far is stored marked stopped, and Stop reaches only this profile's conversation
    while a reply is written there."""
    held, release = _hold_at_the_first_token(service, monkeypatch)
    conversation = service.new_conversation(ann, "t")["id"]
    settings = GenerationSettings(temperature=0, max_new_tokens=64)
    updates = service.send(ann, conversation, "Tell me a long story.", settings)
    streamed: list = []
    consumer = threading.Thread(target=lambda: streamed.extend(updates))  # as Gradio's worker thread does
    consumer.start()
    assert held.wait(60)
    bob = service.create_profile("Bob")["id"]
    with pytest.raises(NotFound):
        service.stop(bob, conversation)  # not Bob's conversation
    assert service.stop(ann, conversation) and not service.stop(ann, conversation)  # stopping twice: once
    release.set()
    consumer.join(60)
    last = _finish(streamed)[-1]
    reply = store.transcript(ann, conversation)[-1]
    assert reply.id == last.reply.id and reply.settings["stopped"] is True and reply.settings["interrupted"] is False
    assert reply.settings["new_tokens"][0] <= 2 and reply.settings["ended"] == [False]  # the next token at most
    assert not service.stop(ann, conversation)  # nothing is being written any more
    done = _finish(service.send(ann, conversation, "Again?", settings))[-1]  # a new reply is not stopped
    assert done.reply.settings["stopped"] is False


def _hold_at_the_first_token(service, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """(held, release): the decoder, torch's or llama.cpp's, stops at its first token until `release` is set."""
    from assistant import generation

    held, release = threading.Event(), threading.Event()

    def hold():
        if not held.is_set():
            held.set()
            release.wait(60)

    if service.decoder is None:
        real_put = generation._QueueStreamer.put

        def put(self, value):
            if self.prompt_seen:  # the first token, after the prompt
                hold()
            real_put(self, value)

        monkeypatch.setattr(generation._QueueStreamer, "put", put)
    else:
        real_generate = service.decoder.generate

        def generate(input_ids, settings, max_new_tokens, adapters, on_token, *args, **kwargs):
            return real_generate(input_ids, settings, max_new_tokens, adapters,
                                 lambda token: (hold(), on_token(token)), *args, **kwargs)

        monkeypatch.setattr(service.decoder, "generate", generate)
    return held, release


def test_retry_keeps_the_old_reply_as_superseded(service, ann):
    conv = _finish(service.send(ann, None, "Hi", GREEDY))[-1].conversation_id
    old = service.transcript(ann, conv)[-1]
    new = _finish(service.retry(ann, conv, GenerationSettings(temperature=1.0, max_new_tokens=12)))[-1].reply
    transcript = service.transcript(ann, conv)
    assert [m.id for m in transcript] == [transcript[0].id, new.id]
    assert service.store.get_message(ann, old.id).status == "superseded"
    assert new.parent_id == old.parent_id


def test_edit_answers_the_new_text_and_keeps_the_old_branch_for_learning(service, ann, store):
    conv = _finish(service.send(ann, None, "Hi", GREEDY))[-1].conversation_id
    old_user, old_reply = service.transcript(ann, conv)
    service.vote(ann, old_reply.id, -1)  # a 👎 on the reply to the first wording
    new = _finish(service.edit(ann, conv, "Hello, how are you?", GREEDY))[-1].reply
    transcript = service.transcript(ann, conv)
    assert [(m.role, m.content) for m in transcript] == [("user", "Hello, how are you?"), ("assistant", new.content)]
    assert {store.get_message(ann, m.id).status for m in (old_user, old_reply)} == {"superseded"}
    event = store.feedback(ann)[0]  # the 👎 still has the prompt it was given on
    assert event["prompt"][-1] == {"role": "user", "content": "Hi"}
    _finish(service.send(ann, conv, "And then?", GREEDY))
    with pytest.raises(Conflict, match="Only your last message"):  # storage guards the branch point
        store.add_message(ann, conv, "user", "Hey", replaces=transcript[0].id)
    with pytest.raises(InvalidInput, match="empty"):
        list(service.edit(ann, conv, "  ", GREEDY))
    assert [m.content for m in service.transcript(ann, conv) if m.role == "user"] == ["Hello, how are you?",
                                                                                      "And then?"]


def test_continue_writes_on_from_a_reply_cut_at_the_length_limit(service, ann, store):
    """The tiny random model never ends by itself, so every reply here is cut at its budget."""
    conv = _finish(service.send(ann, None, "Tell me a story.", GREEDY))[-1].conversation_id
    cut = service.transcript(ann, conv)[-1]
    assert cut.settings["ended"] == [False]
    updates = _finish(service.continue_reply(ann, conv, GREEDY))
    assert all(u.texts[0].startswith(cut.content) for u in updates)  # the shown text grows from the cut one
    longer = updates[-1].reply
    assert longer.content.startswith(cut.content) and len(longer.content) > len(cut.content)
    assert [m.id for m in service.transcript(ann, conv)][-1] == longer.id
    assert store.get_message(ann, cut.id).status == "superseded" and longer.parent_id == cut.parent_id
    assert longer.settings["continues"] == cut.id and service.replies_to_last(ann, conv) == ([longer], 0)
    service.vote(ann, longer.id, 1)  # the cut one is neither an alternative nor a rejected reply
    assert store.feedback(ann)[0]["superseded"] == []
    store.add_message(ann, conv, "assistant", "A complete reply.", parent_id=cut.parent_id, replaces=longer.id,
                      settings={"ended": [True]})
    with pytest.raises(InvalidInput, match="nothing to continue"):
        list(service.continue_reply(ann, conv, GREEDY))


def test_a_retry_s_earlier_replies_can_be_browsed_continued_and_rated(service, ann):
    conv = _finish(service.send(ann, None, "Hi", GREEDY))[-1].conversation_id
    first = service.transcript(ann, conv)[-1]
    second = _finish(service.retry(ann, conv, GenerationSettings(temperature=1.0, max_new_tokens=12)))[-1].reply
    replies, shown = service.replies_to_last(ann, conv)
    assert [m.id for m in replies] == [first.id, second.id] and shown == 1
    with pytest.raises(InvalidInput, match="no other reply"):
        service.show_reply(ann, conv, 1)
    assert service.show_reply(ann, conv, -1).id == first.id
    assert service.transcript(ann, conv)[-1].id == first.id and service.replies_to_last(ann, conv)[1] == 0
    service.vote_at(ann, conv, 1, 1, shown=first.content)  # the 👍 lands on the reply shown
    assert service.store.get_message(ann, first.id).vote == 1
    assert service.store.get_message(ann, second.id).status == "superseded"


def test_compare_blocks_sending_until_a_choice(service, ann):
    updates = _finish(service.send(ann, None, "Hi", GREEDY, compare=True))
    pair = updates[-1].comparison
    assert len(updates[-1].texts) == 2 and pair.a.status == "candidate"
    assert pair.a.settings["temperature"] == GREEDY.temperature  # recorded as asked; sampled at ≥ 0.7
    conv = updates[-1].conversation_id
    with pytest.raises(Conflict, match="Choose between A and B"):
        service.send(ann, conv, "next", GREEDY)
    assert [m.role for m in service.transcript(ann, conv)] == ["user"]
    service.choose_pending(ann, conv, "b")
    transcript = service.transcript(ann, conv)
    assert transcript[-1].id == pair.b.id
    _finish(service.send(ann, conv, "next", GREEDY))
    assert len(service.transcript(ann, conv)) == 4


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("x" * 200_000, "200,000 characters; the limit is 16,000"),
    ("ring \x07 bell", "control character (U+0007) at position 6"),
    ("nul \x00", "U+0000"),
    (None, "must be text"),
])
def test_bad_messages_are_refused_and_nothing_is_stored(service, ann, store, text, message):
    conv = _finish(service.send(ann, None, "first", GREEDY))[-1].conversation_id
    before = store.counts()
    with pytest.raises(InvalidInput, match=re.escape(message)):
        service.send(ann, conv, text, GREEDY)
    assert store.counts() == before


def test_emoji_and_newlines_round_trip(service, ann):
    text = "Café ☕ and 🎉🎉\nsecond line\ttab"
    conv = _finish(service.send(ann, None, text, GREEDY))[-1].conversation_id
    assert service.transcript(ann, conv)[0].content == text


def test_unknown_ids_are_refused_with_a_clear_error(service, ann):
    with pytest.raises(NotFound, match="profile does not exist"):
        service.send("nope", None, "hi", GREEDY)
    with pytest.raises(NotFound, match="conversation does not exist"):
        service.send(ann, "0" * 32, "hi", GREEDY)
    with pytest.raises(NotFound):
        service.vote(ann, "0" * 32, 1)
    with pytest.raises(NotFound, match="no comparison waiting"):
        conv = service.new_conversation(ann)["id"]
        service.choose_pending(ann, conv, "a")


def test_vote_before_any_reply_exists(service, ann, store):
    conv = service.new_conversation(ann)["id"]
    with pytest.raises(NotFound, match="still being written or is no longer in this conversation"):
        service.vote_at(ann, conv, 0, 1)
    store.add_message(ann, conv, "user", "question without answer yet")
    with pytest.raises(InvalidInput, match="Only assistant replies"):
        service.vote_at(ann, conv, 0, 1)
    with pytest.raises(InvalidInput, match="nothing to retry|no user message"):
        service.retry(ann, service.new_conversation(ann)["id"], GREEDY)
    assert store.counts()["feedback"] == 0


def test_vote_at_checks_what_the_person_saw(service, ann):
    conv = _finish(service.send(ann, None, "Hi", GREEDY))[-1].conversation_id
    with pytest.raises(Conflict, match="changed"):
        service.vote_at(ann, conv, 1, 1, shown="something else entirely")
    feedback = service.vote_at(ann, conv, 1, -1, shown=service.transcript(ann, conv)[1].content)
    assert feedback["value"] == -1
    service.comment(ann, feedback["message_id"], "off topic")
    assert service.transcript(ann, conv)[1].comment == "off topic"


def test_history_cut_is_reported_and_recorded(service, ann):
    long_text = " ".join(f"w{i}" for i in range(400))
    updates = _finish(service.send(ann, None, long_text, GenerationSettings(temperature=0, max_new_tokens=8)))
    assert "context window" in updates[-1].notice
    reply = updates[-1].reply
    assert reply.settings["cut_tokens"] > 0
    assert service.transcript(ann, updates[-1].conversation_id)[0].content == long_text  # stored whole


def test_interrupted_stream_keeps_the_partial_reply(service, ann):
    updates = service.send(ann, None, "Hi", GenerationSettings(temperature=0, max_new_tokens=100))
    for _, update in zip(range(6), updates):
        pass
    updates.close()  # the browser went away mid-reply
    conv = update.conversation_id
    transcript = service.transcript(ann, conv)
    assert transcript[-1].role == "assistant" and transcript[-1].settings["interrupted"] is True
    # Stored after generation stopped: with the tokens it had, and the text as shown (stripped).
    assert 1 <= transcript[-1].settings["new_tokens"][0] < 100
    assert transcript[-1].content == transcript[-1].content.strip()


def test_two_profiles_generating_at_once_get_what_each_gets_alone(service):
    users = [service.create_profile(n)["id"] for n in ("Ann", "Bob")]
    prompts = ["Tell me a joke.", "What is the capital of France?"]
    settings = GenerationSettings(temperature=0, max_new_tokens=40)
    alone = [_finish(service.send(u, None, p, settings))[-1].texts[0] for u, p in zip(users, prompts)]
    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(2)

    def run(i):
        barrier.wait()
        results[i] = [u.texts[0] for u in service.send(users[i], None, prompts[i], settings)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i][-1] for i in range(2)] == alone
    # No step of one stream ever showed text that is not a prefix of its own final reply.
    for i in range(2):
        assert all(alone[i].startswith(step.strip()) for step in results[i])


def test_profile_and_conversation_lifecycle(service, ann, store):
    conv = _finish(service.send(ann, None, "Hi", GREEDY))[-1].conversation_id
    service.rename_profile(ann, "Annie")
    assert [p["name"] for p in service.list_profiles()] == ["Annie"]
    service.delete_conversation(ann, conv)
    assert service.list_conversations(ann) == [] and store.counts()["messages"] == 0
    service.delete_profile(ann)
    assert service.list_profiles() == []


def test_config_validation():
    with pytest.raises(InvalidInput, match="Temperature"):
        GenerationSettings(temperature=3)
    with pytest.raises(InvalidInput, match="Top-p"):
        GenerationSettings(top_p=0)
    with pytest.raises(InvalidInput, match="Max new tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(InvalidInput, match="Port"):
        AppConfig(port=70000)
    with pytest.raises(InvalidInput, match="queue_size"):
        AppConfig(queue_size=0)


def test_preferences_are_kept_per_profile_and_a_stale_one_falls_back_to_the_defaults(service, ann, store):
    assert service.preferences(ann) == (GenerationSettings(), False)
    service.save_preferences(ann, GREEDY, True)
    assert service.preferences(ann) == (GREEDY, True)
    bob = service.create_profile("Bob")["id"]
    assert service.preferences(bob) == (GenerationSettings(), False)
    store.set_preferences(ann, {"temperature": 9.0, "compare": True, "unknown": 1})  # e.g. kept under other limits
    assert service.preferences(ann) == (GenerationSettings(), True)


@pytest.mark.parametrize("settings, message", [
    (dict(max_new_tokens=2.7), "whole number"),
    (dict(max_new_tokens=float("nan")), "must be a number"),
    (dict(temperature=float("inf")), "must be a number"),
    (dict(top_p="0.9"), "must be a number"),
    (dict(system_prompt="Be \ud800 brief."), "lone surrogate"),
])
def test_bad_settings_are_refused_with_what_to_change(settings, message):
    with pytest.raises(InvalidInput, match=message):
        GenerationSettings(**settings)


def test_text_that_cannot_be_stored_is_refused_before_anything_is_stored(service, ann, store, tiny_loaded):
    with pytest.raises(InvalidInput, match=r"lone surrogate, U\+D83D\) at position 4"):
        list(service.send(ann, None, "Hi \ud83d!", GREEDY))
    filling = GenerationSettings(system_prompt="word " * (tiny_loaded.context_window * 2), max_new_tokens=12)
    with pytest.raises(InvalidInput, match="system prompt leaves no room"):
        list(service.send(ann, None, "Hello?", filling))  # the prompt cannot be built: no message row without reply
    assert store.counts()["messages"] == 0 and store.counts()["conversations"] == 0
