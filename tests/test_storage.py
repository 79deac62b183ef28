"""Storage on real SQLite files: migrations, profiles, ownership, feedback upserts, comparisons, export."""

from __future__ import annotations

import json
import sqlite3

import pytest

from storage import export
from storage.db import DB_FILENAME, connect, initialise
from storage.errors import Conflict, InvalidInput, NotFound
from storage.migrations import MIGRATIONS
from storage.store import Store, seeded_ids


def _conversation_with_reply(store: Store, name: str = "Ann"):
    user = store.create_profile(name)
    conv = store.create_conversation(user["id"], "t")
    question = store.add_message(user["id"], conv["id"], "user", "What is 2+2?",
                                 settings={"system_prompt": "Be brief."})
    reply = store.add_message(user["id"], conv["id"], "assistant", "4", parent_id=question.id,
                              settings={"system_prompt": "Be brief."})
    return user, conv, question, reply


def test_seeded_ids_repeat_per_seed_and_the_default_ids_do_not(tmp_path):
    def stored_ids(folder, **kwargs):
        store = Store(tmp_path / folder / DB_FILENAME, **kwargs)
        user, conv, question, reply = _conversation_with_reply(store)
        return [user["id"], conv["id"], question.id, reply.id]

    first, again = stored_ids("a", new_id=seeded_ids(7)), stored_ids("b", new_id=seeded_ids(7))
    assert first == again and len(set(first)) == 4
    assert all(len(i) == 32 and int(i, 16) for i in first)  # the same shape as uuid4().hex
    assert set(stored_ids("c", new_id=seeded_ids("7:other"))).isdisjoint(first)
    assert set(stored_ids("d")).isdisjoint(stored_ids("e"))  # the app's ids stay random


def test_migrations_from_empty_file_and_rerun(tmp_path):
    path = tmp_path / "fresh.db"
    initialise(path)
    initialise(path)  # re-running applies nothing and breaks nothing
    db = connect(path)
    tables = set(db.table_names())
    assert {"profiles", "conversations", "messages", "comparisons", "feedback", "_sqlite_migrations"} <= tables
    applied = [m.name for m in MIGRATIONS.applied(db)]
    assert applied == ["m001_initial", "m002_adapters_and_jobs", "m003_profiles_and_comparisons",
                       "m004_profile_preferences", "m005_name_keys_nfkc", "m006_unusable_versions",
                       "m007_profile_owners", "m008_worker_heartbeats",
                       "m009_tainted_versions", "m010_profile_notes", "m011_rewards"]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    db.close()


def test_migration_failure_rolls_back(tmp_path):
    """A migration that fails half-way leaves no table behind and stays pending."""
    from sqlite_utils.migrations import Migrations

    broken = Migrations("broken")

    @broken()
    def m001(db):
        db.execute("CREATE TABLE half (id INTEGER)")
        db.execute("INSERT INTO nowhere VALUES (1)")

    db = connect(tmp_path / "b.db")
    with pytest.raises(sqlite3.OperationalError):
        broken.apply(db)
    assert "half" not in db.table_names()
    assert [m.name for m in broken.pending(db)] == ["m001"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "cannot be empty"),
        ("   \t ", "cannot be empty"),
        ("x" * 41, "at most 40"),
        ("a/b", "'/'"),
        ("a\\b", "'\\'"),
        ("..", "'..'"),
        ("up..down", "'..'"),
        ("nul\x00byte", "NUL"),
        ("bell\x07", "control"),
        (None, "must be text"),
    ],
)
def test_bad_profile_names_are_refused_and_nothing_is_stored(store, name, message):
    store.create_profile("Keeper")
    with pytest.raises(InvalidInput, match=message.replace("\\", "\\\\").replace(".", "\\.")):
        store.create_profile(name)
    assert [u["name"] for u in store.list_profiles()] == ["Keeper"]


def test_profile_names_are_unique_ignoring_case_and_keep_emoji(store):
    ann = store.create_profile("  Ann 🎉 ")
    assert ann["name"] == "Ann 🎉"
    assert len(ann["id"]) == 32 and "ann" not in ann["id"].lower()  # generated, not derived from the name
    with pytest.raises(Conflict, match="already exists"):
        store.create_profile("ANN 🎉")
    bob = store.create_profile("Bob")
    with pytest.raises(Conflict):
        store.rename_profile(bob["id"], "ann 🎉")
    assert store.rename_profile(bob["id"], "Robert")["name"] == "Robert"
    assert store.rename_profile(bob["id"], "ROBERT")["name"] == "ROBERT"  # its own name in other case is fine
    assert store.create_profile("x" * 40)["name"] == "x" * 40


