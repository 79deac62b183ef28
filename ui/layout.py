"""The page: every component, made once and named in the `UI` dataclass. No behaviour here (see ui/wiring.py)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from assistant.config import DEFAULT_SYSTEM_PROMPT, AppConfig, GenerationSettings

LIKE, DISLIKE = "Like", "Dislike"
UP_LABEL, DOWN_LABEL = "What did you like? (optional)", "What was wrong? (optional)"
"""The comment box's question after a 👍 and after a 👎: the words become a personal probe (assistant/words.py)."""
CHOICE_LABEL, BOTH_BAD_LABEL = "What decided it? (optional)", "What was wrong with both? (optional)"
"""The comment box's question after a choice between A and B, and after "Both bad"."""
CHOICE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad"}
BUTTONS = ("create", "rename", "delete", "confirm", "cancel", "new_conversation", "rename_conversation",
           "delete_conversation", "confirm_delete_conversation", "cancel_delete_conversation", "save_comment",
           "save_note",
           "send", "stop", "retry", "earlier_reply", "later_reply", "choices", "train_now", "reset_adapter",
           "show_before_after", "confirm_reset_adapter", "cancel_reset_adapter", "download_data")
"""The names in `UI.buttons` (`choices`: one button per choice in CHOICE_LABELS)."""


@dataclass(frozen=True)
class UI:
    """The components handlers read and write, by name (no positional tuples of outputs)."""

    remembered: gr.BrowserState
    profile: gr.Dropdown
    profile_tools: gr.Accordion
    profile_name: gr.Textbox
    export_file: gr.File
    confirm_row: gr.Row
    confirm_text: gr.Markdown
    conversation: gr.Dropdown
    conversation_title: gr.Textbox
    conversation_confirm_row: gr.Row
    chatbot: gr.Chatbot
    continue_reply: gr.Button
    branch_row: gr.Row
    branch_text: gr.Markdown
    message: gr.Textbox
    status: gr.Markdown
    compare: gr.Checkbox
    compare_row: gr.Row
    candidate_a: gr.Markdown
    candidate_b: gr.Markdown
    choice_row: gr.Row
    comment_row: gr.Row
    comment: gr.Textbox
    retry_comment: gr.Button
    """Shown with the box after a 👍/👎 (answer again following the words), hidden after a choice."""
    rated: gr.State
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider
    repetition_penalty: gr.Slider
    learning_status: gr.Markdown
    note: gr.Textbox
    alpha_auto: gr.Checkbox
    alpha: gr.Slider
    adapter_confirm_row: gr.Row
    accuracy_plot: gr.LinePlot
    learning_panel: gr.Accordion
    before_after_message: gr.Dropdown
    before_after_row: gr.Row
    before: gr.Markdown
    after: gr.Markdown
    timer: gr.Timer
    buttons: dict

    def pick(self, *names: str) -> list[gr.components.Component]:
        """The components with these names, in this order (an event's inputs or outputs)."""
        return [getattr(self, name) for name in names]


def layout(model_id: str, config: AppConfig) -> UI:
    """Make the page inside the current `gr.Blocks`, top to bottom."""
    gr.Markdown("# Attune\nA chat assistant that learns what you prefer.", elem_id="title")
    remembered = gr.BrowserState({"profile_id": None, "conversation_id": None}, storage_key="attune-session",
                                 secret=_secret(config.data_dir))
    made = _profile_bar()
    with gr.Row():
        with gr.Column(scale=1, min_width=220, elem_id="conversation-column"):
            made |= _conversation_list()
        with gr.Column(scale=4, elem_id="chat-column"):
            made |= _chat_panel()
            with gr.Accordion("Settings", open=False, elem_id="settings"):
                made |= _settings()
            with gr.Accordion("Learning", open=False, elem_id="learning") as learning_panel:
                made |= _learning_panel()
            made["learning_panel"] = learning_panel
    # (no absolute path reaches the page: a folder model is named by its folder's name)
    shown = Path(model_id).name if Path(model_id).is_absolute() else model_id
    gr.Markdown(f"Model: `{shown}` · everything you type and vote stays on the machine that runs Attune",
                elem_id="footer")
    buttons = {name: made.pop(name) for name in BUTTONS}
    return UI(remembered=remembered, rated=gr.State(None), buttons=buttons, **made)


