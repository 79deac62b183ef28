"""Attune's web page: the layout (ui/layout.py), the handlers by concern (profiles, chat, feedback, learning,
data_api) and their wiring (ui/wiring.py). Handlers call only `assistant.service.ChatService`."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (the environment must be set before gradio is imported)

from assistant.config import AppConfig  # noqa: E402
from assistant.service import ChatService  # noqa: E402
from ui.layout import UI, layout  # noqa: E402
from ui.style import STYLE  # noqa: E402
from ui.wiring import OUTPUTS, api_returns, wire  # noqa: E402

__all__ = ["OUTPUTS", "STYLE", "UI", "api_returns", "build_app"]


def build_app(service: ChatService, config: AppConfig) -> gr.Blocks:
    with gr.Blocks(title="Attune") as demo:
        ui = layout(service.model_id, config)
        wire(demo, ui, service)
    return demo
