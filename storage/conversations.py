"""Conversations and their messages: append, supersede on retry, read the active transcript."""

from __future__ import annotations

import json

from storage.base import MESSAGE_SELECT, NOT_CONTINUED, Message, StoreBase, now
from storage.errors import Conflict, InvalidInput
from storage.text import require_encodable

MAX_TITLE = 80


class Conversations(StoreBase):
    def create_conversation(self, profile_id: str, title: str) -> dict:
        created = now()
        conversation = {"id": self._new_id(), "profile_id": profile_id, "title": title, "created_at": created,
                        "updated_at": created}
        with self._write() as db:
            self._require_profile(db, profile_id)
            db.execute("INSERT INTO conversations (id, profile_id, title, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?)", (conversation["id"], profile_id, title, created, created))
        return conversation

    def list_conversations(self, profile_id: str) -> list[dict]:
        with self._db() as db:
            self._require_profile(db, profile_id)
            return self._rows(db, "SELECT id, title, created_at, updated_at FROM conversations "
                                  "WHERE profile_id = ? ORDER BY updated_at DESC", (profile_id,))

    def get_conversation(self, profile_id: str, conversation_id: str) -> dict:
        with self._db() as db:
            return self._require_conversation(db, profile_id, conversation_id)

    def rename_conversation(self, profile_id: str, conversation_id: str, title: object) -> dict:
        """Give a conversation a new title: one line of at most `MAX_TITLE` characters."""
        if not isinstance(title, str) or not " ".join(title.split()):
            raise InvalidInput("A conversation title cannot be empty.")
        title = require_encodable(" ".join(title.split()), "The title")
        if len(title) > MAX_TITLE:
            raise InvalidInput(f"A conversation title can be at most {MAX_TITLE} characters.")
        with self._write() as db:
            self._require_conversation(db, profile_id, conversation_id)
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))
            return self._require_conversation(db, profile_id, conversation_id)

    def delete_conversation(self, profile_id: str, conversation_id: str) -> None:
        with self._write() as db:
            self._require_conversation(db, profile_id, conversation_id)
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def add_message(
        self,
        profile_id: str,
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
        """Append a message. `replaces`: the active message it takes over from, which stays stored as superseded,
        in the same transaction: an assistant reply (a retry, a continued reply) or the last user message (an edit:
        its reply is superseded with it)."""
        with self._write() as db:
            self._require_conversation(db, profile_id, conversation_id)
            self._supersede(db, profile_id, conversation_id, replaces)
            message_id = self._insert_message(db, conversation_id, role, content, parent_id, status, model_id,
                                              settings, adapter_versions)
        return self.get_message(profile_id, message_id)

    def _supersede(self, db, profile_id: str, conversation_id: str, message_id: str | None) -> None:
        if message_id is None:
            return
        old = self._require_message(db, profile_id, message_id)
        if old.status != "active" or old.conversation_id != conversation_id:
            raise Conflict("That message is no longer the current one; reopen the conversation.")
        if old.role == "user":
            later = self._rows(db, "SELECT role FROM messages WHERE conversation_id = ? AND seq > ? "
                                   "AND status = 'active'", (conversation_id, old.seq))
            if any(r["role"] == "user" for r in later):
                raise Conflict("Only your last message can be edited.")
            db.execute("UPDATE messages SET status = 'superseded' WHERE conversation_id = ? AND seq > ? "
                       "AND status = 'active'", (conversation_id, old.seq))
        db.execute("UPDATE messages SET status = 'superseded' WHERE id = ?", (message_id,))

    def replies_to(self, profile_id: str, message_id: str) -> list[Message]:
        """Every reply written to a user message, active or superseded (a retry's earlier ones), oldest first;
        comparison candidates and replies continued into a longer one are not among them."""
        with self._db() as db:
            self._require_message(db, profile_id, message_id)
            rows = self._rows(db, MESSAGE_SELECT + " WHERE m.parent_id = ? AND m.role = 'assistant' "
                                                   f"AND m.status IN ('active', 'superseded') AND {NOT_CONTINUED} "
                                                   "ORDER BY m.seq", (message_id,))
        return [Message.from_row(r) for r in rows]

    def switch_reply(self, profile_id: str, message_id: str) -> Message:
        """Make an earlier reply to the last user message the one the conversation goes on from (browsing a
        retry's replies); the reply active until now is superseded."""
        with self._write() as db:
            chosen = self._require_message(db, profile_id, message_id)
            if chosen.role != "assistant" or chosen.status not in ("active", "superseded"):
                raise Conflict("That reply cannot be shown here; reopen the conversation.")
            current = self._rows(db, "SELECT id, parent_id FROM messages WHERE conversation_id = ? AND "
                                     "status = 'active' ORDER BY seq DESC LIMIT 1", (chosen.conversation_id,))
            if not current or current[0]["parent_id"] != chosen.parent_id:
                raise Conflict("Only the replies to your last message can be browsed.")
            db.execute("UPDATE messages SET status = 'superseded' WHERE id = ?", (current[0]["id"],))
            db.execute("UPDATE messages SET status = 'active' WHERE id = ?", (message_id,))
        return self.get_message(profile_id, message_id)

    def _insert_message(self, db, conversation_id, role, content, parent_id, status, model_id, settings,
                        adapters) -> str:
        message_id, created = self._new_id(), now()
        db.execute(
            "INSERT INTO messages (id, conversation_id, seq, parent_id, role, content, status, model_id, settings, "
            "adapter_versions, created_at) VALUES (?, ?, "
            "(SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = ?), ?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, conversation_id, conversation_id, parent_id, role, content, status, model_id,
             json.dumps(settings or {}), json.dumps(adapters or {}), created),
        )
        db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (created, conversation_id))
        return message_id

    def last_personal_version(self, profile_id: str) -> str | None:
        """The personal adapter version ("v0003") that wrote this profile's newest reply; None if none did."""
        with self._db() as db:
            self._require_profile(db, profile_id)
            rows = self._rows(
                db,
                "SELECT json_extract(m.adapter_versions, '$.personal') AS personal FROM messages m "
                "JOIN conversations c ON c.id = m.conversation_id WHERE c.profile_id = ? AND m.role = 'assistant' "
                "ORDER BY m.created_at DESC LIMIT 1", (profile_id,))
        return rows[0]["personal"] if rows else None

    def recent_user_messages(self, profile_id: str, limit: int = 10) -> list[Message]:
        """This profile's newest messages (its own words, each text once), newest first."""
        with self._db() as db:
            self._require_profile(db, profile_id)
            rows = self._rows(db, MESSAGE_SELECT + " WHERE c.profile_id = ? AND m.role = 'user' "
                                                   "ORDER BY m.created_at DESC LIMIT ?", (profile_id, limit * 4))
        unique: dict[str, Message] = {}
        for row in rows:
            unique.setdefault(row["content"], Message.from_row(row))
        return list(unique.values())[:limit]

    def get_message(self, profile_id: str, message_id: str) -> Message:
        with self._db() as db:
            return self._require_message(db, profile_id, message_id)

    def transcript(self, profile_id: str, conversation_id: str) -> list[Message]:
        """The active messages of a conversation, in order, each with its thumbs vote."""
        with self._db() as db:
            self._require_conversation(db, profile_id, conversation_id)
            rows = self._rows(db, MESSAGE_SELECT + " WHERE m.conversation_id = ? AND m.status = 'active' "
                                                   "ORDER BY m.seq", (conversation_id,))
        return [Message.from_row(r) for r in rows]

    def conversation_messages(self, profile_id: str, conversation_id: str) -> list[Message]:
        """Every message of a conversation, in order, whatever its status (superseded, candidate, rejected too)."""
        with self._db() as db:
            self._require_conversation(db, profile_id, conversation_id)
            rows = self._rows(db, MESSAGE_SELECT + " WHERE m.conversation_id = ? ORDER BY m.seq", (conversation_id,))
        return [Message.from_row(r) for r in rows]

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
