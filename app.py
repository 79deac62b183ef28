"""Attune's web UI: Gradio wiring and named handlers. All work is done by `assistant.service.ChatService`.

    python app.py [--model embedded|gpt2|ID|FOLDER] [--data-dir DIR] [--host 127.0.0.1] [--port 7860]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (the environment must be set before gradio is imported)
import pandas as pd  # noqa: E402  (comes with gradio; the accuracy plot takes a DataFrame)

from adapters.blend import AdapterServer  # noqa: E402
from adapters.registry import AdapterRegistry  # noqa: E402
from adapters.worker import ADAPTERS_DIR  # noqa: E402

from assistant.config import DEFAULT_SYSTEM_PROMPT, AppConfig, GenerationSettings  # noqa: E402
from assistant.executor import GenerationExecutor  # noqa: E402
from assistant.model import load_model  # noqa: E402
from assistant.overrides import add_settings_arguments, config_from_args, settings_diff  # noqa: E402
from assistant.service import ChatService, ReplyUpdate  # noqa: E402
from storage.db import DB_FILENAME  # noqa: E402
from storage.errors import AttuneError  # noqa: E402
from storage.store import Message, Comparison, Store  # noqa: E402

log = logging.getLogger("attune.app")

APOLOGY = "Sorry, something went wrong on our side. It has been logged; please try again."
LIKE, DISLIKE = "Like", "Dislike"
CHOICE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad"}
CHOICE_CONFIRMATIONS = {
    "a": "Saved: A is better. A continues the conversation.",
    "b": "Saved: B is better. B continues the conversation.",
    "tie": "Saved: a tie. A continues the conversation.",
    "both_bad": "Saved: both bad. A is kept so the conversation can go on; use Retry for a new reply.",
}


def ui_errors(fn):
    """Turn project errors into a message for the person, and anything else into a logged apology."""

    def translate(exc: Exception) -> gr.Error:
        if isinstance(exc, AttuneError):
            return gr.Error(str(exc), print_exception=False)
        log.exception("Unexpected error in %s", fn.__name__)
        return gr.Error(APOLOGY, print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise translate(exc) from exc
        return generator

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise translate(exc) from exc
    return call


def _chat_value(transcript: list[Message], pending_text: str | None = None, user_text: str | None = None) -> gr.Chatbot:
    """The chatbot's messages and the earlier thumbs, one per assistant message."""
    messages = [{"role": m.role, "content": m.content} for m in transcript]
    feedback = [{1: LIKE, -1: DISLIKE}.get(m.vote) for m in transcript if m.role == "assistant"]
    if user_text is not None:
        messages.append({"role": "user", "content": user_text})
    if pending_text is not None:
        messages.append({"role": "assistant", "content": pending_text})
        feedback.append(None)
    return gr.Chatbot(value=messages, feedback_value=feedback)


def _learning_markdown(status: dict) -> str:
    n, since = status["feedback"], status["since_personal"]
    lines = [f"**Your feedback:** {n['thumbs']} thumbs, {n['comparison']} comparisons "
             f"({since['total']} since your adapter was last trained; it retrains every {status['every']})."]
    waiting_for = status["global_profiles"]
    waiting = (f"not trained yet: it learns once {waiting_for['needed']} profiles have given feedback "
               f"({waiting_for['profiles']} so far)" if waiting_for["profiles"] < waiting_for["needed"] else "not trained yet")
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


def _secret(data_dir: Path) -> str:
    """A per-data-home secret so the browser's remembered profile survives a server restart."""
    path = data_dir / "browser-state.secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass(frozen=True)
class UI:
    """The components handlers read and write, by name (no positional tuples of outputs)."""

    remembered: gr.BrowserState
    profile: gr.Dropdown
    profile_name: gr.Textbox
    confirm_row: gr.Row
    confirm_text: gr.Markdown
    conversation: gr.Dropdown
    chatbot: gr.Chatbot
    message: gr.Textbox
    status: gr.Markdown
    compare: gr.Checkbox
    compare_row: gr.Row
    candidate_a: gr.Markdown
    candidate_b: gr.Markdown
    choice_row: gr.Row
    comment_row: gr.Row
    comment: gr.Textbox
    disliked: gr.State
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider
    repetition_penalty: gr.Slider
    learning_status: gr.Markdown
    alpha_auto: gr.Checkbox
    alpha: gr.Slider
    accuracy_plot: gr.LinePlot
    timer: gr.Timer
    buttons: dict


