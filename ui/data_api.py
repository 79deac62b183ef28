"""API-only endpoints for gradio_client and scripts: ids in, plain data out. Each function's name is its API name
and its docstring the API's description."""

from __future__ import annotations

from assistant.limits import VOTES
from assistant.service import ChatService
from ui.errors import ui_errors


@ui_errors
def messages(service: ChatService, profile_id: str, conversation_id: str) -> list[dict]:
    """The active messages of a conversation with their ids and thumbs."""
    return [{"id": m.id, "role": m.role, "content": m.content, "vote": m.vote, "status": m.status,
             "model_id": m.model_id, "settings": m.settings, "adapter_versions": m.adapter_versions}
            for m in service.transcript(profile_id, conversation_id)]


@ui_errors
def vote(service: ChatService, profile_id: str, message_id: str, value: int, comment: str = "") -> dict:
    """Thumbs on an assistant reply: value +1 (up) or -1 (down). Voting again replaces the vote."""
    return service.vote(profile_id, message_id, value, comment or None)


@ui_errors
def choose(service: ChatService, profile_id: str, comparison_id: str, choice: str, comment: str = "") -> dict:
    """Decide a comparison: choice is one of a, b, tie, both_bad; comment, optional: what was wrong with the other
    reply, in your words (they become a style Attune tries for you)."""
    comparison = service.choose(profile_id, comparison_id, choice, comment or "")
    return {"comparison_id": comparison.id, "choice": comparison.choice, "a": comparison.a.content,
            "b": comparison.b.content}


@ui_errors
def pending(service: ChatService, profile_id: str, conversation_id: str) -> dict:
    """The comparison waiting for a choice in a conversation ({} if none)."""
    comparison = service.pending_comparison(profile_id, conversation_id)
    return {"comparison_id": comparison.id, "a": comparison.a.content, "b": comparison.b.content} if comparison else {}


@ui_errors
def learning(service: ChatService, profile_id: str) -> dict:
    """Feedback counts, adapter versions, the current blend weight α, training jobs, accuracy history."""
    return service.learning_status(profile_id)


ENDPOINTS = (messages, vote, choose, pending, learning)
LIMITS = {"vote": VOTES, "choose": VOTES}
"""The rate limit each endpoint counts toward (`assistant.limits`), if any."""
