"""What every part of the store shares: one connection per unit of work, IMMEDIATE write transactions, rows as
dicts, ids and timestamps, and the ownership checks that every read and write starts with."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from storage.db import connect, initialise
from storage.errors import NotFound
from storage.owners import acting_account, owner_value


def now() -> str:
    """The current time as stored: UTC, ISO 8601 with microseconds (so it sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex


def seeded_ids(seed: int | str) -> Callable[[], str]:
    """Ids drawn from a seeded generator, for runs that must repeat (benchmarks): ids fix which comparisons are
    held out of training and the replay sample of each update, so random ids make two runs of one seed differ."""
    rng = random.Random(f"attune-ids:{seed}")
    return lambda: uuid.UUID(int=rng.getrandbits(128), version=4).hex


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
            id=row["id"], conversation_id=row["conversation_id"], seq=row["seq"], parent_id=row["parent_id"],
            role=row["role"], content=row["content"], status=row["status"], model_id=row["model_id"],
            settings=json.loads(row["settings"]), adapter_versions=json.loads(row["adapter_versions"]),
            created_at=row["created_at"], vote=row.get("vote"), comment=row.get("comment") or "",
        )


NOT_CONTINUED = ("m.id NOT IN (SELECT json_extract(n.settings, '$.continues') FROM messages n "
                 "WHERE n.parent_id = m.parent_id AND json_extract(n.settings, '$.continues') IS NOT NULL)")
"""SQL: the reply `m` was not continued (Continue wrote on from it, settings.continues): it counts as a reply of
its own, an alternative or a rejected one, only if not."""

MESSAGE_SELECT = """
    SELECT m.*, f.value AS vote, f.comment AS comment
    FROM messages m
    JOIN conversations c ON c.id = m.conversation_id
    LEFT JOIN feedback f ON f.message_id = m.id AND f.kind = 'thumbs'
"""


class StoreBase:
    """The database of one data home. Each public method opens its own connection (any thread may call it) and
    does its writes in one transaction: when a method returns, what it wrote is committed."""

    def __init__(self, path: Path, new_id: Callable[[], str] = new_id):
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

    # ---- ownership checks: an id that does not exist and one the profile does not own read the same -----------

    def _require_profile(self, db: sqlite_utils.Database, profile_id: Any) -> dict:
        sql = "SELECT id, name, created_at, alpha_override, owner FROM profiles WHERE id = ?"
        params: tuple = (str(profile_id),)
        if acting_account() is not None:  # a person's request: only the acting account's own profiles exist
            sql, params = sql + " AND owner IS ?", params + (owner_value(acting_account()),)
        rows = self._rows(db, sql, params) if profile_id else []
        if not rows:
            raise NotFound("That profile does not exist (it may have been deleted). Pick or create a profile.")
        return rows[0]

    def _require_conversation(self, db: sqlite_utils.Database, profile_id: Any, conversation_id: Any) -> dict:
        rows = self._rows(
            db,
            "SELECT id, profile_id, title, created_at, updated_at FROM conversations WHERE id = ? AND profile_id = ?",
            (str(conversation_id), str(profile_id)),
        ) if conversation_id and profile_id else []
        if not rows:
            raise NotFound("That conversation does not exist for this profile.")
        return rows[0]

    def _require_message(self, db: sqlite_utils.Database, profile_id: Any, message_id: Any) -> Message:
        rows = self._rows(db, MESSAGE_SELECT + " WHERE m.id = ? AND c.profile_id = ?",
                          (str(message_id), str(profile_id))) if message_id and profile_id else []
        if not rows:
            raise NotFound("That message does not exist for this profile.")
        return Message.from_row(rows[0])