def build_app(service: ChatService, config: AppConfig) -> gr.Blocks:
    with gr.Blocks(title="Attune") as demo:
        ui = _layout(service, config)
        _wire(demo, ui, service)
    return demo


def _layout(service: ChatService, config: AppConfig) -> UI:
    gr.Markdown("# Attune\nA chat assistant that learns what you prefer.")
    remembered = gr.BrowserState({"profile_id": None, "conversation_id": None}, storage_key="attune-session",
                                 secret=_secret(config.data_dir))
    with gr.Row(equal_height=True):
        profile = gr.Dropdown(label="Profile", choices=[], value=None, scale=2, elem_id="profile",
                              allow_custom_value=True)  # ids are checked by the service, with a clear message
        profile_name = gr.Textbox(label="Profile name", placeholder="Name for a new profile, or a new name",
                                  max_lines=1, scale=2, elem_id="profile-name")
        create = gr.Button("Create profile", scale=1, size="sm", elem_id="create-profile")
        rename = gr.Button("Rename", scale=1, size="sm", elem_id="rename-profile")
        delete = gr.Button("Delete profile", variant="stop", scale=1, size="sm", elem_id="delete-profile")
    with gr.Row(visible=False) as confirm_row:
        confirm_text = gr.Markdown()
        confirm = gr.Button("Yes, delete it", variant="stop", elem_id="confirm-delete")
        cancel = gr.Button("Cancel", elem_id="cancel-delete")
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            conversation = gr.Dropdown(label="Conversation", choices=[], value=None, elem_id="conversation",
                                       allow_custom_value=True)
            new_conversation = gr.Button("New conversation", elem_id="new-conversation")
            delete_conversation = gr.Button("Delete conversation", variant="stop", size="sm")
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chatbot", feedback_options=(LIKE, DISLIKE),
                                 buttons=["copy", "copy_all"])
            with gr.Row(visible=False) as comment_row:
                comment = gr.Textbox(label="What was wrong? (optional)", max_lines=2, scale=4)
                save_comment = gr.Button("Save comment", scale=1)
            with gr.Row(visible=False) as compare_row:
                candidate_a = gr.Markdown(label="A", elem_id="candidate-a", container=True)
                candidate_b = gr.Markdown(label="B", elem_id="candidate-b", container=True)
            with gr.Row(visible=False) as choice_row:
                choice_buttons = {c: gr.Button(label, elem_id=f"choose-{c}") for c, label in CHOICE_LABELS.items()}
            status = gr.Markdown(elem_id="status")
            with gr.Row():
                message = gr.Textbox(placeholder="Message Attune…", show_label=False, scale=6, lines=2,
                                     elem_id="message")
                send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            with gr.Row():
                retry = gr.Button("Retry", size="sm", elem_id="retry")
                compare = gr.Checkbox(label="Compare two replies (A/B)", value=False, elem_id="compare")
            with gr.Accordion("Settings", open=False):
                defaults = GenerationSettings()
                system_prompt = gr.Textbox(label="System prompt", value=DEFAULT_SYSTEM_PROMPT, lines=2,
                                           placeholder="Empty: the model's own default")
                temperature = gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p")
                max_new_tokens = gr.Slider(1, 1024, value=defaults.max_new_tokens, step=1, label="Max new tokens")
                repetition_penalty = gr.Slider(1, 2, value=defaults.repetition_penalty, step=0.05,
                                               label="Repetition penalty (1 = off; the reply's own tokens only)")
            with gr.Accordion("Learning", open=False, elem_id="learning"):
                learning_status = gr.Markdown("Pick a profile to see what Attune has learned from it.",
                                              elem_id="learning-status")
                with gr.Row():
                    alpha_auto = gr.Checkbox(label="Automatic weight: more of you as you give more feedback",
                                             value=True, elem_id="alpha-auto")
                    alpha = gr.Slider(0, 1, value=0, step=0.05, label="Everyone ↔ just me", elem_id="alpha",
                                      interactive=True)
                with gr.Row():
                    train_now = gr.Button("Train now", size="sm", elem_id="train-now")
                    reset_adapter = gr.Button("Reset my adapter", size="sm", variant="stop", elem_id="reset-adapter")
                accuracy_plot = gr.LinePlot(x="version", y="accuracy", color="model", y_lim=[0, 1], height=220,
                                            title="Held-out preference accuracy on your own votes",
                                            elem_id="accuracy-plot")
                timer = gr.Timer(2.0)
    gr.Markdown(f"Model: `{service.model_id}` · Data home: `{config.data_dir.resolve()}`", elem_id="footer")
    buttons = dict(create=create, rename=rename, delete=delete, confirm=confirm, cancel=cancel,
                   new_conversation=new_conversation, delete_conversation=delete_conversation,
                   save_comment=save_comment, send=send, retry=retry, choices=choice_buttons, train_now=train_now,
                   reset_adapter=reset_adapter)
    return UI(remembered, profile, profile_name, confirm_row, confirm_text, conversation, chatbot, message, status,
              compare, compare_row, candidate_a, candidate_b, choice_row, comment_row, comment, gr.State(None),
              system_prompt, temperature, top_p, max_new_tokens, repetition_penalty, learning_status, alpha_auto, alpha,
              accuracy_plot, timer, buttons)


