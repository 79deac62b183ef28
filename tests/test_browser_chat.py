"""The chat's own controls in headless Chromium: Continue a reply cut at the length limit, browse and rate a Retry's
replies, Edit the last message, and delete only after a confirmation. The tiny random model never ends a reply by
itself, so every reply is cut at its budget."""

from __future__ import annotations

import time

from storage.store import Store
from tests.browser import BROWSER, create_profile, number_box, set_number, wait_for_reply
from tests.conftest import HANG

pytestmark = BROWSER


def _settled(page) -> None:
    """The reply is stored and its event has finished (the choice-free view is back)."""
    page.locator("#status").get_by_text("Writing").wait_for(state="detached")
    time.sleep(1)  # past the event's completion, when Gradio applies its last output once more


def _until(check, what: str):
    deadline = time.monotonic() + HANG
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def test_continue_browse_edit_and_confirmed_delete(page, running_app, data_home):
    url, _ = running_app
    page.goto(url)
    create_profile(page, "Gus")
    set_number(page, "temperature", 0)  # greedy and short: the same replies every run, each cut at its budget
    set_number(page, "max-new-tokens", 6)
    page.locator("#message textarea").fill("Tell me a story.")
    page.locator("#send").click()
    store = Store(data_home / "attune.db")
    cut = wait_for_reply(store, "gus")[-1]
    gus = store.find_profile_by_name("gus")["id"]
    conversation = store.list_conversations(gus)[0]["id"]
    _settled(page)
    assert page.locator("#chatbot").get_by_text("cut at the length limit").count() == 1

    page.locator("#continue").click()  # writes on from the cut reply; the longer one takes its place
    longer = _until(lambda: (m := store.transcript(gus, conversation)[-1]).id != cut.id and m, "not continued")
    _settled(page)
    assert longer.content.startswith(cut.content) and len(longer.content) > len(cut.content)
    assert store.get_message(gus, cut.id).status == "superseded"

    page.locator("#retry").click()  # a second reply: the two can be browsed
    page.locator("#branch-text").get_by_text("Reply 2 of 2").wait_for()
    _settled(page)
    page.locator("#earlier-reply").click()
    page.locator("#branch-text").get_by_text("Reply 1 of 2").wait_for()
    assert store.transcript(gus, conversation)[-1].id == longer.id  # the one shown is the one continued from
    page.locator("#chatbot button[aria-label='Like']").last.click()
    page.get_by_text("Saved your 👍").wait_for()
    assert store.get_message(gus, longer.id).vote == 1  # the vote went to the reply shown

    page.locator("#chatbot button[aria-label='Edit']").first.click()  # the pencil on the last user message
    editor = page.locator("#chatbot textarea").first
    editor.fill("Tell me a short story.")
    page.locator("#chatbot").get_by_role("button", name="Submit").click()
    _until(lambda: [m.content for m in store.transcript(gus, conversation)][0] == "Tell me a short story."
           and len(store.transcript(gus, conversation)) == 2, "the edit was not answered")
    _settled(page)
    assert page.locator("#chatbot").get_by_text("Tell me a short story.").count() == 1
    assert store.counts()["messages"] == 6  # nothing lost: the first wording and its three replies are kept

    page.locator("#delete-conversation").click()  # asks first
    page.locator("#confirm-delete-conversation").wait_for()
    page.locator("#cancel-delete-conversation").click()
    page.locator("#confirm-delete-conversation").wait_for(state="hidden")
    assert store.counts()["conversations"] == 1
    page.locator("#delete-conversation").click()
    page.locator("#confirm-delete-conversation").click()
    page.locator("#status").get_by_text("Conversation deleted.").wait_for()
    assert store.counts()["conversations"] == 0 and page.locator(".error").count() == 0


def test_each_profile_keeps_its_settings_and_compare_choice_across_reloads(page, running_app, data_home):
    url, service = running_app
    page.goto(url)
    create_profile(page, "Ivy")
    set_number(page, "temperature", 0)
    set_number(page, "max-new-tokens", 42)
    page.locator("#compare label").click()
    ivy = Store(data_home / "attune.db").find_profile_by_name("ivy")["id"]
    _until(lambda: service.preferences(ivy)[0].max_new_tokens == 42 and service.preferences(ivy)[1], "not kept")

    page.reload()  # the same profile comes back with its own settings
    page.locator("#compare input").wait_for()
    _until(lambda: number_box(page, "max-new-tokens").input_value() == "42", "not restored")
    assert number_box(page, "temperature").input_value() == "0"
    assert page.locator("#compare input").is_checked()

    create_profile(page, "Jo")  # another profile has the defaults ...
    _until(lambda: not page.locator("#compare input").is_checked(), "Ivy's compare choice stayed")
    assert number_box(page, "max-new-tokens").input_value() == "256"
    page.locator("#profile input").first.click()  # ... and picking Ivy again brings hers back
    page.get_by_role("option", name="Ivy").click()
    _until(lambda: number_box(page, "max-new-tokens").input_value() == "42", "not restored")
    assert page.locator("#compare input").is_checked() and service.preferences(ivy)[0].temperature == 0


def test_words_after_a_thumb_are_kept_and_a_retry_follows_them(page, running_app, data_home):
    url, _ = running_app
    page.goto(url)
    create_profile(page, "Ida")
    page.locator("#message textarea").fill("Plan my weekend.")
    page.locator("#send").click()
    store = Store(data_home / "attune.db")
    first = wait_for_reply(store, "ida")[-1]
    ida = store.find_profile_by_name("ida")["id"]
    _settled(page)
    page.locator("#chatbot button[aria-label='Like']").last.click()
    page.get_by_label("What did you like? (optional)").wait_for()  # a 👍 asks for words too
    page.locator("#chatbot button[aria-label='Dislike']").last.click()
    page.get_by_label("What was wrong? (optional)").fill("Too long, get to the point.")
    page.locator("#retry-comment").click()
    transcript = _until(lambda: (t := store.transcript(ida, first.conversation_id))[-1].id != first.id and t,
                        "no retry was stored")
    again = transcript[-1]
    assert again.settings["probe_instruction"] == "Too long, get to the point." and again.settings["explored"]
    assert [m.content for m in transcript][0] == "Plan my weekend."  # the words stay hidden from the transcript
    old = next(m for m in store.replies_to(ida, transcript[0].id) if m.id == first.id)
    assert (old.status, old.vote, old.comment) == ("superseded", -1, "Too long, get to the point.")
    _settled(page)
    assert not page.locator("#retry-comment").is_visible()  # the box closes with the new reply


def test_words_after_a_choice_are_kept_on_it(page, running_app, data_home):
    url, _ = running_app
    page.goto(url)
    create_profile(page, "Jo")
    page.locator("#compare label").click()
    page.locator("#message textarea").fill("Two plans for my weekend.")
    page.locator("#send").click()
    page.locator("#choose-both_bad").click()
    box = page.get_by_label("What was wrong with both? (optional)")
    box.wait_for()
    assert not page.locator("#retry-comment").is_visible()  # answering again follows a 👍/👎's words
    box.fill("Both too stiff.")
    page.get_by_role("button", name="Save comment").click()
    page.get_by_text("Comment saved.").wait_for()
    store = Store(data_home / "attune.db")
    jo = store.find_profile_by_name("jo")["id"]
    assert store.own_words(jo) == [("Both too stiff.", "down")]  # explored from now on, like a 👎's words
    assert [f["comment"] for f in store.feedback(jo) if f["kind"] == "comparison"] == ["Both too stiff."]
