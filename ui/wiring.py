"""Every event of the page in one place: which handler runs, which components go in and come out, and under which
API name. The handlers are module-level functions (ui/profiles.py, chat.py, feedback.py, learning.py, data_api.py)
whose leading arguments, the service and the `UI`, are bound here."""

from __future__ import annotations

import typing

import gradio as gr
from gradio.blocks import BlockContext

from assistant.limits import MESSAGES, PROFILES, VOTES
from assistant.service import ChatService
from ui import data_api
from ui.binding import bind
from ui.chat import (on_ask_delete_conversation, on_continue, on_delete_conversation, on_edit_in_chat,
                     on_new_conversation, on_open_conversation, on_refresh, on_rename_conversation,
                     on_retry, on_retry_with_comment, on_save_preferences, on_send, on_show_reply, on_stop)
from ui.feedback import on_choose, on_like, on_save_comment
from ui.layout import CHOICE_LABELS, UI
from ui.learning import (LEARNING, on_alpha, on_alpha_auto, on_ask_reset_adapter, on_before_after,
                         on_before_after_messages, on_learning_refresh, on_reset_adapter, on_save_note,
                         on_train_now)
from ui.profiles import (on_confirm_delete_profile, on_create_profile, on_delete_profile, on_download_data, on_load,
                         on_remember, on_rename_profile, on_select_profile)
from ui.views import VIEW, hidden

SETTINGS = ("system_prompt", "temperature", "top_p", "max_new_tokens", "repetition_penalty")
PREFERENCES = (*SETTINGS, "compare", "note")
"""What a profile keeps across reloads (`ui.views.preferences_view`)."""
OUTPUTS = {
    "load": VIEW + ("profile_tools", *PREFERENCES),
    "create_profile": VIEW + ("profile_name", "profile_tools", *PREFERENCES),
    "select_profile": VIEW + ("profile_tools", *PREFERENCES),
    "rename_profile": ("profile", "profile_name", "status"),
    "ask_delete_profile": ("confirm_row", "confirm_text", "status"),
    "delete_profile": VIEW + ("confirm_row", "profile_tools", "note"),
    "download_data": ("export_file", "status"),
    "new_conversation": VIEW,
    "open_conversation": VIEW,
    "rename_conversation": VIEW + ("conversation_title",),
    "ask_delete_conversation": ("conversation_confirm_row", "status"),
    "delete_conversation": VIEW + ("conversation_confirm_row",),
    "send": VIEW + ("message",),
    "retry": VIEW + ("message",),
    "retry_with_comment": VIEW + ("message",),
    "continue": VIEW,
    "earlier_reply": VIEW,
    "later_reply": VIEW,
    "stop": ("status",),
    **{f"choose_{choice}": VIEW + ("comment", "rated", "retry_comment") for choice in CHOICE_LABELS},
    "set_alpha": LEARNING,
    "save_note": LEARNING + ("note",),
    "before_after": ("before_after_message", "before_after_row", "before", "after", "status"),
    "train_now": LEARNING,
    "ask_reset_adapter": ("adapter_confirm_row", "status"),
    "reset_adapter": LEARNING + ("adapter_confirm_row",),
}
"""The outputs of each named event, in order, by `UI` field name. Every event whose handler may refuse has the
status line among them (`ui.errors.ui_errors` shows the refusal there and in a toast)."""


def api_returns(api_name: str) -> tuple[str, ...]:
    """What a gradio_client call of `api_name` returns, by name and in order: its outputs less layout, buttons and
    session state (rows, `gr.Button`, `gr.State`), which Gradio does not send to API clients (their `skip_api`)."""
    kinds = typing.get_type_hints(UI)
    return tuple(name for name in OUTPUTS[api_name]
                 if not issubclass(kinds[name], (BlockContext, gr.State, gr.Button)))


def wire(demo: gr.Blocks, ui: UI, service: ChatService) -> None:
    """Bind every event of the page, by concern."""
    _wire_profiles(demo, ui, service)
    _wire_chat(ui, service)
    _wire_feedback(ui, service)
    for endpoint in data_api.ENDPOINTS:
        gr.api(bind(endpoint, service, limit=data_api.LIMITS.get(endpoint.__name__)),
               api_name=endpoint.__name__)
    _wire_learning(ui, service)


def _outputs(ui: UI, api_name: str) -> list[gr.components.Component]:
    return ui.pick(*OUTPUTS[api_name])


