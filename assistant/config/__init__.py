"""Every setting of Attune, in one place: frozen dataclasses validated on creation, rooted at `AppConfig`.

Each entry point (the app, the worker, the benchmarks) takes `--set KEY=VALUE` with dotted keys into these
dataclasses (`assistant.overrides`), e.g. `--set learning.blend.k=8` or `--set model.model=gpt2`."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from assistant.config.explore import DEFAULT_PROBES, PAIRINGS, PLAIN, ExploreConfig, Probe
from assistant.config.limits import LimitsConfig
from assistant.config.learning import BlendConfig, LearningConfig, LoraSettings, RewardConfig, TrainConfig
from assistant.config.model import DEFAULT_SYSTEM_PROMPT, EMBEDDED_MODEL, GenerationSettings, ModelConfig
from storage.errors import InvalidInput

__all__ = ["DATA_HOME_ENV", "DEFAULT_PROBES", "DEFAULT_SYSTEM_PROMPT", "EMBEDDED_MODEL", "PAIRINGS", "PLAIN",
           "AppConfig", "BlendConfig", "ExploreConfig", "GenerationSettings", "LearningConfig", "LimitsConfig",
           "LoraSettings", "ModelConfig", "Probe", "RewardConfig", "TrainConfig", "default_data_dir", "is_loopback"]

DATA_HOME_ENV = "ATTUNE_HOME"


def default_data_dir() -> Path:
    """The data home: $ATTUNE_HOME, or ./data."""
    return Path(os.environ.get(DATA_HOME_ENV, "data"))


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AppConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    """The data home: database, model cache and adapters."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model served and trained on."""
    host: str = "127.0.0.1"
    """Interface the web server binds; loopback unless you mean to share it."""
    port: int = 7860
    """Port of the web server, 0–65535 (0: any free one)."""
    auth: Path | None = None
    """The accounts file (`python -m storage.accounts`): with it every visitor logs in and sees only their
    account's profiles. None: household mode, where anyone who reaches the page may use every household profile."""
    insecure_household: bool = False
    """Allow household mode (no `auth`) on an interface other than loopback: anyone on the network could then read
    and change every profile. Refused unless set."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """Rate limits per account and profile, and the profile cap (assistant/limits.py)."""
    max_upload_bytes: int = 1_000_000
    """Largest file the web server accepts on its upload route, ≥ 1 (Attune's page uploads nothing itself)."""
    max_message_chars: int = 16_000
    """Longest message accepted from a person, ≥ 1; longer ones are refused, not cut."""
    queue_size: int = 64
    """Most requests waiting in the web server's queue, ≥ 1; beyond it Gradio answers "busy, try again" at once
    instead of queueing without end (a flood cannot grow memory or every person's wait without bound)."""
    compare_min_temperature: float = 0.7
    """Compare mode samples both candidates; a greedy setting is raised to this so A and B can differ."""
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    """Compare mode: how often, and with which hidden style probes, one candidate explores (assistant/explore.py)."""
    learning: LearningConfig = field(default_factory=LearningConfig)
    """When and how the adapters learn (handed to the worker the app starts)."""
    worker: bool = True
    """Start the training worker process beside the app."""
    worker_threads: int = 0
    """Torch threads of the worker; 0 (default): every core while the app is idle and one while it decodes, planned
    before each training step (adapters/threads.py). It runs at a lower priority (nice 10), so replies come first."""

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"Port must be 0-65535 (got {self.port}).")
        if self.max_message_chars < 1:
            raise InvalidInput("max_message_chars must be positive.")
        if self.queue_size < 1 or self.max_upload_bytes < 1:
            raise InvalidInput("queue_size and max_upload_bytes must be positive.")
        if self.auth is None and not self.insecure_household and not is_loopback(self.host):
            raise InvalidInput(f"Without --auth anyone who reaches {self.host} could read and change every profile. "
                               "Give --auth ACCOUNTS_FILE (see `python -m storage.accounts`), serve on 127.0.0.1, "
                               "or pass --insecure-household if every machine on that network is yours.")

    @property
    def model_cache_dir(self) -> Path:
        return self.model.cache_dir or self.data_dir / "models"