def test_deleting_a_profile_removes_its_data_only(store):
    ann, conv, _, reply = _conversation_with_reply(store, "Ann")
    store.record_thumbs(ann["id"], reply.id, 1)
    bob, *_ = _conversation_with_reply(store, "Bob")
    before = store.counts()
    store.erase_profile(ann["id"])
    after = store.counts()
    assert after == {"profiles": 1, "conversations": 1, "messages": 2, "comparisons": 0, "feedback": 0}
    assert before["feedback"] == 1
    with pytest.raises(NotFound):
        store.get_profile(ann["id"])
    assert store.list_profiles()[0]["id"] == bob["id"]


def test_thumbs_vote_again_updates_instead_of_adding(store):
    user, _, _, reply = _conversation_with_reply(store)
    first = store.record_thumbs(user["id"], reply.id, 1)
    second = store.record_thumbs(user["id"], reply.id, -1, comment="wrong")
    assert first["id"] == second["id"]
    assert store.counts()["feedback"] == 1
    assert store.get_message(user["id"], reply.id).vote == -1
    assert store.get_message(user["id"], reply.id).comment == "wrong"
    # Changing the vote without a comment keeps the comment already given.
    store.record_thumbs(user["id"], reply.id, 1)
    assert store.get_message(user["id"], reply.id).comment == "wrong"


def test_votes_are_refused_on_foreign_missing_or_user_messages(store):
    ann, _, question, reply = _conversation_with_reply(store, "Ann")
    bob = store.create_profile("Bob")
    with pytest.raises(NotFound):
        store.record_thumbs(bob["id"], reply.id, 1)  # not Bob's message
    with pytest.raises(NotFound):
        store.record_thumbs(ann["id"], "0" * 32, 1)
    with pytest.raises(NotFound):
        store.record_thumbs(ann["id"], "", 1)
    with pytest.raises(InvalidInput, match="Only assistant replies"):
        store.record_thumbs(ann["id"], question.id, 1)
    with pytest.raises(InvalidInput, match=r"\+1"):
        store.record_thumbs(ann["id"], reply.id, 5)
    with pytest.raises(InvalidInput):
        store.record_thumbs(ann["id"], reply.id, True)
    assert store.counts()["feedback"] == 0


def test_conversations_are_private_to_their_profile(store):
    ann, conv, *_ = _conversation_with_reply(store, "Ann")
    bob = store.create_profile("Bob")
    with pytest.raises(NotFound):
        store.transcript(bob["id"], conv["id"])
    with pytest.raises(NotFound):
        store.delete_conversation(bob["id"], conv["id"])
    with pytest.raises(NotFound):
        store.add_message(bob["id"], conv["id"], "user", "hijack")
    assert len(store.transcript(ann["id"], conv["id"])) == 2


def test_retry_supersedes_in_the_same_transaction(store):
    user, conv, question, reply = _conversation_with_reply(store)
    new = store.add_message(user["id"], conv["id"], "assistant", "Four.", parent_id=question.id, replaces=reply.id)
    transcript = store.transcript(user["id"], conv["id"])
    assert [m.content for m in transcript] == ["What is 2+2?", "Four."]
    assert store.get_message(user["id"], reply.id).status == "superseded"
    with pytest.raises(Conflict):  # the old reply is no longer current: refused, nothing added
        store.add_message(user["id"], conv["id"], "assistant", "x", parent_id=question.id, replaces=reply.id)
    assert store.counts()["messages"] == 3
    assert new.status == "active"


