"""docs/architecture.md lists every function a 👍 passes through on its way to the next reply. This test clicks 👍
through the real handler, runs the worker's job and sends the next message, records every function of the product
that runs (a profiler hook on every thread), and checks that the documented list is the order they ran in."""

from __future__ import annotations

import re
import sys
import threading
from dataclasses import replace

import gradio as gr

from adapters.registry import AdapterRegistry, personal_adapter
from adapters.worker import ADAPTERS_DIR, Worker
from app import create_service
from tests.conftest import REPO
from ui.chat import on_send
from ui.feedback import on_like
from ui.layout import layout

DOC = REPO / "docs" / "architecture.md"
PRODUCT = ("ui.", "assistant.", "adapters.", "storage.", "app")


def documented_path() -> list[str]:
    """The qualified names listed, in order, under "## The path of a 👍" (one numbered step per line)."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## The path of a 👍", 1)[1].split("\n## ", 1)[0]
    steps = [line for line in section.splitlines() if re.match(r"\d+\. ", line)]
    return [re.search(r"`([\w.]+)`", step).group(1) for step in steps]


class _Calls:
    """Qualified names (`module.Class.method`) of the product's functions as they are called, on any thread."""

    def __init__(self):
        self.names: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, frame, event, arg):
        if event == "call":
            module = frame.f_globals.get("__name__", "")
            if module.startswith(PRODUCT):
                with self._lock:
                    self.names.append(f"{module}.{frame.f_code.co_qualname}")

    def __enter__(self):
        sys.setprofile(self)
        threading.setprofile(self)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)


def _in_order(wanted: list[str], calls: list[str]) -> list[str]:
    """The documented names that do not run, or not after the one before them."""
    missing, at = [], 0
    for name in wanted:
        try:
            at = calls.index(name, at) + 1
        except ValueError:
            missing.append(name if name in calls else f"{name} (never called)")
    return missing


def test_the_documented_path_of_a_thumbs_up_is_the_one_the_code_takes(app_config):
    config = replace(app_config, learning=replace(app_config.learning, personal_every=1, min_profiles=1,
                                                                  global_min_age_hours=0))
    service = create_service(config)
    with gr.Blocks():
        ui = layout(service.model_id, config)
    settings = ("", 0.0, 0.9, 8, 1.0)  # system prompt, greedy, top-p, tokens, repetition penalty
    ann = service.create_profile("Ann")["id"]
    list(on_send(service, ui, ann, None, "Hello?", False, *settings))
    conversation = service.store.list_conversations(ann)[0]["id"]
    reply = service.store.transcript(ann, conversation)[1]
    registry = AdapterRegistry(config.data_dir / ADAPTERS_DIR, service.store)
    worker = Worker(service.loaded, service.store, registry, config.learning)

    with _Calls() as calls:
        on_like(service, ui, ann, conversation, gr.LikeData(None, {"index": 1, "value": reply.content, "liked": True}))
        assert worker.run_once()
        list(on_send(service, ui, ann, conversation, "And now?", False, *settings))

    served = service.store.transcript(ann, conversation)[-1]
    assert registry.current(personal_adapter(ann)).version == 1
    assert served.adapter_versions["personal"] == "v0001"  # the next reply came from what the 👍 taught
    path = documented_path()
    assert len(path) >= 20
    assert not _in_order(path, calls.names), f"not run in this order: {_in_order(path, calls.names)}"
