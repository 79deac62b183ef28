"""Who may do what, for the chat service: the account a request acts for, logins, and rate limits."""

from __future__ import annotations

import logging

from assistant.limits import RateLimits
from storage.accounts import Accounts, account_key
from storage.errors import NotFound
from storage.owners import HOUSEHOLD

log = logging.getLogger(__name__)


class Access:
    """Mixed into `ChatService`. `accounts` is None in household mode (no `--auth`)."""

    accounts: Accounts | None
    limits: RateLimits

    def account_for(self, username: str | None) -> str:
        """The account a request acts for, from the session's logged-in name (`gr.Request.username`): its key
        with `--auth`, HOUSEHOLD without. Never an id the client sent."""
        if self.accounts is None:
            return HOUSEHOLD
        if not username:
            raise NotFound("Log in first.")
        return account_key(username)

    def log_in(self, name: str, password: str) -> bool:
        """Gradio's login check: the password is right and the name is not locked out by recent failures."""
        if self.accounts is None:
            return False
        key = account_key(name or "")
        if not self.limits.login_allowed(key):
            log.warning("Login of %r refused: too many failed logins in a short time.", key)
            return False
        if self.accounts.check(name, password) is not None:
            return True
        self.limits.login_failed(key)
        log.warning("Failed login for %r.", key)
        return False

    def check_rate(self, kind: str, account: str, profile_id: str | None = None) -> None:
        """Raise RateLimited (with the wait in words) if `account` or `profile_id` asked for too many `kind`."""
        self.limits.check(kind, account, profile_id)