@pytest.mark.parametrize("choice, continues", [("a", "A"), ("b", "B"), ("tie", "A"), ("both_bad", "A")])
def test_pair_choice_decides_which_reply_continues(store, choice, continues):
    user = store.create_profile("Ann")
    conv = store.create_conversation(user["id"], "t")
    question = store.add_message(user["id"], conv["id"], "user", "Hi")
    pair = store.create_comparison(user["id"], conv["id"], question.id, "A", "B", model_id="m", settings={})
    assert store.pending_comparison(user["id"], conv["id"]).id == pair.id
    assert [m.content for m in store.transcript(user["id"], conv["id"])] == ["Hi"]
    with pytest.raises(Conflict):
        store.create_comparison(user["id"], conv["id"], question.id, "C", "D", model_id="m", settings={})
    decided = store.record_choice(user["id"], pair.id, choice)
    assert decided.choice == choice
    assert store.pending_comparison(user["id"], conv["id"]) is None
    assert [m.content for m in store.transcript(user["id"], conv["id"])] == ["Hi", continues]
    # Choosing again updates the one record.
    store.record_choice(user["id"], pair.id, "b")
    assert store.counts()["feedback"] == 1
    assert [m.content for m in store.transcript(user["id"], conv["id"])] == ["Hi", "B"]


def test_bad_choice_and_foreign_pair_are_refused(store):
    user = store.create_profile("Ann")
    conv = store.create_conversation(user["id"], "t")
    question = store.add_message(user["id"], conv["id"], "user", "Hi")
    pair = store.create_comparison(user["id"], conv["id"], question.id, "A", "B", model_id="m", settings={})
    with pytest.raises(InvalidInput, match="one of a, b, tie, both_bad"):
        store.record_choice(user["id"], pair.id, "c")
    bob = store.create_profile("Bob")
    with pytest.raises(NotFound):
        store.record_choice(bob["id"], pair.id, "a")
    assert store.counts()["feedback"] == 0