def _profile_bar() -> dict:
    with gr.Row(equal_height=True):
        profile = gr.Dropdown(label="Profile", choices=[], value=None, scale=2, min_width=160, elem_id="profile",
                              allow_custom_value=True)  # ids are checked by the service, with a clear message
        with gr.Accordion("New profile, rename, delete", open=True, elem_id="profile-tools") as profile_tools:
            with gr.Row(equal_height=True):
                profile_name = gr.Textbox(label="Profile name", placeholder="Name for a new profile, or a new name",
                                          max_lines=1, scale=2, min_width=160, elem_id="profile-name")
                create = gr.Button("Create profile", scale=1, size="sm", elem_id="create-profile")
                rename = gr.Button("Rename", scale=1, size="sm", elem_id="rename-profile")
                delete = gr.Button("Delete profile", variant="stop", scale=1, size="sm", elem_id="delete-profile")
            with gr.Row(equal_height=True):
                download_data = gr.Button("Download my data", size="sm", scale=1, elem_id="download-data")
                export_file = gr.File(label="Your data (zip)", visible=False, interactive=False, scale=2,
                                      elem_id="export-file")
    with gr.Row(visible=False) as confirm_row:
        confirm_text = gr.Markdown()
        confirm = gr.Button("Yes, delete it", variant="stop", elem_id="confirm-delete")
        cancel = gr.Button("Cancel", elem_id="cancel-delete")
    return dict(profile=profile, profile_tools=profile_tools, profile_name=profile_name, create=create, rename=rename,
                delete=delete, download_data=download_data, export_file=export_file, confirm_row=confirm_row,
                confirm_text=confirm_text, confirm=confirm, cancel=cancel)


def _conversation_list() -> dict:
    conversation = gr.Dropdown(label="Conversation", choices=[], value=None, elem_id="conversation",
                               allow_custom_value=True)
    new_conversation = gr.Button("New conversation", elem_id="new-conversation")
    with gr.Row(equal_height=True):
        conversation_title = gr.Textbox(label="Rename to", placeholder="A new title", scale=3,
                                        elem_id="conversation-title")
        rename_conversation = gr.Button("Rename", size="sm", scale=1, elem_id="rename-conversation")
    delete_conversation = gr.Button("Delete conversation", variant="stop", size="sm", elem_id="delete-conversation")
    confirm_row, confirm, cancel = _confirmation("Delete this conversation and the feedback given in it? "
                                                 "This cannot be undone.", "Yes, delete it", "delete-conversation")
    return dict(conversation=conversation, new_conversation=new_conversation, conversation_title=conversation_title,
                rename_conversation=rename_conversation, delete_conversation=delete_conversation,
                conversation_confirm_row=confirm_row, confirm_delete_conversation=confirm,
                cancel_delete_conversation=cancel)


def _confirmation(question: str, yes: str, action: str) -> tuple[gr.Row, gr.Button, gr.Button]:
    """A hidden row that asks before an action that cannot be undone: the question, Yes and Cancel."""
    with gr.Row(visible=False, elem_id=f"confirm-{action}-row") as row:
        gr.Markdown(question)
        confirm = gr.Button(yes, variant="stop", size="sm", elem_id=f"confirm-{action}")
        cancel = gr.Button("Cancel", size="sm", elem_id=f"cancel-{action}")
    return row, confirm, cancel


def _chat_panel() -> dict:
    chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chatbot", feedback_options=(LIKE, DISLIKE),
                         buttons=["copy", "copy_all"], editable="user")
    with gr.Row(visible=False, elem_id="branch-row") as branch_row:
        earlier_reply = gr.Button("‹", size="sm", min_width=40, scale=0, elem_id="earlier-reply")
        branch_text = gr.Markdown(elem_id="branch-text")
        later_reply = gr.Button("›", size="sm", min_width=40, scale=0, elem_id="later-reply")
    with gr.Row(visible=False) as comment_row:
        comment = gr.Textbox(label=DOWN_LABEL, max_lines=2, scale=4, elem_id="comment")
        save_comment = gr.Button("Save comment", scale=1, elem_id="save-comment")
        retry_comment = gr.Button("Retry with this in mind", scale=1, elem_id="retry-comment")
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
        continue_reply = gr.Button("Continue", size="sm", visible=False, elem_id="continue")
        compare = gr.Checkbox(label="Compare two replies (A/B)", value=False, elem_id="compare")
    return dict(chatbot=chatbot, comment_row=comment_row, comment=comment, save_comment=save_comment,
                retry_comment=retry_comment,
                compare_row=compare_row, candidate_a=candidate_a, candidate_b=candidate_b, choice_row=choice_row,
                choices=choices, status=status, message=message, send=send, stop=stop, retry=retry,
                continue_reply=continue_reply, branch_row=branch_row, branch_text=branch_text,
                earlier_reply=earlier_reply, later_reply=later_reply, compare=compare)


