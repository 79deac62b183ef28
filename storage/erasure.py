"""Erasure: a profile deleted leaves no byte of its text in the database or its write-ahead log, and every
global version that learned from it is marked tainted until a from-scratch retrain replaces it; everyone's
learned reward is deleted (the next vote fits it again)."""

from __future__ import annotations

import json
import logging
import time

from storage.base import StoreBase

log = logging.getLogger(__name__)

GLOBAL = "global"


class Erasure(StoreBase):
    def erase_profile(self, profile_id: str) -> list[int]:
        """Delete a profile with everything it owns (conversations, messages, comparisons, feedback, its adapter's
        rows), mark tainted every global version trained on its feedback and every later one (each warm-starts from
        the one before), and checkpoint the write-ahead log into the zeroed database file. Returns the tainted
        global versions (a from-scratch retrain is due if any)."""
        with self._write() as db:
            self._require_profile(db, profile_id)
            mine = {r["id"] for r in self._rows(db, "SELECT id FROM feedback WHERE profile_id = ?", (profile_id,))}
            tainted: list[int] = []
            for row in self._rows(db, "SELECT version, manifest FROM adapter_versions WHERE adapter = ? "
                                      "ORDER BY version", (GLOBAL,)):
                manifest = json.loads(row["manifest"])
                used = set(manifest.get("feedback_ids", [])) | set(manifest.get("held_out_feedback_ids", []))
                if tainted or used & mine:
                    tainted.append(row["version"])
            if tainted:
                marks = ",".join("?" * len(tainted))
                db.execute(f"UPDATE adapter_versions SET tainted = ? WHERE adapter = ? AND version IN ({marks})",
                           ("learned from a deleted profile", GLOBAL, *tainted))
            db.execute("DELETE FROM reward_versions WHERE profile_id IS NULL")  # everyone's reward learned from it
            db.execute("DELETE FROM profiles WHERE id = ?", (profile_id,))
        self.checkpoint()
        return tainted

    def checkpoint(self, attempts: int = 20) -> bool:
        """Move the write-ahead log into the database file and truncate it to zero bytes (`wal_checkpoint(TRUNCATE)`),
        so deleted rows survive in neither. A reader in the middle of a transaction blocks it: tried `attempts` times,
        0.1 s apart. Returns whether it completed."""
        for _ in range(attempts):
            with self._db() as db:
                busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return True
            time.sleep(0.1)
        log.warning("The write-ahead log could not be truncated (readers kept it busy); the next checkpoint will.")
        return False