def _wire_profiles(demo: gr.Blocks, ui: UI, service: ChatService) -> None:
    b = ui.buttons
    demo.load(bind(on_load, service, ui), [ui.remembered], _outputs(ui, "load"), api_name="load")
    create = bind(on_create_profile, service, ui, limit=PROFILES)
    b["create"].click(create, [ui.profile_name], _outputs(ui, "create_profile"), api_name="create_profile")
    ui.profile_name.submit(create, [ui.profile_name], _outputs(ui, "create_profile"), api_visibility="private")
    ui.profile.input(bind(on_select_profile, service, ui), [ui.profile], _outputs(ui, "select_profile"),
                     api_name="select_profile")
    b["rename"].click(bind(on_rename_profile, service, ui), [ui.profile, ui.profile_name],
                      _outputs(ui, "rename_profile"), api_name="rename_profile")
    b["delete"].click(bind(on_delete_profile, service, ui), [ui.profile], _outputs(ui, "ask_delete_profile"),
                      api_name="ask_delete_profile")
    b["confirm"].click(bind(on_confirm_delete_profile, service, ui), [ui.profile], _outputs(ui, "delete_profile"),
                       api_name="delete_profile")
    b["cancel"].click(hidden, None, [ui.confirm_row], api_visibility="private")
    b["download_data"].click(bind(on_download_data, service, ui), [ui.profile], _outputs(ui, "download_data"),
                             api_name="download_data")
    for component in (ui.profile, ui.conversation):
        component.change(on_remember, [ui.profile, ui.conversation], [ui.remembered], api_visibility="private")


def _wire_chat(ui: UI, service: ChatService) -> None:
    b = ui.buttons
    new = bind(on_new_conversation, service, ui)
    b["new_conversation"].click(new, [ui.profile], _outputs(ui, "new_conversation"), api_name="new_conversation")
    ui.conversation.input(bind(on_open_conversation, service, ui), [ui.profile, ui.conversation],
                          _outputs(ui, "open_conversation"), api_name="open_conversation")
    ui.chatbot.clear(new, [ui.profile], ui.pick(*VIEW), api_visibility="private")  # the trash icon
    b["rename_conversation"].click(bind(on_rename_conversation, service, ui),
                                   [ui.profile, ui.conversation, ui.conversation_title],
                                   _outputs(ui, "rename_conversation"), api_name="rename_conversation")
    b["delete_conversation"].click(bind(on_ask_delete_conversation, service, ui), [ui.profile, ui.conversation],
                                   _outputs(ui, "ask_delete_conversation"), api_name="ask_delete_conversation")
    b["confirm_delete_conversation"].click(bind(on_delete_conversation, service, ui), [ui.profile, ui.conversation],
                                           _outputs(ui, "delete_conversation"), api_name="delete_conversation")
    b["cancel_delete_conversation"].click(hidden, None, [ui.conversation_confirm_row], api_visibility="private")

    send, retry = bind(on_send, service, ui, limit=MESSAGES), bind(on_retry, service, ui, limit=MESSAGES)
    send_inputs = ui.pick("profile", "conversation", "message", "compare", *SETTINGS)
    retry_inputs = ui.pick("profile", "conversation", "compare", *SETTINGS)
    refresh = _refresh(ui, service)
    b["send"].click(send, send_inputs, _outputs(ui, "send"), api_name="send").success(**refresh)
    ui.message.submit(send, send_inputs, _outputs(ui, "send"), api_visibility="private").success(**refresh)
    b["retry"].click(retry, retry_inputs, _outputs(ui, "retry"), api_name="retry").success(**refresh)
    ui.chatbot.edit(bind(on_edit_in_chat, service, ui, limit=MESSAGES), retry_inputs, ui.pick(*VIEW),
                    api_visibility="private").success(**refresh)
    ui.continue_reply.click(bind(on_continue, service, ui, limit=MESSAGES),
                            ui.pick("profile", "conversation", *SETTINGS), _outputs(ui, "continue"),
                            api_name="continue").success(**refresh)
    for name, step in (("earlier_reply", -1), ("later_reply", 1)):
        b[name].click(bind(on_show_reply, service, ui, step), [ui.profile, ui.conversation], _outputs(ui, name),
                      api_name=name)
    # One save at a time, in the order the changes were made: concurrent saves could finish out of order and an
    # older one overwrite a newer (seen as a temperature set to 0 that came back as 0.2 after a reload).
    save = dict(fn=bind(on_save_preferences, service, ui), inputs=ui.pick("profile", "compare", *SETTINGS),
                outputs=[ui.status], api_visibility="private", show_progress="hidden",
                concurrency_id="preferences", concurrency_limit=1)
    for name in (*SETTINGS[1:], "compare"):  # what the person changes (`input`), never what a view sets
        getattr(ui, name).input(**save)
    ui.system_prompt.blur(**save)
    b["stop"].click(bind(on_stop, service, ui), [ui.profile, ui.conversation], _outputs(ui, "stop"), api_name="stop",
                    show_progress="hidden")


