"""The Learning panel: what Attune has learned from a profile, the personal weight α, train now, reset."""

from __future__ import annotations

import gradio as gr
import pandas as pd  # (comes with gradio; the accuracy plot takes a DataFrame)

from assistant.service import ChatService
from ui.errors import require_profile, ui_errors
from ui.layout import UI

LEARNING = ("learning_status", "accuracy_plot", "status")
"""The outputs of every learning-panel event (`learning_view`)."""


@ui_errors
def on_learning_refresh(service: ChatService, ui: UI, profile_id: str | None):
    return learning_view(service, ui, profile_id)


@ui_errors
def on_learning_open(service: ChatService, ui: UI, profile_id: str | None):
    """The panel for a newly picked profile, with its α controls set to its stored choice."""
    shown = learning_view(service, ui, profile_id)
    if profile_id and service.adapters is not None:
        status = service.learning_status(profile_id)
        auto = status["alpha_override"] is None
        shown.update({ui.alpha_auto: auto, ui.alpha: status["alpha"] if auto else status["alpha_override"]})
    return shown


@ui_errors
def on_alpha(service: ChatService, ui: UI, profile_id: str, auto: bool, alpha: float):
    require_profile(profile_id)
    service.set_alpha(profile_id, None if auto else float(alpha))
    return learning_view(service, ui, profile_id)


@ui_errors
def on_train_now(service: ChatService, ui: UI, profile_id: str):
    return _act(service, ui, profile_id, service.train_now,
                "Training queued: your adapter and everyone's. The next reply after it finishes uses them.")


@ui_errors
def on_reset_adapter(service: ChatService, ui: UI, profile_id: str):
    return _act(service, ui, profile_id, service.reset_personal,
                "Your personal adapter was dropped; your feedback is kept. Replies now follow everyone's taste.")


def _act(service: ChatService, ui: UI, profile_id: str, action, done: str) -> dict:
    """`action(profile_id)` for the picked profile, the toast `done`, and the panel afresh."""
    require_profile(profile_id)
    action(profile_id)
    gr.Info(done)
    return learning_view(service, ui, profile_id)


def learning_view(service: ChatService, ui: UI, profile_id: str | None) -> dict:
    """The panel's text and accuracy plot (the `LEARNING` outputs)."""
    if not profile_id or service.adapters is None:
        text = ("Learning is off in this app." if service.adapters is None
                else "Pick a profile to see what Attune has learned from it.")
        return {ui.learning_status: text, ui.accuracy_plot: _accuracy_frame([])}
    status = service.learning_status(profile_id)
    return {ui.learning_status: _learning_markdown(status), ui.accuracy_plot: _accuracy_frame(status["history"])}


def _learning_markdown(status: dict) -> str:
    n, since = status["feedback"], status["since_personal"]
    lines = [f"**Your feedback:** {n['thumbs']} thumbs, {n['comparison']} comparisons "
             f"({since['total']} since your adapter was last trained; it retrains every {status['every']})."]
    waiting_for = status["global_profiles"]
    waiting = "not trained yet"
    if waiting_for["profiles"] < waiting_for["needed"]:
        waiting += (f": it learns once {waiting_for['needed']} profiles have given feedback "
                    f"({waiting_for['profiles']} so far)")
    for label, info, none in (("Your adapter", status["personal"], "not trained yet"),
                              ("Everyone's adapter", status["global"], waiting)):
        lines.append(f"**{label}:** " + (f"{info['version']}, trained {info['created_at']}"
                                         + _guard_note(info.get("metrics", {})) if info else none))
    lines.append(f"**Personal weight α:** {status['alpha']:.2f} ({status['alpha_reason']})")
    for label, job in (("Training (yours)", status["job"]), ("Training (everyone's)", status["global_job"])):
        if job is None:
            continue
        if job["status"] in ("queued", "running"):
            lines.append(f"**{label}:** {job['status']} {job['progress']:.0%} {job['message']}")
        else:
            lines.append(f"**{label}:** last job {job['status']} ({job['message']})")
    return "\n\n".join(lines)


def _guard_note(metrics: dict) -> str:
    """What the drift guard (adapters/drift.py) did to a version, if anything."""
    trained, kept = metrics.get("drift/perplexity_ratio_trained"), metrics.get("drift/perplexity_ratio")
    if metrics.get("drift/update_scale", 1.0) >= 1.0 or trained is None:
        return ""
    if "drift/adapter_scale" in metrics:
        done = f"scaled the whole adapter to {metrics['drift/adapter_scale']:.0%}"
    else:
        done = f"kept {metrics['drift/update_scale']:.0%} of its last update"
    return (f" (the drift guard {done}: as trained, plain replies were ×{trained:.2f} harder to predict than for "
            f"the base model; now ×{kept:.2f})")


def _accuracy_frame(history: list[dict]) -> pd.DataFrame:
    rows = [{"version": h["version"], "model": name, "accuracy": h[key]}
            for h in history
            for name, key in (("personal", "eval/accuracy_personal"), ("global only", "eval/accuracy_global"),
                              ("base", "eval/accuracy_base")) if h.get(key) is not None]
    return pd.DataFrame(rows, columns=["version", "model", "accuracy"])
