"""Decoding on an OpenAI-compatible server (`--backend openai --server URL`): vLLM on GPUs, or llama.cpp's server
on CPUs, when one machine is not enough.

Each reply is one streamed `/v1/completions` request (the `openai` client) whose `model` names the profile's blend:
the base model's name, or a merged adapter (global at 1 + personal at α, one LoRA: adapters/merge.py) called
`attune-<16 hex digits>` after exactly the versions and scales it sums. With `register` the decoder registers each
new merged adapter once through `/v1/load_lora_adapter` (vLLM with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, reading
the adapter folder from storage it shares with Attune); without, the server already serves every name (llama.cpp's
server started with a config of model aliases). The prompt goes as the text of the token ids Attune built (the
server's tokenizer is the same model's); streamed text comes back as token ids of the local tokenizer, so the
reply stream, stop strings and Stop work as for the other backends. The repetition penalty is the server's own
(vLLM and llama.cpp count the prompt's tokens too).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from pathlib import Path

from assistant.config import GenerationSettings
from storage.errors import ModelUnavailable

log = logging.getLogger(__name__)


class OpenAIDecoder:
    """Replies from the OpenAI-compatible server at `server` (e.g. http://127.0.0.1:8000/v1), the base model
    served as `base_model` ("" asks the server: the first model it lists)."""

    name = "openai"
    one_adapter = True
    """The blend goes as one merged adapter (`AdapterServer.merged_adapter`), not as GGUF files."""

    def __init__(self, server: str, tokenizer, base_model: str = "", register: bool = True, timeout: float = 600.0):
        from openai import OpenAI

        self.server, self.tokenizer, self.register = server.rstrip("/"), tokenizer, register
        self.client = OpenAI(base_url=self.server, api_key="attune", timeout=timeout, max_retries=0)
        self.base_model = base_model or self._first_model()
        self._registered: set[str] = set()
        self._lock = threading.Lock()

    def _first_model(self) -> str:
        try:
            models = self.client.models.list().data
        except Exception as exc:  # (the client's errors: connection refused, timeout, a bad status)
            raise ModelUnavailable(f"The model server at {self.server} did not answer ({type(exc).__name__}).") from exc
        if not models:
            raise ModelUnavailable(f"The model server at {self.server} serves no model.")
        return models[0].id

    def close(self) -> None:
        self.client.close()

    def forget(self, owner: str, adapters: list[Path]) -> None:
        """Unload from the server the merged adapters among `adapters` (an erased or reset profile's) that this app
        registered (`/v1/unload_lora_adapter`, vLLM); the server's own prompt cache is its to expire."""
        names = {Path(p).name for p in adapters} & self._registered
        for name in sorted(names):
            try:
                self.client.post("/unload_lora_adapter", cast_to=object, body={"lora_name": name})
            except Exception as exc:  # (logged: the erasure itself has happened on this side)
                log.warning("The server at %s did not unload %s (%s).", self.server, name, type(exc).__name__)
            self._registered.discard(name)

    def _model(self, adapters: list[tuple[Path, float]]) -> str:
        """The name the request uses: the base model's, or the merged adapter's (registered first if needed)."""
        if not adapters:
            return self.base_model
        folder = Path(adapters[0][0])
        name = folder.name
        with self._lock:
            if self.register and name not in self._registered:
                try:
                    self.client.post("/load_lora_adapter", cast_to=object,
                                     body={"lora_name": name, "lora_path": str(folder.resolve())})
                except Exception as exc:
                    raise ModelUnavailable(f"The model server at {self.server} did not take the adapter {name} "
                                           f"({type(exc).__name__}).") from exc
                self._registered.add(name)
        return name

    def generate(self, input_ids: list[int], settings: GenerationSettings, max_new_tokens: int,
                 adapters: list[tuple[Path, float]], on_token: Callable[[int], None],
                 should_stop: Callable[[], bool], seed: int | None = None, min_new_tokens: int = 0,
                 owner: str | None = None) -> bool:
        """As `LlamaCppDecoder.generate`: True if the server ended the reply itself (finish reason "stop")."""
        model = self._model(adapters)
        extra = {"repeat_penalty": float(settings.repetition_penalty),  # (llama.cpp's server)
                 "repetition_penalty": float(settings.repetition_penalty)}  # (vLLM's)
        if min_new_tokens:
            extra["min_tokens"] = min_new_tokens
        try:
            stream = self.client.completions.create(
                model=model, prompt=self.tokenizer.decode(input_ids), max_tokens=max_new_tokens, stream=True,
                temperature=float(settings.temperature), top_p=float(settings.top_p),
                seed=random.getrandbits(31) if seed is None else seed, extra_body=extra)
        except Exception as exc:
            raise ModelUnavailable(f"The model server at {self.server} refused the request for {model} "
                                   f"({type(exc).__name__}: {exc}).") from exc
        finish = None
        with stream:
            for chunk in stream:
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                for token in self.tokenizer(choice.text, add_special_tokens=False)["input_ids"] if choice.text else []:
                    on_token(int(token))
                finish = choice.finish_reason or finish
                if should_stop():
                    return False
        return finish == "stop"
