"""The learned reward's rows: cached reply features and reward versions (adapters/reward.py computes both).

A profile's rows go with it (ON DELETE CASCADE). Everyone's reward (profile_id NULL) learned from every profile, so
erasing any profile deletes all of its versions (`Erasure.erase_profile`); the next vote fits it again without them.
"""

from __future__ import annotations

import json
import uuid

from storage.base import StoreBase, now


def _reward_row(row: dict) -> dict:
    return {**row, "metrics": json.loads(row["metrics"])}


class Rewards(StoreBase):
    """(Version ids are random, not drawn from the store's id source: a refit's timing never shifts the ids a
    seeded benchmark draws for its feedback.)"""

    def reward_features(self, profile_id: str, keys: list[str]) -> dict[str, bytes]:
        """The stored feature vectors of these keys for this profile (missing keys are absent)."""
        found: dict[str, bytes] = {}
        with self._db() as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._rows(db, f"SELECT key, vector FROM reward_features WHERE profile_id = ? "
                                          f"AND key IN ({marks})", (profile_id, *chunk)):
                    found[row["key"]] = row["vector"]
        return found

    def save_reward_features(self, profile_id: str, vectors: dict[str, bytes]) -> None:
        """Keep computed feature vectors (a key already stored keeps its vector)."""
        if not vectors:
            return
        created = now()
        with self._write() as db:
            self._require_profile(db, profile_id)
            db.conn.executemany("INSERT OR IGNORE INTO reward_features (profile_id, key, vector, created_at) "
                                "VALUES (?, ?, ?, ?)", [(profile_id, k, v, created) for k, v in vectors.items()])

    def publish_reward(self, profile_id: str | None, kind: str, theta: bytes, metrics: dict, keep: int,
                       basis: bytes | None = None) -> dict:
        """A new version of this profile's reward (None: everyone's, with its `basis`), numbered after the highest;
        versions older than the newest `keep` are deleted in the same transaction."""
        created = now()
        with self._write() as db:
            if profile_id is not None:
                self._require_profile(db, profile_id)
            version = self._rows(db, "SELECT COALESCE(MAX(version), 0) AS v FROM reward_versions "
                                     "WHERE profile_id IS ?", (profile_id,))[0]["v"] + 1
            row = {"id": uuid.uuid4().hex, "profile_id": profile_id, "version": version, "kind": kind, "theta": theta,
                   "basis": basis, "metrics": json.dumps(metrics), "created_at": created}
            db.execute("INSERT INTO reward_versions (id, profile_id, version, kind, theta, basis, metrics, created_at) "
                       "VALUES (:id, :profile_id, :version, :kind, :theta, :basis, :metrics, :created_at)", row)
            db.execute("DELETE FROM reward_versions WHERE profile_id IS ? AND version <= ?",
                       (profile_id, version - keep))
        return _reward_row(row)

    def current_reward(self, profile_id: str | None) -> dict | None:
        """The newest version of this profile's reward (None: everyone's), or None if there is none."""
        with self._db() as db:
            rows = self._rows(db, "SELECT * FROM reward_versions WHERE profile_id IS ? ORDER BY version DESC LIMIT 1",
                              (profile_id,))
        return _reward_row(rows[0]) if rows else None

    def reward_history(self, profile_id: str) -> list[dict]:
        """This profile's kept reward versions, oldest first, without their weights."""
        with self._db() as db:
            rows = self._rows(db, "SELECT id, profile_id, version, kind, metrics, created_at FROM reward_versions "
                                  "WHERE profile_id = ? ORDER BY version", (profile_id,))
        return [_reward_row(r) for r in rows]
