"""Redraw the screenshots in docs/screenshots/ from the real app on the embedded model: `make screenshots`.

Starts `app.py` with its training worker on a fresh data home (the model cache is shared), drives Debian's Chromium
through the main states and saves one PNG per state. It takes a few minutes: the embedded model writes every reply
and the worker trains a first personal version from four choices.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from storage.store import Store  # noqa: E402

log = logging.getLogger("screenshots")
WAIT_MS = int(float(os.environ.get("ATTUNE_SCREENSHOTS_WAIT", 30 * 60)) * 1000)
"""A guard against a hang only (a busy machine writes slowly); lower it while debugging."""
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]  # (as the tests: nothing leaves the machine)
QUESTIONS = ("What is a good name for a grey cat?", "How do I keep a cat happy indoors?",
             "What should a cat eat?", "How often should I brush a cat?", "Why do cats purr?")


def _start(data_home: Path, cache: Path, port: int, model: str) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "app.py", "--data-dir", str(data_home), "--model-cache", str(cache),
                             "--port", str(port), "--model", model], cwd=REPO, env=env)
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the app did not start") from None
            time.sleep(0.5)


def _until(check, what: str):
    deadline = time.monotonic() + WAIT_MS / 1000
    while not (found := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting: {what}")
        time.sleep(0.5)
    return found


def _settle(page) -> None:
    page.locator("#status").get_by_text("Writing").wait_for(state="detached", timeout=WAIT_MS)
    time.sleep(1.5)


def _desktop(page, url: str, store: Store, out: Path) -> None:
    page.goto(url)
    page.locator("#profile-name input").fill("Ann")
    page.locator("#create-profile").click()
    page.locator("#status").get_by_text("Profile 'Ann' created.").wait_for(timeout=WAIT_MS)
    page.locator("#message textarea").fill(QUESTIONS[0])
    page.locator("#send").click()
    _settle(page)
    for _ in range(5):  # (a click while the chat re-renders after a reply can be lost: a person clicks again)
        page.locator("#chatbot button[aria-label='Like']").last.click()
        if _voted(store):
            break
    page.get_by_text("Saved your 👍").first.wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(out / "chat.png"))

    page.locator("#compare label").click()
    for i, question in enumerate(QUESTIONS[1:]):
        page.locator("#message textarea").fill(question)
        page.locator("#send").click()
        page.locator("#choose-a").wait_for(timeout=WAIT_MS)
        _settle(page)
        if i == 0:
            page.screenshot(path=str(out / "compare.png"))
        page.locator("#choose-a" if i % 2 == 0 else "#choose-b").click()
        page.locator("#choose-a").wait_for(state="hidden", timeout=WAIT_MS)
    ann = store.find_profile_by_name("ann")["id"]
    log.info("waiting for the worker's first personal version")
    _until(lambda: _published(store, ann), "a personal version")
    page.locator("#compare label").click()
    page.locator("#message textarea").fill("Any last tip for a new cat owner?")
    page.locator("#send").click()
    page.locator("#choose-a").wait_for(state="hidden", timeout=WAIT_MS)
    _settle(page)  # (the chat announces the version unless the gate holds it back: the panel then says why)
    page.screenshot(path=str(out / "learned.png"))

    page.locator("#learning > button.label-wrap").click()
    page.locator("#show-before-after").click()
    page.locator("#after").get_by_text("Today").wait_for(timeout=WAIT_MS)
    time.sleep(2)
    page.locator("#learning").screenshot(path=str(out / "learning.png"))


def _voted(store: Store, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if store.counts()["feedback"]:
            return True
        time.sleep(0.5)
    return False


def _published(store: Store, profile_id: str) -> bool:
    from adapters.registry import personal_adapter

    return store.trained_until(personal_adapter(profile_id)) is not None


def _phone(browser, url: str, out: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(url)
    page.locator("#chatbot").wait_for(timeout=WAIT_MS)
    page.locator("#profile input").first.click()
    page.get_by_role("option", name="Ann").click()
    page.locator("[aria-label^=\"bot's message\"]").last.wait_for(timeout=WAIT_MS)
    time.sleep(2)
    page.screenshot(path=str(out / "phone.png"))


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--model-cache", type=Path, default=REPO / ".cache" / "models")
    parser.add_argument("--port", type=int, default=0, help="default: a free one")
    parser.add_argument("--model", default="embedded", help="what app.py serves (the docs show the embedded model)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data_home = Path(tempfile.mkdtemp(prefix="attune-screenshots-"))
    if not args.port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args.port = s.getsockname()[1]
    proc = _start(data_home, args.model_cache, args.port, args.model)
    url = f"http://127.0.0.1:{args.port}/"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            try:
                _desktop(page, url, Store(data_home / "attune.db"), args.out)
            except BaseException:
                page.screenshot(path=str(args.out / "failed.png"), full_page=True)  # what the page showed
                raise
            _phone(browser, url, args.out)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        shutil.rmtree(data_home, ignore_errors=True)
    log.info("screenshots written to %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
