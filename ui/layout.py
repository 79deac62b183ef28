"""The page: every component, made once and named in the `UI` dataclass. No behaviour here (see ui/wiring.py)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from assistant.config import DEFAULT_SYSTEM_PROMPT, AppConfig, GenerationSettings

LIKE, DISLIKE = "Like", "Dislike"
CHOICE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad"}
BUTTONS = ("create", "rename", "delete", "confirm", "cancel", "new_conversation", "rename_conversation",
           "delete_conversation", "save_comment",
           "send", "stop", "retry", "choices", "train_now", "reset_adapter")
"""The names in `UI.buttons` (`choices`: one button per choice in CHOICE_LABELS)."""


@dataclass(frozen=True)
class UI:
    """The components handlers read and write, by name (no positional tuples of outputs)."""

    remembered: gr.BrowserState
    profile: gr.Dropdown
    profile_name: gr.Textbox
    confirm_row: gr.Row
    confirm_text: gr.Markdown
    conversation: gr.Dropdown
    conversation_title: gr.Textbox
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

    def pick(self, *names: str) -> list[gr.components.Component]:
        """The components with these names, in this order (an event's inputs or outputs)."""
        return [getattr(self, name) for name in names]


def layout(model_id: str, config: AppConfig) -> UI:
    """Make the page inside the current `gr.Blocks`, top to bottom."""
    gr.Markdown("# Attune\nA chat assistant that learns what you prefer.")
    remembered = gr.BrowserState({"profile_id": None, "conversation_id": None}, storage_key="attune-session",
                                 secret=_secret(config.data_dir))
    made = _profile_bar()
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            made |= _conversation_list()
        with gr.Column(scale=4):
            made |= _chat_panel()
            with gr.Accordion("Settings", open=False):
                made |= _settings()
            with gr.Accordion("Learning", open=False, elem_id="learning"):
                made |= _learning_panel()
    gr.Markdown(f"Model: `{model_id}` · Data home: `{config.data_dir.resolve()}`", elem_id="footer")
    buttons = {name: made.pop(name) for name in BUTTONS}
    return UI(remembered=remembered, disliked=gr.State(None), buttons=buttons, **made)


def _profile_bar() -> dict:
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
    return dict(profile=profile, profile_name=profile_name, create=create, rename=rename, delete=delete,
                confirm_row=confirm_row, confirm_text=confirm_text, confirm=confirm, cancel=cancel)


def _conversation_list() -> dict:
    conversation = gr.Dropdown(label="Conversation", choices=[], value=None, elem_id="conversation",
                               allow_custom_value=True)
    new_conversation = gr.Button("New conversation", elem_id="new-conversation")
    with gr.Row(equal_height=True):
        conversation_title = gr.Textbox(label="Rename to", placeholder="A new title", scale=3,
                                        elem_id="conversation-title")
        rename_conversation = gr.Button("Rename", size="sm", scale=1, elem_id="rename-conversation")
    delete_conversation = gr.Button("Delete conversation", variant="stop", size="sm")
    return dict(conversation=conversation, new_conversation=new_conversation, conversation_title=conversation_title,
                rename_conversation=rename_conversation, delete_conversation=delete_conversation)


def _chat_panel() -> dict:
    chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chatbot", feedback_options=(LIKE, DISLIKE),
                         buttons=["copy", "copy_all"])
    with gr.Row(visible=False) as comment_row:
        comment = gr.Textbox(label="What was wrong? (optional)", max_lines=2, scale=4)
        save_comment = gr.Button("Save comment", scale=1)
    with gr.Row(visible=False) as compare_row:
        candidate_a = gr.Markdown(label="A", elem_id="candidate-a", container=True)
        candidate_b = gr.Markdown(label="B", elem_id="candidate-b", container=True)
    with gr.Row(visible=False) as choice_row:
        choices = {c: gr.Button(label, elem_id=f"choose-{c}") for c, label in CHOICE_LABELS.items()}
    status = gr.Markdown(elem_id="status")
    with gr.Row():
        # One line that grows: Gradio sends on Enter and adds a line on Shift+Enter only when `lines` is 1.
        message = gr.Textbox(label="Message", placeholder="Message Attune… (Enter sends, Shift+Enter adds a line)",
                             show_label=False, scale=6, lines=1, max_lines=8, elem_id="message")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
    with gr.Row():
        retry = gr.Button("Retry", size="sm", elem_id="retry")
        compare = gr.Checkbox(label="Compare two replies (A/B)", value=False, elem_id="compare")
    return dict(chatbot=chatbot, comment_row=comment_row, comment=comment, save_comment=save_comment,
                compare_row=compare_row, candidate_a=candidate_a, candidate_b=candidate_b, choice_row=choice_row,
                choices=choices, status=status, message=message, send=send, stop=stop, retry=retry,
                compare=compare)


def _settings() -> dict:
    defaults = GenerationSettings()
    return dict(
        system_prompt=gr.Textbox(label="System prompt", value=DEFAULT_SYSTEM_PROMPT, lines=2,
                                 placeholder="Empty: the model's own default"),
        temperature=gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)"),
        top_p=gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p"),
        max_new_tokens=gr.Slider(1, 1024, value=defaults.max_new_tokens, step=1, label="Max new tokens"),
        repetition_penalty=gr.Slider(1, 2, value=defaults.repetition_penalty, step=0.05,
                                     label="Repetition penalty (1 = off; the reply's own tokens only)"))


def _learning_panel() -> dict:
    learning_status = gr.Markdown("Pick a profile to see what Attune has learned from it.", elem_id="learning-status")
    with gr.Row():
        alpha_auto = gr.Checkbox(label="Automatic weight: more of you as you give more feedback", value=True,
                                 elem_id="alpha-auto")
        alpha = gr.Slider(0, 1, value=0, step=0.05, label="Everyone ↔ just me", elem_id="alpha", interactive=True)
    with gr.Row():
        train_now = gr.Button("Train now", size="sm", elem_id="train-now")
        reset_adapter = gr.Button("Reset my adapter", size="sm", variant="stop", elem_id="reset-adapter")
    accuracy_plot = gr.LinePlot(x="version", y="accuracy", color="model", y_lim=[0, 1], height=220,
                                title="Held-out preference accuracy on your own votes", elem_id="accuracy-plot")
    timer = gr.Timer(2.0)
    return dict(learning_status=learning_status, alpha_auto=alpha_auto, alpha=alpha, train_now=train_now,
                reset_adapter=reset_adapter, accuracy_plot=accuracy_plot, timer=timer)


def _secret(data_dir: Path) -> str:
    """A per-data-home secret so the browser's remembered profile survives a server restart."""
    path = data_dir / "browser-state.secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()