def _refresh(ui: UI, service: ChatService) -> dict:
    """Once a reply is stored, the stored view with the choice buttons (see ui/chat.py on Gradio's last output)."""
    return dict(fn=bind(on_refresh, service, ui), inputs=[ui.profile, ui.conversation, ui.status],
                outputs=ui.pick(*(name for name in VIEW if name != "comment_row")), api_visibility="private",
                show_progress="hidden")


def _wire_feedback(ui: UI, service: ChatService) -> None:
    comment_outputs = [ui.comment_row, ui.comment, ui.rated, ui.retry_comment, ui.status]
    ui.chatbot.like(bind(on_like, service, ui, limit=VOTES), [ui.profile, ui.conversation], comment_outputs,
                    api_visibility="private")
    ui.buttons["save_comment"].click(bind(on_save_comment, service, ui, limit=VOTES),
                                     [ui.profile, ui.rated, ui.comment], comment_outputs, api_visibility="private")
    refresh = _refresh(ui, service)
    ui.retry_comment.click(bind(on_retry_with_comment, service, ui, limit=MESSAGES),
                           ui.pick("profile", "conversation", "rated", "comment", *SETTINGS),
                           _outputs(ui, "retry_with_comment"), api_name="retry_with_comment").success(**refresh)
    for choice, button in ui.buttons["choices"].items():
        button.click(bind(on_choose, service, ui, choice, limit=VOTES), [ui.profile, ui.conversation],
                     _outputs(ui, f"choose_{choice}"), api_name=f"choose_{choice}")


def _wire_learning(ui: UI, service: ChatService) -> None:
    b = ui.buttons
    refresh = bind(on_learning_refresh, service, ui)
    ui.timer.tick(refresh, [ui.profile], ui.pick(*LEARNING), api_visibility="private", show_progress="hidden")
    ui.profile.change(refresh, [ui.profile], ui.pick(*LEARNING), api_visibility="private", show_progress="hidden")
    ui.alpha_auto.input(bind(on_alpha_auto, service, ui), [ui.profile, ui.alpha_auto, ui.alpha],
                        _outputs(ui, "set_alpha"), api_name="set_alpha")
    ui.alpha.release(bind(on_alpha, service, ui), [ui.profile, ui.alpha], ui.pick(*LEARNING),
                     api_visibility="private")
    # (on the panel's opening, not on a profile change: a dropdown update from a listener of the profile dropdown
    # made Gradio 6 fire that listener again, without end; Before / after checks the message is the profile's)
    ui.learning_panel.expand(bind(on_before_after_messages, service, ui), [ui.profile], [ui.before_after_message],
                             api_visibility="private", show_progress="hidden")
    b["show_before_after"].click(bind(on_before_after, service, ui, limit=MESSAGES),
                                 [ui.profile, ui.before_after_message], _outputs(ui, "before_after"),
                                 api_name="before_after")
    b["save_note"].click(bind(on_save_note, service, ui), [ui.profile, ui.note], _outputs(ui, "save_note"),
                         api_name="save_note")
    b["train_now"].click(bind(on_train_now, service, ui), [ui.profile], _outputs(ui, "train_now"),
                         api_name="train_now")
    b["reset_adapter"].click(bind(on_ask_reset_adapter, service, ui), [ui.profile],
                             _outputs(ui, "ask_reset_adapter"), api_name="ask_reset_adapter")
    b["confirm_reset_adapter"].click(bind(on_reset_adapter, service, ui), [ui.profile],
                                     _outputs(ui, "reset_adapter"), api_name="reset_adapter")
    b["cancel_reset_adapter"].click(hidden, None, [ui.adapter_confirm_row], api_visibility="private")
