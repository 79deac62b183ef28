"""How much one account and one profile may ask of the server: rate limits (token buckets) and a profile cap."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class LimitsConfig:
    messages_per_minute: float = 12.0
    """Messages (send, retry, continue, edit) one profile may start per minute on average, > 0. A reply takes
    seconds to write, so a person rarely reaches it; a script looping on the API does."""
    message_burst: int = 12
    """Messages a profile may start back to back before the per-minute rate applies, ≥ 1."""
    account_messages_per_minute: float = 30.0
    """The same, for all profiles of one account together (household: everyone at the machine), > 0."""
    votes_per_minute: float = 20.0
    """Votes (👍/👎, comparison choices, comments) one profile may cast per minute on average, > 0."""
    vote_burst: int = 20
    """Votes a profile may cast back to back, ≥ 1 (a person catching up on a long conversation)."""
    account_votes_per_minute: float = 40.0
    """The same, for all profiles of one account together, > 0."""
    profiles_per_hour: float = 6.0
    """Profiles one account may create per hour on average, > 0 (burst: `profile_burst`)."""
    profile_burst: int = 6
    """Profiles an account may create back to back, ≥ 1."""
    max_profiles: int = 20
    """Most profiles one account (or the household) may keep, ≥ 1; creating one more is refused."""
    failed_logins_per_minute: float = 3.0
    """Failed logins allowed per minute for one account name after `failed_login_burst`, > 0; beyond it every
    login of that name is refused, the right password too, until the bucket refills."""
    failed_login_burst: int = 5
    """Failed logins of one account name allowed back to back, ≥ 1."""

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"limits.{f.name} must be positive (got {getattr(self, f.name)})")