def test_export_writes_trl_records(store, data_home, tmp_path):
    user, conv, question, reply = _conversation_with_reply(store, "Ann")
    store.record_thumbs(user["id"], reply.id, -1, "too short")
    q2 = store.add_message(user["id"], conv["id"], "user", "And 3+3?")
    pair = store.create_comparison(user["id"], conv["id"], q2.id, "6", "six, because 3+3=6", model_id="m",
                             settings={"system_prompt": "Be brief."})
    store.record_choice(user["id"], pair.id, "b")
    q3 = store.add_message(user["id"], conv["id"], "user", "Bye")
    p3 = store.create_comparison(user["id"], conv["id"], q3.id, "bye", "ciao", model_id="m", settings={})
    store.record_choice(user["id"], p3.id, "both_bad")

    def run(fmt):
        out = tmp_path / f"{fmt}.jsonl"
        assert export.main(["--profile", "ann", "--format", fmt, "--data-dir", str(data_home), "--output", str(out)]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    dpo = run("dpo")
    assert dpo == [{
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                   {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
        "chosen": [{"role": "assistant", "content": "six, because 3+3=6"}],
        "rejected": [{"role": "assistant", "content": "6"}],
    }]
    kto = run("kto")
    assert [(r["completion"][0]["content"], r["label"]) for r in kto] == [
        ("4", False), ("six, because 3+3=6", True), ("6", False), ("bye", False), ("ciao", False)]
    assert kto[0]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    raw = run("jsonl")
    assert [r["kind"] for r in raw] == ["thumbs", "comparison", "comparison"]
    assert raw[0]["comment"] == "too short"
    assert export.main(["--profile", "nobody", "--format", "dpo", "--data-dir", str(data_home)]) == 2
    assert export.main(["--user", "ann", "--format", "dpo", "--data-dir", str(tmp_path / "none")]) == 2


def test_database_file_lives_in_the_data_home(store, data_home):
    assert store.path == data_home / DB_FILENAME and store.path.exists()


def test_concurrent_writers_all_succeed(store):
    """Writers on separate connections queue on the lock instead of failing with 'database is locked'."""
    import threading

    users = [store.create_profile(f"user {i}")["id"] for i in range(4)]
    convs = [store.create_conversation(u, "t")["id"] for u in users]
    errors = []

    def work(i):
        try:
            for n in range(25):
                q = store.add_message(users[i], convs[i], "user", f"q{n}")
                r = store.add_message(users[i], convs[i], "assistant", f"a{n}", parent_id=q.id)
                store.record_thumbs(users[i], r.id, 1 if n % 2 else -1)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts()["messages"] == 200 and store.counts()["feedback"] == 100
    assert [m.seq for m in store.transcript(users[0], convs[0])] == list(range(1, 51))


def test_profiles_with_feedback_are_counted_up_to_a_limit(store):
    assert store.count_profiles_with_feedback(at_most=3) == 0
    for name in ("Ann", "Bob", "Cy", "Dee"):
        user, _, _, reply = _conversation_with_reply(store, name)
        store.record_thumbs(user["id"], reply.id, 1)
        store.record_thumbs(user["id"], reply.id, -1)  # a changed vote is still one profile
    store.create_profile("Eve")  # no feedback: not counted
    assert store.count_profiles_with_feedback(at_most=10) == 4
    assert store.count_profiles_with_feedback(at_most=3) == 3


def test_a_profile_keeps_its_preferences(store):
    ann = store.create_profile("Ann")["id"]
    assert store.preferences(ann) == {}  # (m004 adds the column with '{}' for profiles made before it)
    kept = {"temperature": 0.0, "max_new_tokens": 42, "compare": True}
    store.set_preferences(ann, kept)
    assert store.preferences(ann) == kept
    with pytest.raises(NotFound):
        store.set_preferences("nobody", kept)


def test_look_alike_names_and_unstorable_text_are_refused(store):
    bob = store.create_profile("bob")
    with pytest.raises(Conflict, match="already exists"):
        store.create_profile("Ｂｏｂ")  # fullwidth letters: the same name after NFKC
    with pytest.raises(InvalidInput, match="cannot mix Cyrillic and Latin"):
        store.create_profile("Аnn")  # a Cyrillic А before Latin letters
    assert store.create_profile("Анна")["name"] == "Анна"  # one script is fine
    with pytest.raises(InvalidInput, match="lone surrogate"):
        store.create_profile("Eve\udc00")
    conversation = store.create_conversation(bob["id"], "Title")
    with pytest.raises(InvalidInput, match="lone surrogate"):
        store.rename_conversation(bob["id"], conversation["id"], "Bad \ud800 title")
    message = store.add_message(bob["id"], conversation["id"], "assistant", "A reply.")
    with pytest.raises(InvalidInput, match="lone surrogate"):
        store.record_thumbs(bob["id"], message.id, -1, "bad \udfff comment")
    assert store.counts()["feedback"] == 0


def test_name_keys_are_migrated_to_nfkc_without_breaking_old_duplicates(tmp_path):
    path = tmp_path / "old.db"
    db = connect(path)
    MIGRATIONS.apply(db, stop_before="m005_name_keys_nfkc")
    for i, name in enumerate(["Ｂｏｂ", "bob"]):  # distinct under the old key (casefold), one name under NFKC
        db.execute("INSERT INTO profiles (id, name, name_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                   (f"p{i}", name, name.casefold(), f"2026-01-0{i + 1}", f"2026-01-0{i + 1}"))
    db.conn.commit()
    db.close()
    store = Store(path)  # applies m005: the two keep distinct keys, and both now stand for "bob"
    assert [p["name"] for p in store.list_profiles()] == ["bob", "Ｂｏｂ"]
    for name in ("BOB", "ｂｏｂ"):
        with pytest.raises(Conflict):
            store.create_profile(name)


def test_the_job_of_a_worker_seen_dying_is_queued_again_at_once(store):
    job = store.enqueue_job("global", None, "auto")
    assert store.claim_job(stale_seconds=3600, worker_pid=4242)["id"] == job["id"]
    assert store.claim_job(stale_seconds=3600, worker_pid=4343) is None  # running, its heartbeat fresh
    assert store.requeue_jobs_of(9999, "not this one") == 0
    assert store.requeue_jobs_of(4242, "the training worker stopped (code -9); it runs again") == 1
    again = store.claim_job(stale_seconds=3600, worker_pid=4343)
    assert again["id"] == job["id"] and again["attempts"] == 2 and again["worker_pid"] == 4343


def test_the_worker_heartbeat_keeps_the_newest_worker(store):
    assert store.worker_heartbeat() is None
    store.worker_beat(1, "2026-12-05T10:00:00+00:00")
    store.worker_beat(2, "2999-01-01T00:00:00+00:00")  # a worker started after the first one's last beat
    beat = store.worker_heartbeat()
    assert beat["pid"] == 2
    with store._db() as db:
        assert [r[0] for r in db.execute("SELECT pid FROM worker_heartbeats")] == [2]
