"""End to end in headless Chromium (Debian's package, driven by Playwright): the way a person uses Attune."""

from __future__ import annotations

import time

from storage.store import Store
from tests.browser import BROWSER, create_profile, open_accordion, usable, wait_for_reply
from tests.conftest import HANG

pytestmark = BROWSER


def test_profile_chat_thumbs_and_reload(page, running_app, data_home, tmp_path):
    url, _ = running_app
    page.goto(url)
    create_profile(page, "Ann 🎉")

    page.locator("#message textarea").fill("Hello there!")
    page.locator("#send").click()
    store = Store(data_home / "attune.db")
    transcript = wait_for_reply(store, "ann 🎉")
    page.locator("#status").get_by_text("Writing").wait_for(state="detached")
    user = store.find_profile_by_name("ann 🎉")
    conversation = store.list_conversations(user["id"])[0]
    like = page.locator("#chatbot button[aria-label='Like']").last
    assert page.locator("#chatbot").get_by_text("Hello there!").count() == 1
    page.screenshot(path=str(tmp_path / "reply.png"), full_page=True)
    assert [m.role for m in transcript] == ["user", "assistant"]
    assert transcript[1].settings["new_tokens"][0] >= 1  # a real, streamed model reply was stored

    like.click()
    page.get_by_text("Saved your 👍").wait_for()
    assert store.transcript(user["id"], conversation["id"])[1].vote == 1  # committed before the UI confirmed

    page.locator("#chatbot button[aria-label='Dislike']").last.click()
    page.get_by_label("What was wrong? (optional)").fill("Too random")
    page.get_by_role("button", name="Save comment").click()
    page.get_by_text("Comment saved.").wait_for()
    reply = store.transcript(user["id"], conversation["id"])[1]
    assert (reply.vote, reply.comment) == (-1, "Too random")
    assert store.counts()["feedback"] == 1

    # Compare mode: A and B side by side, the choice is stored and B continues the conversation.
    page.locator("#compare label").click()
    page.locator("#message textarea").fill("Say it again, differently.")
    page.locator("#send").click()
    page.locator("#choose-b").wait_for()
    pair = store.pending_comparison(user["id"], conversation["id"])
    assert pair is not None and pair.choice is None
    # (the tiny model's random text is mangled by markdown, so only the panels' headings are compared)
    assert page.locator("#candidate-a").inner_text().startswith("A") and len(pair.a.content) > 0
    assert page.locator("#candidate-b").inner_text().startswith("B") and len(pair.b.content) > 0
    page.locator("#choose-b").click()
    page.get_by_text("Saved: B is better").first.wait_for()
    assert store.get_comparison(user["id"], pair.id).choice == "b"
    assert store.transcript(user["id"], conversation["id"])[-1].id == pair.b.id
    page.locator("#choose-b").wait_for(state="hidden")
    assert not page.locator("#candidate-b").is_visible()

    # The Learning panel counts that feedback, and Train now queues a job for the worker.
    open_accordion(page, "learning")
    page.locator("#learning-status").get_by_text("1 👍/👎 on a reply and 1 choice between two replies").wait_for()
    page.locator("#train-now").click()
    page.get_by_text("Training queued").first.wait_for()
    from adapters.registry import personal_adapter

    assert store.latest_job(personal_adapter(user["id"]))["status"] == "queued"
    page.locator("#learning-status").get_by_text("Training your version: waiting its turn").wait_for()  # refreshed

    # After a reload the same profile and conversation come back, with the vote shown again.
    page.reload()
    page.locator("#chatbot").get_by_text("Hello there!").wait_for()
    assert page.locator("#profile input").first.input_value() == "Ann 🎉"
    page.screenshot(path=str(tmp_path / "after-reload.png"), full_page=True)
    assert (tmp_path / "reply.png").stat().st_size > 10_000