def _wire(demo: gr.Blocks, ui: UI, service: ChatService) -> None:  # noqa: C901 (one place for all wiring)
    b = ui.buttons
    settings_inputs = [ui.system_prompt, ui.temperature, ui.top_p, ui.max_new_tokens, ui.repetition_penalty]
    view_outputs = [ui.profile, ui.conversation, ui.chatbot, ui.compare_row, ui.candidate_a, ui.candidate_b,
                    ui.choice_row, ui.comment_row, ui.status]

    def require_profile(profile_id: str | None) -> None:
        if not profile_id:
            raise gr.Error("Pick or create a profile first.", print_exception=False)

    def profile_choices() -> list[tuple[str, str]]:
        return [(p["name"], p["id"]) for p in service.list_profiles()]

    def view(profile_id: str | None, conversation_id: str | None, status: str = "") -> dict:
        """Everything shown for a profile and conversation, read fresh from storage."""
        transcript: list[Message] = []
        comparison: Comparison | None = None
        conversations = []
        if profile_id:
            conversations = service.list_conversations(profile_id)
            if conversation_id:
                transcript = service.transcript(profile_id, conversation_id)
                comparison = service.pending_comparison(profile_id, conversation_id)
        return {
            ui.profile: gr.Dropdown(choices=profile_choices(), value=profile_id),
            ui.conversation: gr.Dropdown(choices=[(c["title"], c["id"]) for c in conversations],
                                         value=conversation_id),
            ui.chatbot: _chat_value(transcript),
            ui.compare_row: gr.Row(visible=comparison is not None),
            ui.candidate_a: "**A**\n\n" + comparison.a.content if comparison else "",
            ui.candidate_b: "**B**\n\n" + comparison.b.content if comparison else "",
            ui.choice_row: gr.Row(visible=comparison is not None),
            ui.comment_row: gr.Row(visible=False),
            ui.status: status,
        }

    def settings_from(system_prompt, temperature, top_p, max_new_tokens,
                      repetition_penalty=GenerationSettings.repetition_penalty) -> GenerationSettings:
        return GenerationSettings(system_prompt=system_prompt or "", temperature=float(temperature),
                                  top_p=float(top_p), max_new_tokens=int(max_new_tokens),
                                  repetition_penalty=float(repetition_penalty))

    @ui_errors
    def on_load(remembered: dict | None):
        remembered = remembered or {}
        profile_id, conversation_id = remembered.get("profile_id"), remembered.get("conversation_id")
        known = {p["id"] for p in service.list_profiles()}
        if profile_id not in known:
            profile_id, conversation_id = None, None
        elif conversation_id not in {c["id"] for c in service.list_conversations(profile_id)}:
            conversation_id = None
        return view(profile_id, conversation_id)

    @ui_errors
    def on_create_profile(name: str):
        profile = service.create_profile(name)
        created = f"Profile '{profile['name']}' created."
        gr.Info(created)  # (a toast is sent before the outputs; the status line comes with the new profile)
        return {**view(profile["id"], None, created), ui.profile_name: ""}

    @ui_errors
    def on_select_profile(profile_id: str):
        service.get_profile(profile_id)
        conversations = service.list_conversations(profile_id)
        return view(profile_id, conversations[0]["id"] if conversations else None)

    @ui_errors
    def on_rename_profile(profile_id: str, name: str):
        profile = service.rename_profile(profile_id, name)
        gr.Info(f"Profile renamed to '{profile['name']}'.")
        return {ui.profile: gr.Dropdown(choices=profile_choices(), value=profile_id), ui.profile_name: ""}

    @ui_errors
    def on_delete_profile(profile_id: str):
        profile = service.get_profile(profile_id)
        return {ui.confirm_row: gr.Row(visible=True),
                ui.confirm_text: f"Delete profile **{profile['name']}** with all its conversations and feedback? "
                                 "This cannot be undone."}

    @ui_errors
    def on_confirm_delete_profile(profile_id: str):
        name = service.get_profile(profile_id)["name"]
        service.delete_profile(profile_id)
        gr.Info(f"Profile '{name}' deleted.")
        return {**view(None, None), ui.confirm_row: gr.Row(visible=False)}

    def on_cancel_delete_profile():
        return gr.Row(visible=False)

    @ui_errors
    def on_new_conversation(profile_id: str):
        require_profile(profile_id)
        conversation = service.new_conversation(profile_id)
        return view(profile_id, conversation["id"])

    @ui_errors
    def on_open_conversation(profile_id: str, conversation_id: str):
        service.transcript(profile_id, conversation_id)  # ownership check before showing anything
        return view(profile_id, conversation_id)

    @ui_errors
    def on_delete_conversation(profile_id: str, conversation_id: str):
        if not conversation_id:
            raise gr.Error("Open a conversation first.", print_exception=False)
        service.delete_conversation(profile_id, conversation_id)
        return view(profile_id, None, "Conversation deleted.")

    def settled(profile_id: str | None, conversation_id: str | None, status: str, buttons: bool) -> dict:
        """The stored view after a reply, without the comment box (a 👎 given meanwhile keeps its box open), and
        with the choice buttons only if `buttons`."""
        out = view(profile_id, conversation_id, status)
        del out[ui.comment_row]
        if not buttons:
            out[ui.choice_row] = gr.Row(visible=False)
        return out

    def stream_view(profile_id: str, updates, compare: bool, retrying: bool):
        """Yield UI updates while a reply (or A and B) streams in, then the stored state with the choice buttons
        still hidden: `on_refresh`, chained after the event, shows them."""
        first = True
        for update in updates:
            update: ReplyUpdate
            out = {}
            if first:
                history = service.transcript(profile_id, update.conversation_id)
                if retrying and history and history[-1].role == "assistant":
                    history = history[:-1]
                if update.notice:
                    gr.Info(update.notice)
                # (a new conversation is selected at once: if the reply fails, the next message continues it)
                out[ui.conversation] = gr.Dropdown(value=update.conversation_id, choices=[
                    (c["title"], c["id"]) for c in service.list_conversations(profile_id)])
                first = False
            if update.done:
                # Gradio applies a generator's last output once more when the event completes, after any event
                # the person started in between. So this view keeps the choice buttons hidden and leaves the
                # comment box alone; `on_refresh`, chained after the event, reveals the buttons, and neither a
                # choice nor a 👎's comment box can be overwritten by it.
                yield settled(profile_id, update.conversation_id, update.notice or "", buttons=False)
                continue
            writing = "✍️ Writing both replies…" if compare else "✍️ Writing…"
            out.update({ui.status: " ".join(filter(None, [writing, update.notice])),
                        ui.comment_row: gr.Row(visible=False)})
            if compare:
                out.update({ui.chatbot: _chat_value(history), ui.compare_row: gr.Row(visible=True),
                            ui.candidate_a: "**A**\n\n" + update.texts[0],
                            ui.candidate_b: "**B**\n\n" + update.texts[1], ui.choice_row: gr.Row(visible=False)})
            else:
                out[ui.chatbot] = _chat_value(history, pending_text=update.texts[0])
            if not retrying:
                out[ui.message] = ""
            yield out

    @ui_errors
    def on_send(profile_id, conversation_id, text, compare, system_prompt, temperature, top_p, max_new_tokens,
                repetition_penalty=GenerationSettings.repetition_penalty):
        require_profile(profile_id)
        settings = settings_from(system_prompt, temperature, top_p, max_new_tokens, repetition_penalty)
        updates = service.send(profile_id, conversation_id or None, text, settings, compare=bool(compare))
        yield from stream_view(profile_id, updates, bool(compare), retrying=False)

    @ui_errors
    def on_refresh(profile_id: str | None, conversation_id: str | None, status: str | None):
        """The stored state once a reply has finished, keeping its notice (chained with `.success`: a failure leaves
        the error on screen with its toast, as Gradio 6 would even with `.then`)."""
        return settled(profile_id, conversation_id or None, status or "", buttons=True)

    @ui_errors
    def on_retry(profile_id, conversation_id, compare, system_prompt, temperature, top_p, max_new_tokens,
                 repetition_penalty=GenerationSettings.repetition_penalty):
        if not profile_id or not conversation_id:
            raise gr.Error("Open a conversation with a message first.", print_exception=False)
        settings = settings_from(system_prompt, temperature, top_p, max_new_tokens, repetition_penalty)
        updates = service.retry(profile_id, conversation_id, settings, compare=bool(compare))
        yield from stream_view(profile_id, updates, bool(compare), retrying=True)

    @ui_errors
    def on_like(profile_id: str, conversation_id: str, data: gr.LikeData):
        if not profile_id or not conversation_id:
            raise gr.Error("Open a conversation first.", print_exception=False)
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        value = 1 if data.liked is True or data.liked == LIKE else -1
        shown = data.value if isinstance(data.value, str) else None
        feedback = service.vote_at(profile_id, conversation_id, int(index), value, shown)
        if value > 0:
            gr.Info("Thanks! Saved your 👍.")
            return {ui.comment_row: gr.Row(visible=False), ui.disliked: None}
        gr.Info("Saved your 👎. You can say what was wrong below.")
        return {ui.comment_row: gr.Row(visible=True), ui.comment: "", ui.disliked: feedback["message_id"]}

    @ui_errors
    def on_save_comment(profile_id: str, message_id: str | None, comment: str):
        if not message_id:
            raise gr.Error("Give a 👎 on a reply first, then add a comment.", print_exception=False)
        service.comment(profile_id, message_id, comment)
        gr.Info("Comment saved.")
        return {ui.comment_row: gr.Row(visible=False), ui.comment: "", ui.disliked: None}

    @ui_errors
    def on_choose(choice: str, profile_id: str, conversation_id: str):
        if not profile_id or not conversation_id:
            raise gr.Error("Open a conversation first.", print_exception=False)
        service.choose_pending(profile_id, conversation_id, choice)
        gr.Info(CHOICE_CONFIRMATIONS[choice])
        return view(profile_id, conversation_id, CHOICE_CONFIRMATIONS[choice])

    def on_remember(profile_id: str | None, conversation_id: str | None) -> dict:
        return {"profile_id": profile_id, "conversation_id": conversation_id}

    # ---- learning panel ------------------------------------------------------------------------------------

    def learning_view(profile_id: str | None) -> dict:
        if not profile_id or service.adapters is None:
            text = ("Learning is off in this app." if service.adapters is None
                    else "Pick a profile to see what Attune has learned from it.")
            return {ui.learning_status: text, ui.accuracy_plot: _accuracy_frame([])}
        status = service.learning_status(profile_id)
        return {ui.learning_status: _learning_markdown(status), ui.accuracy_plot: _accuracy_frame(status["history"])}

    @ui_errors
    def on_learning_refresh(profile_id: str | None):
        return learning_view(profile_id)

    @ui_errors
    def on_learning_open(profile_id: str | None):
        view_ = learning_view(profile_id)
        if profile_id and service.adapters is not None:
            status = service.learning_status(profile_id)
            auto = status["alpha_override"] is None
            view_.update({ui.alpha_auto: auto, ui.alpha: status["alpha"] if auto else status["alpha_override"]})
        return view_

    @ui_errors
    def on_alpha(profile_id: str, auto: bool, alpha: float):
        require_profile(profile_id)
        service.set_alpha(profile_id, None if auto else float(alpha))
        return learning_view(profile_id)

    @ui_errors
    def on_train_now(profile_id: str):
        require_profile(profile_id)
        service.train_now(profile_id)
        gr.Info("Training queued: your adapter and everyone's. The next reply after it finishes uses them.")
        return learning_view(profile_id)

    @ui_errors
    def on_reset_adapter(profile_id: str):
        require_profile(profile_id)
        service.reset_personal(profile_id)
        gr.Info("Your personal adapter was dropped; your feedback is kept. Replies now follow everyone's taste.")
        return learning_view(profile_id)

    # ---- API-only endpoints (gradio_client and scripts): ids in, plain data out ----------------------------

    @ui_errors
    def messages(profile_id: str, conversation_id: str) -> list[dict]:
        """The active messages of a conversation with their ids and thumbs."""
        return [{"id": m.id, "role": m.role, "content": m.content, "vote": m.vote, "status": m.status,
                 "model_id": m.model_id, "settings": m.settings, "adapter_versions": m.adapter_versions}
                for m in service.transcript(profile_id, conversation_id)]

    @ui_errors
    def vote(profile_id: str, message_id: str, value: int, comment: str = "") -> dict:
        """Thumbs on an assistant reply: value +1 (up) or -1 (down). Voting again replaces the vote."""
        return service.vote(profile_id, message_id, value, comment or None)

    @ui_errors
    def choose(profile_id: str, comparison_id: str, choice: str) -> dict:
        """Decide a comparison: choice is one of a, b, tie, both_bad."""
        comparison = service.choose(profile_id, comparison_id, choice)
        return {"comparison_id": comparison.id, "choice": comparison.choice, "a": comparison.a.content, "b": comparison.b.content}

    @ui_errors
    def pending(profile_id: str, conversation_id: str) -> dict:
        """The comparison waiting for a choice in a conversation ({} if none)."""
        comparison = service.pending_comparison(profile_id, conversation_id)
        return {"comparison_id": comparison.id, "a": comparison.a.content, "b": comparison.b.content} if comparison else {}

    # ---- wiring --------------------------------------------------------------------------------------------

    demo.load(on_load, [ui.remembered], view_outputs, api_name="load")
    b["create"].click(on_create_profile, [ui.profile_name], view_outputs + [ui.profile_name],
                      api_name="create_profile")
    ui.profile_name.submit(on_create_profile, [ui.profile_name], view_outputs + [ui.profile_name],
                           api_visibility="private")
    ui.profile.input(on_select_profile, [ui.profile], view_outputs, api_name="select_profile")
    b["rename"].click(on_rename_profile, [ui.profile, ui.profile_name], [ui.profile, ui.profile_name],
                      api_name="rename_profile")
    b["delete"].click(on_delete_profile, [ui.profile], [ui.confirm_row, ui.confirm_text], api_name="ask_delete_profile")
    b["confirm"].click(on_confirm_delete_profile, [ui.profile], view_outputs + [ui.confirm_row],
                       api_name="delete_profile")
    b["cancel"].click(on_cancel_delete_profile, None, [ui.confirm_row], api_visibility="private")
    b["new_conversation"].click(on_new_conversation, [ui.profile], view_outputs, api_name="new_conversation")
    ui.conversation.input(on_open_conversation, [ui.profile, ui.conversation], view_outputs,
                          api_name="open_conversation")
    ui.chatbot.clear(on_new_conversation, [ui.profile], view_outputs, api_visibility="private")  # trash icon
    b["delete_conversation"].click(on_delete_conversation, [ui.profile, ui.conversation], view_outputs,
                                   api_name="delete_conversation")

    chat_outputs = view_outputs + [ui.message]
    send_inputs = [ui.profile, ui.conversation, ui.message, ui.compare] + settings_inputs
    refresh = dict(fn=on_refresh, inputs=[ui.profile, ui.conversation, ui.status],
                   outputs=[o for o in view_outputs if o is not ui.comment_row], api_visibility="private",
                   show_progress="hidden")
    b["send"].click(on_send, send_inputs, chat_outputs, api_name="send").success(**refresh)
    ui.message.submit(on_send, send_inputs, chat_outputs, api_visibility="private").success(**refresh)
    b["retry"].click(on_retry, [ui.profile, ui.conversation, ui.compare] + settings_inputs, chat_outputs,
                     api_name="retry").success(**refresh)
    ui.chatbot.like(on_like, [ui.profile, ui.conversation], [ui.comment_row, ui.comment, ui.disliked],
                    api_visibility="private")
    b["save_comment"].click(on_save_comment, [ui.profile, ui.disliked, ui.comment],
                            [ui.comment_row, ui.comment, ui.disliked], api_visibility="private")
    for choice, button in b["choices"].items():
        button.click(functools.partial(on_choose, choice), [ui.profile, ui.conversation], view_outputs,
                     api_name=f"choose_{choice}")
    for component in (ui.profile, ui.conversation):
        component.change(on_remember, [ui.profile, ui.conversation], [ui.remembered], api_visibility="private")
    @ui_errors
    def learning(profile_id: str) -> dict:
        """Feedback counts, adapter versions, the current blend weight α, training jobs, accuracy history."""
        return service.learning_status(profile_id)

    for fn in (messages, vote, choose, pending, learning):
        gr.api(fn, api_name=fn.__name__)

    learning_outputs = [ui.learning_status, ui.accuracy_plot]
    ui.timer.tick(on_learning_refresh, [ui.profile], learning_outputs, api_visibility="private",
                  show_progress="hidden")
    ui.profile.change(on_learning_open, [ui.profile], learning_outputs + [ui.alpha_auto, ui.alpha],
                      api_visibility="private", show_progress="hidden")
    alpha_inputs = [ui.profile, ui.alpha_auto, ui.alpha]
    ui.alpha.input(on_alpha, alpha_inputs, learning_outputs, api_name="set_alpha")
    ui.alpha_auto.input(on_alpha, alpha_inputs, learning_outputs, api_visibility="private")
    b["train_now"].click(on_train_now, [ui.profile], learning_outputs, api_name="train_now")
    b["reset_adapter"].click(on_reset_adapter, [ui.profile], learning_outputs, api_name="reset_adapter")


