"""Every read and write of Attune's data. Callers pass ids; names typed by people are only ever data.

Each public method opens its own connection (one per unit of work, so any thread may call it) and does its
writes in one transaction: when a method returns, what it wrote is committed.
"""

from __future__ import annotations

import json
import random
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from storage.db import connect, initialise
from storage.errors import Conflict, InvalidInput, NotFound

MAX_PROFILE_NAME = 40
THUMBS_VALUES = (-1, 1)
CHOICES = ("a", "b", "tie", "both_bad")
MAX_COMMENT_CHARS = 2_000
PLAIN_ARM = "plain"
"""`probe_records`' name for the plain samples that faced a probed candidate (the explorer's plain arm)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _new_id() -> str:
    return uuid.uuid4().hex


def seeded_ids(seed: int | str) -> Callable[[], str]:
    """Ids drawn from a seeded generator, for runs that must repeat (benchmarks): ids fix which pairs are held out
    of training and the replay sample of each update, so random ids make two runs of one seed differ."""
    rng = random.Random(f"attune-ids:{seed}")
    return lambda: uuid.UUID(int=rng.getrandbits(128), version=4).hex


def validate_profile_name(name: Any) -> str:
    """Return the cleaned name or raise InvalidInput saying what is wrong with it."""
    if not isinstance(name, str):
        raise InvalidInput("A profile name must be text.")
    if "\x00" in name:
        raise InvalidInput("A profile name cannot contain a NUL character.")
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not cleaned:
        raise InvalidInput("A profile name cannot be empty.")
    if len(cleaned) > MAX_PROFILE_NAME:
        raise InvalidInput(f"A profile name can be at most {MAX_PROFILE_NAME} characters (this one has {len(cleaned)}).")
    if "/" in cleaned or "\\" in cleaned:
        raise InvalidInput("A profile name cannot contain '/' or '\\'.")
    if ".." in cleaned:
        raise InvalidInput("A profile name cannot contain '..'.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in cleaned):
        raise InvalidInput("A profile name cannot contain control or invisible formatting characters.")
    return cleaned


def _name_key(name: str) -> str:
    return name.casefold()


@dataclass(frozen=True)
class Message:
    id: str
    conversation_id: str
    seq: int
    parent_id: str | None
    role: str
    content: str
    status: str
    model_id: str | None
    settings: dict
    adapter_versions: dict
    created_at: str
    vote: int | None = None  # thumbs value on this message, if any
    comment: str = ""

    @classmethod
    def from_row(cls, row: dict) -> "Message":
        return cls(
            id=row["id"],
            conversation_id=row["conversation_id"],
            seq=row["seq"],
            parent_id=row["parent_id"],
            role=row["role"],
            content=row["content"],
            status=row["status"],
            model_id=row["model_id"],
            settings=json.loads(row["settings"]),
            adapter_versions=json.loads(row["adapter_versions"]),
            created_at=row["created_at"],
            vote=row.get("vote"),
            comment=row.get("comment") or "",
        )


@dataclass(frozen=True)
class Pair:
    id: str
    user_id: str
    conversation_id: str
    prompt_message_id: str
    a: Message
    b: Message
    choice: str | None


_MESSAGE_SELECT = """
    SELECT m.*, f.value AS vote, f.comment AS comment
    FROM messages m
    JOIN conversations c ON c.id = m.conversation_id
    LEFT JOIN feedback f ON f.message_id = m.id AND f.kind = 'thumbs'
