"""With `--auth`, in Chromium: the login page, a wrong password refused, and two accounts that each see only their
own profiles."""

from __future__ import annotations

from tests.browser import BROWSER, create_profile
from tests.test_accounts import ANN, BOB, auth_app  # noqa: F401  (auth_app: a fixture)

pytestmark = BROWSER


def _log_in(page, url: str, name: str, password: str) -> None:
    page.goto(url)
    page.locator("input[name='username'], input[type='text']").first.fill(name)
    page.locator("input[type='password']").first.fill(password)
    page.get_by_role("button", name="Login").click()


def test_each_account_logs_in_and_sees_only_its_own_profiles(auth_app, page):  # noqa: F811
    url, _ = auth_app
    _log_in(page, url, ANN[0], "not-the-password")
    page.get_by_text("Incorrect credentials").wait_for()
    _log_in(page, url, *ANN)
    create_profile(page, "Ann's diary")

    other = page.context.browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    _log_in(other, url, *BOB)
    create_profile(other, "Bob's notes")
    other.locator("#profile input").first.click()
    options = other.get_by_role("option")
    options.first.wait_for()
    assert [t.replace("✓", "").strip() for t in options.all_inner_texts()] == ["Bob's notes"]  # (✓: picked)
    assert other.get_by_text("Ann's diary").count() == 0
    other.context.close()