def _settings() -> dict:
    defaults = GenerationSettings()
    return dict(
        system_prompt=gr.Textbox(label="System prompt", value=DEFAULT_SYSTEM_PROMPT, lines=2,
                                 placeholder="Empty: the model's own default", elem_id="system-prompt"),
        temperature=gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)",
                              elem_id="temperature"),
        top_p=gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p", elem_id="top-p"),
        max_new_tokens=gr.Slider(1, 1024, value=defaults.max_new_tokens, step=1, label="Max new tokens",
                                 elem_id="max-new-tokens"),
        repetition_penalty=gr.Slider(1, 2, value=defaults.repetition_penalty, step=0.05,
                                     label="Repetition penalty (1 = off; the reply's own tokens only)",
                                     elem_id="repetition-penalty"))


def _learning_panel() -> dict:
    learning_status = gr.Markdown("Pick a profile to see what Attune has learned from it.", elem_id="learning-status")
    with gr.Row(equal_height=True):
        note = gr.Textbox(label="How should Attune answer you? (optional)", max_lines=3, scale=4, elem_id="note",
                          placeholder="e.g. Keep it short and give me numbers.",
                          info="Followed from your next message; learned from your feedback, then no longer sent.")
        save_note = gr.Button("Save note", size="sm", scale=1, elem_id="save-note")
    with gr.Row():
        alpha_auto = gr.Checkbox(label="Automatic weight: more of you as you give more feedback", value=True,
                                 elem_id="alpha-auto")
        alpha = gr.Slider(0, 1, value=0, step=0.05, label="Everyone ↔ Just me", elem_id="alpha", interactive=True,
                          info="Left: replies follow what everyone taught Attune. Right: only what you taught it.")
    with gr.Row():
        train_now = gr.Button("Train now", size="sm", elem_id="train-now")
        reset_adapter = gr.Button("Reset my adapter", size="sm", variant="stop", elem_id="reset-adapter")
    confirm_row, confirm, cancel = _confirmation(
        "Forget what Attune learned from you? Your votes stay stored, and the next training learns from them again.",
        "Yes, reset it", "reset-adapter")
    accuracy_plot = gr.LinePlot(x="version", y="accuracy", color="model", y_lim=[0, 1], height=220,
                                title="How often each version agrees with your votes it was not trained on",
                                x_title="your version", y_title="agreement",
                                elem_id="accuracy-plot")
    with gr.Row(equal_height=True):
        before_after_message = gr.Dropdown(label="One of your messages", choices=[], value=None, scale=4,
                                           elem_id="before-after-message")
        show_before_after = gr.Button("Before / after", size="sm", scale=1, elem_id="show-before-after")
    with gr.Row(visible=False, elem_id="before-after") as before_after_row:
        before = gr.Markdown(label="Before: the base model", container=True, elem_id="before")
        after = gr.Markdown(label="Today: with what you taught", container=True, elem_id="after")
    timer = gr.Timer(2.0)
    return dict(learning_status=learning_status, note=note, save_note=save_note, alpha_auto=alpha_auto, alpha=alpha,
                train_now=train_now, reset_adapter=reset_adapter, adapter_confirm_row=confirm_row, confirm_reset_adapter=confirm,
                cancel_reset_adapter=cancel, accuracy_plot=accuracy_plot, timer=timer,
                before_after_message=before_after_message, show_before_after=show_before_after,
                before_after_row=before_after_row, before=before, after=after)


def _secret(data_dir: Path) -> str:
    """A per-data-home secret so the browser's remembered profile survives a server restart."""
    path = data_dir / "browser-state.secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()
