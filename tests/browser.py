"""What the browser tests share: Debian's Chromium driven by Playwright (the `page` and `phone` fixtures in
conftest.py open their tabs here), and the steps a person takes in every test."""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager

import pytest

from storage.store import Store
from tests.conftest import HANG

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

BROWSER = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None and not __import__("os").environ.get("CI"),
                       reason="Debian's chromium is not installed (make test installs it)"),
]


@contextmanager
def browser_page(tmp_path, width: int, height: int, **options):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium must be installed in CI (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        page = context.new_page()
        page.set_default_timeout(HANG * 1000)
        yield page
        page.screenshot(path=str(tmp_path / "final.png"), full_page=True)
        browser.close()


def wait_for_reply(store: Store, profile: str, seconds: float = HANG):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        user = store.find_profile_by_name(profile)
        for conversation in store.list_conversations(user["id"]):
            transcript = store.transcript(user["id"], conversation["id"])
            if transcript and transcript[-1].role == "assistant":
                return transcript
        time.sleep(0.1)
    raise AssertionError("no reply was stored")


def open_accordion(page, elem_id: str) -> None:
    """Open an accordion unless it is open (its toggle says so: a visibility check can run before it renders)."""
    toggle = page.locator(f"#{elem_id} > button.label-wrap")
    toggle.wait_for()
    if "open" not in (toggle.get_attribute("class") or "").split():
        toggle.click()


def create_profile(page, name: str) -> None:
    open_accordion(page, "profile-tools")
    page.locator("#profile-name input, #profile-name textarea").first.fill(name)
    page.locator("#create-profile").click()
    # (the toast can come before the new profile is applied; the status line comes with it)
    page.locator("#status").get_by_text(f"Profile '{name}' created.").wait_for()


def usable(page, typed: str) -> None:
    """The page after a refusal: no component replaced by an error badge, what was typed still there, the message
    box still taking text and Send still clickable."""
    assert page.locator(".error").count() == 0, "an error badge or error toast is shown"
    box = page.locator("#message textarea")
    assert box.input_value() == typed and box.is_editable()
    box.fill(typed + "!")
    assert box.input_value() == typed + "!"
    box.fill(typed)
    assert page.locator("#send").is_enabled()


def number_box(page, elem_id: str):
    """A slider's number box in the Settings accordion (opened if closed)."""
    open_accordion(page, "settings")
    return page.locator(f"#{elem_id} input[type=number]")


def set_number(page, elem_id: str, value: float) -> None:
    """Type a value into a slider's number box, as a person would."""
    box = number_box(page, elem_id)
    box.fill(str(value))
    box.press("Tab")
