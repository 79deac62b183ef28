"""Feedback on replies: thumbs (with an optional comment on either) and the choice between A and B."""

from __future__ import annotations

import gradio as gr

from assistant.service import ChatService
from ui.errors import refuse, require_conversation, ui_errors
from ui.layout import BOTH_BAD_LABEL, CHOICE_LABEL, DOWN_LABEL, LIKE, UP_LABEL, UI
from ui.views import unmarked, view

CHOICE_CONFIRMATIONS = {
    "a": "Saved: A is better. A continues the conversation.",
    "b": "Saved: B is better. B continues the conversation.",
    "tie": "Saved: a tie. A continues the conversation.",
    "both_bad": "Saved: both bad. A is kept so the conversation can go on; use Retry for a new reply.",
}


@ui_errors
def on_like(service: ChatService, ui: UI, profile_id: str, conversation_id: str, data: gr.LikeData):
    """A 👍 or 👎 on a reply in the chatbot; either opens the comment box, asking what was liked or wrong."""
    require_conversation(profile_id, conversation_id)
    index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
    value = 1 if data.liked is True or data.liked == LIKE else -1
    shown = unmarked(data.value) if isinstance(data.value, str) else None
    feedback = service.vote_at(profile_id, conversation_id, int(index), value, shown)
    if value > 0:
        gr.Info("Thanks! Saved your 👍. You can say what you liked below.")
    else:
        gr.Info("Saved your 👎. You can say what was wrong below.")
    return {ui.comment_row: gr.Row(visible=True), ui.comment: gr.Textbox(value="", label=UP_LABEL if value > 0
                                                                          else DOWN_LABEL),
            ui.rated: feedback["message_id"], ui.retry_comment: gr.Button(visible=True)}


@ui_errors
def on_save_comment(service: ChatService, ui: UI, profile_id: str, rated: str | dict | None, comment: str):
    """Keep the words on what the box was opened for: a rated reply (its id) or a choice ({"comparison": id})."""
    if not rated:
        raise refuse("Give a 👍 or 👎 on a reply first, then add a comment.")
    if isinstance(rated, dict):
        service.comment_choice(profile_id, rated["comparison"], comment)
    else:
        service.comment(profile_id, rated, comment)
    gr.Info("Comment saved. In compare mode Attune tries answering that way and learns from what you choose; "
            "*Retry with this in mind* tries it now.")
    return {ui.comment_row: gr.Row(visible=False), ui.comment: "", ui.rated: None}


@ui_errors
def on_choose(service: ChatService, ui: UI, choice: str, profile_id: str, conversation_id: str):
    """Decide the comparison waiting in a conversation with this endpoint's choice (a, b, tie or both_bad), and open
    the comment box for what decided it (its words are explored like a 👎's)."""
    require_conversation(profile_id, conversation_id)
    comparison = service.choose_pending(profile_id, conversation_id, choice)
    gr.Info(CHOICE_CONFIRMATIONS[choice])
    out = view(service, ui, profile_id, conversation_id, CHOICE_CONFIRMATIONS[choice])
    label = BOTH_BAD_LABEL if choice == "both_bad" else CHOICE_LABEL
    return {**out, ui.comment_row: gr.Row(visible=True), ui.comment: gr.Textbox(value="", label=label),
            ui.rated: {"comparison": comparison.id}, ui.retry_comment: gr.Button(visible=False)}