"""


class Store:
    """The database of one data home."""

    def __init__(self, path: Path, new_id: Callable[[], str] = _new_id):
        self.path = Path(path)
        self._new_id = new_id
        initialise(self.path)

    @contextmanager
    def _db(self) -> Iterator[sqlite_utils.Database]:
        db = connect(self.path)
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction. IMMEDIATE takes the write lock up front: a deferred one that reads first fails at
        once with SQLITE_BUSY (no busy wait) when another writer commits in between, as happens under WAL."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.conn.rollback()
                raise
            db.execute("COMMIT")

    @staticmethod
    def _rows(db: sqlite_utils.Database, sql: str, params: tuple | dict = ()) -> list[dict]:
        cursor = db.execute(sql, params)
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]

    # ---- users ---------------------------------------------------------------------------------------------

    def create_user(self, name: Any) -> dict:
        cleaned = validate_profile_name(name)
        now = _now()
        row = {"id": self._new_id(), "name": cleaned, "name_key": _name_key(cleaned), "created_at": now,
               "updated_at": now}
        with self._write() as db:
            if self._rows(db, "SELECT id FROM users WHERE name_key = ?", (row["name_key"],)):
                raise Conflict(f"A profile named '{cleaned}' already exists (names ignore upper/lower case).")
            db.execute(
                "INSERT INTO users (id, name, name_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (row["id"], row["name"], row["name_key"], now, now),
            )
        return {"id": row["id"], "name": cleaned, "created_at": now}

    def rename_user(self, user_id: str, name: Any) -> dict:
        cleaned = validate_profile_name(name)
        with self._write() as db:
            self._require_user(db, user_id)
            clash = self._rows(db, "SELECT id FROM users WHERE name_key = ? AND id != ?", (_name_key(cleaned), user_id))
            if clash:
                raise Conflict(f"A profile named '{cleaned}' already exists (names ignore upper/lower case).")
            db.execute(
                "UPDATE users SET name = ?, name_key = ?, updated_at = ? WHERE id = ?",
                (cleaned, _name_key(cleaned), _now(), user_id),
            )
        return self.get_user(user_id)

    def delete_user(self, user_id: str) -> None:
        """Delete a profile and, by cascade, its conversations, messages and feedback."""
        with self._write() as db:
            self._require_user(db, user_id)
            db.execute("DELETE FROM users WHERE id = ?", (user_id,))

    def get_user(self, user_id: str) -> dict:
        with self._db() as db:
            return self._require_user(db, user_id)

    def find_user_by_name(self, name: str) -> dict:
        with self._db() as db:
            rows = self._rows(db, "SELECT id, name, created_at FROM users WHERE name_key = ?", (_name_key(name.strip()),))
        if not rows:
            raise NotFound(f"No profile is named '{name}'.")
        return rows[0]

    def list_users(self) -> list[dict]:
        with self._db() as db:
            return self._rows(db, "SELECT id, name, created_at FROM users ORDER BY name_key")

    def _require_user(self, db: sqlite_utils.Database, user_id: Any) -> dict:
        rows = self._rows(db, "SELECT id, name, created_at, alpha_override FROM users WHERE id = ?",
                          (str(user_id),)) if user_id else []
        if not rows:
            raise NotFound("That profile does not exist (it may have been deleted). Pick or create a profile.")
        return rows[0]

    # ---- conversations -------------------------------------------------------------------------------------

    def create_conversation(self, user_id: str, title: str) -> dict:
        now = _now()
        conv = {"id": self._new_id(), "user_id": user_id, "title": title, "created_at": now, "updated_at": now}
        with self._write() as db:
            self._require_user(db, user_id)
            db.execute(
                "INSERT INTO conversations (id, user_id, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (conv["id"], user_id, title, now, now),
            )
        return conv

    def list_conversations(self, user_id: str) -> list[dict]:
        with self._db() as db:
            self._require_user(db, user_id)
            return self._rows(
                db,
                "SELECT id, title, created_at, updated_at FROM conversations WHERE user_id = ? "
                "ORDER BY updated_at DESC",
                (user_id,),
            )

    def get_conversation(self, user_id: str, conversation_id: str) -> dict:
        with self._db() as db:
            return self._require_conversation(db, user_id, conversation_id)

    def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        with self._write() as db:
            self._require_conversation(db, user_id, conversation_id)
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def _require_conversation(self, db: sqlite_utils.Database, user_id: Any, conversation_id: Any) -> dict:
        rows = self._rows(
            db,
            "SELECT id, user_id, title, created_at, updated_at FROM conversations WHERE id = ? AND user_id = ?",
            (str(conversation_id), str(user_id)),
        ) if conversation_id and user_id else []
        if not rows:
            raise NotFound("That conversation does not exist for this profile.")
        return rows[0]

    # ---- messages ------------------------------------------------------------------------------------------

    def add_message(
        self,
        user_id: str,
        conversation_id: str,
        role: str,
        content: str,
        *,
        parent_id: str | None = None,
        status: str = "active",
        model_id: str | None = None,
        settings: dict | None = None,
        adapter_versions: dict | None = None,
        replaces: str | None = None,
    ) -> Message:
        """Append a message. `replaces`: the active assistant reply it takes over from (a retry), which stays
        stored as superseded, in the same transaction."""
        with self._write() as db:
            self._require_conversation(db, user_id, conversation_id)
            self._supersede(db, user_id, conversation_id, replaces)
            message_id = self._insert_message(
                db, conversation_id, role, content, parent_id, status, model_id, settings, adapter_versions
            )
        return self.get_message(user_id, message_id)

    def _supersede(self, db, user_id: str, conversation_id: str, message_id: str | None) -> None:
        if message_id is None:
            return
        old = self._require_message(db, user_id, message_id)
        if old.role != "assistant" or old.status != "active" or old.conversation_id != conversation_id:
            raise Conflict("That reply is no longer the current one; reopen the conversation.")
        db.execute("UPDATE messages SET status = 'superseded' WHERE id = ?", (message_id,))

    def _insert_message(self, db, conversation_id, role, content, parent_id, status, model_id, settings, adapters) -> str:
        message_id = self._new_id()
        now = _now()
        db.execute(
            "INSERT INTO messages (id, conversation_id, seq, parent_id, role, content, status, model_id, settings, "
            "adapter_versions, created_at) VALUES (?, ?, "
            "(SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = ?), ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message_id, conversation_id, conversation_id, parent_id, role, content, status, model_id,
                json.dumps(settings or {}), json.dumps(adapters or {}), now,
            ),
        )
        db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
        return message_id

    def get_message(self, user_id: str, message_id: str) -> Message:
        with self._db() as db:
            return self._require_message(db, user_id, message_id)

    def _require_message(self, db, user_id: Any, message_id: Any) -> Message:
        rows = self._rows(db, _MESSAGE_SELECT + " WHERE m.id = ? AND c.user_id = ?", (str(message_id), str(user_id))) \
            if message_id and user_id else []
        if not rows:
            raise NotFound("That message does not exist for this profile.")
        return Message.from_row(rows[0])

    def transcript(self, user_id: str, conversation_id: str) -> list[Message]:
        """The active messages of a conversation, in order, each with its thumbs vote."""
        with self._db() as db:
            self._require_conversation(db, user_id, conversation_id)
            rows = self._rows(
                db, _MESSAGE_SELECT + " WHERE m.conversation_id = ? AND m.status = 'active' ORDER BY m.seq",
                (conversation_id,),
            )
        return [Message.from_row(r) for r in rows]

    # ---- comparisons ---------------------------------------------------------------------------------------

    def create_pair(
        self,
        user_id: str,
        conversation_id: str,
        prompt_message_id: str,
        a_content: str,
        b_content: str,
        *,
        model_id: str | None,
        settings: dict,
        adapter_versions: dict | None = None,
        replaces: str | None = None,
        candidate_settings: tuple[dict, dict] | None = None,
    ) -> Pair:
        """Store two candidate replies to `prompt_message_id` as a comparison awaiting a choice.
        `replaces`: as in `add_message`. `candidate_settings`: facts of A and of B alone, added to `settings`
        (e.g. whether each ended by itself, or the exploration probe one followed)."""
        with self._write() as db:
            self._require_conversation(db, user_id, conversation_id)
            if self._pending_pair_id(db, conversation_id):
                raise Conflict("A comparison is still waiting for your choice.")
            self._supersede(db, user_id, conversation_id, replaces)
            ids = [
                self._insert_message(db, conversation_id, "assistant", text, prompt_message_id, "candidate",
                                     model_id, {**settings, **own}, adapter_versions)
                for text, own in zip((a_content, b_content), candidate_settings or ({}, {}), strict=True)
            ]
            pair_id = self._new_id()
            db.execute(
                "INSERT INTO pairs (id, user_id, conversation_id, prompt_message_id, a_message_id, b_message_id, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pair_id, user_id, conversation_id, prompt_message_id, ids[0], ids[1], _now()),
            )
        return self.get_pair(user_id, pair_id)

    def _pending_pair_id(self, db, conversation_id: str) -> str | None:
        rows = self._rows(
            db,
            "SELECT p.id FROM pairs p JOIN messages a ON a.id = p.a_message_id "
            "WHERE p.conversation_id = ? AND a.status = 'candidate'",
            (conversation_id,),
        )
        return rows[0]["id"] if rows else None

    def pending_pair(self, user_id: str, conversation_id: str) -> Pair | None:
        with self._db() as db:
            self._require_conversation(db, user_id, conversation_id)
            pair_id = self._pending_pair_id(db, conversation_id)
        return self.get_pair(user_id, pair_id) if pair_id else None

    def get_pair(self, user_id: str, pair_id: str) -> Pair:
        with self._db() as db:
            return self._require_pair(db, user_id, pair_id)

    def _require_pair(self, db, user_id: Any, pair_id: Any) -> Pair:
        rows = self._rows(
            db,
            "SELECT p.*, f.choice FROM pairs p LEFT JOIN feedback f ON f.pair_id = p.id "
            "WHERE p.id = ? AND p.user_id = ?",
            (str(pair_id), str(user_id)),
        ) if pair_id and user_id else []
        if not rows:
            raise NotFound("That comparison does not exist for this profile.")
        row = rows[0]
        return Pair(
            id=row["id"], user_id=row["user_id"], conversation_id=row["conversation_id"],
            prompt_message_id=row["prompt_message_id"],
            a=self._require_message(db, user_id, row["a_message_id"]),
            b=self._require_message(db, user_id, row["b_message_id"]),
            choice=row["choice"],
        )

    def record_choice(self, user_id: str, pair_id: str, choice: Any, comment: str = "") -> Pair:
        """Store the choice (again: it replaces the earlier one) and let the chosen side continue.

        A continues for 'a', 'tie' and 'both_bad'; B for 'b'. The continuation can only change while the
        pair is still the newest turn of its conversation; after that a new choice only updates the record.
        """
        if choice not in CHOICES:
            raise InvalidInput(f"A choice must be one of {', '.join(CHOICES)} (got {choice!r}).")
        comment = _clean_comment(comment)
        with self._write() as db:
            pair = self._require_pair(db, user_id, pair_id)
            newest = self._rows(db, "SELECT MAX(seq) AS s FROM messages WHERE conversation_id = ?",
                                (pair.conversation_id,))[0]["s"]
            if max(pair.a.seq, pair.b.seq) == newest:
                keep, drop = (pair.b, pair.a) if choice == "b" else (pair.a, pair.b)
                db.execute("UPDATE messages SET status = 'active' WHERE id = ?", (keep.id,))
                db.execute("UPDATE messages SET status = 'rejected' WHERE id = ?", (drop.id,))
            self._upsert_feedback(db, user_id, "pairwise", pair_id=pair_id, choice=choice, comment=comment)
        return self.get_pair(user_id, pair_id)

    # ---- feedback ------------------------------------------------------------------------------------------

    def record_thumbs(self, user_id: str, message_id: str, value: Any, comment: str | None = None) -> dict:
        """Store (or replace) this profile's thumbs on one of its assistant replies. Committed on return."""
        if value not in THUMBS_VALUES or isinstance(value, bool):
            raise InvalidInput("A thumbs vote must be +1 (up) or -1 (down).")
        with self._write() as db:
            message = self._require_message(db, user_id, message_id)
            if message.role != "assistant":
                raise InvalidInput("Only assistant replies can be voted on.")
            keep_comment = comment is None
            return self._upsert_feedback(
                db, user_id, "thumbs", message_id=message_id, value=value,
                comment=message.comment if keep_comment else _clean_comment(comment),
            )

    def set_comment(self, user_id: str, message_id: str, comment: str) -> dict:
        with self._write() as db:
            message = self._require_message(db, user_id, message_id)
            if message.vote is None:
                raise InvalidInput("Vote on the reply before adding a comment.")
            db.execute(
                "UPDATE feedback SET comment = ?, updated_at = ? WHERE message_id = ?",
                (_clean_comment(comment), _now(), message_id),
            )
            return self._rows(db, "SELECT * FROM feedback WHERE message_id = ?", (message_id,))[0]

    def _upsert_feedback(self, db, user_id: str, kind: str, *, message_id: str | None = None,
                         pair_id: str | None = None, value: int | None = None, choice: str | None = None,
                         comment: str = "") -> dict:
        key_column, key = ("message_id", message_id) if kind == "thumbs" else ("pair_id", pair_id)
        now = _now()
        existing = self._rows(db, f"SELECT id FROM feedback WHERE {key_column} = ?", (key,))
        if existing:
            db.execute(
                "UPDATE feedback SET value = ?, choice = ?, comment = ?, updated_at = ? WHERE id = ?",
                (value, choice, comment, now, existing[0]["id"]),
            )
            feedback_id = existing[0]["id"]
        else:
            feedback_id = self._new_id()
            db.execute(
                "INSERT INTO feedback (id, user_id, kind, message_id, pair_id, value, choice, comment, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (feedback_id, user_id, kind, message_id, pair_id, value, choice, comment, now, now),
            )
        return self._rows(db, "SELECT * FROM feedback WHERE id = ?", (feedback_id,))[0]

    def feedback(self, user_id: str) -> list[dict]:
        """Every feedback event of a profile, oldest first, with the content it is about.

        Each row has the event's fields plus `prompt` (the conversation up to and including the user message
        the reply answers, as role/content dicts), and `completion` (thumbs) or `a`/`b` (pairwise) texts.
        Thumbs rows also list as `superseded` the earlier replies to the same message that a retry replaced
        (and that were not themselves liked). `ended` says, per text (`completion` and the `superseded` list, or `a`
        and `b`), whether the reply ended by itself rather than at its budget (replies stored before this: True).
        Pairwise rows also have `probe` and `instruction`: per candidate, the name and the text of the hidden
        exploration instruction it was generated with (None: the message as sent; candidates stored before the text
        was kept have only the name).
        """
        with self._db() as db:
            self._require_user(db, user_id)
            events = self._rows(db, "SELECT * FROM feedback WHERE user_id = ? ORDER BY created_at", (user_id,))
            out = []
            for event in events:
                if event["kind"] == "thumbs":
                    reply = self._require_message(db, user_id, event["message_id"])
                    event["completion"] = reply.content
                    old = self._rows(
                        db,
                        "SELECT m.content, m.settings FROM messages m LEFT JOIN feedback f ON f.message_id = m.id "
                        "WHERE m.parent_id = ? AND m.role = 'assistant' AND m.status = 'superseded' "
                        "AND m.seq < ? AND (f.value IS NULL OR f.value < 0) ORDER BY m.seq",
                        (reply.parent_id, reply.seq),
                    )
                    event["superseded"] = [r["content"] for r in old]
                    event["ended"] = {"completion": _ended(reply.settings),
                                      "superseded": [_ended(json.loads(r["settings"] or "{}")) for r in old]}
                    prompt_id = reply.parent_id
                else:
                    pair = self._require_pair(db, user_id, event["pair_id"])
                    event["a"], event["b"] = pair.a.content, pair.b.content
                    event["ended"] = {"a": _ended(pair.a.settings), "b": _ended(pair.b.settings)}
                    event["probe"] = {side: m.settings.get("probe") for side, m in (("a", pair.a), ("b", pair.b))}
                    event["instruction"] = {side: m.settings.get("probe_instruction")
                                            for side, m in (("a", pair.a), ("b", pair.b))}
                    prompt_id, reply = pair.prompt_message_id, pair.a
                event["prompt"] = self._context_through(db, prompt_id, reply.settings.get("system_prompt"))
                out.append(event)
        return out

    def probe_records(self, user_id: str) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
        """Exploration probes' record in compare mode, of this profile and of everyone (this profile included), in
        one aggregated scan: probe name → (times its candidate was chosen, times it was not). A tie counts half each
        way; "both bad" counts as not chosen. A candidate without a probe facing one with a probe is the plain
        sample's record, under `PLAIN_ARM` ("plain"): its wins against probes, whichever pairing stored it."""
        with self._db() as db:
            rows = self._rows(
                db,
                "SELECT probe, SUM(won) AS all_won, COUNT(*) AS all_n, "
                "SUM(CASE WHEN mine THEN won ELSE 0 END) AS my_won, SUM(mine) AS my_n FROM ("
                "  SELECT COALESCE(json_extract(m.settings, '$.probe'), "
                "                  CASE WHEN json_extract(o.settings, '$.probe') IS NOT NULL THEN ? END) AS probe, "
                "  p.user_id = ? AS mine, "
                "  CASE WHEN f.choice = 'tie' THEN 0.5 "
                "       WHEN f.choice = (CASE WHEN m.id = p.a_message_id THEN 'a' ELSE 'b' END) THEN 1.0 "
                "       ELSE 0.0 END AS won "
                "  FROM pairs p JOIN feedback f ON f.pair_id = p.id "
                "  JOIN messages m ON m.id IN (p.a_message_id, p.b_message_id) "
                "  JOIN messages o ON o.id = (CASE WHEN m.id = p.a_message_id THEN p.b_message_id "
                "                                  ELSE p.a_message_id END)"
                ") WHERE probe IS NOT NULL GROUP BY probe",
                (PLAIN_ARM, user_id),
            )
        mine = {r["probe"]: (float(r["my_won"]), r["my_n"] - float(r["my_won"])) for r in rows if r["my_n"]}
        everyone = {r["probe"]: (float(r["all_won"]), r["all_n"] - float(r["all_won"])) for r in rows}
        return mine, everyone

    def probe_record(self, user_id: str | None = None) -> dict[str, tuple[float, float]]:
        """`probe_records` of one profile, or everyone's (None)."""
        mine, everyone = self.probe_records(user_id or "")
        return everyone if user_id is None else mine

    def _context_through(self, db, message_id: str | None, system_prompt: str | None) -> list[dict]:
        """The system prompt a reply was generated with, then the active transcript through `message_id`."""
        if message_id is None:
            return []
        target = self._rows(db, "SELECT conversation_id, seq FROM messages WHERE id = ?", (message_id,))[0]
        rows = self._rows(
            db,
            "SELECT role, content FROM messages WHERE conversation_id = ? AND seq <= ? "
            "AND (status = 'active' OR id = ?) ORDER BY seq",
            (target["conversation_id"], target["seq"], message_id),
        )
        return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + rows

    # ---- preference learning: counts, adapter versions, training jobs ----------------------------------------

    def set_alpha_override(self, user_id: str, alpha: float | None) -> None:
        """Pin this profile's personal weight α (0 = everyone, 1 = just me), or None for the automatic n/(n+k)."""
        if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
            raise InvalidInput(f"The personal weight must be between 0 and 1 (got {alpha}).")
        with self._write() as db:
            self._require_user(db, user_id)
            db.execute("UPDATE users SET alpha_override = ?, updated_at = ? WHERE id = ?",
                       (None if alpha is None else float(alpha), _now(), user_id))

    def feedback_counts(self, user_id: str | None = None, since: str | None = None) -> dict[str, int]:
        """Feedback events (of one profile, or everyone's), counting those updated after `since` if given."""
        where, params = ["1 = 1"], []
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if since is not None:
            where.append("updated_at > ?")
            params.append(since)
        with self._db() as db:
            rows = self._rows(db, f"SELECT kind, COUNT(*) AS n FROM feedback WHERE {' AND '.join(where)} GROUP BY kind",
                              tuple(params))
        counts = {"thumbs": 0, "pairwise": 0}
        counts.update({r["kind"]: r["n"] for r in rows})
        counts["total"] = counts["thumbs"] + counts["pairwise"]
        return counts

    def users_with_feedback(self) -> list[str]:
        with self._db() as db:
            return [r["user_id"] for r in self._rows(db, "SELECT DISTINCT user_id FROM feedback ORDER BY user_id")]

    def profiles_with_feedback(self, at_most: int) -> int:
        """How many profiles have given feedback, counted up to `at_most` (the index stops there, so checking for a
        handful stays cheap in a home of thousands)."""
        with self._db() as db:
            return self._rows(db, "SELECT COUNT(*) AS n FROM (SELECT DISTINCT user_id FROM feedback LIMIT ?)",
                              (at_most,))[0]["n"]

    def newest_feedback_time(self, user_id: str | None = None) -> str | None:
        with self._db() as db:
            if user_id is None:
                row = self._rows(db, "SELECT MAX(updated_at) AS t FROM feedback")[0]
            else:
                row = self._rows(db, "SELECT MAX(updated_at) AS t FROM feedback WHERE user_id = ?", (user_id,))[0]
        return row["t"]

    def current_adapter(self, adapter: str) -> dict | None:
        """The served version of an adapter, with its manifest; None if it has none."""
        with self._db() as db:
            rows = self._rows(
                db,
                "SELECT v.* FROM adapters a JOIN adapter_versions v "
                "ON v.adapter = a.adapter AND v.version = a.current_version WHERE a.adapter = ?",
                (adapter,),
            )
        return _version_row(rows[0]) if rows else None

    def adapter_versions(self, adapter: str) -> list[dict]:
        with self._db() as db:
            rows = self._rows(db, "SELECT * FROM adapter_versions WHERE adapter = ? ORDER BY version", (adapter,))
        return [_version_row(r) for r in rows]

    def highest_version(self, adapter: str) -> int:
        with self._db() as db:
            return self._rows(db, "SELECT COALESCE(MAX(version), 0) AS v FROM adapter_versions WHERE adapter = ?",
                              (adapter,))[0]["v"]

    def publish_version(self, adapter: str, user_id: str | None, version: int, path: str,
                        parent_version: int | None, manifest: dict, trained_until: str) -> dict:
        """Record a version whose folder is already in place and point the adapter at it, in one transaction."""
        now = _now()
        with self._write() as db:
            if user_id is not None:
                self._require_user(db, user_id)
            db.execute(
                "INSERT INTO adapter_versions (id, adapter, user_id, version, path, parent_version, manifest, "
                "trained_until, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self._new_id(), adapter, user_id, version, path, parent_version, json.dumps(manifest), trained_until,
                 now),
            )
            db.execute(
                "INSERT INTO adapters (adapter, user_id, current_version, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (adapter) DO UPDATE SET current_version = excluded.current_version, "
                "updated_at = excluded.updated_at",
                (adapter, user_id, version, now),
            )
        return self.current_adapter(adapter)

    def drop_adapter(self, adapter: str) -> list[str]:
        """Forget every version of an adapter; return their folder paths (for the registry to delete)."""
        with self._write() as db:
            paths = [r["path"] for r in self._rows(db, "SELECT path FROM adapter_versions WHERE adapter = ?",
                                                   (adapter,))]
            db.execute("DELETE FROM adapters WHERE adapter = ?", (adapter,))
            db.execute("DELETE FROM adapter_versions WHERE adapter = ?", (adapter,))
        return paths

    def known_adapter_paths(self) -> set[str]:
        with self._db() as db:
            return {r["path"] for r in self._rows(db, "SELECT path FROM adapter_versions")}

    def enqueue_job(self, adapter: str, user_id: str | None, reason: str) -> dict:
        """Queue a training job for an adapter unless one is already queued (then that one is returned)."""
        with self._write() as db:
            if user_id is not None:
                self._require_user(db, user_id)
            queued = self._rows(db, "SELECT * FROM training_jobs WHERE adapter = ? AND status = 'queued'", (adapter,))
            if queued:
                return queued[0]
            job_id = self._new_id()
            db.execute(
                "INSERT INTO training_jobs (id, adapter, user_id, status, reason, created_at) "
                "VALUES (?, ?, ?, 'queued', ?, ?)",
                (job_id, adapter, user_id, reason, _now()),
            )
            return self._rows(db, "SELECT * FROM training_jobs WHERE id = ?", (job_id,))[0]

    def claim_job(self, stale_seconds: float) -> dict | None:
        """Take the oldest job to run: a running one whose worker stopped beating (resumed), else a queued one."""
        stale_before = (datetime.now(timezone.utc) - timedelta(seconds=stale_seconds)).isoformat(timespec="microseconds")
        with self._write() as db:
            rows = self._rows(
                db,
                "SELECT * FROM training_jobs WHERE (status = 'running' AND heartbeat_at < ?) OR status = 'queued' "
                "ORDER BY status = 'queued', created_at LIMIT 1",
                (stale_before,),
            )
            if not rows:
                return None
            now = _now()
            db.execute(
                "UPDATE training_jobs SET status = 'running', attempts = attempts + 1, started_at = ?, "
                "heartbeat_at = ?, progress = 0, message = ? WHERE id = ?",
                (now, now, "resumed after the worker stopped" if rows[0]["status"] == "running" else "started",
                 rows[0]["id"]),
            )
            return self._rows(db, "SELECT * FROM training_jobs WHERE id = ?", (rows[0]["id"],))[0]

    def job_progress(self, job_id: str, progress: float, message: str) -> None:
        with self._write() as db:
            db.execute("UPDATE training_jobs SET progress = ?, message = ?, heartbeat_at = ? WHERE id = ?",
                       (progress, message, _now(), job_id))

    def finish_job(self, job_id: str, status: str, message: str, result: dict | None = None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE training_jobs SET status = ?, message = ?, result = ?, finished_at = ?, progress = ? "
                "WHERE id = ?",
                (status, message, json.dumps(result or {}), _now(), 1.0 if status == "done" else 0.0, job_id),
            )

    def get_job(self, job_id: str) -> dict:
        with self._db() as db:
            rows = self._rows(db, "SELECT * FROM training_jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound("That training job does not exist.")
        return rows[0]

    def latest_job(self, adapter: str) -> dict | None:
        with self._db() as db:
            rows = self._rows(db, "SELECT * FROM training_jobs WHERE adapter = ? ORDER BY created_at DESC LIMIT 1",
                              (adapter,))
        return rows[0] if rows else None

    def cancel_jobs(self, adapter: str) -> None:
        with self._write() as db:
            db.execute("UPDATE training_jobs SET status = 'cancelled', finished_at = ? "
                       "WHERE adapter = ? AND status IN ('queued', 'running')", (_now(), adapter))

    def counts(self) -> dict[str, int]:
        with self._db() as db:
            return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("users", "conversations", "messages", "pairs", "feedback")}


def _clean_comment(comment: Any) -> str:
    if comment is None:
        return ""
    if not isinstance(comment, str):
        raise InvalidInput("A comment must be text.")
    comment = comment.replace("\x00", "").strip()
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidInput(f"A comment can be at most {MAX_COMMENT_CHARS} characters (this one has {len(comment)}).")
    return comment


def _version_row(row: dict) -> dict:
    return {**row, "manifest": json.loads(row["manifest"])}


def _ended(settings: dict) -> bool:
    """Whether a stored reply ended by itself (the generation facts' `ended`: per candidate, or a one-reply
    list); True when unrecorded, as every reply was treated before."""
    ended = settings.get("ended", True)
    if isinstance(ended, list):
        return bool(ended[0]) if len(ended) == 1 else True
    return bool(ended)
