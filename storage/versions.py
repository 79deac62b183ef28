"""Adapter versions and the pointer to the served one (the registry writes the files, this the rows)."""

from __future__ import annotations

import json

from storage.base import StoreBase, now


def _version_row(row: dict) -> dict:
    return {**row, "manifest": json.loads(row["manifest"])}


class AdapterVersions(StoreBase):
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

    def trained_until(self, adapter: str) -> str | None:
        """The newest feedback update time the served version of `adapter` has seen (None: no version yet): feedback
        updated after it is new to that adapter."""
        row = self.current_adapter(adapter)
        return row["trained_until"] or None if row else None

    def adapter_versions(self, adapter: str) -> list[dict]:
        with self._db() as db:
            rows = self._rows(db, "SELECT * FROM adapter_versions WHERE adapter = ? ORDER BY version", (adapter,))
        return [_version_row(r) for r in rows]

    def mark_unusable(self, adapter: str, version: int, reason: str) -> None:
        """Record why a version cannot be served (kept, for the Learning panel and for a person to look at)."""
        with self._write() as db:
            db.execute("UPDATE adapter_versions SET unusable = ? WHERE adapter = ? AND version = ?",
                       (reason, adapter, version))

    def highest_version(self, adapter: str) -> int:
        with self._db() as db:
            return self._rows(db, "SELECT COALESCE(MAX(version), 0) AS v FROM adapter_versions WHERE adapter = ?",
                              (adapter,))[0]["v"]

    def publish_version(self, adapter: str, profile_id: str | None, version: int, path: str,
                        parent_version: int | None, manifest: dict, trained_until: str) -> dict:
        """Record a version whose folder is already in place and point the adapter at it, in one transaction."""
        published = now()
        with self._write() as db:
            if profile_id is not None:
                self._require_profile(db, profile_id)
            db.execute(
                "INSERT INTO adapter_versions (id, adapter, profile_id, version, path, parent_version, manifest, "
                "trained_until, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self._new_id(), adapter, profile_id, version, path, parent_version, json.dumps(manifest),
                 trained_until, published),
            )
            db.execute(
                "INSERT INTO adapters (adapter, profile_id, current_version, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (adapter) DO UPDATE SET current_version = excluded.current_version, "
                "updated_at = excluded.updated_at",
                (adapter, profile_id, version, published),
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

    def forget_versions(self, adapter: str, versions: list[int]) -> list[str]:
        """Delete these versions' rows (never the served one); return their folder paths (for the registry)."""
        with self._write() as db:
            served = self._rows(db, "SELECT current_version FROM adapters WHERE adapter = ?", (adapter,))
            doomed = [v for v in versions if not served or v != served[0]["current_version"]]
            marks = ",".join("?" * len(doomed))
            paths = [r["path"] for r in self._rows(
                db, f"SELECT path FROM adapter_versions WHERE adapter = ? AND version IN ({marks})",
                (adapter, *doomed))]
            db.execute(f"DELETE FROM adapter_versions WHERE adapter = ? AND version IN ({marks})", (adapter, *doomed))
        return paths

    def forget_tainted(self, adapter: str) -> list[str]:
        """Delete the tainted versions' rows (`Store.erase_profile`); the adapter then serves its newest untainted
        version, or none. Returns their folder paths (for the registry to delete)."""
        with self._write() as db:
            paths = [r["path"] for r in self._rows(
                db, "SELECT path FROM adapter_versions WHERE adapter = ? AND tainted IS NOT NULL", (adapter,))]
            db.execute("DELETE FROM adapter_versions WHERE adapter = ? AND tainted IS NOT NULL", (adapter,))
            left = self._rows(db, "SELECT MAX(version) AS v FROM adapter_versions WHERE adapter = ?", (adapter,))
            if left[0]["v"] is None:
                db.execute("DELETE FROM adapters WHERE adapter = ?", (adapter,))
            else:
                db.execute("UPDATE adapters SET current_version = ?, updated_at = ? WHERE adapter = ? AND "
                           "current_version NOT IN (SELECT version FROM adapter_versions WHERE adapter = ?)",
                           (left[0]["v"], now(), adapter, adapter))
        return paths

    def known_adapter_paths(self) -> set[str]:
        with self._db() as db:
            return {r["path"] for r in self._rows(db, "SELECT path FROM adapter_versions")}
