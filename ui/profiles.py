"""Profiles: the remembered session on load, create, pick, rename, and delete after a confirmation."""

from __future__ import annotations

import gradio as gr

from assistant.service import ChatService
from ui.errors import ui_errors
from ui.layout import UI
from ui.views import preferences_view, profile_choices, view


@ui_errors
def on_load(service: ChatService, ui: UI, remembered: dict | None):
    """The profile and conversation this browser had open, if they still exist."""
    remembered = remembered or {}
    profile_id, conversation_id = remembered.get("profile_id"), remembered.get("conversation_id")
    known = {p["id"] for p in service.list_profiles()}
    if profile_id not in known:
        profile_id, conversation_id = None, None
    elif conversation_id not in {c["id"] for c in service.list_conversations(profile_id)}:
        conversation_id = None
    return {**view(service, ui, profile_id, conversation_id), **_tools(ui, profile_id),
            **preferences_view(service, ui, profile_id)}


def _tools(ui: UI, profile_id: str | None) -> dict:
    """The profile tools stand open while no profile is picked (a first visit: the way to create one), and fold
    away once one is (on a phone they would push the chat below the first screen)."""
    return {ui.profile_tools: gr.Accordion(open=not profile_id)}


def on_remember(profile_id: str | None, conversation_id: str | None) -> dict:
    return {"profile_id": profile_id, "conversation_id": conversation_id}


@ui_errors
def on_create_profile(service: ChatService, ui: UI, name: str):
    profile = service.create_profile(name)
    created = f"Profile '{profile['name']}' created."
    gr.Info(created)  # (a toast is sent before the outputs; the status line comes with the new profile)
    return {**view(service, ui, profile["id"], None, created), ui.profile_name: "",
            **preferences_view(service, ui, profile["id"]), **_tools(ui, profile["id"])}


@ui_errors
def on_select_profile(service: ChatService, ui: UI, profile_id: str):
    service.get_profile(profile_id)
    conversations = service.list_conversations(profile_id)
    return {**view(service, ui, profile_id, conversations[0]["id"] if conversations else None),
            **preferences_view(service, ui, profile_id), **_tools(ui, profile_id)}


@ui_errors
def on_rename_profile(service: ChatService, ui: UI, profile_id: str, name: str):
    profile = service.rename_profile(profile_id, name)
    gr.Info(f"Profile renamed to '{profile['name']}'.")
    return {ui.profile: gr.Dropdown(choices=profile_choices(service), value=profile_id), ui.profile_name: ""}


@ui_errors
def on_delete_profile(service: ChatService, ui: UI, profile_id: str):
    """Ask first: shows the confirmation row; nothing is deleted yet."""
    profile = service.get_profile(profile_id)
    return {ui.confirm_row: gr.Row(visible=True),
            ui.confirm_text: f"Delete profile **{profile['name']}** with all its conversations and feedback? "
                             "This cannot be undone."}


@ui_errors
def on_confirm_delete_profile(service: ChatService, ui: UI, profile_id: str):
    name = service.get_profile(profile_id)["name"]
    service.delete_profile(profile_id)
    gr.Info(f"Profile '{name}' deleted.")
    return {**view(service, ui, None, None, f"Profile '{name}' deleted. Pick a profile or create one."),
            ui.confirm_row: gr.Row(visible=False), ui.note: "", **_tools(ui, None)}


@ui_errors
def on_download_data(service: ChatService, ui: UI, profile_id: str):
    """A zip of everything Attune keeps of the profile, offered as a file to save."""
    path = service.download_data(profile_id)
    return {ui.export_file: gr.File(value=str(path), visible=True),
            ui.status: "Your data is ready: conversations, feedback (also in TRL's formats) and your adapter."}
