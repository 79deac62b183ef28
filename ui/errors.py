"""Failures as the person sees them: a project error becomes its own message; anything else is logged with its
traceback and shown as a short apology, never a stack trace."""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from storage.errors import AttuneError, InvalidInput
from ui.layout import UI

log = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong on our side. It has been logged; please try again."


def ui_errors(fn):
    """Refusals and failures of a page event, shown without failing the event: a toast and the status line, every
    other output left as it was (a failed Gradio event would turn each of its outputs into an "Error" badge and
    lose what the person typed). A project error is shown as its own message; anything else is logged with its
    traceback and shown as a short apology. A handler without the page (`UI`) among its arguments, an API-only
    endpoint, raises `gr.Error` instead, so API clients get the error."""

    def refused(args: tuple, exc: Exception):
        return refusal(fn.__name__, args, exc)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                yield refused(args, exc)
        return generator

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            return refused(args, exc)
    return call


def refusal(name: str, args: tuple, exc: Exception) -> dict:
    """What a refused event of handler `name` returns (the status line; a toast), or the `gr.Error` it raises when
    the page is not among `args` (an API-only endpoint)."""
    if isinstance(exc, AttuneError):
        message = str(exc)
    else:
        log.exception("Unexpected error in %s", name)
        message = APOLOGY
    page = next((a for a in args if isinstance(a, UI)), None)
    if page is None:
        raise gr.Error(message, print_exception=False) from exc
    gr.Warning(message)
    return {page.status: f"⚠️ {message}"}


def refuse(message: str) -> InvalidInput:
    """A request the page cannot act on yet (nothing picked or open): shown as is, not logged."""
    return InvalidInput(message)


def require_profile(profile_id: str | None) -> None:
    if not profile_id:
        raise refuse("Pick or create a profile first.")


def require_conversation(profile_id: str | None, conversation_id: str | None,
                         message: str = "Open a conversation first.") -> None:
    if not profile_id or not conversation_id:
        raise refuse(message)
