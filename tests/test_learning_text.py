"""The Learning panel's words: times, time left, the weight's reason and what a profile's choices say."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ui.learning_text import ago, eta_seconds, learning_markdown, taste_words

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def _iso(**delta) -> str:
    return (NOW - timedelta(**delta)).isoformat()


def test_times_in_words():
    assert ago(_iso(seconds=10), NOW) == "just now"
    assert ago(_iso(seconds=70), NOW) == "1 minute ago"
    assert ago(_iso(minutes=2, seconds=5), NOW) == "2 minutes ago"
    assert ago(_iso(hours=3), NOW) == "3 hours ago"
    assert ago(_iso(days=2), NOW) == "2 days ago"
    assert ago(_iso(days=30), NOW) == "on Nov 4"
    assert ago(None, NOW) == "at an unknown time"


def test_time_left_follows_the_pace_so_far():
    job = {"started_at": _iso(seconds=30)}
    assert eta_seconds(job, 0.25, NOW) == 90  # 30 s for a quarter: 90 s for the rest
    assert eta_seconds(job, 0.0, NOW) is None  # no step done yet: no pace to go by
    assert eta_seconds({"started_at": None}, 0.5, NOW) is None


def test_what_the_choices_say_names_only_clear_leanings_in_the_probes_own_words():
    record = [
        {"probe": "p1", "instruction": "Answer in one short sentence.", "chosen": 4, "shown": 5},
        {"probe": "p2", "instruction": "Use emoji 😊 in your answer.", "chosen": 0, "shown": 3},
        {"probe": "p3", "instruction": "Give a concrete example.", "chosen": 2, "shown": 4},  # even: not a taste
        {"probe": "p4", "instruction": "Speak like a pirate.", "chosen": 2, "shown": 2},  # too few to say
    ]
    said = taste_words(record)
    assert said == ("**What your choices say:** you chose replies asked to “answer in one short sentence” (4 of 5); "
                    "you passed over replies asked to “use emoji 😊 in your answer” (0 of 3).")
    assert taste_words(record[2:]) == ""
    own = {"probe": "own-1", "instruction": "Too long, get to the point.", "chosen": 3, "shown": 3, "own": True}
    assert taste_words([own, record[1]]) == (
        "**What your choices say:** you passed over replies asked to “use emoji 😊 in your answer” (0 of 3); you chose "
        "replies that followed your words “Too long, get to the point.” (3 of 3).")


def test_the_note_says_whether_it_is_still_sent_and_how_far_it_is_learned():
    note = {"text": "Keep it short.", "sent": True, "learned": None}
    assert "until your version has learned it — not measured yet" in learning_markdown(_status(note=note))
    assert "— 42% learned so far" in learning_markdown(_status(note={**note, "learned": 0.42}))
    assert "learned (93%)" in learning_markdown(_status(note={**note, "sent": False, "learned": 0.93}))
    assert "Your note" not in learning_markdown(_status(note={**note, "text": ""}))


def _status(**changes) -> dict:
    status = {
        "feedback": {"thumbs": 3, "comparison": 2, "total": 5}, "since_personal": {"total": 1}, "every": 4,
        "personal": {"version": "v0002", "created_at": _iso(minutes=2), "metrics": {}},
        "global": None, "global_profiles": {"profiles": 1, "needed": 3},
        "alpha": 0.56, "alpha_override": None, "alpha_source": "auto", "k": 4, "jobs": [], "record": [],
    }
    return {**status, **changes}


def test_the_panel_says_what_was_taught_which_versions_serve_and_how_much_of_you():
    text = learning_markdown(_status(), NOW)
    assert "3 👍/👎 on replies and 2 choices between two replies" in text
    assert "3 more votes and Attune learns from them" in text
    assert "**Your own version:** version 2, updated 2 minutes ago." in text
    assert "it learns once 3 profiles have given feedback (1 so far)" in text
    assert "replies are 56% you, set automatically" in text and "half you after 4 votes" in text
    assert "as you set it" in learning_markdown(_status(alpha_source="you", alpha_override=0.3, alpha=0.3), NOW)
    held = learning_markdown(_status(alpha_source="held back", alpha=0.0), NOW)
    assert "replies are 0% you: your newest version agreed with your own held-out votes less often" in held
    fresh = learning_markdown(_status(feedback={"thumbs": 0, "comparison": 0, "total": 0}, personal=None,
                                      alpha=0.0, alpha_source="none"), NOW)
    assert "nothing yet" in fresh and "not made yet" in fresh and "no version of your own yet" in fresh


def test_the_reward_line_gives_its_held_out_record_and_whether_it_picks_replies():
    reward = {"version": 7, "right": 5.0, "pairs": 6, "trusted": True, "best_of": 4, "trust_accuracy": 0.7,
              "trust_min_pairs": 5}
    assert "**Your reward model:**" not in learning_markdown(_status(), NOW)  # none fitted yet
    trusted = learning_markdown(_status(reward=reward), NOW)
    assert "it orders 5 of your 6 held-out choices right. Each reply is the best of 4 by it." in trusted
    waiting = learning_markdown(_status(reward={**reward, "right": 3.5, "trusted": False}), NOW)
    assert "orders 3.5 of your 6" in waiting and "once it orders at least 70% of 5 or more right" in waiting
    alone = learning_markdown(_status(reward={**reward, "pairs": 0, "right": 0, "best_of": 1}), NOW)
    assert "no choice of yours is held out to check it yet." in alone and "best of" not in alone


def test_every_job_of_the_profile_is_shown_with_its_progress_and_time_left():
    jobs = [{"profile_id": "p", "status": "running", "progress": 0.5, "message": "step 4 of 8",
             "started_at": _iso(seconds=20)},
            {"profile_id": None, "status": "queued", "progress": 0.0, "message": None, "started_at": None}]
    text = learning_markdown(_status(jobs=jobs), NOW)
    assert "**Training your version:** step 4 of 8 (50%), about 20 s left." in text
    assert "**Training everyone's version:** waiting its turn." in text


def test_the_chart_starts_at_the_base_model_so_one_version_draws_a_line():
    from ui.learning import accuracy_frame

    assert accuracy_frame([{"version": "v0001"}]).empty  # a version with no held-out votes: nothing to draw
    frame = accuracy_frame([{"version": "v0001", "eval/accuracy_personal": 0.75, "eval/accuracy_global": 0.5,
                             "eval/accuracy_base": 0.25}])
    lines = {model: list(zip(rows.version, rows.accuracy)) for model, rows in frame.groupby("model")}
    assert lines == {"you + everyone": [("before", 0.25), ("1", 0.75)], "everyone only": [("before", 0.25), ("1", 0.5)]}


def test_a_refresh_for_a_profile_deleted_a_moment_ago_shows_the_empty_panel_not_an_error(store, tiny_loaded,
                                                                                         app_config):
    """The panel's timer can tick with the profile the page showed before a Delete profile took effect."""
    import gradio as gr

    from adapters.blend import AdapterServer
    from adapters.registry import AdapterRegistry
    from assistant.config import BlendConfig
    from assistant.service import ChatService
    from ui.layout import layout
    from ui.learning import on_learning_refresh

    service = ChatService(store, tiny_loaded, app_config,
                          adapters=AdapterServer(tiny_loaded, AdapterRegistry(app_config.data_dir / "adapters", store),
                                                 store, BlendConfig()))
    with gr.Blocks():
        ui = layout(service.model_id, app_config)
    gone = service.create_profile("Gone")["id"]
    service.delete_profile(gone)
    shown = on_learning_refresh(service, ui, gone)
    assert shown[ui.learning_status] == "Pick a profile to see what Attune has learned from it."
    assert ui.status not in shown  # no refusal in the status line, and no toast (ui_errors was not reached)


def test_the_worker_line_tells_its_health_by_the_age_of_its_heartbeat():
    from ui.learning_text import _worker

    now = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
    beat = {"pid": 7, "started_at": "2026-12-05T11:00:00+00:00"}
    assert "running, last heard from 4 s ago" in _worker({**beat, "beat_at": "2026-12-05T11:59:56+00:00"}, now)
    stale = _worker({**beat, "beat_at": "2026-12-05T11:58:00+00:00"}, now)
    assert "not heard from for 2 min" in stale and "starts it again" in stale
    assert "not started yet" in _worker(None, now)
