"""Append-only schema migrations: never edit one that has shipped, add the next number instead."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("attune")


def _run(db: Database, script: str) -> None:
    """Run `;`-separated statements one by one: `executescript` would commit the migration's transaction."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


M001_SQL = """
        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            name_key TEXT NOT NULL UNIQUE,        -- casefolded name: duplicates are case-insensitive
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            title TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX conversations_by_user ON conversations(user_id, updated_at);
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,                 -- order inside the conversation
            parent_id TEXT REFERENCES messages(id) ON DELETE SET NULL,  -- the message this one answers
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            -- active: part of the transcript. superseded: replaced by a retry. candidate: one side of a
            -- comparison not yet decided. rejected: the side of a comparison that did not continue
            status TEXT NOT NULL CHECK (status IN ('active', 'superseded', 'candidate', 'rejected')),
            model_id TEXT,
            settings TEXT NOT NULL DEFAULT '{}',          -- JSON: generation settings and prompt facts
            adapter_versions TEXT NOT NULL DEFAULT '{}',  -- JSON: adapters (and blend) that produced it
            created_at TEXT NOT NULL,
            UNIQUE (conversation_id, seq)
        );
        CREATE INDEX messages_by_parent ON messages(parent_id);
        CREATE TABLE pairs (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            prompt_message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            a_message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            b_message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL
        );
        CREATE INDEX pairs_by_conversation ON pairs(conversation_id);
        CREATE TABLE feedback (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('thumbs', 'pairwise')),
            message_id TEXT UNIQUE REFERENCES messages(id) ON DELETE CASCADE,  -- thumbs: the reply voted on
            pair_id TEXT UNIQUE REFERENCES pairs(id) ON DELETE CASCADE,        -- pairwise: the comparison
            value INTEGER CHECK (value IN (-1, 1)),                            -- thumbs: +1 up, -1 down
            choice TEXT CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),       -- pairwise
            comment TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            CHECK ((kind = 'thumbs' AND message_id IS NOT NULL AND value IS NOT NULL
                    AND pair_id IS NULL AND choice IS NULL)
                OR (kind = 'pairwise' AND pair_id IS NOT NULL AND choice IS NOT NULL
                    AND message_id IS NULL AND value IS NULL))
        );
        CREATE INDEX feedback_by_user ON feedback(user_id, created_at);
        """
"""The first schema, as shipped (kept out of `m001_initial` only so the function stays short)."""


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    _run(db, M001_SQL)


@MIGRATIONS()
def m002_adapters_and_jobs(db: Database) -> None:
    _run(
        db,
        """
        CREATE TABLE adapter_versions (
            id TEXT PRIMARY KEY,
            adapter TEXT NOT NULL,                 -- 'global' or 'user_<user id>'
            user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            path TEXT NOT NULL,                    -- folder relative to the adapters root
            parent_version INTEGER,
            manifest TEXT NOT NULL,                -- JSON, the same as manifest.json in the folder
            trained_until TEXT NOT NULL,           -- newest feedback update time the version has seen
            created_at TEXT NOT NULL,
            UNIQUE (adapter, version)
        );
        CREATE TABLE adapters (
            adapter TEXT PRIMARY KEY,              -- the pointer: which version is served
            user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
            current_version INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE training_jobs (
            id TEXT PRIMARY KEY,
            adapter TEXT NOT NULL,
            user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
            status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            reason TEXT NOT NULL,                  -- 'auto' (feedback count) or 'manual' (Train now)
            attempts INTEGER NOT NULL DEFAULT 0,
            progress REAL NOT NULL DEFAULT 0,
            message TEXT NOT NULL DEFAULT '',
            result TEXT NOT NULL DEFAULT '{}',     -- JSON: version published, metrics
            created_at TEXT NOT NULL,
            started_at TEXT,
            heartbeat_at TEXT,
            finished_at TEXT
        );
        CREATE INDEX training_jobs_by_status ON training_jobs(status, created_at);
        ALTER TABLE users ADD COLUMN alpha_override REAL CHECK (alpha_override BETWEEN 0 AND 1)
        """,
    )


@MIGRATIONS()
def m003_profiles_and_comparisons(db: Database) -> None:
    """One word per concept: `users` → `profiles` (and every `user_id` → `profile_id`), `pairs` → `comparisons`,
    feedback kind 'pairwise' → 'comparison', personal adapters `user_<id>` → `profile_<id>` (their folders move at
    the registry's next start: `AdapterRegistry.move_renamed_folders`)."""
    _run(
        db,
        """
        ALTER TABLE users RENAME TO profiles;
        ALTER TABLE pairs RENAME TO comparisons;
        ALTER TABLE conversations RENAME COLUMN user_id TO profile_id;
        ALTER TABLE comparisons RENAME COLUMN user_id TO profile_id;
        ALTER TABLE adapter_versions RENAME COLUMN user_id TO profile_id;
        ALTER TABLE adapters RENAME COLUMN user_id TO profile_id;
        ALTER TABLE training_jobs RENAME COLUMN user_id TO profile_id;
        DROP INDEX conversations_by_user;
        CREATE INDEX conversations_by_profile ON conversations(profile_id, updated_at);
        DROP INDEX pairs_by_conversation;
        CREATE INDEX comparisons_by_conversation ON comparisons(conversation_id);
        CREATE TABLE feedback_new (
            id TEXT PRIMARY KEY,
            profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('thumbs', 'comparison')),
            message_id TEXT UNIQUE REFERENCES messages(id) ON DELETE CASCADE,        -- thumbs: the reply voted on
            comparison_id TEXT UNIQUE REFERENCES comparisons(id) ON DELETE CASCADE,  -- comparison: which one
            value INTEGER CHECK (value IN (-1, 1)),                                  -- thumbs: +1 up, -1 down
            choice TEXT CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),             -- comparison
            comment TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            CHECK ((kind = 'thumbs' AND message_id IS NOT NULL AND value IS NOT NULL
                    AND comparison_id IS NULL AND choice IS NULL)
                OR (kind = 'comparison' AND comparison_id IS NOT NULL AND choice IS NOT NULL
                    AND message_id IS NULL AND value IS NULL))
        );
        INSERT INTO feedback_new (id, profile_id, kind, message_id, comparison_id, value, choice, comment, created_at,
                                  updated_at)
            SELECT id, user_id, CASE kind WHEN 'pairwise' THEN 'comparison' ELSE kind END, message_id, pair_id, value,
                   choice, comment, created_at, updated_at FROM feedback;
        DROP TABLE feedback;
        ALTER TABLE feedback_new RENAME TO feedback;
        CREATE INDEX feedback_by_profile ON feedback(profile_id, created_at);
        UPDATE adapter_versions SET adapter = 'profile_' || substr(adapter, 6), path = 'profile_' || substr(path, 6)
            WHERE adapter LIKE 'user\\_%' ESCAPE '\\';
        UPDATE adapters SET adapter = 'profile_' || substr(adapter, 6) WHERE adapter LIKE 'user\\_%' ESCAPE '\\';
        UPDATE training_jobs SET adapter = 'profile_' || substr(adapter, 6) WHERE adapter LIKE 'user\\_%' ESCAPE '\\'
        """,
    )