def test_a_choice_made_as_soon_as_the_buttons_show_stays_made(page, running_app, data_home, monkeypatch):
    """Gradio applies a streaming event's last output again when the event completes; on a busy machine that can
    come after the person already chose. Here the event completes 2 s after its last update, every time."""
    url, service = running_app
    real_send = service.send

    def send_that_completes_late(*args, **kwargs):
        yield from real_send(*args, **kwargs)
        time.sleep(2)

    monkeypatch.setattr(service, "send", send_that_completes_late)
    page.goto(url)
    create_profile(page, "Bo")
    page.locator("#compare label").click()
    page.locator("#message textarea").fill("Two versions, please.")
    page.locator("#send").click()
    page.locator("#choose-b").click()  # as soon as it can be clicked
    page.locator("#status").get_by_text("Saved: B is better").wait_for()
    time.sleep(3)  # past the event's completion
    assert not page.locator("#choose-b").is_visible() and not page.locator("#candidate-b").is_visible()
    store = Store(data_home / "attune.db")
    user = store.find_profile_by_name("bo")
    conversation = store.list_conversations(user["id"])[0]
    assert [m.role for m in store.transcript(user["id"], conversation["id"])] == ["user", "assistant"]
    # (random text is mangled by markdown, so the shown messages are counted: the question and B)
    assert page.locator("#chatbot [data-testid='user']").count() == 1
    assert page.locator("#chatbot [data-testid='bot']").count() == 1


def test_after_a_failed_first_reply_the_next_message_continues_that_conversation(page, running_app, data_home,
                                                                                 monkeypatch):
    """The first message of a new conversation is stored before its reply streams. If the reply then fails, that
    conversation is the one selected, so sending again continues it instead of opening another."""
    url, service = running_app
    real_send = service.send

    def send_that_breaks(*args, **kwargs):
        stream = real_send(*args, **kwargs)
        yield next(stream)
        stream.close()
        raise RuntimeError("the model process died")

    monkeypatch.setattr(service, "send", send_that_breaks)
    page.goto(url)
    create_profile(page, "Cy")
    page.locator("#message textarea").fill("Will this fail?")
    page.locator("#send").click()
    page.get_by_text("Sorry, something went wrong on our side").first.wait_for()
    assert page.locator("#conversation input").first.input_value().startswith("Will this fail? · ")

    monkeypatch.setattr(service, "send", real_send)
    page.locator("#message textarea").fill("Second try.")
    page.locator("#send").click()
    store = Store(data_home / "attune.db")
    user = store.find_profile_by_name("cy")
    deadline = time.monotonic() + HANG
    while not [m for c in store.list_conversations(user["id"]) for m in store.transcript(user["id"], c["id"])
               if m.role == "user" and m.content == "Second try."]:
        assert time.monotonic() < deadline, "the second message was not stored"
        time.sleep(0.1)
    conversations = store.list_conversations(user["id"])
    assert len(conversations) == 1
    said = [m.content for m in store.transcript(user["id"], conversations[0]["id"]) if m.role == "user"]
    assert said == ["Will this fail?", "Second try."]


def test_refusals_leave_the_page_usable(page, running_app, data_home):
    """Each refusal shows its reason as a toast and in the status line, and the page stays as it was: sending with
    no profile, an empty message, a duplicate profile, a message while an A/B choice is pending."""
    url, _ = running_app
    page.goto(url)
    page.locator("#message textarea").fill("Hello?")
    page.locator("#send").click()
    page.locator("#status").get_by_text("Pick or create a profile first.").wait_for()
    usable(page, "Hello?")

    create_profile(page, "Dee")
    open_accordion(page, "profile-tools")  # (folded away once a profile is picked)
    page.locator("#profile-name input, #profile-name textarea").first.fill("DEE")
    page.locator("#create-profile").click()
    page.locator("#status").get_by_text("already exists").wait_for()
    assert page.locator("#profile input").first.input_value() == "Dee"
    usable(page, "Hello?")

    page.locator("#message textarea").fill("   ")
    page.locator("#send").click()
    page.locator("#status").get_by_text("empty").wait_for()
    usable(page, "   ")

    page.locator("#compare label").click()
    page.locator("#message textarea").fill("Compare, please.")
    page.locator("#send").click()
    page.locator("#choose-b").wait_for()
    store = Store(data_home / "attune.db")
    dee = store.find_profile_by_name("dee")
    conversation = store.list_conversations(dee["id"])[0]["id"]
    deadline = time.monotonic() + HANG  # the comparison is stored once both candidates are written
    while store.pending_comparison(dee["id"], conversation) is None:
        assert time.monotonic() < deadline, "the comparison was not stored"
        time.sleep(0.1)
    page.locator("#message textarea").fill("Too early.")
    page.locator("#send").click()
    page.locator("#status").get_by_text("Choose between A and B first").wait_for()
    usable(page, "Too early.")
    assert page.locator("#candidate-a").is_visible() and page.locator("#candidate-b").is_visible()
    page.locator("#choose-b").click()  # the candidates are still there to choose from
    page.locator("#status").get_by_text("Saved: B is better").wait_for()
    assert store.pending_comparison(dee["id"], conversation) is None
    assert [m.content for m in store.transcript(dee["id"], conversation) if m.role == "user"] == ["Compare, please."]


