"""Smoke test on the embedded SmolLM2-135M-Instruct: it loads (converted once, then from the cache) and knows Paris."""

from __future__ import annotations

import time

import pytest

from assistant.config import GenerationSettings, ModelConfig
from assistant.generation import generate_texts
from assistant.model import EMBEDDED_CACHE_NAME, EMBEDDED_ID, load_model
from assistant.prompts import build_prompt
from tests.conftest import EMBEDDED_CACHE

pytestmark = pytest.mark.slow


def test_embedded_model_answers_paris():
    load_model(ModelConfig(model="embedded"), EMBEDDED_CACHE)  # converts on the very first run only
    assert (EMBEDDED_CACHE / EMBEDDED_CACHE_NAME / "model.safetensors").exists()
    start = time.perf_counter()
    loaded = load_model(ModelConfig(model="embedded"), EMBEDDED_CACHE)
    load_seconds = time.perf_counter() - start
    assert loaded.model_id == EMBEDDED_ID and loaded.has_chat_template
    assert not any(p.suffix == ".gguf" for p in (EMBEDDED_CACHE / EMBEDDED_CACHE_NAME).iterdir())
    settings = GenerationSettings(temperature=0, max_new_tokens=24)
    prompt = build_prompt(loaded, settings.system_prompt,
                          [{"role": "user", "content": "What is the capital of France?"}], 24)
    reply = generate_texts(loaded, prompt, settings)[0]
    assert "Paris" in reply, reply
    assert load_seconds < 30  # a sanity bound only; the benchmark measures load time side by side
