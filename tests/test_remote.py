"""`--backend openai`: replies from a real OpenAI-compatible server on loopback, llama.cpp's own
(`python -m llama_cpp.server`, from the same wheel as the llamacpp backend), serving the profile's blend as one merged
adapter under its name, as vLLM would after `/v1/load_lora_adapter`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import httpx
import pytest

from adapters.blend import AdapterServer
from adapters.registry import GGUF, GLOBAL, AdapterRegistry, personal_adapter
from assistant.config import BlendConfig, GenerationSettings, ModelConfig
from assistant.llamacpp import LlamaCppDecoder, available
from assistant.model import embedded_gguf_path, load_model
from assistant.remote import OpenAIDecoder
from storage.errors import ModelUnavailable
from tests.conftest import EMBEDDED_CACHE, free_port, serving

SERVER = available() and importlib.util.find_spec("sse_starlette") is not None


def test_a_server_that_does_not_answer_is_a_clear_error(tiny_loaded):
    with pytest.raises(ModelUnavailable, match="did not answer"):
        OpenAIDecoder(f"http://127.0.0.1:{free_port()}/v1", tiny_loaded.tokenizer)


@pytest.mark.slow
@pytest.mark.skipif(not SERVER, reason="llama-cpp-python with its server's packages is not installed")
def test_replies_come_from_the_server_with_the_profile_blend_merged_and_named(data_home, store, tmp_path):
    from tests.test_llamacpp import _random_lora

    embedded = load_model(ModelConfig(), EMBEDDED_CACHE)
    registry = AdapterRegistry(data_home / "adapters", store)
    ann = store.create_profile("Ann")["id"]
    registry.publish(GLOBAL, None, _random_lora(embedded.model, 1, 0.05), {}, "t")
    registry.publish(personal_adapter(ann), ann, _random_lora(embedded.model, 2, 0.05), {}, "t")
    store.set_alpha_override(ann, 0.5)
    merged = AdapterServer(embedded, registry, store, BlendConfig()).merged_adapter(
        AdapterServer(embedded, registry, store, BlendConfig()).blend_for(ann))[0][0]
    gguf = str(embedded_gguf_path())
    port = free_port()
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": [
        {"model": gguf, "model_alias": alias, "n_ctx": 1024, "n_threads": 1, "flash_attn": True, "verbose": False,
         **({"lora_path": str(merged / GGUF)} if alias != "base" else {})} for alias in ("base", merged.name)]}))
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1/models", server)
        args = ["--model", "embedded", "--model-cache", str(EMBEDDED_CACHE), "--data-dir", str(data_home),
                "--backend", "openai", "--server", f"http://127.0.0.1:{port}/v1", "--no-worker",
                "--set", "model.server_model=base", "--set", "model.server_loads_adapters=false"]
        with serving(args) as (_, service):
            settings = GenerationSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=24)
            *_, last = service.send(ann, None, "Name three fruits.", settings)
            reply = last.reply
            assert reply.settings["backend"] == "openai" and reply.adapter_versions["personal"] == "v0001"
            prompt = service.store.transcript(ann, reply.conversation_id)
            local = LlamaCppDecoder(embedded_gguf_path(), context_window=1024, threads=1, contexts=1)
            ids = _prompt_ids(embedded, prompt[0].content)
            blended, bare = _greedy(local, embedded, ids, [(merged / GGUF, 1.0)]), _greedy(local, embedded, ids, [])
            local.close()
            assert blended != bare  # (the blend changes this reply)
            assert reply.content == blended  # the server decoded with the merged adapter, asked for by its name
            for _ in service.send(ann, reply.conversation_id, "And three vegetables?", settings, compare=True):
                pass
            pending = service.store.pending_comparison(ann, reply.conversation_id)
            assert pending and all(m.content for m in service.store.conversation_messages(ann, reply.conversation_id)
                                   if m.status == "candidate")
    finally:
        server.terminate()
        server.wait(timeout=60)


def _wait_for(url: str, server: subprocess.Popen) -> None:
    """Until the server answers (it loads the model first); fails at once if it exits."""
    deadline = time.monotonic() + 300  # (a generous bound for a loaded machine; it answers in seconds)
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited ({server.returncode})"
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the server did not answer within 300 s")


def _prompt_ids(embedded, message: str) -> list[int]:
    from assistant.config import DEFAULT_SYSTEM_PROMPT
    from assistant.prompts import build_prompt

    return build_prompt(embedded, DEFAULT_SYSTEM_PROMPT, [{"role": "user", "content": message}], 24).input_ids


def _greedy(decoder, embedded, ids, adapters) -> str:
    tokens: list[int] = []
    decoder.generate(ids, GenerationSettings(temperature=0.0, repetition_penalty=1.0), 24, adapters, tokens.append,
                     lambda: False)
    return embedded.tokenizer.decode(tokens, skip_special_tokens=True).strip()
