"""Comparisons: two candidate replies to one message, stored while they wait for the person's choice
(`storage.feedback` records the choice)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.base import Message, StoreBase, now
from storage.conversations import Conversations
from storage.errors import Conflict, NotFound


@dataclass(frozen=True)
class Comparison:
    id: str
    profile_id: str
    conversation_id: str
    prompt_message_id: str
    a: Message
    b: Message
    choice: str | None


class Comparisons(Conversations, StoreBase):
    def create_comparison(
        self,
        profile_id: str,
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
    ) -> Comparison:
        """Store two candidate replies to `prompt_message_id` as a comparison awaiting a choice.
        `replaces`: as in `add_message`. `candidate_settings`: facts of A and of B alone, added to `settings`
        (e.g. whether each ended by itself, or the exploration probe one followed)."""
        with self._write() as db:
            self._require_conversation(db, profile_id, conversation_id)
            if self._pending_comparison_id(db, conversation_id):
                raise Conflict("A comparison is still waiting for your choice.")
            self._supersede(db, profile_id, conversation_id, replaces)
            ids = [
                self._insert_message(db, conversation_id, "assistant", text, prompt_message_id, "candidate",
                                     model_id, {**settings, **own}, adapter_versions)
                for text, own in zip((a_content, b_content), candidate_settings or ({}, {}), strict=True)
            ]
            comparison_id = self._new_id()
            db.execute(
                "INSERT INTO comparisons (id, profile_id, conversation_id, prompt_message_id, a_message_id, "
                "b_message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (comparison_id, profile_id, conversation_id, prompt_message_id, ids[0], ids[1], now()),
            )
        return self.get_comparison(profile_id, comparison_id)

    def _pending_comparison_id(self, db, conversation_id: str) -> str | None:
        rows = self._rows(
            db,
            "SELECT p.id FROM comparisons p JOIN messages a ON a.id = p.a_message_id "
            "WHERE p.conversation_id = ? AND a.status = 'candidate'",
            (conversation_id,),
        )
        return rows[0]["id"] if rows else None

    def pending_comparison(self, profile_id: str, conversation_id: str) -> Comparison | None:
        with self._db() as db:
            self._require_conversation(db, profile_id, conversation_id)
            comparison_id = self._pending_comparison_id(db, conversation_id)
        return self.get_comparison(profile_id, comparison_id) if comparison_id else None

    def get_comparison(self, profile_id: str, comparison_id: str) -> Comparison:
        with self._db() as db:
            return self._require_comparison(db, profile_id, comparison_id)

    def _require_comparison(self, db, profile_id: Any, comparison_id: Any) -> Comparison:
        rows = self._rows(
            db,
            "SELECT p.*, f.choice FROM comparisons p LEFT JOIN feedback f ON f.comparison_id = p.id "
            "WHERE p.id = ? AND p.profile_id = ?",
            (str(comparison_id), str(profile_id)),
        ) if comparison_id and profile_id else []
        if not rows:
            raise NotFound("That comparison does not exist for this profile.")
        row = rows[0]
        return Comparison(
            id=row["id"], profile_id=row["profile_id"], conversation_id=row["conversation_id"],
            prompt_message_id=row["prompt_message_id"],
            a=self._require_message(db, profile_id, row["a_message_id"]),
            b=self._require_message(db, profile_id, row["b_message_id"]),
            choice=row["choice"],
        )
