"""Chat: conversations (new, open, delete), and sending or retrying a message while the reply streams in."""

from __future__ import annotations

from collections.abc import Iterable

import gradio as gr

from assistant.config import GenerationSettings
from assistant.service import ChatService, ReplyUpdate
from ui.errors import refuse, require_conversation, require_profile, ui_errors
from ui.layout import UI
from ui.views import chat_value, conversation_choices, view


@ui_errors
def on_new_conversation(service: ChatService, ui: UI, profile_id: str):
    require_profile(profile_id)
    conversation = service.new_conversation(profile_id)
    return view(service, ui, profile_id, conversation["id"])


@ui_errors
def on_open_conversation(service: ChatService, ui: UI, profile_id: str, conversation_id: str):
    service.transcript(profile_id, conversation_id)  # ownership check before showing anything
    return view(service, ui, profile_id, conversation_id)


@ui_errors
def on_rename_conversation(service: ChatService, ui: UI, profile_id: str, conversation_id: str, title: str):
    require_conversation(profile_id, conversation_id)
    service.rename_conversation(profile_id, conversation_id, title)
    return {**view(service, ui, profile_id, conversation_id, "Conversation renamed."), ui.conversation_title: ""}


@ui_errors
def on_ask_delete_conversation(service: ChatService, ui: UI, profile_id: str, conversation_id: str):
    """Ask first: shows the confirmation row; nothing is deleted yet."""
    require_conversation(profile_id, conversation_id)
    service.get_conversation(profile_id, conversation_id)
    return {ui.conversation_confirm_row: gr.Row(visible=True), ui.status: ""}


@ui_errors
def on_delete_conversation(service: ChatService, ui: UI, profile_id: str, conversation_id: str):
    if not conversation_id:
        raise refuse("Open a conversation first.")
    service.delete_conversation(profile_id, conversation_id)
    return {**view(service, ui, profile_id, None, "Conversation deleted."),
            ui.conversation_confirm_row: gr.Row(visible=False)}


@ui_errors
def on_send(service: ChatService, ui: UI, profile_id, conversation_id, text, compare, system_prompt, temperature,
            top_p, max_new_tokens, repetition_penalty=GenerationSettings.repetition_penalty):
    require_profile(profile_id)
    settings = _settings(system_prompt, temperature, top_p, max_new_tokens, repetition_penalty)
    updates = service.send(profile_id, conversation_id or None, text, settings, compare=bool(compare))
    yield from _stream_view(service, ui, profile_id, updates, bool(compare), replacing=False, takes_message=True)


@ui_errors
def on_edit_in_chat(service: ChatService, ui: UI, profile_id, conversation_id, compare, system_prompt, temperature,
                    top_p, max_new_tokens, repetition_penalty, data: gr.EditData):
    """The pencil on a message in the chat: the last user message is replaced by the edited text and answered
    afresh (the old one and its reply stay stored); an earlier one cannot be edited."""
    require_conversation(profile_id, conversation_id)
    transcript = service.transcript(profile_id, conversation_id)
    users = [i for i, m in enumerate(transcript) if m.role == "user"]
    if not users or data.index != users[-1]:
        yield view(service, ui, profile_id, conversation_id, "⚠️ Only your last message can be edited.")
        gr.Warning("Only your last message can be edited.")
        return
    text = data.value if isinstance(data.value, str) else ""
    settings = _settings(system_prompt, temperature, top_p, max_new_tokens, repetition_penalty)
    updates = service.edit(profile_id, conversation_id, text, settings, compare=bool(compare))
    yield from _stream_view(service, ui, profile_id, updates, bool(compare), replacing=False, takes_message=False)


@ui_errors
def on_continue(service: ChatService, ui: UI, profile_id, conversation_id, system_prompt, temperature, top_p,
                max_new_tokens, repetition_penalty=GenerationSettings.repetition_penalty):
    """Write on from where the last reply was cut at the length limit (or stopped)."""
    require_conversation(profile_id, conversation_id, "Open a conversation with a reply first.")
    settings = _settings(system_prompt, temperature, top_p, max_new_tokens, repetition_penalty)
    updates = service.continue_reply(profile_id, conversation_id, settings)
    yield from _stream_view(service, ui, profile_id, updates, False, replacing=True, takes_message=False)


@ui_errors
def on_show_reply(service: ChatService, ui: UI, step: int, profile_id: str, conversation_id: str):
    """‹ or ›: the earlier or later reply to the last message becomes the one shown, continued and rated."""
    require_conversation(profile_id, conversation_id)
    service.show_reply(profile_id, conversation_id, step)
    return view(service, ui, profile_id, conversation_id)


@ui_errors
def on_retry(service: ChatService, ui: UI, profile_id, conversation_id, compare, system_prompt, temperature, top_p,
             max_new_tokens, repetition_penalty=GenerationSettings.repetition_penalty):
    require_conversation(profile_id, conversation_id, "Open a conversation with a message first.")
    settings = _settings(system_prompt, temperature, top_p, max_new_tokens, repetition_penalty)
    updates = service.retry(profile_id, conversation_id, settings, compare=bool(compare))
    yield from _stream_view(service, ui, profile_id, updates, bool(compare), replacing=True, takes_message=False)


