"""Opening the database: one file, WAL, foreign keys, a busy timeout, migrations applied."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from storage.migrations import MIGRATIONS

BUSY_TIMEOUT_MS = 10_000
DB_FILENAME = "attune.db"


def connect(path: Path) -> sqlite_utils.Database:
    """Open `path` (created if missing) with the pragmas every connection needs.

    Connections are cheap (≈0.1 ms) and each is used by one thread only, so callers open one per unit of work.
    """
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    db = sqlite_utils.Database(conn, execute_plugins=False)
    db.execute("PRAGMA foreign_keys = ON")
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable at commit for an application crash
    db.execute("PRAGMA secure_delete = ON")  # deleted rows are overwritten with zeros, not left in free pages
    return db


def initialise(path: Path) -> None:
    """Create the file if needed, switch it to WAL and apply pending migrations (safe to re-run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = connect(path)
    try:
        db.enable_wal()
        MIGRATIONS.apply(db)
    finally:
        db.close()