APP_ALIASES = {
    "--model": ("model.model", None),
    "--model-cache": ("model.cache_dir", None),
    "--allow-download": ("model.allow_download", "true"),
    "--data-dir": ("data_dir", None),
    "--host": ("host", None),
    "--port": ("port", None),
    "--no-worker": ("worker", "false"),
    "--worker-threads": ("worker_threads", None),
}
"""The app's short flags, each the same as one `--set` setting."""


def parse_args(argv: list[str] | None = None) -> AppConfig:
    parser = argparse.ArgumentParser(
        description="Attune: a chat assistant that learns your preferences.",
        epilog="--model takes 'embedded' (SmolLM2-135M-Instruct, the default), gpt2, a hub id or a folder; the data "
               "home defaults to $ATTUNE_HOME or ./data. Every setting is listed in docs/usage.md.")
    add_settings_arguments(parser, APP_ALIASES)
    return config_from_args(parser, parser.parse_args(argv), AppConfig())


def create_service(config: AppConfig, executor: GenerationExecutor | None = None) -> ChatService:
    loaded = load_model(config.model, config.model_cache_dir)
    store = Store(config.data_dir / DB_FILENAME)
    adapters = AdapterServer(loaded, AdapterRegistry(config.data_dir / ADAPTERS_DIR, store), store,
                             config.learning.blend)
    return ChatService(store, loaded, config, executor, adapters, config.learning)


