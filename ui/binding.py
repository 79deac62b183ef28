"""Handlers as Gradio calls them: their leading arguments bound, run for the session's account, rate-limited.

Every page and API event goes through `bind`, so the ownership rule holds in one place: the account comes from
the logged-in session (`gr.Request.username`), never from the client; a `profile_id` argument must be one of that
account's profiles before the handler runs; and storage, while the handler runs, lists and opens only that
account's profiles (`storage.owners.acting_as`)."""

from __future__ import annotations

import functools
import inspect
import typing

import gradio as gr

from storage.owners import acting_as
from ui.errors import refusal


def bind(handler, service, *leading, limit: str | None = None):
    """`handler` with its leading arguments (`service`, then `leading`) given. Unlike a bare `functools.partial`,
    the result keeps what Gradio reads from a function: the other parameters' type hints (`gr.LikeData`; an API
    endpoint's types), its name, its docstring and whether it streams; it takes one more, last parameter, the
    `gr.Request` Gradio fills in. `limit` names the rate limit the event counts toward (`assistant.limits`)."""
    bound = functools.partial(handler, service, *leading)
    signature = inspect.signature(bound)

    def admit(args: tuple, kwargs: dict) -> tuple[str, tuple, dict]:
        """The acting account, once the profile is its own and the rate allows (else raises), and the handler's own
        arguments (without the request, which Gradio passes by position)."""
        request = kwargs.pop("request", None)
        if args and isinstance(args[-1], gr.Request):
            args, request = args[:-1], args[-1]
        account = service.account_for(getattr(request, "username", None))
        profile_id = signature.bind_partial(*args, **kwargs).arguments.get("profile_id")
        with acting_as(account):
            if profile_id:
                service.get_profile(profile_id)
            if limit:
                service.check_rate(limit, account, profile_id)
        return account, args, kwargs

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def call(*args, **kwargs):
            try:
                account, args, kwargs = admit(args, kwargs)
            except Exception as exc:
                yield refusal(handler.__name__, (service, *leading, *args), exc)
                return
            steps = bound(*args, **kwargs)
            while True:  # each step may run on another thread: act for the account around each one
                with acting_as(account):
                    step = next(steps, StopIteration)
                if step is StopIteration:
                    return
                yield step
    else:
        @functools.wraps(handler)
        def call(*args, **kwargs):
            try:
                account, args, kwargs = admit(args, kwargs)
            except Exception as exc:
                return refusal(handler.__name__, (service, *leading, *args), exc)
            with acting_as(account):
                return bound(*args, **kwargs)

    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                annotation=gr.Request)
    call.__signature__ = signature.replace(parameters=[*signature.parameters.values(), request])
    call.__annotations__ = {**getattr(handler, "__annotations__", {}), "request": gr.Request}
    typing.get_type_hints(call)  # a hint that does not resolve fails here, not silently inside Gradio
    return call