@MIGRATIONS()
def m004_profile_preferences(db: Database) -> None:
    """A profile's reply settings and compare choice, kept across reloads and browsers (JSON, '{}' until set)."""
    _run(db, "ALTER TABLE profiles ADD COLUMN preferences TEXT NOT NULL DEFAULT '{}'")


@MIGRATIONS()
def m005_name_keys_nfkc(db: Database) -> None:
    """Profile name keys compare names after NFKC normalization and case folding (a fullwidth "Ｂｏｂ" is "bob"). Two
    existing profiles that would now share a key keep their old keys (the older one gets the new key)."""
    import sqlite3
    import unicodedata

    for profile_id, name in db.execute("SELECT id, name FROM profiles ORDER BY created_at").fetchall():
        try:
            db.execute("UPDATE profiles SET name_key = ? WHERE id = ?",
                       (unicodedata.normalize("NFKC", name).casefold(), profile_id))
        except sqlite3.IntegrityError:  # (one statement fails, the migration's transaction goes on)
            pass


@MIGRATIONS()
def m006_unusable_versions(db: Database) -> None:
    """Why an adapter version cannot be served (a failed checksum, a config out of bounds, unreadable files); NULL
    for a usable one. The blend serves the newest usable version instead."""
    _run(db, "ALTER TABLE adapter_versions ADD COLUMN unusable TEXT")


@MIGRATIONS()
def m007_profile_owners(db: Database) -> None:
    """The account that owns each profile (`--auth`); NULL for household profiles. Names are unique per account:
    an owned profile's name key carries its account (`storage.profiles.stored_key`)."""
    _run(db, "ALTER TABLE profiles ADD COLUMN owner TEXT; CREATE INDEX profiles_by_owner ON profiles(owner)")


@MIGRATIONS()
def m008_worker_heartbeats(db: Database) -> None:
    """The training worker's own heartbeat (not only its job's): the Learning panel shows when it was last heard;
    and the process running each job, so that the app requeues the job of a worker it saw die at once."""
    _run(db, "CREATE TABLE worker_heartbeats (pid INTEGER PRIMARY KEY, started_at TEXT NOT NULL, "
             "beat_at TEXT NOT NULL); ALTER TABLE training_jobs ADD COLUMN worker_pid INTEGER")


@MIGRATIONS()
def m009_tainted_versions(db: Database) -> None:
    """Why a version learned from feedback that has since been erased (a deleted profile's); NULL if it did not.
    Tainted versions are deleted once a from-scratch retrain replaces them."""
    _run(db, "ALTER TABLE adapter_versions ADD COLUMN tainted TEXT")


@MIGRATIONS()
def m010_profile_notes(db: Database) -> None:
    """A profile's note, "How should Attune answer you?" ('' until written): a hidden instruction in every prompt
    until the personal adapter has learned it (adapters/note.py)."""
    _run(db, "ALTER TABLE profiles ADD COLUMN note TEXT NOT NULL DEFAULT ''")


@MIGRATIONS()
def m011_rewards(db: Database) -> None:
    """The learned reward (adapters/reward.py): each reply's features once computed, and the versions of every
    profile's reward and of everyone's (profile_id NULL), beside the adapter versions. Both go with the profile."""
    _run(db, """
        CREATE TABLE reward_features (
            profile_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            key TEXT NOT NULL,                    -- hash of the feature kind, the prompt and the reply
            vector BLOB NOT NULL,                 -- float32, little-endian
            created_at TEXT NOT NULL,
            PRIMARY KEY (profile_id, key)
        );
        CREATE TABLE reward_versions (
            id TEXT PRIMARY KEY,
            profile_id TEXT REFERENCES profiles(id) ON DELETE CASCADE,  -- NULL: everyone's reward
            version INTEGER NOT NULL,
            kind TEXT NOT NULL,                   -- the features it reads (model, layer)
            theta BLOB NOT NULL,                  -- float32 weights on φ, then the thumbs' reference point
            basis BLOB,                           -- everyone's: float32 map of φ to the space profiles are fitted in
            metrics TEXT NOT NULL,                -- JSON: events, held-out accuracy, fit time
            created_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX reward_versions_by_profile ON reward_versions(COALESCE(profile_id, ''), version)
        """)
