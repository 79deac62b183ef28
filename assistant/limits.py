"""Rate limits: token buckets per account and per profile, refused with the wait in words; failed-login lock-out.

A bucket holds up to `burst` tokens and refills at `rate` per second; each request takes one. Buckets live in the
app's memory (a restart refills them), one per (kind, key), created on first use."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from assistant.config.limits import LimitsConfig
from storage.errors import AttuneError

MESSAGES, VOTES, PROFILES = "messages", "votes", "profiles"
"""The kinds of request that are limited."""
_WHAT = {MESSAGES: "messages", VOTES: "votes", PROFILES: "new profiles"}


class RateLimited(AttuneError):
    """Too many requests of one kind: the message says how long to wait."""


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """Token buckets by key, each with the same `rate` (tokens per second) and `burst` (capacity)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _refilled(self, key: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.setdefault(key, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        return bucket

    def wait(self, key: str) -> float:
        """Seconds until `key` has a token (0: it has one now)."""
        with self._lock:
            bucket = self._refilled(key)
            return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate

    def take(self, key: str) -> None:
        with self._lock:
            self._refilled(key).tokens -= 1


def in_words(seconds: float) -> str:
    seconds = max(1, math.ceil(seconds))
    return f"{seconds} s" if seconds < 90 else f"{math.ceil(seconds / 60)} min"


class RateLimits:
    """The limits of `LimitsConfig`: `check(kind, account, profile_id)` takes a token from the account's bucket and
    the profile's, or takes none and raises RateLimited with the longer wait."""

    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic):
        c = config
        self._profile = {MESSAGES: TokenBuckets(c.messages_per_minute / 60, c.message_burst, clock),
                         VOTES: TokenBuckets(c.votes_per_minute / 60, c.vote_burst, clock)}
        self._account = {MESSAGES: TokenBuckets(c.account_messages_per_minute / 60, 2 * c.message_burst, clock),
                         VOTES: TokenBuckets(c.account_votes_per_minute / 60, 2 * c.vote_burst, clock),
                         PROFILES: TokenBuckets(c.profiles_per_hour / 3600, c.profile_burst, clock)}
        self._logins = TokenBuckets(c.failed_logins_per_minute / 60, c.failed_login_burst, clock)

    def check(self, kind: str, account: str, profile_id: str | None = None) -> None:
        buckets = [(self._account[kind], f"account:{account}")]
        if profile_id and kind in self._profile:
            buckets.append((self._profile[kind], f"profile:{profile_id}"))
        wait = max(bucket.wait(key) for bucket, key in buckets)
        if wait > 0:
            raise RateLimited(f"Too many {_WHAT[kind]} in a short time. Please wait {in_words(wait)} and try again; "
                              "nothing was sent or changed.")
        for bucket, key in buckets:
            bucket.take(key)

    def login_allowed(self, account: str) -> bool:
        """Whether a login of `account` may be checked now: not after too many failures in a short time."""
        return self._logins.wait(account) == 0

    def login_failed(self, account: str) -> None:
        self._logins.take(account)
