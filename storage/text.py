"""Checks every piece of text a person gives passes before anything is stored: text that cannot be encoded (a lone
UTF-16 surrogate, as a broken copy-paste or a client's bug sends) is refused with its position, never half-stored."""

from __future__ import annotations

from storage.errors import InvalidInput


def require_encodable(text: str, what: str) -> str:
    """`text` if it can be stored and tokenized as UTF-8; else InvalidInput naming `what` and the position."""
    for position, ch in enumerate(text):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise InvalidInput(f"{what} contains a broken character (a lone surrogate, U+{ord(ch):04X}) at position "
                               f"{position + 1}. Remove it or paste the text again; nothing was stored.")
    return text
