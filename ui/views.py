"""What the page shows for a profile and conversation, read fresh from the service; shared by the handlers."""

from __future__ import annotations

from datetime import datetime

import gradio as gr

from assistant.service import ChatService
from storage.store import Comparison, Message
from ui.layout import DISLIKE, LIKE, UI

VIEW = ("profile", "conversation", "chatbot", "continue_reply", "branch_row", "branch_text", "compare_row",
        "candidate_a", "candidate_b", "choice_row", "comment_row", "status")
"""The outputs of every event that shows a profile and conversation afresh (`view`)."""


MARK = "\n\n<sub class=\"attune-mark\""
"""Where the small line under a reply starts (`marks`); a vote's shown text is cut there (`unmarked`)."""


def chat_value(transcript: list[Message], pending_text: str | None = None, user_text: str | None = None) -> gr.Chatbot:
    """The chatbot's messages and the earlier thumbs, one per assistant message; replies carry their `marks`."""
    messages = [{"role": m.role, "content": m.content + marks(m)} for m in transcript]
    feedback = [{1: LIKE, -1: DISLIKE}.get(m.vote) for m in transcript if m.role == "assistant"]
    if user_text is not None:
        messages.append({"role": "user", "content": user_text})
    if pending_text is not None:
        messages.append({"role": "assistant", "content": pending_text})
        feedback.append(None)
    return gr.Chatbot(value=messages, feedback_value=feedback)


def marks(message: Message) -> str:
    """A small line under a reply: whether it was written with the person's own version (hover: which versions and
    how much of them), stopped, or cut at the length limit. Empty for user messages and plain replies."""
    if message.role != "assistant":
        return ""
    said, used = [], message.adapter_versions or {}
    if used.get("personal"):
        over = f" over everyone's version {int(used['global'][1:])}" if used.get("global") else ""
        hover = f"Written with your version {int(used['personal'][1:])} at {float(used['alpha']):.0%} you{over}"
        said.append(f'<span title="{hover}">✨ learned from you</span>')
    if message.settings.get("stopped"):
        said.append("⏹ stopped")
    elif message.settings.get("ended") == [False]:
        said.append("✂️ cut at the length limit: <em>Continue</em> writes on")
    return f'{MARK}>{" · ".join(said)}</sub>' if said else ""


def unmarked(shown: str) -> str:
    """A reply's text as the chatbot showed it, without its `marks`."""
    return shown.split(MARK, 1)[0]


def profile_choices(service: ChatService) -> list[tuple[str, str]]:
    return [(p["name"], p["id"]) for p in service.list_profiles()]


def conversation_choices(service: ChatService, profile_id: str | None) -> list[tuple[str, str]]:
    """Newest first, each shown with its title and when it last changed (two of the same title stay apart)."""
    if not profile_id:
        return []
    return [(f"{c['title']} · {_when(c['updated_at'])}", c["id"]) for c in service.list_conversations(profile_id)]


def _when(iso: str) -> str:
    """An ISO-8601 UTC time as "Dec 4, 19:57" (UTC)."""
    moment = datetime.fromisoformat(iso)
    return f"{moment:%b} {moment.day}, {moment:%H:%M}"


def view(service: ChatService, ui: UI, profile_id: str | None, conversation_id: str | None, status: str = "") -> dict:
    """Everything shown for a profile and conversation (the `VIEW` outputs), read fresh from storage."""
    conversations = conversation_choices(service, profile_id)
    transcript: list[Message] = []
    comparison: Comparison | None = None
    if profile_id and conversation_id:
        transcript = service.transcript(profile_id, conversation_id)
        comparison = service.pending_comparison(profile_id, conversation_id)
    replies, shown = service.replies_to_last(profile_id, conversation_id, transcript) if transcript else ([], -1)
    last = transcript[-1] if transcript else None
    return {
        ui.profile: gr.Dropdown(choices=profile_choices(service), value=profile_id),
        ui.conversation: gr.Dropdown(choices=conversations, value=conversation_id),
        ui.chatbot: chat_value(transcript),
        ui.continue_reply: gr.Button(visible=bool(last and last.role == "assistant" and comparison is None
                                                  and last.settings.get("ended") == [False])),
        ui.branch_row: gr.Row(visible=len(replies) > 1 and comparison is None),
        ui.branch_text: f"Reply {shown + 1} of {len(replies)}" if len(replies) > 1 else "",
        ui.compare_row: gr.Row(visible=comparison is not None),
        ui.candidate_a: "**A**\n\n" + comparison.a.content if comparison else "",
        ui.candidate_b: "**B**\n\n" + comparison.b.content if comparison else "",
        ui.choice_row: gr.Row(visible=comparison is not None),
        ui.comment_row: gr.Row(visible=False),
        ui.status: status,
    }


def hidden() -> gr.Row:
    """A confirmation row put away (its Cancel)."""
    return gr.Row(visible=False)


def preferences_view(service: ChatService, ui: UI, profile_id: str | None) -> dict:
    """A profile's own settings, compare choice and note, as it left them (nothing while no profile is picked). Given by
    the events that pick a profile (load, create, select), never by a listener on the profile: that raced the views
    that set the same profile again into an endless loop of events."""
    if not profile_id:
        return {}
    settings, compare = service.preferences(profile_id)
    return {ui.system_prompt: settings.system_prompt, ui.temperature: settings.temperature, ui.top_p: settings.top_p,
            ui.max_new_tokens: settings.max_new_tokens, ui.repetition_penalty: settings.repetition_penalty,
            ui.compare: compare, ui.note: service.note(profile_id)}
