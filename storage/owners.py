"""Who is acting: the account a request comes from, so that storage lists and opens only that account's profiles.

The web page sets it around each event (`acting_as`, ui/binding.py) from the logged-in session; storage reads it in
`list_profiles`, `create_profile` and the profile check every read and write starts with. Unset, as in the training
worker and command-line tools, nothing is filtered: those are trusted code, not a person's request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

HOUSEHOLD = ""
"""The acting account without `--auth`: anyone at the machine, who sees the profiles made without an account."""

_ACTING: ContextVar[str | None] = ContextVar("attune_acting_account", default=None)


@contextmanager
def acting_as(account: str) -> Iterator[None]:
    """Run the block for `account` (an account key, or HOUSEHOLD)."""
    token = _ACTING.set(account)
    try:
        yield
    finally:
        _ACTING.reset(token)


def acting_account() -> str | None:
    """The account key acting now, HOUSEHOLD, or None for trusted code (no request)."""
    return _ACTING.get()


def owner_value(account: str | None) -> str | None:
    """The `profiles.owner` an account's profiles carry: NULL for household ones."""
    return account or None
