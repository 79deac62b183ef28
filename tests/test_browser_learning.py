"""Learning you can see, in headless Chromium: the Learning panel in words with a real accuracy chart, the chat's
notice when a new version starts serving and the mark on the replies it writes, before/after, and a reset that asks
first. The feedback is given through the service and the worker's job runs in the test (the page is what is tested
here; test_browser.py gives feedback by clicking)."""

from __future__ import annotations

import torch

from adapters.jobs import held_out
from adapters.registry import personal_adapter
from adapters.worker import Worker
from assistant.config import GenerationSettings, ModelConfig
from assistant.model import load_model
from storage.store import Store
from tests.browser import BROWSER, create_profile, open_accordion, set_number, wait_for_reply

pytestmark = BROWSER
SHORT = GenerationSettings(temperature=1.0, max_new_tokens=8)


def _comparisons(service, profile_id: str, n: int) -> None:
    """`n` choices between two replies, always the shorter one (a taste the tiny model can learn)."""
    for i in range(n):
        *_, done = service.send(profile_id, None, f"Question number {i}?", SHORT, compare=True)
        pair = done.comparison
        service.choose(profile_id, pair.id, "a" if len(pair.a.content) <= len(pair.b.content) else "b")


def test_the_panel_the_notice_the_mark_before_after_and_reset(page, running_app, data_home, tiny_model_dir,
                                                               tmp_path):
    url, service = running_app
    page.goto(url)
    create_profile(page, "Hal")
    store = Store(data_home / "attune.db")
    hal = store.find_profile_by_name("hal")["id"]
    torch.manual_seed(0)
    _comparisons(service, hal, 8)
    every = service.learning.holdout_every  # which votes are held out follows their (random) ids: vote on until
    while not any(held_out(f["id"], every) for f in store.feedback(hal)):  # one is, for the chart's points
        _comparisons(service, hal, 1)
    votes = store.feedback_counts(hal)["total"]
    worker = Worker(load_model(ModelConfig(model=str(tiny_model_dir)), tiny_model_dir.parent), store,
                    service.adapters.registry, service.learning)
    while worker.run_once():  # the personal version (and its queued follow-up, if any)
        pass
    version = service.adapters.registry.current(personal_adapter(hal))
    assert version is not None and version.manifest["metrics"]["eval/pairs"] >= 1
    service.set_alpha(hal, 1.0)  # "Just me", whatever the gate would say of a tiny model's version

    open_accordion(page, "learning")
    panel = page.locator("#learning-status")
    panel.get_by_text(f"{votes} choices between two replies").wait_for()
    panel.get_by_text(f"Your own version: version {version.version}, updated just now").wait_for()
    panel.get_by_text("replies are 100% you, as you set it").wait_for()
    assert page.locator("#alpha input[type=number]").input_value() == "1"  # the slider says what the text says
    page.locator("#accuracy-plot").wait_for()  # measured on held-out votes: a chart with points, not an empty one
    page.locator("#accuracy-plot").get_by_text("you + everyone").wait_for()  # the legend of a drawn line
    page.locator("#accuracy-plot").screenshot(path=str(tmp_path / "chart.png"))

    set_number(page, "max-new-tokens", 8)
    page.locator("#message textarea").fill("Tell me something.")
    page.locator("#send").click()
    wait_for_reply(store, "hal")
    page.locator("#status").get_by_text(f"Attune has learned from your {votes} votes so far (version {version.version})"
                                        ).wait_for()
    mark = page.locator("#chatbot span[title^='Written with your version']").last
    mark.wait_for()
    assert mark.inner_text() == "✨ learned from you"
    assert f"your version {version.version} at 100% you" in mark.get_attribute("title")

    page.locator("#show-before-after").click()
    page.locator("#before").get_by_text("Before").wait_for()
    assert page.locator("#after").get_by_text(f"Today (your version {version.version} at 100% you").count() == 1
    for side, heading in (("before", "Before (the base model)"), ("after", "Today (")):
        page.wait_for_function(  # the reply under the heading (the tiny model's text, so only its presence)
            f"document.querySelector('#{side}').innerText.trim().length > {len(heading)} + 1")

    page.locator("#reset-adapter").click()  # asks first
    page.locator("#confirm-reset-adapter").click()
    panel.get_by_text("Your own version: not made yet").wait_for()
    assert service.adapters.registry.current(personal_adapter(hal)) is None
    assert store.feedback_counts(hal)["total"] == votes and page.locator(".error").count() == 0


def test_the_note_is_kept_followed_hidden_and_shown_in_the_panel(page, running_app, data_home):
    url, service = running_app
    page.goto(url)
    create_profile(page, "Una")
    open_accordion(page, "learning")
    page.locator("#note textarea").fill("Keep it short and give me numbers.")
    page.locator("#save-note").click()
    page.get_by_text("Note saved").first.wait_for()
    page.locator("#learning-status").get_by_text("Your note: added, hidden, to each of your messages").wait_for()
    store = Store(data_home / "attune.db")
    una = store.find_profile_by_name("una")["id"]
    assert store.note(una) == "Keep it short and give me numbers."
    page.locator("#message textarea").fill("Plan my day.")
    page.locator("#send").click()
    reply = wait_for_reply(store, "una")
    assert reply[0].content == "Plan my day." and reply[1].settings["note"] == "Keep it short and give me numbers."
    page.reload()  # the note comes back with the profile
    open_accordion(page, "learning")
    page.wait_for_function("document.querySelector('#note textarea').value === 'Keep it short and give me numbers.'")
