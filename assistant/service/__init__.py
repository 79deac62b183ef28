"""The chat service: everything the UI (or any other front end) asks of Attune, by ids (chat.py), and its
learning half (learning.py)."""

from assistant.service.chat import NEW_TITLE, TITLE_CHARS, ChatService, ReplyUpdate, validate_message

__all__ = ["NEW_TITLE", "TITLE_CHARS", "ChatService", "ReplyUpdate", "validate_message"]