def worker_command(config: AppConfig) -> list[str]:
    """The training worker's command line: every setting in which this app's config differs from the defaults
    (the data home always, as its default depends on the environment), and this process to watch."""
    settings = [s for s in settings_diff(config, AppConfig()) if not s.startswith("data_dir=")]
    return [sys.executable, "-m", "adapters.worker", "--data-dir", str(config.data_dir), "--parent-pid",
            str(os.getpid()), *(a for setting in settings for a in ("--set", setting))]


def start_worker(config: AppConfig) -> subprocess.Popen:
    """The training worker, as its own process (it trains while this one serves)."""
    return subprocess.Popen(worker_command(config), cwd=Path(__file__).resolve().parent)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    executor = GenerationExecutor()
    try:
        config = parse_args(argv)
        service = create_service(config, executor)
    except AttuneError as exc:
        log.error("%s", exc)
        return 2
    worker = start_worker(config) if config.worker else None
    demo = build_app(service, config)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=config.host, server_port=config.port, show_error=False, prevent_thread_lock=True)
    stopping = threading.Event()
    # Ctrl-C and SIGTERM both stop the loop between jobs. As a handler of our own, SIGINT also works when the app was
    # started with it ignored (a background job of a script inherits that), and it is never swallowed as the failure
    # of a reply being generated on the main thread.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        executor.serve_forever(should_stop=stopping.is_set)  # the main thread generates: see assistant/executor.py
    finally:
        log.info("Stopping.")
        demo.close()
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
