"""Profiles: create, rename, delete, find; names are data, ids are random."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from storage.base import StoreBase, now
from storage.errors import Conflict, InvalidInput, NotFound
from storage.owners import acting_account, owner_value
from storage.text import require_encodable

MAX_PROFILE_NAME = 40
MAX_NOTE_CHARS = 500
LOOK_ALIKE_SCRIPTS = {"LATIN", "CYRILLIC", "GREEK"}
"""Scripts whose letters look alike ("a" and Cyrillic "а"): one name may use one of them, not two."""


def validate_profile_name(name: Any) -> str:
    """Return the cleaned name or raise InvalidInput saying what is wrong with it."""
    if not isinstance(name, str):
        raise InvalidInput("A profile name must be text.")
    if "\x00" in name:
        raise InvalidInput("A profile name cannot contain a NUL character.")
    cleaned = unicodedata.normalize("NFC", require_encodable(name, "The profile name")).strip()
    if not cleaned:
        raise InvalidInput("A profile name cannot be empty.")
    if len(cleaned) > MAX_PROFILE_NAME:
        raise InvalidInput(f"A profile name can be at most {MAX_PROFILE_NAME} characters "
                           f"(this one has {len(cleaned)}).")
    if "/" in cleaned or "\\" in cleaned:
        raise InvalidInput("A profile name cannot contain '/' or '\\'.")
    if ".." in cleaned:
        raise InvalidInput("A profile name cannot contain '..'.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in cleaned):
        raise InvalidInput("A profile name cannot contain control or invisible formatting characters.")
    mixed = sorted(_scripts(cleaned) & LOOK_ALIKE_SCRIPTS)
    if len(mixed) > 1:
        raise InvalidInput(f"A profile name cannot mix {' and '.join(s.title() for s in mixed)} letters: some look "
                           "the same and would make two names look identical.")
    return cleaned


def name_key(name: str) -> str:
    """What two names must not share: the same after compatibility normalization and case folding, so "Bob",
    "BOB" and a fullwidth "Ｂｏｂ" are one name."""
    return unicodedata.normalize("NFKC", name).casefold()


def stored_key(name: str, owner: str | None) -> str:
    """`profiles.name_key`: the name's key, scoped to its account (names are unique per account, so another
    account's "Ann" is neither refused nor revealed). Unit separator U+001F cannot occur in a name or account."""
    return name_key(name) if owner is None else f"{name_key(name)}\x1f{owner}"


def _scripts(name: str) -> set[str]:
    """The scripts of a name's letters, by the first word of their Unicode names ("LATIN", "CYRILLIC", …)."""
    return {unicodedata.name(ch, "?").split(" ")[0] for ch in unicodedata.normalize("NFKC", name) if ch.isalpha()}


def _taken(name: str) -> Conflict:
    return Conflict(f"A profile named '{name}' already exists (names ignore upper/lower case and character width).")