@ui_errors
def on_retry_with_comment(service: ChatService, ui: UI, profile_id, conversation_id, message_id, comment, system_prompt,
                          temperature, top_p, max_new_tokens, repetition_penalty=GenerationSettings.repetition_penalty):
    """Save the words written after a 👍/👎 and answer again following them (one reply, not a comparison).
    `message_id`: the rated reply, as the page holds it (a session state: an API call has none and means the last
    reply of the conversation)."""
    require_conversation(profile_id, conversation_id, "Open a conversation with a message first.")
    if isinstance(message_id, dict):  # the box was opened by a choice (the button is hidden then)
        raise refuse("Retry with your words follows a 👍/👎; after a choice, Save comment keeps them.")
    settings = _settings(system_prompt, temperature, top_p, max_new_tokens, repetition_penalty)
    updates = service.retry_with_comment(profile_id, conversation_id, message_id, comment, settings)
    yield from _stream_view(service, ui, profile_id, updates, False, replacing=True, takes_message=False)


@ui_errors
def on_save_preferences(service: ChatService, ui: UI, profile_id: str | None, compare, system_prompt, temperature,
                        top_p, max_new_tokens, repetition_penalty):
    """Keep the settings and the compare choice with the profile (a refusal says which value is out of range)."""
    if profile_id:
        settings = _settings(system_prompt, temperature, top_p, max_new_tokens, repetition_penalty)
        service.save_preferences(profile_id, settings, bool(compare))
    return gr.skip()


@ui_errors
def on_refresh(service: ChatService, ui: UI, profile_id: str | None, conversation_id: str | None, status: str | None):
    """The stored state once a reply has finished, keeping its notice (chained with `.success`: a failure leaves
    the error on screen with its toast, as Gradio 6 would even with `.then`)."""
    return _settled(service, ui, profile_id, conversation_id or None, status or "", buttons=True)


def _settings(system_prompt, temperature, top_p, max_new_tokens,
              repetition_penalty=GenerationSettings.repetition_penalty) -> GenerationSettings:
    return GenerationSettings(system_prompt=system_prompt or "", temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)


@ui_errors
def on_stop(service: ChatService, ui: UI, profile_id: str | None, conversation_id: str | None):
    """Stop the reply being written: it ends after its current token and is kept as it stands."""
    require_conversation(profile_id, conversation_id, "There is no reply being written.")
    if not service.stop(profile_id, conversation_id):
        return {ui.status: "There is no reply being written."}
    return {ui.status: "⏹ Stopping…"}


def _settled(service: ChatService, ui: UI, profile_id: str | None, conversation_id: str | None, status: str,
             buttons: bool) -> dict:
    """The stored view after a reply, without the comment box (a 👎 given meanwhile keeps its box open), and
    with the choice buttons only if `buttons`."""
    out = view(service, ui, profile_id, conversation_id, status)
    del out[ui.comment_row]
    if not buttons:
        out[ui.choice_row] = gr.Row(visible=False)
    return out


def _stream_view(service: ChatService, ui: UI, profile_id: str, updates: Iterable[ReplyUpdate], compare: bool,
                 replacing: bool, takes_message: bool):
    """Yield UI updates while a reply (or A and B) streams in, then the stored state with the choice buttons
    still hidden: `on_refresh`, chained after the event, shows them. `replacing`: the last reply shown is being
    replaced (Retry, Continue); `takes_message`: the message box's text was sent (cleared once, at the start)."""
    first = True
    for update in updates:
        out = {}
        if first:
            history = service.transcript(profile_id, update.conversation_id)
            if replacing and history and history[-1].role == "assistant":
                history = history[:-1]
            if update.notice:
                gr.Info(update.notice)
            # (a new conversation is selected at once: if the reply fails, the next message continues it)
            out[ui.conversation] = gr.Dropdown(value=update.conversation_id,
                                               choices=conversation_choices(service, profile_id))
            if takes_message:  # once, as the message is taken: what is typed while the reply streams stays
                out[ui.message] = ""
            out.update({ui.continue_reply: gr.Button(visible=False), ui.branch_row: gr.Row(visible=False)})
            first = False
        if update.done:
            # Gradio applies a generator's last output once more when the event completes, after any event
            # the person started in between. So this view keeps the choice buttons hidden and leaves the
            # comment box alone; `on_refresh`, chained after the event, reveals the buttons, and neither a
            # choice nor a 👎's comment box can be overwritten by it.
            stored = update.reply or update.comparison
            stopped = "⏹ Stopped: what was written so far is kept." if stored and _stopped(stored) else ""
            if update.learned:
                gr.Info(update.learned)
            status = " ".join(filter(None, [update.learned, update.notice, stopped]))
            yield _settled(service, ui, profile_id, update.conversation_id, status, buttons=False)
            continue
        writing = "✍️ Writing both replies…" if compare else "✍️ Writing…"
        out.update({ui.status: " ".join(filter(None, [writing, update.notice])), ui.comment_row: gr.Row(visible=False)})
        if compare:
            out.update({ui.chatbot: chat_value(history), ui.compare_row: gr.Row(visible=True),
                        ui.candidate_a: "**A**\n\n" + update.texts[0],
                        ui.candidate_b: "**B**\n\n" + update.texts[1], ui.choice_row: gr.Row(visible=False)})
        else:
            out[ui.chatbot] = chat_value(history, pending_text=update.texts[0])
        yield out


def _stopped(stored) -> bool:
    """Whether a stored reply (or comparison) was cut by the person's Stop."""
    message = getattr(stored, "a", stored)
    return bool(message.settings.get("stopped"))
