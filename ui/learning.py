"""The Learning panel: what Attune has learned from a profile, the personal weight α, train now, reset."""

from __future__ import annotations

import gradio as gr
import pandas as pd  # (comes with gradio; the accuracy plot takes a DataFrame)

from assistant.service import ChatService
from storage.errors import NotFound
from ui.errors import refuse, require_profile, ui_errors
from ui.layout import UI
from ui.learning_text import learning_markdown

BEFORE = "before"
"""The chart's first point: the base model, before any learning."""
EMPTY_REPLY = "*(an empty reply: the model ended at once)*"
CHART_LINES = {"eval/accuracy_personal": "you + everyone", "eval/accuracy_global": "everyone only"}
"""The accuracy chart's lines: a version's held-out metric → its name in the legend."""
LEARNING = ("learning_status", "accuracy_plot", "alpha_auto", "alpha", "status")
"""The outputs of every learning-panel event (`learning_view`)."""


@ui_errors
def on_learning_refresh(service: ChatService, ui: UI, profile_id: str | None):
    """The panel afresh (on the timer and when another profile is picked). A profile deleted a moment ago, still
    shown by a tick that started before the page changed, gets the empty panel: the person did nothing wrong."""
    try:
        return learning_view(service, ui, profile_id)
    except NotFound:
        return learning_view(service, ui, None)


@ui_errors
def on_alpha(service: ChatService, ui: UI, profile_id: str, alpha: float):
    """The slider moved: the person sets how much of them the replies are (automatic weight off)."""
    require_profile(profile_id)
    service.set_alpha(profile_id, float(alpha))
    return learning_view(service, ui, profile_id)


@ui_errors
def on_alpha_auto(service: ChatService, ui: UI, profile_id: str, auto: bool, alpha: float):
    """The automatic weight ticked (the slider then follows it) or unticked (the slider's value holds)."""
    require_profile(profile_id)
    service.set_alpha(profile_id, None if auto else float(alpha))
    return learning_view(service, ui, profile_id)


@ui_errors
def on_save_note(service: ChatService, ui: UI, profile_id: str, note: str):
    """Keep the profile's note; it is followed from the next message."""
    require_profile(profile_id)
    kept = service.set_note(profile_id, note or "")
    gr.Info("Note saved: your next replies follow it." if kept else "Note cleared.")
    return {**learning_view(service, ui, profile_id), ui.note: kept}


@ui_errors
def on_train_now(service: ChatService, ui: UI, profile_id: str):
    return _act(service, ui, profile_id, service.train_now,
                "Training queued: your adapter and everyone's. The next reply after it finishes uses them.")


@ui_errors
def on_ask_reset_adapter(service: ChatService, ui: UI, profile_id: str):
    """Ask first: shows the confirmation row; nothing is dropped yet."""
    require_profile(profile_id)
    if service.learning_status(profile_id)["personal"] is None:
        raise refuse("There is nothing to reset: Attune has not trained your personal adapter yet.")
    return {ui.adapter_confirm_row: gr.Row(visible=True), ui.status: ""}


@ui_errors
def on_reset_adapter(service: ChatService, ui: UI, profile_id: str):
    return {**_act(service, ui, profile_id, service.reset_personal,
                   "Your personal adapter was dropped; your feedback is kept. Replies now follow everyone's taste."),
            ui.adapter_confirm_row: gr.Row(visible=False)}


@ui_errors
def on_before_after_messages(service: ChatService, ui: UI, profile_id: str | None, message_id: str | None = None):
    """The person's own recent messages to pick from: `message_id` if it is one of them, else the newest."""
    choices, value = _messages(service, profile_id, message_id)
    return {ui.before_after_message: gr.Dropdown(choices=choices, value=value)}


def _messages(service: ChatService, profile_id: str | None, message_id: str | None) -> tuple[list, str | None]:
    choices = [(_preview(m.content), m.id) for m in service.recent_user_messages(profile_id)] if profile_id else []
    ids = [i for _, i in choices]
    return choices, message_id if message_id in ids else (ids[0] if ids else None)


@ui_errors
def on_before_after(service: ChatService, ui: UI, profile_id: str, message_id: str | None):
    """The picked message answered by the base model and by today's blend, side by side (a message of another
    profile, left in the list from before a profile change, gives way to this profile's newest)."""
    require_profile(profile_id)
    choices, message_id = _messages(service, profile_id, message_id)
    if not message_id:
        raise refuse("Send a message first: the comparison answers one of your own.")
    shown = service.before_after(profile_id, message_id)
    versions = shown["blend"]
    used = (f"your version {int(versions['personal'][1:])} at {versions['alpha']:.0%} you"
            if versions.get("personal") else "no version of your own yet")
    if versions.get("global"):
        used += f", everyone's version {int(versions['global'][1:])}"
    return {ui.before_after_message: gr.Dropdown(choices=choices, value=message_id),
            ui.before_after_row: gr.Row(visible=True),
            ui.before: f"**Before** (the base model)\n\n{shown['before'] or EMPTY_REPLY}",
            ui.after: f"**Today** ({used})\n\n{shown['after'] or EMPTY_REPLY}",
            ui.status: f"Before and after, for “{_preview(shown['message'])}”: the same greedy settings, so the "
                       "difference is what Attune learned."}


def _preview(text: str, chars: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= chars else line[: chars - 1] + "…"


def _act(service: ChatService, ui: UI, profile_id: str, action, done: str) -> dict:
    """`action(profile_id)` for the picked profile, the toast `done`, and the panel afresh."""
    require_profile(profile_id)
    action(profile_id)
    gr.Info(done)
    return learning_view(service, ui, profile_id)


def learning_view(service: ChatService, ui: UI, profile_id: str | None) -> dict:
    """The panel's text, accuracy chart and weight controls (the `LEARNING` outputs but the status line). The
    slider shows the weight in use: the automatic one while the box is ticked, else the person's own."""
    if not profile_id or service.adapters is None:
        text = ("Learning is off in this app." if service.adapters is None
                else "Pick a profile to see what Attune has learned from it.")
        return {ui.learning_status: text, ui.accuracy_plot: gr.LinePlot(accuracy_frame([]), visible=False),
                ui.alpha_auto: True, ui.alpha: 0.0}
    status = service.learning_status(profile_id)
    frame = accuracy_frame(status["history"])
    auto = status["alpha_override"] is None
    return {ui.learning_status: learning_markdown(status),
            ui.accuracy_plot: gr.LinePlot(frame, visible=not frame.empty, sort=list(dict.fromkeys(frame.version))),
            ui.alpha_auto: auto, ui.alpha: round(status["alpha"] if auto else status["alpha_override"], 2)}


def accuracy_frame(history: list[dict]) -> pd.DataFrame:
    """The chart's points: for each version, the share of the person's held-out votes that the model serving them
    ("you + everyone") and everyone's taste alone ("everyone only") agree with. Each line starts at version 0, the
    base model before any learning (`BEFORE`), so one version already draws a line."""
    measured = [h for h in history if h.get("eval/accuracy_base") is not None]
    if not measured:
        return pd.DataFrame(columns=["version", "model", "accuracy"])
    base = measured[0]["eval/accuracy_base"]
    rows = [{"version": BEFORE, "model": name, "accuracy": base} for name in CHART_LINES.values()]
    for h in measured:
        number = str(int(h["version"].lstrip("v")))
        rows += [{"version": number, "model": name, "accuracy": h[key]}
                 for key, name in CHART_LINES.items() if h.get(key) is not None]
    return pd.DataFrame(rows, columns=["version", "model", "accuracy"])
