"""The project's exception types.

They live in the lowest layer so that storage, the assistant and the UI share them without a cycle. The UI
turns each into a short message; anything else is logged with its traceback and shown as an apology.
"""


class AttuneError(Exception):
    """Base class: its message is written for the person using the app."""


class InvalidInput(AttuneError):
    """The request itself is wrong (empty, too long, bad characters, out of range); nothing was changed."""


class AdapterUnusable(AttuneError):
    """An adapter version's files fail their checksums or bounds, or cannot be read: it is not served."""


class NotFound(AttuneError):
    """An id that does not exist, or that the active profile does not own (the two are not told apart)."""


class Conflict(AttuneError):
    """The request clashes with what is stored (a duplicate name, a choice still pending)."""


class ModelUnavailable(AttuneError):
    """The requested model cannot be loaded on this machine."""
