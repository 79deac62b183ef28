"""Every read and write of Attune's data, as one `Store`. Callers pass ids; names typed by people are only data.

Each part lives in a module of its own (profiles, conversations and messages, comparisons, feedback, the bandit's
record, adapter versions, the training job queue); `Store` is all of them over one SQLite file. Each public
method opens its own connection (one per unit of work, so any thread may call it) and does its writes in one
transaction: when a method returns, what it wrote is committed.
"""

from __future__ import annotations

from storage.bandit import PLAIN_ARM, Bandit, Record
from storage.base import Message, seeded_ids
from storage.comparisons import Comparison
from storage.erasure import Erasure
from storage.feedback import CHOICES, MAX_COMMENT_CHARS, THUMBS_VALUES, Feedback
from storage.jobs import TrainingJobs
from storage.profiles import MAX_PROFILE_NAME, Profiles, validate_profile_name
from storage.rewards import Rewards
from storage.versions import AdapterVersions

__all__ = ["CHOICES", "MAX_COMMENT_CHARS", "MAX_PROFILE_NAME", "PLAIN_ARM", "THUMBS_VALUES", "Comparison", "Message",
           "Record", "Store", "seeded_ids", "validate_profile_name"]


class Store(Profiles, Erasure, Feedback, Bandit, AdapterVersions, Rewards, TrainingJobs):
    """The database of one data home."""