def test_enter_sends_shift_enter_adds_a_line_and_text_typed_during_a_reply_stays(page, running_app, data_home,
                                                                               monkeypatch):
    url, service = running_app
    real_send = service.send
    streaming = __import__("threading").Event()
    go_on = __import__("threading").Event()

    def slow_send(*args, **kwargs):  # holds the reply mid-stream until the test has typed
        for i, update in enumerate(real_send(*args, **kwargs)):
            if i == 1:
                streaming.set()
                go_on.wait(HANG)
            yield update

    page.goto(url)
    create_profile(page, "Eve")
    box = page.locator("#message textarea")
    assert page.get_by_role("textbox", name="Message", exact=True).count() == 1  # its accessible name
    assert "Enter sends, Shift+Enter adds a line" in box.get_attribute("placeholder")
    box.click()
    box.press_sequentially("First line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    assert box.input_value() == "First line\nsecond line"  # Shift+Enter added a line, sent nothing
    store = Store(data_home / "attune.db")
    assert store.counts()["messages"] == 0
    box.press("Enter")
    transcript = wait_for_reply(store, "eve")
    assert transcript[0].content == "First line\nsecond line" and box.input_value() == ""

    monkeypatch.setattr(service, "send", slow_send)
    box.fill("Tell me more.")
    box.press("Enter")
    deadline = time.monotonic() + HANG
    while not streaming.wait(1):
        assert time.monotonic() < deadline, "the message was never sent"
        if box.input_value() == "Tell me more.":  # pressed while the first reply's event still settled: ignored,
            box.press("Enter")                     # the text kept; a person presses again
    box.press_sequentially("typed while it writes")
    go_on.set()
    eve = store.find_profile_by_name("eve")
    conversation = store.list_conversations(eve["id"])[0]["id"]
    deadline = time.monotonic() + HANG
    while len(store.transcript(eve["id"], conversation)) < 4:
        assert time.monotonic() < deadline, "the second reply was not stored"
        time.sleep(0.1)
    page.locator("#status").get_by_text("Writing").wait_for(state="detached")
    time.sleep(1)  # past the event's completion, when Gradio applies its last output once more
    assert box.input_value() == "typed while it writes"


def test_stop_ends_the_reply_and_keeps_what_was_written(page, running_app, data_home, monkeypatch):
    """Generation is held after a few tokens (inside `generate`, so nothing depends on how fast the model is); Stop
    is clicked; once released, generation ends at the next token and the reply so far is stored, marked stopped."""
    from assistant import generation

    url, service = running_app
    held, release = __import__("threading").Event(), __import__("threading").Event()
    real_put = generation._QueueStreamer.put
    calls = []

    def put(self, value):
        calls.append(1)
        if len(calls) == 2:  # the prompt, then the first token: held before it is shown
            held.set()
            release.wait(HANG)
        real_put(self, value)

    monkeypatch.setattr(generation._QueueStreamer, "put", put)
    page.goto(url)
    create_profile(page, "Flo")
    __import__("torch").manual_seed(0)  # the tiny model's sampled tokens, the same every run
    page.locator("#message textarea").fill("Tell me a long story.")
    page.locator("#send").click()
    assert held.wait(HANG)
    store = Store(data_home / "attune.db")
    flo = store.find_profile_by_name("flo")
    conversation = store.list_conversations(flo["id"])[0]["id"]
    page.locator("#stop").click()
    page.locator("#status").get_by_text("Stopping").wait_for()
    release.set()
    page.locator("#status").get_by_text("Stopped: what was written so far is kept.").wait_for()
    reply = store.transcript(flo["id"], conversation)[-1]
    assert reply.role == "assistant" and reply.settings["stopped"] is True
    assert 1 <= reply.settings["new_tokens"][0] <= 2 and reply.settings["ended"] == [False]
    assert page.locator(".error").count() == 0 and page.locator("#send").is_enabled()
    page.locator("#stop").click()  # nothing is being written now: said so, nothing breaks
    page.locator("#status").get_by_text("There is no reply being written.").wait_for()
