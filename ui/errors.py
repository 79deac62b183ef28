"""Failures as the person sees them: a project error becomes its own message; anything else is logged with its
traceback and shown as a short apology, never a stack trace."""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from storage.errors import AttuneError

log = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong on our side. It has been logged; please try again."


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


def refuse(message: str) -> gr.Error:
    """A request the page cannot act on yet (nothing picked or open): shown as is, not logged."""
    return gr.Error(message, print_exception=False)


def require_profile(profile_id: str | None) -> None:
    if not profile_id:
        raise refuse("Pick or create a profile first.")


def require_conversation(profile_id: str | None, conversation_id: str | None,
                         message: str = "Open a conversation first.") -> None:
    if not profile_id or not conversation_id:
        raise refuse(message)
