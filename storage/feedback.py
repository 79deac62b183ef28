"""Feedback: thumbs on a reply, the choice on a comparison, comments; counts; the events training reads."""

from __future__ import annotations

import json
from typing import Any

from storage.base import NOT_CONTINUED, now
from storage.text import require_encodable
from storage.comparisons import Comparison, Comparisons
from storage.errors import InvalidInput

THUMBS_VALUES = (-1, 1)
CHOICES = ("a", "b", "tie", "both_bad")
MAX_COMMENT_CHARS = 2_000


def clean_comment(comment: Any) -> str:
    if comment is None:
        return ""
    if not isinstance(comment, str):
        raise InvalidInput("A comment must be text.")
    comment = require_encodable(comment.replace("\x00", "").strip(), "The comment")
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidInput(f"A comment can be at most {MAX_COMMENT_CHARS} characters (this one has {len(comment)}).")
    return comment


def ended(settings: dict) -> bool:
    """Whether a stored reply ended by itself (the generation facts' `ended`: per candidate, or a one-reply
    list); True when unrecorded, as every reply was treated before."""
    value = settings.get("ended", True)
    if isinstance(value, list):
        return bool(value[0]) if len(value) == 1 else True
    return bool(value)


class Feedback(Comparisons):
    def record_thumbs(self, profile_id: str, message_id: str, value: Any, comment: str | None = None) -> dict:
        """Store (or replace) this profile's thumbs on one of its assistant replies. Committed on return."""
        if value not in THUMBS_VALUES or isinstance(value, bool):
            raise InvalidInput("A thumbs vote must be +1 (up) or -1 (down).")
        with self._write() as db:
            message = self._require_message(db, profile_id, message_id)
            if message.role != "assistant":
                raise InvalidInput("Only assistant replies can be voted on.")
            kept = message.comment if comment is None else clean_comment(comment)
            return self._upsert_feedback(db, profile_id, "thumbs", message_id=message_id, value=value, comment=kept)

    def set_comment(self, profile_id: str, message_id: str, comment: str) -> dict:
        with self._write() as db:
            message = self._require_message(db, profile_id, message_id)
            if message.vote is None:
                raise InvalidInput("Vote on the reply before adding a comment.")
            db.execute("UPDATE feedback SET comment = ?, updated_at = ? WHERE message_id = ?",
                       (clean_comment(comment), now(), message_id))
            return self._rows(db, "SELECT * FROM feedback WHERE message_id = ?", (message_id,))[0]

    def set_choice_comment(self, profile_id: str, comparison_id: str, comment: str) -> dict:
        with self._write() as db:
            self._require_comparison(db, profile_id, comparison_id)
            rows = self._rows(db, "SELECT id FROM feedback WHERE comparison_id = ?", (comparison_id,))
            if not rows:
                raise InvalidInput("Choose between A and B before adding a comment.")
            db.execute("UPDATE feedback SET comment = ?, updated_at = ? WHERE comparison_id = ?",
                       (clean_comment(comment), now(), comparison_id))
            return self._rows(db, "SELECT * FROM feedback WHERE comparison_id = ?", (comparison_id,))[0]

    def record_choice(self, profile_id: str, comparison_id: str, choice: Any, comment: str = "") -> Comparison:
        """Store the choice (again: it replaces the earlier one) and let the chosen side continue.

        A continues for 'a', 'tie' and 'both_bad'; B for 'b'. The continuation can only change while the
        comparison is still the newest turn of its conversation; after that a new choice only updates the record.
        """
        if choice not in CHOICES:
            raise InvalidInput(f"A choice must be one of {', '.join(CHOICES)} (got {choice!r}).")
        comment = clean_comment(comment)
        with self._write() as db:
            comparison = self._require_comparison(db, profile_id, comparison_id)
            newest = self._rows(db, "SELECT MAX(seq) AS s FROM messages WHERE conversation_id = ?",
                                (comparison.conversation_id,))[0]["s"]
            if max(comparison.a.seq, comparison.b.seq) == newest:
                keep, drop = (comparison.b, comparison.a) if choice == "b" else (comparison.a, comparison.b)
                db.execute("UPDATE messages SET status = 'active' WHERE id = ?", (keep.id,))
                db.execute("UPDATE messages SET status = 'rejected' WHERE id = ?", (drop.id,))
            self._upsert_feedback(db, profile_id, "comparison", comparison_id=comparison_id, choice=choice,
                                  comment=comment)
        return self.get_comparison(profile_id, comparison_id)

    def _upsert_feedback(self, db, profile_id: str, kind: str, *, message_id: str | None = None,
                         comparison_id: str | None = None, value: int | None = None, choice: str | None = None,
                         comment: str = "") -> dict:
        key_column, key = ("message_id", message_id) if kind == "thumbs" else ("comparison_id", comparison_id)
        updated = now()
        existing = self._rows(db, f"SELECT id FROM feedback WHERE {key_column} = ?", (key,))
        if existing:
            feedback_id = existing[0]["id"]
            db.execute("UPDATE feedback SET value = ?, choice = ?, comment = ?, updated_at = ? WHERE id = ?",
                       (value, choice, comment, updated, feedback_id))
        else:
            feedback_id = self._new_id()
            db.execute(
                "INSERT INTO feedback (id, profile_id, kind, message_id, comparison_id, value, choice, comment, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (feedback_id, profile_id, kind, message_id, comparison_id, value, choice, comment, updated, updated),
            )
        return self._rows(db, "SELECT * FROM feedback WHERE id = ?", (feedback_id,))[0]

    def feedback(self, profile_id: str) -> list[dict]:
        """Every feedback event of a profile, oldest first, with the content it is about.

        Each row has the event's fields plus `prompt` (the conversation up to and including the user message
        the reply answers, as role/content dicts), and `completion` (thumbs) or `a`/`b` (comparison) texts.
        Thumbs rows also list as `superseded` the earlier replies to the same message that a retry replaced
        (and that were not themselves liked). `ended` says, per text (`completion` and the `superseded` list, or `a`
        and `b`), whether the reply ended by itself rather than at its budget (replies stored before this: True).
        Every row also has `probe` and `instruction`: per candidate (`a`/`b`, or `completion`), the name and the text
        of the hidden exploration instruction it was generated with (None: the message as sent; candidates stored
        before the text was kept have only the name); and `note`, per candidate, the profile's note it was written
        under (None: none).
        """
        with self._db() as db:
            self._require_profile(db, profile_id)
            events = self._rows(db, "SELECT * FROM feedback WHERE profile_id = ? ORDER BY created_at", (profile_id,))
            return [self._with_texts(db, profile_id, event) for event in events]

    def _with_texts(self, db, profile_id: str, event: dict) -> dict:
        """`event` with the texts it is about (see `feedback`)."""
        if event["kind"] == "thumbs":
            reply = self._require_message(db, profile_id, event["message_id"])
            event["completion"] = reply.content
            old = self._rows(
                db,
                "SELECT m.content, m.settings FROM messages m LEFT JOIN feedback f ON f.message_id = m.id "
                "WHERE m.parent_id = ? AND m.role = 'assistant' AND m.status = 'superseded' "
                f"AND m.seq < ? AND (f.value IS NULL OR f.value < 0) AND {NOT_CONTINUED} ORDER BY m.seq",
                (reply.parent_id, reply.seq),
            )
            event["superseded"] = [r["content"] for r in old]
            event["ended"] = {"completion": ended(reply.settings),
                              "superseded": [ended(json.loads(r["settings"] or "{}")) for r in old]}
            event["probe"] = {"completion": reply.settings.get("probe")}
            event["instruction"] = {"completion": reply.settings.get("probe_instruction")}
            event["note"] = {"completion": reply.settings.get("note")}
            prompt_id = reply.parent_id
        else:
            comparison = self._require_comparison(db, profile_id, event["comparison_id"])
            sides = (("a", comparison.a), ("b", comparison.b))
            event["a"], event["b"] = comparison.a.content, comparison.b.content
            event["ended"] = {side: ended(m.settings) for side, m in sides}
            event["probe"] = {side: m.settings.get("probe") for side, m in sides}
            event["instruction"] = {side: m.settings.get("probe_instruction") for side, m in sides}
            event["note"] = {side: m.settings.get("note") for side, m in sides}
            prompt_id, reply = comparison.prompt_message_id, comparison.a
        event["prompt"] = self._context_through(db, prompt_id, reply.settings.get("system_prompt"))
        return event

    def feedback_counts(self, profile_id: str | None = None, since: str | None = None) -> dict[str, int]:
        """Feedback events (of one profile, or everyone's), counting those updated after `since` if given."""
        where, params = ["1 = 1"], []
        if profile_id is not None:
            where.append("profile_id = ?")
            params.append(profile_id)
        if since is not None:
            where.append("updated_at > ?")
            params.append(since)
        with self._db() as db:
            rows = self._rows(db, f"SELECT kind, COUNT(*) AS n FROM feedback WHERE {' AND '.join(where)} "
                                  "GROUP BY kind", tuple(params))
        counts = {"thumbs": 0, "comparison": 0}
        counts.update({r["kind"]: r["n"] for r in rows})
        counts["total"] = counts["thumbs"] + counts["comparison"]
        return counts

    def existing_feedback_ids(self, feedback_ids: list[str]) -> set[str]:
        """Those of `feedback_ids` still stored (the others were erased with their profile)."""
        found: set[str] = set()
        with self._db() as db:
            for start in range(0, len(feedback_ids), 500):
                chunk = feedback_ids[start:start + 500]
                found |= {r["id"] for r in self._rows(
                    db, f"SELECT id FROM feedback WHERE id IN ({','.join('?' * len(chunk))})", tuple(chunk))}
        return found

    def profiles_with_feedback(self) -> list[str]:
        """Ids of the profiles that have given feedback."""
        with self._db() as db:
            return [r["profile_id"] for r in self._rows(db, "SELECT DISTINCT profile_id FROM feedback "
                                                            "ORDER BY profile_id")]

    def global_contributors(self, created_before: str | None, min_events: int) -> dict[str, str]:
        """Profile id → contributor, for the profiles whose feedback may teach the global adapter: made before
        `created_before` (None: any time) with at least `min_events` feedback events. A profile of an account
        contributes as that account (`account:<key>`: many profiles of one account count as one), a household
        profile as itself (`profile:<id>`)."""
        with self._db() as db:
            rows = self._rows(
                db,
                "SELECT p.id, COALESCE('account:' || p.owner, 'profile:' || p.id) AS contributor FROM profiles p "
                "JOIN feedback f ON f.profile_id = p.id WHERE (? IS NULL OR p.created_at <= ?) "
                "GROUP BY p.id HAVING COUNT(*) >= ? ORDER BY p.id", (created_before, created_before, min_events))
        return {r["id"]: r["contributor"] for r in rows}

    def count_profiles_with_feedback(self, at_most: int) -> int:
        """How many profiles have given feedback, counted up to `at_most` (the index stops there, so checking for a
        handful stays cheap in a home of thousands)."""
        with self._db() as db:
            return self._rows(db, "SELECT COUNT(*) AS n FROM (SELECT DISTINCT profile_id FROM feedback LIMIT ?)",
                              (at_most,))[0]["n"]

    def newest_feedback_time(self, profile_id: str | None = None) -> str | None:
        with self._db() as db:
            if profile_id is None:
                row = self._rows(db, "SELECT MAX(updated_at) AS t FROM feedback")[0]
            else:
                row = self._rows(db, "SELECT MAX(updated_at) AS t FROM feedback WHERE profile_id = ?",
                                 (profile_id,))[0]
        return row["t"]

    def counts(self) -> dict[str, int]:
        """Rows of each table a person's data lives in."""
        with self._db() as db:
            return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("profiles", "conversations", "messages", "comparisons", "feedback")}