class Profiles(StoreBase):
    def create_profile(self, name: Any, max_profiles: int | None = None) -> dict:
        """A new profile of the acting account (household when none acts); refused beyond `max_profiles` of it."""
        cleaned = validate_profile_name(name)
        created, profile_id, owner = now(), self._new_id(), owner_value(acting_account())
        with self._write() as db:
            if self._rows(db, "SELECT id FROM profiles WHERE name_key = ?", (stored_key(cleaned, owner),)):
                raise _taken(cleaned)
            count = self._rows(db, "SELECT COUNT(*) AS n FROM profiles WHERE owner IS ?", (owner,))[0]["n"]
            if max_profiles is not None and count >= max_profiles:
                raise Conflict(f"You have {count} profiles, the most one account may have. Delete one you no longer "
                               "use to make room.")
            db.execute("INSERT INTO profiles (id, name, name_key, owner, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (profile_id, cleaned, stored_key(cleaned, owner), owner, created,
                                                     created))
        return {"id": profile_id, "name": cleaned, "created_at": created}

    def rename_profile(self, profile_id: str, name: Any) -> dict:
        cleaned = validate_profile_name(name)
        with self._write() as db:
            key = stored_key(cleaned, self._require_profile(db, profile_id)["owner"])
            if self._rows(db, "SELECT id FROM profiles WHERE name_key = ? AND id != ?", (key, profile_id)):
                raise _taken(cleaned)
            db.execute("UPDATE profiles SET name = ?, name_key = ?, updated_at = ? WHERE id = ?",
                       (cleaned, key, now(), profile_id))
        return self.get_profile(profile_id)

    def get_profile(self, profile_id: str) -> dict:
        with self._db() as db:
            return self._require_profile(db, profile_id)

    def find_profile_by_name(self, name: str, account: str | None = None) -> dict:
        """The profile of that name of the acting account, or else of `account` (None: a household profile)."""
        owner = owner_value(acting_account() if acting_account() is not None else account)
        with self._db() as db:
            rows = self._rows(db, "SELECT id, name, created_at FROM profiles WHERE name_key = ?",
                              (stored_key(name.strip(), owner),))
        if not rows:
            raise NotFound(f"No profile is named '{name}'.")
        return rows[0]

    def list_profiles(self) -> list[dict]:
        """The acting account's profiles (every profile for trusted code), by name."""
        sql, params = "SELECT id, name, created_at FROM profiles", ()
        if acting_account() is not None:
            sql, params = sql + " WHERE owner IS ?", (owner_value(acting_account()),)
        with self._db() as db:
            return self._rows(db, sql + " ORDER BY name_key", params)

    def adopt_household_profiles(self, account: str) -> int:
        """Give every household profile (made without `--auth`) to `account`; a name it already uses is skipped.
        Returns how many moved."""
        moved = 0
        with self._write() as db:
            for row in self._rows(db, "SELECT id, name FROM profiles WHERE owner IS NULL"):
                key = stored_key(row["name"], account)
                if not self._rows(db, "SELECT id FROM profiles WHERE name_key = ?", (key,)):
                    db.execute("UPDATE profiles SET owner = ?, name_key = ?, updated_at = ? WHERE id = ?",
                               (account, key, now(), row["id"]))
                    moved += 1
        return moved

    def preferences(self, profile_id: str) -> dict:
        """This profile's reply settings and compare choice as last set (`set_preferences`); {} if never set."""
        with self._db() as db:
            self._require_profile(db, profile_id)
            rows = self._rows(db, "SELECT preferences FROM profiles WHERE id = ?", (profile_id,))
        return json.loads(rows[0]["preferences"] or "{}")

    def set_preferences(self, profile_id: str, preferences: dict) -> None:
        """Keep a profile's reply settings and compare choice (validated by the caller: storage keeps JSON)."""
        with self._write() as db:
            self._require_profile(db, profile_id)
            db.execute("UPDATE profiles SET preferences = ?, updated_at = ? WHERE id = ?",
                       (json.dumps(preferences), now(), profile_id))

    def note(self, profile_id: str) -> str:
        """This profile's note ("How should Attune answer you?"), '' if none."""
        with self._db() as db:
            self._require_profile(db, profile_id)
            return self._rows(db, "SELECT note FROM profiles WHERE id = ?", (profile_id,))[0]["note"]

    def set_note(self, profile_id: str, note: Any) -> str:
        """Keep (or clear, with '') this profile's note, at most `MAX_NOTE_CHARS`; the note as kept."""
        if not isinstance(note, str):
            raise InvalidInput("The note must be text.")
        note = " ".join(require_encodable(note.replace("\x00", ""), "The note").split())
        if len(note) > MAX_NOTE_CHARS:
            raise InvalidInput(f"The note can be at most {MAX_NOTE_CHARS} characters (this one has {len(note)}).")
        with self._write() as db:
            self._require_profile(db, profile_id)
            db.execute("UPDATE profiles SET note = ?, updated_at = ? WHERE id = ?", (note, now(), profile_id))
        return note

    def set_alpha_override(self, profile_id: str, alpha: float | None) -> None:
        """Pin this profile's personal weight α (0 = everyone, 1 = just me), or None for the automatic n/(n+k)."""
        if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
            raise InvalidInput(f"The personal weight must be between 0 and 1 (got {alpha}).")
        with self._write() as db:
            self._require_profile(db, profile_id)
            db.execute("UPDATE profiles SET alpha_override = ?, updated_at = ? WHERE id = ?",
                       (None if alpha is None else float(alpha), now(), profile_id))
